"""The agent developer's loop: ``roost dev`` (serve one agent and reload it on every save,
:mod:`.session`), the terminal chat it shares with ``roost run`` (:mod:`.chat`), the file
watcher (:mod:`.watch`) and the SIMULATED model provider it serves agents that use the llm
capability (:mod:`.sim_llm`)."""

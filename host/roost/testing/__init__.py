"""Test agents in a real host on virtual time: ``roost.testing``.

Roost's pytest plugin (installed with roost, entry point ``pytest11: roost``) gives a test
the agent of the ``agent.toml`` beside it, running in a real :class:`~roost.Host` (SQLite
store, wasmtime sandboxes, the same capabilities and limits as in production) on trio's
``MockClock``, with a scripted model provider::

    async def test_counts(agent):
        assert await agent.send("hi") == [{"echo": "hi", "count": 1}]
        assert (await agent.state())["count"] == 1

    async def test_reminds(agent, roost_host):
        await agent.send("remind me in 10 minutes to stretch")
        await roost_host.advance(600)           # ten virtual minutes, in milliseconds
        assert agent.pushes == ["Reminder: stretch"]

    async def test_answers(agent, fake_llm):
        fake_llm.reply("Hello!")
        assert await agent.send("hi") == ["Hello!"]

Python agents run on the dev runtime (:mod:`roost.build.dev`) unless ``--roost-build
release`` asks for the production component; either way the first test builds (cached by
content, shared with ``roost dev`` and ``roost build``) and every later test takes a fraction
of a second. ``docs/testing.md`` has the whole story.

The guest SDK (``roost_sdk``) never imports the host, so these helpers live here, on the
host's side; agents import nothing from them.
"""

from __future__ import annotations

from ._fake_llm import FAKE_LLM_URL as FAKE_LLM_URL
from ._fake_llm import FakeLlm as FakeLlm
from ._harness import AgentUnderTest as AgentUnderTest
from ._harness import GuestLog as GuestLog
from ._harness import HostUnderTest as HostUnderTest
from ._harness import Sent as Sent
from ._harness import Timer as Timer
from ._harness import open_test_host as open_test_host

__all__ = [
    "FAKE_LLM_URL",
    "AgentUnderTest",
    "FakeLlm",
    "GuestLog",
    "HostUnderTest",
    "Sent",
    "Timer",
    "open_test_host",
]

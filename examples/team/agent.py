"""A team: a coordinator asks two worker agents and combines their answers.

Shows: ``await ctx.ask(kind, id, message, timeout=...)`` to another kind of agent (the
workers are ``team-worker`` agents, ``worker/agent.py``), granted by
``[capabilities.agents] kinds``. The coordinator asks each worker in turn (a handler awaits
one op at a time) and combines what they said. A worker that fails (its turn trapped, it
timed out, ...) does not hang the coordinator: the ask ends with an error, and the
coordinator reports it beside the other worker's answer.

Send a question as text; the reply is the combined answer.
"""

from __future__ import annotations

from typing import Any

from roost_sdk import Agent, CapabilityError, Context, OpError

WORKER_KIND = "team-worker"


class Coordinator(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        question = str(msg).strip()
        if not question:
            ctx.reply("Ask the team a question.")
            return
        workers: list[str] = list(ctx.config.get("workers", ["optimist", "skeptic"]))
        timeout = float(ctx.config.get("ask_timeout_s", 30))

        answers: list[str] = []
        failures: list[str] = []
        for worker in workers:
            # Each user gets their own team: worker ids are scoped to this coordinator.
            worker_id = f"{ctx.agent_id}-{worker}"
            try:
                replies = await ctx.ask(
                    WORKER_KIND, worker_id, {"role": worker, "question": question}, timeout=timeout
                )
            except (CapabilityError, OpError) as exc:
                failures.append(f"{worker} could not answer: {exc}")
                continue
            answers.append(f"{worker}: {' '.join(str(r) for r in replies)}")

        if not answers:
            ctx.reply("The team could not answer.\n" + "\n".join(failures))
            return
        ctx.reply("\n\n".join(answers + failures))

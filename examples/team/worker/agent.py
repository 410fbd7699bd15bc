"""A team worker: answers the coordinator's question with the llm, in its role.

Only the coordinator talks to it (``on_agent_message``). It lets errors escape: a failed
llm call fails the worker's turn, and the coordinator's ``ctx.ask`` reports that error.
"""

from __future__ import annotations

from typing import Any

from roost_sdk import Agent, Context


class Worker(Agent):
    async def on_agent_message(self, ctx: Context, sender: str, msg: Any) -> None:
        role, question = str(msg["role"]), str(msg["question"])
        answer = await ctx.llm.chat(
            [
                {"role": "system", "content": f"You are the {role} of a small team. Be brief."},
                {"role": "user", "content": f"As the {role}: {question}"},
            ]
        )
        ctx.state["answered"] = ctx.state.get("answered", 0) + 1
        ctx.reply(answer["content"])

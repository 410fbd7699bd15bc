"""The load-test chat agent: each message goes to the llm with a short history.

Talks to whatever provider the host is configured with; the load tests point it at the
*simulated* OpenAI-compatible server in ``loadtests/sim_llm.py``.
"""

from __future__ import annotations

from typing import Any

from roost_sdk import Agent, Context

HISTORY = 6


class Chat(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        history = ctx.state.get("history", [])
        history.append({"role": "user", "content": str(msg)})
        result = await ctx.llm.chat(history[-HISTORY:], max_tokens=16)
        history.append({"role": "assistant", "content": result["content"]})
        ctx.state["history"] = history[-HISTORY:]
        ctx.state["turns"] = ctx.state.get("turns", 0) + 1
        ctx.reply(result["content"])

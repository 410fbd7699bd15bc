"""The bundled example: echoes each message and counts them in its durable state."""

from __future__ import annotations

from typing import Any

from roost_sdk import Agent, Context


class Echo(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        count = ctx.state.get("count", 0) + 1
        ctx.state["count"] = count
        ctx.log.debug(f"message {count}")
        ctx.reply({"echo": msg, "count": count})

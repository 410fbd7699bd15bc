"""The crash harness's agent: every message leaves marks that show whether it was applied
once. A message ``{"id": N, "via": ...}`` records N in the state and the kv before its
handler awaits something (``sleep``, ``llm``, ``ask``), then again after, and replies; with
``via="cont"`` its LLM call comes back as a continuation; with ``via="timer"`` it sets a
timer that records N when it fires. The harness reads the marks back through the export."""

from __future__ import annotations

from typing import Any

from roost_sdk import Agent, Context, OpError


def _mark(ctx: Context, field: str, value: Any) -> None:
    ctx.state.setdefault(field, []).append(value)


class Ledger(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        n, via = msg["id"], msg["via"]
        _mark(ctx, "before", n)
        count = int((ctx.kv.get(f"n:{n}") or b"0").decode())
        ctx.kv.set(f"n:{n}", str(count + 1).encode())
        if via == "sleep":
            await ctx.sleep(msg.get("seconds", 0.2))
        elif via == "llm":
            await ctx.llm.chat([{"role": "user", "content": f"message {n}"}], max_tokens=8)
        elif via == "ask":
            await ctx.ask("ledger", f"peer-{ctx.agent_id}", {"id": n}, timeout=30)
        elif via == "cont":
            ctx.llm.chat([{"role": "user", "content": f"m{n}"}], max_tokens=8, then="on_llm", tag=n)
        elif via == "timer":
            ctx.schedule({"id": n}, after=msg.get("seconds", 0.3), timer_id=f"t{n}")
        _mark(ctx, "after", n)
        ctx.reply({"id": n})

    async def on_llm(self, ctx: Context, result: Any, tag: Any) -> None:
        _mark(ctx, "continued" if not isinstance(result, OpError) else "continued_error", tag)

    async def on_timer(self, ctx: Context, payload: Any) -> None:
        _mark(ctx, "fired", payload["id"])

    async def on_agent_message(self, ctx: Context, sender: str, msg: Any) -> None:
        _mark(ctx, "asked", msg["id"])
        await ctx.sleep(0.05)
        ctx.reply({"seen": msg["id"]})

"""Refunds that a person approves before they happen.

Shows: ``ctx.approval`` before an action with a large blast radius. A refund up to
``auto_limit`` is made at once; a larger one asks for approval in the continuation form
(``then="on_decision"``), so the agent hibernates while it waits, the request waits durably
in its status (``GET /v1/agents/refunds/{id}``), and the decision, taken by an authorised
caller (``POST /v1/agents/refunds/{id}/approvals/{approval_id}``), arrives as a new turn,
even after a restart. Nobody deciding within ``approval_timeout_s`` rejects it.

The awaited form, ``decision = await ctx.approval(...)``, is shorter to write but keeps
the agent resident while it waits, so the grant caps it at ``max_wait_s`` (minutes).

Send ``{"order": "A-17", "amount": 250}``; ``"refunds"`` lists what was refunded.
"""

from __future__ import annotations

from typing import Any

from roost_sdk import Agent, CapabilityError, Context, OpError


class Refunds(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        if msg == "refunds":
            ctx.reply({"refunded": ctx.state.get("refunded", []), "pending": self._pending(ctx)})
            return
        if not isinstance(msg, dict) or "order" not in msg or "amount" not in msg:
            ctx.reply('Send {"order": ..., "amount": ...} or "refunds".')
            return
        order, amount = str(msg["order"]), float(msg["amount"])
        if amount <= float(ctx.config.get("auto_limit", 50)):
            self._refund(ctx, order, amount, approved_by=None)
            ctx.reply(f"Refunded {amount:g} EUR for order {order}.")
            return
        try:
            ctx.approval(
                f"refund {amount:g} EUR for order {order}",
                {"order": order, "amount": amount},
                timeout=float(ctx.config.get("approval_timeout_s", 86400)),
                then="on_decision",
                tag={"order": order, "amount": amount},
            )
        except CapabilityError as exc:
            ctx.reply(f"Cannot ask for approval: {exc}")
            return
        ctx.state.setdefault("pending", []).append(order)
        ctx.reply(f"A refund of {amount:g} EUR for order {order} needs approval; I asked.")

    async def on_decision(self, ctx: Context, decision: Any, tag: Any) -> None:
        order, amount = tag["order"], tag["amount"]
        ctx.state["pending"] = [o for o in ctx.state.get("pending", []) if o != order]
        if isinstance(decision, OpError):
            ctx.reply(f"The approval of order {order} failed: {decision}")
        elif decision["approved"]:
            self._refund(ctx, order, amount, approved_by=decision["by"])
            ctx.reply(f"Approved by {decision['by']}: refunded {amount:g} EUR for order {order}.")
        else:
            ctx.state.setdefault("declined", []).append(order)
            note = f" ({decision['note']})" if decision.get("note") else ""
            ctx.reply(f"The refund for order {order} was {decision['decision']}{note}.")

    def _refund(self, ctx: Context, order: str, amount: float, approved_by: str | None) -> None:
        ctx.state.setdefault("refunded", []).append(
            {"order": order, "amount": amount, "approved_by": approved_by}
        )

    def _pending(self, ctx: Context) -> list[str]:
        return list(ctx.state.get("pending", []))

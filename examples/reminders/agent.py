"""Reminders on durable timers.

Shows: ``ctx.schedule`` and ``ctx.cancel_timer``. A timer is a row in the host's store,
committed with the turn that set it, so a reminder survives hibernation and host restarts;
when it is due the host wakes the agent and calls ``on_timer``. Nobody is waiting for that
turn's reply, so the host pushes it to the user's open WebSockets.

Messages (text):

- ``remind me in 10 minutes to stretch`` (seconds, minutes or hours; decimals allowed)
- ``list``: the pending reminders
- ``cancel 2``: cancel reminder 2
"""

from __future__ import annotations

import re
from typing import Any

from roost_sdk import Agent, CapabilityError, Context

REMIND = re.compile(
    r"^remind me in (?P<amount>\d+(?:\.\d+)?) ?(?P<unit>s|sec|second|m|min|minute|h|hour)s?"
    r" to (?P<text>.+)$",
    re.IGNORECASE,
)
CANCEL = re.compile(r"^cancel (?:reminder )?#?(?P<number>\d+)$", re.IGNORECASE)
SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
USAGE = 'Try "remind me in 10 minutes to stretch", "list" or "cancel 1".'


class Reminders(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        text = str(msg).strip()
        if match := REMIND.match(text):
            self._add(ctx, float(match["amount"]), match["unit"].lower(), match["text"].strip())
        elif match := CANCEL.match(text):
            self._cancel(ctx, int(match["number"]))
        elif text.lower() in ("list", "reminders"):
            self._list(ctx)
        else:
            ctx.reply(f"Sorry, I did not understand that. {USAGE}")

    async def on_timer(self, ctx: Context, payload: Any) -> None:
        pending: dict[str, Any] = ctx.state.get("pending", {})
        pending.pop(str(payload["number"]), None)
        ctx.reply(f"Reminder: {payload['text']}")  # pushed to the user's open WebSockets

    def _add(self, ctx: Context, amount: float, unit: str, what: str) -> None:
        number = ctx.state.get("next", 1)
        delay = amount * SECONDS[unit]
        reminder = {"number": number, "text": what, "due": ctx.now() + delay}
        try:
            ctx.schedule(reminder, after=delay, timer_id=_timer_id(number))
        except CapabilityError as exc:
            ctx.reply(f"Sorry, I cannot set that reminder ({exc}).")
            return
        ctx.state["next"] = number + 1
        ctx.state.setdefault("pending", {})[str(number)] = reminder
        ctx.reply(f"OK, reminder {number}: in {_duration(delay)} I will remind you to {what}.")

    def _cancel(self, ctx: Context, number: int) -> None:
        pending: dict[str, Any] = ctx.state.get("pending", {})
        if pending.pop(str(number), None) is None:
            ctx.reply(f"There is no pending reminder {number}.")
            return
        ctx.cancel_timer(_timer_id(number))
        ctx.reply(f"Cancelled reminder {number}.")

    def _list(self, ctx: Context) -> None:
        pending: dict[str, Any] = ctx.state.get("pending", {})
        if not pending:
            ctx.reply(f"No reminders. {USAGE}")
            return
        now = ctx.now()
        lines = [
            f"{r['number']}. in {_duration(r['due'] - now)}: {r['text']}"
            for r in sorted(pending.values(), key=lambda r: float(r["due"]))
        ]
        ctx.reply("\n".join(lines))


def _timer_id(number: int) -> str:
    return f"reminder-{number}"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size:
            value = round(seconds / size, 1)
            return f"{value:g} {unit}{'' if value == 1 else 's'}"
    value = round(seconds, 1)
    return f"{value:g} second{'' if value == 1 else 's'}"

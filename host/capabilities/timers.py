"""``timers``: ``sleep`` as an async op completed by re-entering the guest.

No host thread waits: the sleep is a trio task started once the turn commits, so it
follows the trio clock (and ``MockClock`` in tests).
"""

from __future__ import annotations

import math

import trio
from pydantic import Field

from ..errors import CapabilityDenied
from ..turn import TurnContext
from ._base import BaseGrant, Capability, host_call

_NIL = b"\xc0"  # msgpack nil


class TimersGrant(BaseGrant):
    max_sleep_s: float = Field(24 * 3600.0, gt=0)
    """Longest single sleep."""


class Timers(Capability):
    """Sleeps (durable timers come with the scheduling API)."""

    name = "timers"
    Grant = TimersGrant
    grant: TimersGrant

    @host_call("sleep")
    def sleep(self, turn: TurnContext, seconds: float) -> int:
        if not math.isfinite(seconds) or seconds < 0:
            raise CapabilityDenied(
                f"timers.sleep needs a finite, non-negative delay, got {seconds}"
            )
        if seconds > self.grant.max_sleep_s:
            raise CapabilityDenied(
                f"timers.sleep({seconds}) exceeds the timers grant max_sleep_s = "
                f"{self.grant.max_sleep_s}"
            )

        async def run() -> bytes:
            await trio.sleep(seconds)
            return _NIL

        return turn.start_op(self.name, run)

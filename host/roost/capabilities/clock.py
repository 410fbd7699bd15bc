"""``clock``: wall-clock time as of the start of the turn (time does not move within a turn)."""

from __future__ import annotations

from ._base import BaseGrant, Capability, TurnView, host_call


class ClockGrant(BaseGrant):
    pass


class Clock(Capability[None]):
    """Wall-clock time."""

    name = "clock"
    Grant = ClockGrant

    @host_call("now", fallback=0.0)
    def now(self, turn: TurnView) -> float:
        return turn.now

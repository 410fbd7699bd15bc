"""``timers``: ``sleep`` (an async op) and durable timers (``schedule``/``cancel``).

No host thread waits: a sleep is a trio task started once the turn commits, so it follows
the trio clock (and ``MockClock`` in tests). A scheduled timer is a row committed with the
turn; the host's delivery loop fires it as a ``timer`` event, waking a hibernated agent,
and the turn that handles it deletes (or re-arms) it in the same transaction.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import trio
from pydantic import Field

from ..errors import CapabilityDenied, QuotaExceeded
from ..store.protocol import CatchUp, Delivery
from ._base import BaseGrant, Capability, OpResult, TurnEffects, TurnView, host_call

_NIL = b"\xc0"  # msgpack nil
_CATCH_UP: dict[str, CatchUp] = {"once": "once", "all": "all", "skip": "skip"}
_MAX_ID = 128


class TimersGrant(BaseGrant):
    max_sleep_s: float = Field(24 * 3600.0, gt=0)
    """Longest single sleep."""
    max_timers: int = Field(100, ge=1)
    """Timers one agent may set in one turn."""
    min_every_s: float = Field(1.0, gt=0)
    """Shortest repeat period."""


@dataclass(slots=True)
class TimersTurn:
    """The timers a turn set and cancelled."""

    scheduled: dict[str, Delivery] = field(default_factory=dict)
    """By timer id."""
    cancelled: set[str] = field(default_factory=set)


class Timers(Capability[TimersTurn]):
    """Sleeps and durable timers."""

    name = "timers"
    Grant = TimersGrant
    grant: TimersGrant

    def begin_turn(self, turn: TurnView) -> TimersTurn:
        return TimersTurn()

    def add_effects(self, state: TimersTurn, effects: TurnEffects) -> None:
        effects.deliveries.extend(state.scheduled.values())
        effects.cancelled.extend(sorted(state.cancelled))

    @host_call("sleep")
    def sleep(self, turn: TurnView, seconds: float) -> int:
        if not math.isfinite(seconds) or seconds < 0:
            raise CapabilityDenied(
                f"timers.sleep needs a finite, non-negative delay, got {seconds}"
            )
        if seconds > self.grant.max_sleep_s:
            raise CapabilityDenied(
                f"timers.sleep({seconds}) exceeds the timers grant max_sleep_s = "
                f"{self.grant.max_sleep_s}"
            )

        async def run() -> OpResult:
            await trio.sleep(seconds)
            return OpResult(_NIL)

        return turn.start_op(self.name, run)

    @host_call("schedule", ok_is_text=True)
    def schedule(self, turn: TurnView, record: Any) -> str:
        spec = _TimerSpec.of(record)
        if (spec.after_s is None) == (spec.at is None):
            raise CapabilityDenied("timers.schedule needs exactly one of `after` and `at`")
        due_at = spec.at if spec.at is not None else turn.now + (spec.after_s or 0.0)
        if not math.isfinite(due_at):
            raise CapabilityDenied(f"timers.schedule: invalid time {due_at}")
        every = spec.every_s
        if every is not None and (not math.isfinite(every) or every < self.grant.min_every_s):
            raise CapabilityDenied(
                f"timers.schedule: every={every} is below the timers grant min_every_s = "
                f"{self.grant.min_every_s}"
            )
        catch_up = _CATCH_UP.get(spec.catch_up)
        if catch_up is None:
            raise CapabilityDenied(
                f"timers.schedule: catch_up must be one of {', '.join(_CATCH_UP)}, "
                f"not {spec.catch_up!r}"
            )
        state = self.state(turn)
        timer_id = spec.id or f"t-{uuid.uuid4().hex[:16]}"
        if not 0 < len(timer_id) <= _MAX_ID:
            raise CapabilityDenied(f"timer ids are 1-{_MAX_ID} characters")
        if timer_id not in state.scheduled and len(state.scheduled) >= self.grant.max_timers:
            raise QuotaExceeded(
                f"more than {self.grant.max_timers} timers in one turn (timers grant max_timers)"
            )
        state.cancelled.discard(timer_id)
        state.scheduled[timer_id] = Delivery(
            address=turn.address,
            delivery_id=timer_id,
            due_at=due_at,
            event_kind="timer",
            payload=bytes(spec.payload),
            every_s=every,
            catch_up=catch_up,
        )
        return timer_id

    @host_call("cancel", fallback=False)
    def cancel(self, turn: TurnView, timer_id: str) -> bool:
        state = self.state(turn)
        dropped = state.scheduled.pop(timer_id, None) is not None
        state.cancelled.add(timer_id)
        return dropped or timer_id in {
            d.delivery_id for d in turn.reads.read_deliveries(turn.address)
        }


@dataclass(frozen=True)
class _TimerSpec:
    """The WIT ``timer-spec`` record (its fields arrive under their WIT names)."""

    id: str | None
    after_s: float | None
    at: float | None
    every_s: float | None
    catch_up: str
    payload: bytes

    @classmethod
    def of(cls, record: Any) -> _TimerSpec:
        return cls(
            id=record.id,
            after_s=getattr(record, "after-s"),
            at=record.at,
            every_s=getattr(record, "every-s"),
            catch_up=str(getattr(record, "catch-up")),
            payload=bytes(record.payload),
        )

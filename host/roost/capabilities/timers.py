"""``timers``: ``sleep`` (an async op) and durable timers (``schedule``/``cancel``).

No host thread waits: a sleep is a trio task, so it follows the trio clock (and
``MockClock`` in tests). A sleep that was running when the host died runs again, whole,
when the handler that awaited it is re-run.

A scheduled timer is a row committed with the turn; the host's delivery loop fires it as a
``timer`` event, waking a hibernated agent, and the handler's final commit deletes (or
re-arms) it in the same transaction, so each occurrence is handled once. A timer that fell
due while the host was down fires once the host is back, late; with ``catch_up="skip"`` a
one-shot more than a second late is dropped instead. A recurring timer catches up on the
occurrences it missed as its ``catch_up`` says: ``once`` fires one and moves on to the next
future one, ``skip`` moves on without firing, ``all`` fires each missed occurrence, but at
most ``max_catch_up`` of them (the grant), skipping the older ones.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import trio
from pydantic import Field

from ..errors import CapabilityDenied, QuotaExceeded
from ..payload import pack, unpack
from ..store.protocol import CatchUp, Delivery
from ._base import (
    BaseGrant,
    Capability,
    OpContext,
    OpResult,
    OpRunner,
    TurnEffects,
    TurnView,
    host_call,
)

_NIL = b"\xc0"  # msgpack nil
_CATCH_UP: dict[str, CatchUp] = {"once": "once", "all": "all", "skip": "skip"}
_MAX_ID = 128


class TimersGrant(BaseGrant):
    max_sleep_s: float = Field(24 * 3600.0, gt=0)
    """Longest single sleep."""
    max_timers: int = Field(100, ge=1)
    """Timers one agent may have pending at once."""
    min_every_s: float = Field(1.0, gt=0)
    """Shortest repeat period."""
    max_catch_up: int = Field(10, ge=1)
    """Most missed occurrences a recurring ``catch_up="all"`` timer fires after an outage."""


@dataclass(slots=True)
class TimersTurn:
    """The timers a handler set and cancelled."""

    scheduled: dict[str, Delivery] = field(default_factory=dict)
    """By timer id."""
    cancelled: set[str] = field(default_factory=set)
    pending: set[str] | None = None
    """The ids of the agent's committed timers, read once when first needed."""


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

        return turn.start_op(self.name, "sleep", pack(seconds))

    def op(self, call: str, request: bytes, context: OpContext) -> OpRunner:
        seconds = float(unpack(request))

        async def run() -> OpResult:
            await trio.sleep(seconds)
            return OpResult(_NIL)

        return run

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
        pending = self._pending(turn, state)
        if timer_id not in pending and len(pending) >= self.grant.max_timers:
            raise QuotaExceeded(
                f"agent {turn.address} has {len(pending)} timers pending; the timers grant "
                f"allows max_timers = {self.grant.max_timers} (cancel one, or reuse an id)"
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
        existed = timer_id in self._pending(turn, state)
        state.scheduled.pop(timer_id, None)
        state.cancelled.add(timer_id)
        return existed

    def _pending(self, turn: TurnView, state: TimersTurn) -> set[str]:
        """The ids of the agent's timers once this handler commits."""
        if state.pending is None:
            state.pending = {
                d.delivery_id
                for d in turn.reads.read_deliveries(turn.address)
                if d.event_kind == "timer"
            }
        return (state.pending - state.cancelled) | set(state.scheduled)


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

"""The context of one running turn, as host calls see it.

A turn runs on a worker thread inside a wasm call; host functions find their turn through a
thread-local binding. Everything a turn does is buffered here (kv writes, ops started) and
only reaches the store when the turn commits. A host-side fault is recorded, not raised into
wasm, and fails the turn after the guest returns.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .address import AgentAddress
from .errors import GuestAbiError, RoostError
from .manifest import Limits
from .store.protocol import StateStore

OpRunner = Callable[[], Awaitable[bytes]]
"""Runs an async op on the trio loop; returns the msgpack payload of its result."""


@dataclass(slots=True)
class StartedOp:
    """An async op the guest started; the actor runs it once the turn commits."""

    op_id: int
    capability: str
    run: OpRunner


@dataclass(slots=True)
class TurnContext:
    """What one turn has read and written so far."""

    address: AgentAddress
    limits: Limits
    store: StateStore
    now: float
    """Wall-clock time at the start of the turn (unix seconds)."""
    kv_bytes: int
    """The agent's kv bytes including this turn's buffered writes."""
    next_op_id: Callable[[], int]
    kv_writes: dict[str, bytes | None] = field(default_factory=dict)
    ops: list[StartedOp] = field(default_factory=list)
    fault: RoostError | None = None

    def fail(self, error: RoostError) -> None:
        """Record a host-side fault; the first one wins and fails the turn."""
        if self.fault is None:
            self.fault = error

    def start_op(self, capability: str, run: OpRunner) -> int:
        op_id = self.next_op_id()
        self.ops.append(StartedOp(op_id, capability, run))
        return op_id


_bound = threading.local()


@contextmanager
def bind_turn(turn: TurnContext) -> Iterator[TurnContext]:
    """Make ``turn`` the current turn of this thread while the guest runs."""
    previous = getattr(_bound, "turn", None)
    _bound.turn = turn
    try:
        yield turn
    finally:
        _bound.turn = previous


def current_turn() -> TurnContext:
    turn: TurnContext | None = getattr(_bound, "turn", None)
    if turn is None:
        raise GuestAbiError("a host function was called outside of a turn")
    return turn

"""The seam between an agent actor and the thing that runs its guest code.

The actor depends on these protocols only; ``roost.runtime`` implements them with wasmtime.
Every method runs on a worker thread (or, for a light factory's event turn, on the event
loop within ``TurnContext.slice_ms``), with the turn bound (``roost.turn.bind_turn``), and
one sandbox is only ever used by one thread at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..core.turn import TurnContext
from ..manifest import Limits


@dataclass(frozen=True, slots=True)
class GuestReply:
    event_id: int
    payload: bytes
    """msgpack"""


@dataclass(frozen=True, slots=True)
class TurnOutput:
    """What the guest handed back at the end of a turn."""

    replies: list[GuestReply]
    done: list[int]
    """Events whose handling finished in this turn."""
    state: bytes | None
    """New state (msgpack map), or None when unchanged."""


class TurnSliceExceeded(Exception):
    """A turn on the event loop ran past ``TurnContext.slice_ms``. The instance is gone and
    nothing of the turn counts: run it again, from the committed state, on a worker thread."""


class Sandbox(Protocol):
    """One live guest instance."""

    def init(self, turn: TurnContext, config: bytes, state: bytes | None) -> None: ...

    def on_event(
        self, turn: TurnContext, event_id: int, kind: str, payload: bytes
    ) -> TurnOutput: ...

    def on_complete(
        self, turn: TurnContext, op_id: int, ok: bool, value: bytes | str
    ) -> TurnOutput: ...

    def close(self) -> None:
        """Drop the instance and free its memory."""
        ...


class SandboxFactory(Protocol):
    """Makes instances of one deployed kind."""

    light: bool
    """Instances are small and turns take microseconds (native guests): worth running on
    the event loop, within a slice, instead of paying a worker-thread trip."""

    def instantiate(self, limits: Limits) -> Sandbox: ...

"""The seam between the core and the thing that runs guest code.

The core depends on these protocols only; :mod:`roost.sandbox` implements them with
wasmtime. Every method runs on a worker thread (or, for a light factory's event turn, on
the event loop within ``slice_ms``), with the turn bound for host calls by the caller
(``roost.capabilities.bound_turn``); one sandbox is only ever used by one thread at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..limits import Limits


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
    """A call on the event loop ran past its ``slice_ms``. The instance is gone and nothing
    of the turn counts: run it again, from the committed state, on a worker thread."""


class Sandbox(Protocol):
    """One live guest instance. ``slice_ms``, when given, stops a call (with
    :class:`TurnSliceExceeded`) once it has run that long, short of the CPU deadline."""

    def init(self, config: bytes, state: bytes | None, *, slice_ms: int | None = None) -> None:
        """The guest's ``init``: the kind's config and the last committed state."""
        ...

    def on_event(
        self, event_id: int, kind: str, payload: bytes, *, slice_ms: int | None = None
    ) -> TurnOutput: ...

    def on_complete(
        self, op_id: int, ok: bool, value: bytes | str, *, slice_ms: int | None = None
    ) -> TurnOutput: ...

    def close(self) -> None:
        """Drop the instance and free its memory."""
        ...


class SandboxFactory(Protocol):
    """Makes instances of one deployed kind."""

    light: bool
    """Instances are small and turns take microseconds (native guests): worth running on
    the event loop, within a slice, instead of paying a worker-thread trip. False from the
    first instantiation that outran its slice on (its start functions are not light)."""

    def instantiate(self, limits: Limits, *, slice_ms: int | None = None) -> Sandbox:
        """A new instance (its start functions run here, under ``slice_ms`` if given)."""
        ...

"""What the core's parts are handed: one typed, frozen set of services.

Actors, turns, the registry and the delivery loop get a :class:`CoreServices` from the
host facade when it opens; none of them reaches up to the facade.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from ..address import AgentAddress
from ..store.async_store import AsyncStore
from ..store.protocol import StateStore
from ..telemetry import HostMetrics, Telemetry
from ..wall_clock import WallClock

if TYPE_CHECKING:
    from .leases import LeaseKeeper

T = TypeVar("T")


class Peers(Protocol):
    """The other hosts sharing the store: an event for an agent another host owns is
    handed to that host (``owner_url``), and its replies and tokens come back as they are
    produced."""

    async def deliver(
        self,
        owner_url: str,
        address: AgentAddress,
        event_kind: str,
        payload: bytes,
        *,
        idempotency_key: str | None,
        chain: tuple[str, ...],
        on_reply: Callable[[Any], None] | None,
        on_token: Callable[[str], None] | None,
    ) -> list[Any]:
        """Deliver the event on the owner and return its replies (raising its error)."""
        ...


class Workers(Protocol):
    """Where turns run: off the event loop, so it stays responsive."""

    async def run(self, call: Callable[[], T]) -> T:
        """Run ``call`` and return its result."""
        ...


class WorkerPool:
    """The threads that run guest code (implements :class:`Workers`)."""

    def __init__(self, threads: int) -> None:
        self._limiter = trio.CapacityLimiter(threads)

    async def run(self, call: Callable[[], T]) -> T:
        """Run ``call`` on a worker thread once one is free."""
        return await trio.to_thread.run_sync(call, limiter=self._limiter)


class Doorbell:
    """Rung when something may have become due (a commit added deliveries, a kind was
    deployed); the delivery loop waits on it between looks at the store."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def ring(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def rearm(self) -> None:
        """Forget earlier rings: call before looking, so a ring while looking counts."""
        if self._event.is_set():
            self._event = trio.Event()


@dataclass
class CoreCounters:
    """Counts since the host opened."""

    activations: int = 0
    """Instances created (first events and wakes from hibernation)."""
    hibernations: int = 0
    """Instances dropped after idling or eviction."""
    turns: int = 0
    """Turns committed."""


@dataclass(frozen=True, slots=True)
class CoreServices:
    """Everything below the facade shares."""

    store: StateStore
    stores: AsyncStore
    """The same store, for the event loop."""
    clock: WallClock
    telemetry: Telemetry
    metrics: HostMetrics
    workers: Workers
    counters: CoreCounters
    deliveries_due: Doorbell
    epoch_tick_ms: int
    """Granularity of CPU deadlines (for trace attributes)."""
    inline_slice_ms: int
    """How long a light kind's event turn may run on the event loop (0: never)."""
    leases: LeaseKeeper
    """The agents' leases this host holds (every commit names its token)."""
    peers: Peers | None = None
    """The other hosts, when the store is shared and events may be forwarded."""
    recheck_s: float = 60.0
    """How often the delivery loop and the continuations look at the store unprompted
    (sooner on a shared store, where other hosts add work no doorbell here announces)."""

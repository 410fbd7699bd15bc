"""What the core's parts are handed: one typed, frozen set of services.

Actors, turns, the registry and the delivery loop get a :class:`CoreServices` from the
host facade when it opens; none of them reaches up to the facade.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from ..address import AgentAddress
from ..store.async_store import AsyncStore
from ..store.protocol import StateStore
from ..telemetry import HostMetrics, Telemetry
from ..wall_clock import WallClock
from .admission import QueueDelays
from .background_threads import BackgroundThreads

if TYPE_CHECKING:
    from .leases import LeaseKeeper

T = TypeVar("T")

DEFAULT_LONG_CALL_S = 0.25
"""A call on a worker thread this long is a long one (see :class:`WorkerPool`)."""
DEFAULT_BACKGROUND_CALL_S = 0.05
"""A kind whose calls lately took this much CPU time runs them at background priority."""
DEFAULT_SHARE_WINDOW_S = 1.0
"""Over how long the worker threads' CPU time is shared out between kinds (see
:class:`WorkerPool`)."""
_BUSY_CORE_SHARE = 0.1
"""The share of a core the turns of a window must take for the kinds to be weighed at all:
under it, they hardly compete."""
_OVER_EVEN_SHARE = 1.5
"""How many times an even share of a busy window's CPU time makes a kind's share too much."""
DEFAULT_LONG_MEMORY_S = 10.0
"""How long a kind that ran a long call holds at most one worker thread."""


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
    """Where turns run: off the event loop, so it stays responsive. ``owner`` (the kind)
    is what fairness is counted by."""

    async def run(self, call: Callable[[], T], *, owner: str, background: bool = False) -> T:
        """Run ``call`` and return its result; ``background`` work (waking an agent) may
        yield the CPU to other work."""
        ...

    @property
    def running(self) -> int:
        """Calls running now."""
        ...

    def dispose(self, close: Callable[[], None]) -> None:
        """Run ``close`` (freeing an instance: its memory is the guest's to size) off the
        event loop, not waiting for it."""
        ...


class WorkerPool:
    """The threads that run guest code, shared fairly between kinds (implements
    :class:`Workers`).

    A free thread goes to the kind with waiting turns that holds the fewest threads (the
    longest-waiting turn first among equals), and no kind ever holds every thread: one is
    kept for the others, so one kind's runaway turns cannot take every thread from them.
    An agent runs one turn at a time, so it holds at most one thread.

    A kind holds more than one thread only once a call of it has ended in under
    ``long_call_s``, and not while one runs that long, nor for ``long_memory_s`` after one
    did: the turns of a kind that runs long (or has yet to show it does not), each a
    thread's time for up to its CPU deadline, wait for its one thread instead of taking
    the others' (and, on a small machine, the core the event loop shares with them). The
    calls of such a kind, or of one whose calls took ``background_call_s`` of CPU lately, run on a
    background thread, at a lower CPU priority (:class:`BackgroundThreads`), when the pool
    has them, and so do calls that wake an agent (instantiating it is the heaviest work a
    turn does): under contention, the event loop and the quick turns of agents already
    awake go first.

    So do the calls of a kind that takes more than its share of the CPU: every
    ``share_window_s`` the CPU time of the calls that ended is shared out between the kinds
    that made them, and when they took a tenth of a core or more, a kind that took over 1.5
    times an even share runs in the background through the next window (beside the wakes:
    its calls are quick, and wait behind no long ones). Many quick turns weigh like a few
    long ones: a kind whose turns are cheap but many cannot double the latency of the
    kinds beside it."""

    def __init__(
        self,
        threads: int,
        *,
        long_call_s: float = DEFAULT_LONG_CALL_S,
        long_memory_s: float = DEFAULT_LONG_MEMORY_S,
        background: BackgroundThreads | None = None,
        background_call_s: float = DEFAULT_BACKGROUND_CALL_S,
        share_window_s: float = DEFAULT_SHARE_WINDOW_S,
    ) -> None:
        self._threads = threads
        self._background = background
        self._background_call_s = background_call_s
        self._share_window_s = share_window_s
        self._window_started = time.perf_counter()
        self._window_cpu: dict[str, float] = {}
        """CPU time of the calls that ended in the current window, by kind."""
        self._over_share: frozenset[str] = frozenset()
        """Kinds that took more than their share of the last busy window's CPU time."""
        self._heavy_until: dict[str, float] = {}
        """Kinds that ran a call of ``background_call_s`` of CPU time lately: until when
        their calls run at background priority."""
        self._long_call_s = long_call_s
        self._long_memory_s = long_memory_s
        self._long_until: dict[str, float] = {}
        """Kinds that ran a long call lately: until when they hold at most one thread."""
        self._short: set[str] = set()
        """Kinds whose last call that ended did so in under ``long_call_s``."""
        self._started: dict[str, dict[int, float]] = {}
        """When each running call started, by kind."""
        self._limiter = trio.CapacityLimiter(threads)
        self._free = threads
        self._held: dict[str, int] = {}
        self._waiting: dict[str, deque[_Waiter]] = {}
        self._order = itertools.count()

    @property
    def running(self) -> int:
        return self._threads - self._free

    def holding(self) -> dict[str, int]:
        """Threads held now, by kind."""
        return {owner: n for owner, n in self._held.items() if n}

    async def run(self, call: Callable[[], T], *, owner: str, background: bool = False) -> T:
        await self._acquire(owner)
        token = next(self._order)
        started = self._started.setdefault(owner, {})
        started[token] = time.perf_counter()
        cpu_s = 0.0

        def timed() -> T:
            nonlocal cpu_s
            began = time.thread_time()
            try:
                return call()
            finally:
                cpu_s = time.thread_time() - began

        try:
            heavy = self._runs_heavy(owner)
            lowered = background or heavy or owner in self._over_share
            if self._background is not None and lowered:
                return await self._background.run(timed, heavy=heavy)
            return await trio.to_thread.run_sync(timed, limiter=self._limiter)
        finally:
            now = time.perf_counter()
            took = now - started.pop(token)
            if cpu_s >= self._background_call_s:  # CPU, not wall time: a busy core is no sign
                self._heavy_until[owner] = now + self._long_memory_s
            self._count_cpu(owner, cpu_s, now)
            if took >= self._long_call_s:
                self._long_until[owner] = now + self._long_memory_s
                self._short.discard(owner)
            else:
                self._short.add(owner)
            self._release(owner)

    def dispose(self, close: Callable[[], None]) -> None:
        if self._background is None:
            close()
        else:
            self._background.run_soon(close)

    def close(self) -> None:
        """Let the background threads go (once no call runs)."""
        if self._background is not None:
            self._background.close()

    def _may_take(self, owner: str) -> bool:
        """Whether ``owner`` may take a thread now: one is free, it is not the last one
        while ``owner`` holds all the others, and ``owner`` holds none if it runs long."""
        held = self._held.get(owner, 0)
        return self._free > 0 and (
            self._threads == 1
            or held == 0
            or (held < self._threads - 1 and not self._runs_long(owner))
        )

    def _runs_heavy(self, owner: str) -> bool:
        """Whether ``owner``'s calls run in the heavy lane: it runs long, or a call of it took
        ``background_call_s`` lately."""
        return self._heavy_until.get(owner, 0.0) > time.perf_counter() or self._runs_long(owner)

    def _count_cpu(self, owner: str, cpu_s: float, now: float) -> None:
        """Add a call's CPU time to its kind's in this window; when the window ends, weigh
        the kinds' shares of it (see the class docstring)."""
        spent = self._window_cpu
        spent[owner] = spent.get(owner, 0.0) + cpu_s
        took = now - self._window_started
        if took < self._share_window_s:
            return
        total = sum(spent.values())
        if total < _BUSY_CORE_SHARE * took:
            self._over_share = frozenset()
        else:
            too_much = _OVER_EVEN_SHARE * total / len(spent)  # one kind alone: never
            self._over_share = frozenset(kind for kind, cpu in spent.items() if cpu > too_much)
        self._window_cpu = {}
        self._window_started = now

    def _runs_long(self, owner: str) -> bool:
        if owner not in self._short:
            return True
        now = time.perf_counter()
        if self._long_until.get(owner, 0.0) > now:
            return True
        started = self._started.get(owner)
        return started is not None and any(now - at >= self._long_call_s for at in started.values())

    async def _acquire(self, owner: str) -> None:
        if not self._waiting.get(owner) and self._may_take(owner):
            self._take(owner)
            await trio.lowlevel.checkpoint()
            return
        waiter = _Waiter(next(self._order))
        self._waiting.setdefault(owner, deque()).append(waiter)
        try:
            await waiter.granted.wait()
        except BaseException:
            if waiter.granted.is_set():  # granted as it was cancelled: give it back
                self._release(owner)
            else:
                self._waiting[owner].remove(waiter)
            raise

    def _take(self, owner: str) -> None:
        self._free -= 1
        self._held[owner] = self._held.get(owner, 0) + 1

    def _release(self, owner: str) -> None:
        self._held[owner] -= 1
        self._free += 1
        self._grant()

    def _grant(self) -> None:
        """Hand free threads to waiting turns: the kind holding the fewest first."""
        while self._free:
            candidates = [
                (self._held.get(owner, 0), queue[0].order, owner)
                for owner, queue in self._waiting.items()
                if queue and self._may_take(owner)
            ]
            if not candidates:
                return
            _, _, owner = min(candidates)
            waiter = self._waiting[owner].popleft()
            self._take(owner)
            waiter.granted.set()


class _Waiter:
    __slots__ = ("granted", "order")

    def __init__(self, order: int) -> None:
        self.order = order
        self.granted = trio.Event()


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
    """Counts since the host opened, and one count of now (``waiting_on_ops``)."""

    activations: int = 0
    """Instances created (first events and wakes from hibernation)."""
    hibernations: int = 0
    """Instances dropped after idling or eviction."""
    turns: int = 0
    """Turns committed."""
    events_handled: int = 0
    """Events delivered to agents (messages, asks, forwarded events) and answered, with
    their replies or an error."""
    waiting_on_ops: int = 0
    """Handlers waiting on their async ops right now (an LLM call, an ask, a sleep...):
    events in flight that take no CPU until an op completes."""


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
    queue_delay: QueueDelays
    """Admission by queueing delay: each event's first turn reports how long it waited."""
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

"""Admission: refusing early and cheaply the work the host cannot take.

:class:`QueueDelay` sheds load by queueing delay, after CoDel (Nichols and Jacobson,
"Controlling Queue Delay", 2012): what matters is not how many events wait but how long
they wait. Each event reports its *sojourn*, the time from its admission to the start of its
handler's first turn on a worker (the wait in the agent's mailbox and for a thread). When
even the shortest sojourn of an interval is above the target, the queue is standing, not a
burst: new events are refused until an interval's shortest sojourn is back under the
target (or no event started in an interval: the queue is empty). Refusing at admission,
before any work is spent on an event, keeps a rejection cheap.

:class:`ActivationRate` is a token bucket per kind: new instances per second.
:class:`MemoryGauge` reads the process's resident memory, at most every few milliseconds.
"""

from __future__ import annotations

import math
import os
import time


class QueueDelay:
    """Admission by queueing delay (see the module docstring). Times are ``perf_counter``
    seconds; used from the trio thread."""

    def __init__(self, *, target_s: float, interval_s: float) -> None:
        self.target_s = target_s
        self.interval_s = interval_s
        self._window_started = time.perf_counter()
        self._window_min = math.inf
        self._overloaded = False
        self.refused = 0

    def observe(self, sojourn_s: float) -> None:
        """An event's handler started ``sojourn_s`` after the event was admitted."""
        if sojourn_s < self._window_min:
            self._window_min = sojourn_s
        self._roll(time.perf_counter())

    def admit(self) -> bool:
        """Whether a new event may be admitted now."""
        self._roll(time.perf_counter())
        if self._overloaded:
            self.refused += 1
        return not self._overloaded

    @property
    def overloaded(self) -> bool:
        return self._overloaded

    def _roll(self, now: float) -> None:
        if now - self._window_started < self.interval_s:
            return
        # An interval with no event starting means nothing waits: not overloaded.
        self._overloaded = self._window_min > self.target_s and math.isfinite(self._window_min)
        self._window_started = now
        self._window_min = math.inf


class ActivationRate:
    """New instances per kind per second: a token bucket holding one second's worth."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, kind: str) -> float:
        """Take a token for a new instance of ``kind``: 0 if there was one, else how long
        until there is."""
        now = time.monotonic()
        tokens, last = self._buckets.get(kind, (self.per_s, now))
        tokens = min(self.per_s, tokens + (now - last) * self.per_s)
        if tokens >= 1:
            self._buckets[kind] = (tokens - 1, now)
            return 0.0
        self._buckets[kind] = (tokens, now)
        return (1 - tokens) / self.per_s


class MemoryGauge:
    """The process's resident memory in bytes, read at most every ``every_s`` seconds."""

    def __init__(self, *, every_s: float = 0.05) -> None:
        self._every_s = every_s
        self._read_at = -math.inf
        self._bytes = 0
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def resident_bytes(self) -> int:
        now = time.monotonic()
        if now - self._read_at >= self._every_s:
            self._read_at = now
            self._bytes = self._read()
        return self._bytes

    def _read(self) -> int:
        try:
            with open("/proc/self/statm", encoding="ascii") as statm:
                return int(statm.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def machine_memory_bytes() -> int:
    """The machine's physical memory (0 when it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0

"""Admission: refusing early and cheaply the work the host cannot take.

:class:`QueueDelay` sheds load by queueing delay: what matters is not how many events
wait but how long they wait. Each event reports its *sojourn*, the time from its admission
to the start of its handler's first turn on a worker (the wait in the agent's mailbox and
for a thread). A controller after PIE (RFC 8033, "Proportional Integral controller
Enhanced") turns the delay into a probability of refusing each new event: every update
interval it moves the probability up in proportion to how far the delay is over the target
and how fast it grows, and down as the delay falls under it. A burst passes: after a quiet
spell nothing is refused for the first 150 ms of long waits (RFC 8033's burst allowance);
a standing queue is shed smoothly, with the
workers kept busy: refusing every event for a while, then none, would leave them idle in
between and halve the goodput. Refusing at admission, before any work is spent on an event,
keeps a rejection cheap.

:class:`QueueDelays` keeps one controller per kind.
:class:`ActivationRate` is a token bucket per kind: new instances per second.
:class:`MemoryGauge` reads the process's resident memory, at most every few milliseconds.
"""

from __future__ import annotations

import math
import os
import random
import time


class QueueDelay:
    """Admission by queueing delay (see the module docstring). Times are ``perf_counter``
    seconds; used from the trio thread."""

    _ALPHA = 0.125
    """Probability per second of delay over the target, per update (RFC 8033's alpha)."""
    _BETA = 1.25
    """Probability per second of delay growth, per update (RFC 8033's beta)."""

    def __init__(self, *, target_s: float, interval_s: float, seed: int | None = None) -> None:
        self.target_s = target_s
        self.interval_s = interval_s
        self.probability = 0.0
        """The chance that a new event is refused now."""
        self.refused = 0
        self._window_started = time.perf_counter()
        self._window_sum = 0.0
        self._window_count = 0
        self._delay = 0.0
        self._burst_allowance_s = _MAX_BURST_S
        self._random = random.Random(seed).random

    def observe(self, sojourn_s: float) -> None:
        """An event's handler started ``sojourn_s`` after the event was admitted."""
        self._window_sum += sojourn_s
        self._window_count += 1
        self._roll(time.perf_counter())

    def admit(self) -> bool:
        """Whether a new event may be admitted now."""
        self._roll(time.perf_counter())
        if self._burst_allowance_s > 0:
            return True
        if self.probability and self._random() < self.probability:
            self.refused += 1
            return False
        return True

    @property
    def overloaded(self) -> bool:
        """Whether new events are being refused (some share of them)."""
        return self.probability > 0 and self._burst_allowance_s == 0

    @property
    def delay_s(self) -> float:
        """The queueing delay the controller last saw (the mean sojourn of an interval)."""
        return self._delay

    def _roll(self, now: float) -> None:
        elapsed = now - self._window_started
        if elapsed < self.interval_s:
            return
        # No event started in the interval: nothing waits (or the workers are all held by
        # long turns, which the worker pool bounds on its own): the delay is taken as zero.
        delay = self._window_sum / self._window_count if self._window_count else 0.0
        updates = min(elapsed / self.interval_s, 10.0)  # a quiet spell counts, boundedly
        change = (
            self._ALPHA * (delay - self.target_s) + self._BETA * (delay - self._delay)
        ) * _scale(self.probability)
        probability = self.probability + change * min(updates, 1.0)
        if delay < self.target_s / 2 and self._delay < self.target_s / 2:
            # Well under the target: the queue has cleared; stop refusing within a few
            # hundred milliseconds rather than at alpha's pace (RFC 8033, 4.2 decays
            # only when idle, and slowly).
            probability *= _CLEARED_DECAY**updates
        self.probability = min(max(probability, 0.0), 1.0)
        if self.probability < 1e-4 and delay < self.target_s:
            self.probability = 0.0
        if self.probability == 0 and delay < self.target_s / 2 and self._delay < self.target_s / 2:
            self._burst_allowance_s = _MAX_BURST_S
        else:
            self._burst_allowance_s = max(0.0, self._burst_allowance_s - elapsed)
        self._delay = delay
        self._window_started = now
        self._window_sum = 0.0
        self._window_count = 0


_MAX_BURST_S = 0.15
"""Long waits let through after a quiet spell before any event is refused (RFC 8033's
MAX_BURST)."""
_CLEARED_DECAY = 0.9
"""Per update, while the delay stays under half the target."""


def _scale(probability: float) -> float:
    """Smaller steps while the probability is small (RFC 8033, 5.2): a light load is not
    shed in large bites."""
    if probability < 0.001:
        return 1 / 32
    if probability < 0.01:
        return 1 / 8
    if probability < 0.1:
        return 1 / 2
    return 1.0


class QueueDelays:
    """One :class:`QueueDelay` per kind: a kind whose events queue is shed, not the
    kinds beside it whose events start promptly."""

    def __init__(self, *, target_s: float, interval_s: float) -> None:
        self.target_s = target_s
        self.interval_s = interval_s
        self._kinds: dict[str, QueueDelay] = {}

    def of(self, kind: str) -> QueueDelay:
        queue = self._kinds.get(kind)
        if queue is None:
            queue = self._kinds[kind] = QueueDelay(
                target_s=self.target_s, interval_s=self.interval_s
            )
        return queue

    def observe(self, kind: str, sojourn_s: float) -> None:
        self.of(kind).observe(sojourn_s)

    def admit(self, kind: str) -> bool:
        queue = self._kinds.get(kind)  # a kind with no event started yet has no queue
        return queue is None or queue.admit()

    @property
    def refused(self) -> int:
        return sum(queue.refused for queue in self._kinds.values())


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

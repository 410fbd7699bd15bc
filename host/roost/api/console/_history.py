"""The host's statistics over the last minutes: a ring of samples taken every few seconds,
and the per-second rates and latency percentiles between consecutive samples.

Counters in :class:`~roost.HostStatistics` only grow, so a chart point is the difference
between two samples divided by the time between them; latency percentiles come from the
difference of two histogram snapshots (the turns and wakes of that interval only).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import trio

from ...host import Host
from ...telemetry import DURATION_BOUNDS_S, HistogramSnapshot, HostStatistics

logger = logging.getLogger("roost.console")

SAMPLE_INTERVAL_S = 2.0
"""How often the console samples the host's statistics."""
HISTORY_SAMPLES = 300
"""Samples kept: ten minutes at the interval above."""


@dataclass(frozen=True, slots=True)
class Sample:
    """The host's statistics at one moment, reduced to what the charts need."""

    at: float
    """Unix time."""
    resident: int
    hibernated: int
    in_flight: int
    activations: int
    turns: int
    rejected: int
    traps: int
    llm_input_tokens: int
    llm_output_tokens: int
    wake: tuple[int, ...]
    """Wake latency bucket counts, all kinds together (bounds: ``DURATION_BOUNDS_S``)."""
    turn: tuple[int, ...]
    gc_pauses: int
    gc_pause_s: float


def sample_of(statistics: HostStatistics, at: float) -> Sample:
    tokens = statistics.llm_tokens
    gc = statistics.gc_pause_seconds.values()
    return Sample(
        at=at,
        resident=statistics.resident,
        hibernated=statistics.hibernated,
        in_flight=statistics.in_flight,
        activations=statistics.activations,
        turns=statistics.turns,
        rejected=sum(statistics.rejected.values()),
        traps=sum(statistics.traps.values()),
        llm_input_tokens=sum(n for k, n in tokens.items() if k.endswith("/input")),
        llm_output_tokens=sum(n for k, n in tokens.items() if k.endswith("/output")),
        wake=merged_counts(statistics.wake_seconds.values()),
        turn=merged_counts(statistics.turn_seconds.values()),
        gc_pauses=sum(h.count for h in gc),
        gc_pause_s=sum(h.total for h in statistics.gc_pause_seconds.values()),
    )


def merged_counts(histograms: Iterable[HistogramSnapshot]) -> tuple[int, ...]:
    counts = [0] * (len(DURATION_BOUNDS_S) + 1)
    for histogram in histograms:
        for i, n in enumerate(histogram.counts):
            counts[i] += n
    return tuple(counts)


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (seconds) of a bucketed distribution, interpolated inside its
    bucket; past the last bound, the last bound. None when there are no observations."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(DURATION_BOUNDS_S):
                return DURATION_BOUNDS_S[-1]
            low = DURATION_BOUNDS_S[i - 1] if i else 0.0
            high = DURATION_BOUNDS_S[i]
            return low + (high - low) * (rank - seen) / n
        seen += n
    return DURATION_BOUNDS_S[-1]


@dataclass(frozen=True, slots=True)
class Interval:
    """What happened between two consecutive samples."""

    at: float
    """Unix time of the later sample."""
    activations_per_s: float
    turns_per_s: float
    rejected_per_s: float
    traps_per_s: float
    llm_tokens_per_s: float
    wake_p50_ms: float | None
    wake_p95_ms: float | None
    turn_p50_ms: float | None
    turn_p95_ms: float | None
    gc_pause_ms_per_s: float
    """Milliseconds the collector paused the process, per second."""


def interval(a: Sample, b: Sample) -> Interval:
    seconds = max(b.at - a.at, 1e-9)

    def rate(x: float, y: float) -> float:
        return max(y - x, 0) / seconds

    wake = [max(y - x, 0) for x, y in zip(a.wake, b.wake, strict=True)]
    turn = [max(y - x, 0) for x, y in zip(a.turn, b.turn, strict=True)]
    return Interval(
        at=b.at,
        activations_per_s=rate(a.activations, b.activations),
        turns_per_s=rate(a.turns, b.turns),
        rejected_per_s=rate(a.rejected, b.rejected),
        traps_per_s=rate(a.traps, b.traps),
        llm_tokens_per_s=rate(
            a.llm_input_tokens + a.llm_output_tokens, b.llm_input_tokens + b.llm_output_tokens
        ),
        wake_p50_ms=_ms(quantile(wake, 0.5)),
        wake_p95_ms=_ms(quantile(wake, 0.95)),
        turn_p50_ms=_ms(quantile(turn, 0.5)),
        turn_p95_ms=_ms(quantile(turn, 0.95)),
        gc_pause_ms_per_s=rate(a.gc_pause_s, b.gc_pause_s) * 1000,
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


class StatisticsHistory:
    """A ring of the host's statistics samples (the last :data:`HISTORY_SAMPLES`)."""

    def __init__(
        self,
        host: Host,
        *,
        interval_s: float = SAMPLE_INTERVAL_S,
        size: int = HISTORY_SAMPLES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._host = host
        self.interval_s = interval_s
        self._samples: deque[Sample] = deque(maxlen=size)
        self._clock = clock

    async def take(self) -> tuple[HostStatistics, Sample]:
        """Sample the host now."""
        statistics = await self._host.statistics()
        sample = sample_of(statistics, self._clock())
        self._samples.append(sample)
        return statistics, sample

    async def latest(self) -> HostStatistics:
        """The host's statistics now; also a sample, unless the last one is recent (so a
        console open with no sampler running still draws charts)."""
        if self._samples and self._clock() - self._samples[-1].at < self.interval_s:
            return await self._host.statistics()
        statistics, _ = await self.take()
        return statistics

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def intervals(self) -> list[Interval]:
        samples = self._samples
        return [interval(a, b) for a, b in zip(samples, list(samples)[1:], strict=False)]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample every ``interval_s`` until cancelled."""
        task_status.started()
        while True:
            try:
                await self.take()
            except Exception as exc:  # a failed sample leaves a gap in the charts
                logger.warning("sampling host statistics failed: %s", exc)
            await trio.sleep(self.interval_s)

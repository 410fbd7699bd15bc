"""The console's charts: rates and latency percentiles between statistics samples, and
the SVG they are drawn as."""

from __future__ import annotations

from roost.api.console._charts import Series, line_chart
from roost.api.console._history import Sample, interval, quantile
from roost.telemetry import DURATION_BOUNDS_S

BUCKETS = len(DURATION_BOUNDS_S) + 1


def _counts(**at_bound: int) -> tuple[int, ...]:
    """Bucket counts with ``n`` observations in the bucket of each named bound (``b0_001``
    is the bucket ending at 0.001 s)."""
    counts = [0] * BUCKETS
    for name, n in at_bound.items():
        counts[DURATION_BOUNDS_S.index(float(name[1:].replace("_", ".")))] += n
    return tuple(counts)


def _sample(at: float, turns: int, turn: tuple[int, ...], gc_s: float = 0.0) -> Sample:
    empty = (0,) * BUCKETS
    return Sample(at, 1, 2, 0, turns, turns, 0, 0, 10 * turns, 0, empty, turn, 0, gc_s)


def test_quantiles_interpolate_inside_their_bucket() -> None:
    assert quantile((0,) * BUCKETS, 0.5) is None
    counts = _counts(b0_001=50, b0_01=50)
    assert quantile(counts, 0.5) == DURATION_BOUNDS_S[3]  # the top of the 1 ms bucket
    p95 = quantile(counts, 0.95)
    assert p95 is not None and 0.005 < p95 <= 0.01
    past_the_last = [0] * BUCKETS
    past_the_last[-1] = 3
    assert quantile(past_the_last, 0.99) == DURATION_BOUNDS_S[-1]


def test_an_interval_counts_only_what_happened_between_its_samples() -> None:
    a = _sample(100.0, 10, _counts(b0_1=10), gc_s=0.5)
    b = _sample(102.0, 30, _counts(b0_1=10, b0_001=20), gc_s=0.52)
    step = interval(a, b)
    assert step.turns_per_s == 10.0
    assert step.llm_tokens_per_s == 100.0
    assert step.turn_p95_ms is not None and step.turn_p95_ms <= 1.0  # the old 100 ms turns
    assert round(step.gc_pause_ms_per_s, 6) == 10.0
    assert step.wake_p50_ms is None


def test_a_chart_names_its_lines_and_says_what_it_shows() -> None:
    svg = line_chart(
        "Turn latency",
        "ms",
        [0.0, 2.0, 4.0, 6.0],
        [Series("p50", [1.0, None, 2.0, 3.0]), Series("p95", [None, None, None, None])],
        chart_id="t",
    )
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 1  # a gap splits the line
    assert 'role="img"' in svg and 'aria-labelledby="t-title t-summary"' in svg
    assert "p50: now 3 ms, peak 3 ms" in svg
    assert "p95: now — ms" not in svg and "p95: now —" in svg
    assert "<script" not in line_chart("<script>", "", [], [], chart_id="x")

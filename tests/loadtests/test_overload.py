"""How the overload benchmark (``loadtests/overload.py``) judges recovery: every 250 ms,
the median latency of the next second's requests against 1.5x the baseline's median."""

from __future__ import annotations

import math

from loadtests.overload import _Phase, _recovery_s, _Result, _span_p50s


def _phase(step_latencies_ms: list[list[float]]) -> _Phase:
    """A phase with the given replies' latencies in each 250 ms step."""
    phase = _Phase(started=100.0)
    for index, latencies in enumerate(step_latencies_ms):
        for latency in latencies:
            phase.results.append(_Result(phase.started + index * 0.25 + 0.1, latency / 1000, 200))
    return phase


def test_each_span_is_the_median_of_a_seconds_replies_every_quarter_second() -> None:
    phase = _phase([[30, 30], [4, 4], [4, 5], [5, 5], [4, 4], [4, 4]])
    phase.results.append(_Result(phase.started + 0.1, 0.5, 503))  # refused: not a reply
    # Six quarter seconds: three whole seconds start in them.
    assert [round(p * 1000, 1) for p in _span_p50s(phase, 1.5)] == [5.0, 4.0, 4.0]
    assert all(math.isnan(p) for p in _span_p50s(_phase([[], [], [], []]), 1.0))


def test_recovery_is_the_first_span_after_which_the_median_stays_back() -> None:
    within = 0.006
    assert _recovery_s([0.030, 0.012, 0.005, 0.004, 0.005], within) == 0.5
    assert _recovery_s([0.004, 0.004, 0.005], within) == 0.0
    # Back, then over again: only the last stretch counts.
    assert _recovery_s([0.030, 0.004, 0.009, 0.004, 0.004], within) == 0.75
    assert _recovery_s([0.004, 0.004, 0.009], within) == math.inf
    # A span without replies neither breaks nor makes a recovery.
    assert _recovery_s([0.030, math.nan, 0.004], within) == 0.5


def test_a_hiccup_of_a_tenth_of_a_second_is_not_a_relapse_a_slow_second_is() -> None:
    steady = [[4.0] * 20 for _ in range(8)]
    hiccup = [step[:] for step in steady]
    hiccup[5] = [40.0] * 8 + [4.0] * 12  # 100 ms of a quarter second stalled
    slow = [step[:] for step in steady]
    for step in (4, 5, 6):  # three quarters of a second slow
        slow[step] = [40.0] * 20
    assert _recovery_s(_span_p50s(_phase(hiccup), 2.0), 0.006) == 0.0
    assert _recovery_s(_span_p50s(_phase(slow), 2.0), 0.006) == math.inf

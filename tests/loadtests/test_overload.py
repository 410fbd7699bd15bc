"""How the overload benchmark (``loadtests/overload.py``) judges recovery: per 250 ms
window of the recovery phase, the median latency against the baseline phase's."""

from __future__ import annotations

import math

from loadtests.overload import _back_to_baseline_s, _Phase, _recovery_s, _Result


def _phase(window_p50s_ms: list[float]) -> _Phase:
    """A phase whose every 250 ms window holds three replies, its median the one given."""
    phase = _Phase(started=100.0)
    for index, p50 in enumerate(window_p50s_ms):
        for latency in (p50 * 0.5, p50, p50 * 2):
            scheduled = phase.started + index * 0.25 + 0.1
            phase.results.append(_Result(scheduled, latency / 1000, 200))
    return phase


def test_recovery_is_the_first_window_after_which_the_median_stays_back() -> None:
    within = 0.006
    assert _recovery_s([0.030, 0.012, 0.005, 0.004, 0.005], within) == 0.5
    assert _recovery_s([0.004, 0.004, 0.005], within) == 0.0
    # Back, then over again: only the last stretch counts.
    assert _recovery_s([0.030, 0.004, 0.009, 0.004, 0.004], within) == 0.75
    assert _recovery_s([0.004, 0.004, 0.009], within) == math.inf
    # A window without replies neither breaks nor makes a recovery.
    assert _recovery_s([0.030, math.nan, 0.004], within) == 0.5


def test_back_to_baseline_is_the_baselines_own_worst_window_when_over_one_and_a_half() -> None:
    steady = _phase([4.0, 4.0, 4.0, 4.0])
    assert abs(_back_to_baseline_s(steady) - 0.006) < 1e-9  # 1.5x its 4 ms median
    # A baseline with a 10 ms window (a collection, the machine's other work): a recovery
    # window as slow as that is as back as the baseline ever was.
    noisy = _phase([4.0, 4.0, 10.0, 4.0, 4.0])
    assert abs(_back_to_baseline_s(noisy) - 0.010) < 1e-9
    assert _recovery_s([0.020, 0.004, 0.010, 0.004], _back_to_baseline_s(noisy)) == 0.25
    assert _recovery_s([0.020, 0.004, 0.011, 0.004], _back_to_baseline_s(noisy)) == 0.75

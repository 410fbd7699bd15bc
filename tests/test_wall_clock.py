"""The UTC day of a unix time, the unit of daily budgets (formatted once per day)."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from roost.wall_clock import utc_day


@given(st.lists(st.floats(min_value=-1e9, max_value=4e9), min_size=1, max_size=20))
def test_utc_day_is_the_formatted_day_whatever_came_before(times: list[float]) -> None:
    for unix_time in times:
        assert utc_day(unix_time) == time.strftime("%Y-%m-%d", time.gmtime(unix_time))


def test_days_turn_at_midnight_utc() -> None:
    assert [utc_day(t) for t in (86_399.999, 86_400.0, -0.001)] == [
        "1970-01-01",
        "1970-01-02",
        "1969-12-31",
    ]

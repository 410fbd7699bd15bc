"""Wall-clock time that follows trio's clock.

Timers are stored as unix times, and a turn sees ``ctx.now()`` in unix time. The host reads
both from one :class:`WallClock`: the wall time when the host opened plus the trio time
elapsed since, so a test's ``MockClock`` moves timers and ``ctx.now()`` together.
"""

from __future__ import annotations

import time

import trio


class WallClock:
    def __init__(self) -> None:
        self._wall_base = time.time()
        self._trio_base = trio.current_time()

    def now(self) -> float:
        """Unix time."""
        return self._wall_base + (trio.current_time() - self._trio_base)

    def trio_time(self, unix_time: float) -> float:
        """The trio clock reading at which ``unix_time`` arrives."""
        return self._trio_base + (unix_time - self._wall_base)


def utc_day(unix_time: float) -> str:
    """The UTC day of ``unix_time`` (``YYYY-MM-DD``), the unit of daily budgets."""
    global _last_day
    number = int(unix_time // _SECONDS_PER_DAY)
    if _last_day[0] != number:  # formatted once a day, not once a turn
        _last_day = (number, time.strftime("%Y-%m-%d", time.gmtime(unix_time)))
    return _last_day[1]


_SECONDS_PER_DAY = 86_400
_last_day: tuple[int, str] = (-1, "")

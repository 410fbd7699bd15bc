"""The host's answer to the proxy's agent check: how many requests to send it at once.

HAProxy gives each host at most ``maxconn`` requests at once and queues the rest
(``roost.cluster``): that is how overload is shed in front of the hosts, cheaply. HAProxy's
agent check (a TCP connection to ``ROOST_PROXY_AGENT_PORT``, one line back) lets each host
say, every 250 ms, ``maxconn:N``, the sum of two figures:

- :class:`WorkSlots`, the requests doing work: as many as the host can start within half
  its queueing target (``queue_target_ms``) at the CPU time an event has been taking it,
  at most ``proxy_slots``. More would only wait in the host, which then refuses them itself,
  at a higher cost than the proxy's queue; the host's own admission is left for what the
  proxy cannot see (events between agents, other proxies).
- one for every handler now waiting on its async ops: a request whose handler waits on an
  LLM call holds a slot for seconds while costing the host nothing, so a fixed number would
  cap a host of chat agents far below what it can serve.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import trio

from ..host import Host

_MIN_EVENTS = 16
"""Events a CPU sample needs: fewer say more about the timers and hibernations beside."""
_STALE_S = 2.0
"""A sample window older than this with too few events starts over."""
_SMOOTHING = 0.5
"""Weight of the newest sample in the CPU time per event."""


class WorkSlots:
    """How many requests doing work the host takes at once (see the module docstring).

    Each :meth:`update` reads the process's CPU time and the count of events handled; over
    a window of at least ``_MIN_EVENTS`` events their ratio is a sample of the CPU time an
    event takes, ``c``. On one core, the last of ``n`` requests admitted together starts
    after about ``n * c``, so ``n = target_s / 2 / c``, kept between ``fewest`` (the worker
    threads: fewer would leave them idle) and ``most``. Until the first sample: ``most``.
    """

    def __init__(
        self,
        *,
        most: int,
        fewest: int,
        target_s: float,
        cpu_clock: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.most = most
        self.fewest = min(fewest, most)
        self.target_s = target_s
        self.cpu_per_event_s: float | None = None
        """The smoothed CPU time an event takes; None before the first sample."""
        self._cpu_clock = cpu_clock
        self._clock = clock
        self._window: tuple[float, float, int] | None = None
        """Where the current sample window started: (time, CPU time, events handled)."""

    def update(self, events_handled: int) -> int:
        """The slots now, given the host's count of events handled so far."""
        now, cpu = self._clock(), self._cpu_clock()
        if self._window is None:
            self._window = (now, cpu, events_handled)
            return self.slots
        started, cpu_then, events_then = self._window
        events = events_handled - events_then
        if events >= _MIN_EVENTS:
            sample = (cpu - cpu_then) / events
            last = self.cpu_per_event_s
            self.cpu_per_event_s = sample if last is None else last + _SMOOTHING * (sample - last)
            self._window = (now, cpu, events_handled)
        elif now - started > _STALE_S:  # a quiet spell: its background work says nothing
            self._window = (now, cpu, events_handled)
        return self.slots

    @property
    def slots(self) -> int:
        if not self.cpu_per_event_s:
            return self.most
        fit = int(self.target_s / 2 / self.cpu_per_event_s)
        return max(self.fewest, min(self.most, fit))


def _agent_line(slots: int, waiting_on_ops: int) -> bytes:
    """The agent check's answer: HAProxy reads one line of words, here ``maxconn:N``."""
    return f"maxconn:{slots + waiting_on_ops}\n".encode()


async def serve_proxy_agent(
    host: Host,
    bind_host: str,
    port: int,
    slots: WorkSlots,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer agent checks on ``bind_host:port`` until cancelled; ``task_status`` gets the
    port (the one picked when ``port`` is 0)."""

    async def answer(stream: trio.SocketStream) -> None:
        line = _agent_line(slots.update(host.events_handled), host.waiting_on_ops)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(line)
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(port, host=bind_host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)

"""The host's answer to HAProxy's agent check (``roost.api.proxy_agent``), over real TCP."""

from __future__ import annotations

import trio

from roost import Manifest
from roost.api.proxy_agent import WorkSlots

from ..conftest import until
from .conftest import Serve


async def _agent_says(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
    return answer


async def test_the_agent_check_counts_the_slots_and_every_handler_waiting_on_ops(
    serve_host: Serve, caller_manifest: Manifest
) -> None:
    async with serve_host(caller_manifest, proxy_agent_port=0, proxy_slots=5) as served:
        port = served.serving.proxy_agent_port
        assert port is not None
        assert await _agent_says(port) == b"maxconn:5\n"
        replies: list[object] = []

        async def ask_a_sleeper() -> None:
            message = {"op": "ask", "kind": "caller", "id": "sleeper", "message": {"sleep": 1.0}}
            replies.append((await served.message("caller/a", message)).json()["replies"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_a_sleeper)
            # caller/a waits on its ask, caller/sleeper on its sleep: two more slots.
            await until(lambda: served.host.waiting_on_ops == 2)
            assert await _agent_says(port) == b"maxconn:7\n"
        assert replies == [[["slept"]]]
        assert served.host.waiting_on_ops == 0
        assert await _agent_says(port) == b"maxconn:5\n"


async def test_the_agent_check_offers_fewer_slots_once_events_take_long(
    serve_host: Serve, native_probe_manifest: Manifest
) -> None:
    settings = {"worker_threads": 2}
    async with serve_host(
        native_probe_manifest, proxy_agent_port=0, proxy_slots=32, host_settings=settings
    ) as served:
        port = served.serving.proxy_agent_port
        assert port is not None
        assert await _agent_says(port) == b"maxconn:32\n"  # nothing measured yet
        metrics = (await served.client.get("/metrics")).text
        assert "roost_proxy_work_slots 32.0" in metrics.splitlines()
        # 20 turns of tens of milliseconds of CPU each: past half the queue target (25 ms)
        # for even two of them, so the proxy may send only as many as the worker threads.
        for i in range(20):
            reply = await served.message(f"nprobe/u{i}", {"op": "spin", "count": 20_000_000})
            assert reply.status_code == 200
        assert await _agent_says(port) == b"maxconn:2\n"
        metrics = (await served.client.get("/metrics")).text
        assert "roost_proxy_work_slots 2.0" in metrics.splitlines()


class _Clocks:
    """A process's CPU time and monotonic time, moved by hand."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.now = 0.0


def _slots(clocks: _Clocks, *, most: int = 32, fewest: int = 4) -> WorkSlots:
    return WorkSlots(
        most=most,
        fewest=fewest,
        target_s=0.05,
        cpu_clock=lambda: clocks.cpu,
        clock=lambda: clocks.now,
    )


def test_work_slots_fit_half_the_queue_target_at_the_cpu_time_an_event_takes() -> None:
    clocks = _Clocks()
    slots = _slots(clocks)
    assert slots.update(0) == 32  # nothing measured yet: the most
    # 100 events in 160 ms of CPU: 1.6 ms each; 25 ms of them is 15.
    clocks.now, clocks.cpu = 0.25, 0.16
    assert slots.update(100) == 15
    # Then 5 ms each: smoothed halfway, 3.3 ms, 7 slots.
    clocks.now, clocks.cpu = 0.5, 0.16 + 0.5
    assert slots.update(200) == 7
    assert slots.cpu_per_event_s is not None
    assert abs(slots.cpu_per_event_s - 0.0033) < 1e-9


def test_work_slots_stay_between_the_worker_threads_and_the_most() -> None:
    clocks = _Clocks()
    slots = _slots(clocks)
    slots.update(0)
    clocks.now, clocks.cpu = 0.25, 2.0  # 20 ms an event: 1 would fit; never under 4
    assert slots.update(100) == 4
    heavy = _slots(_Clocks(), most=2)
    assert heavy.fewest == 2  # a ceiling under the worker threads wins
    light = _slots(clocks)
    light.update(100)
    clocks.now, clocks.cpu = 0.5, 2.01  # 0.1 ms an event: 250 would fit
    assert light.update(200) == 32


def test_work_slots_take_no_sample_from_a_few_events_nor_from_a_quiet_spell() -> None:
    clocks = _Clocks()
    slots = _slots(clocks)
    slots.update(0)
    clocks.now, clocks.cpu = 0.25, 0.16
    assert slots.update(100) == 15
    # Ten events in 100 ms of CPU (the timers and hibernations beside them): no sample yet.
    clocks.now, clocks.cpu = 0.5, 0.26
    assert slots.update(110) == 15
    # Two more seconds with few events: that window is dropped, and the background CPU
    # with it; the next window's 20 events at 1.6 ms each are the sample.
    clocks.now, clocks.cpu = 2.6, 1.26
    assert slots.update(112) == 15
    clocks.now, clocks.cpu = 2.85, 1.26 + 0.032
    assert slots.update(132) == 15
    assert slots.cpu_per_event_s is not None
    assert abs(slots.cpu_per_event_s - 0.0016) < 1e-9

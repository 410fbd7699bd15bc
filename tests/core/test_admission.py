"""Admission: by queueing delay (CoDel), by activation rate, and the cool-down of agents
that run past their CPU deadline."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from roost.core import admission
from roost.core.admission import ActivationRate, QueueDelay, QueueDelays
from roost.errors import AgentCoolingDown, CpuDeadlineExceeded
from roost.store.sqlite import SqliteStore

from .conftest import Call, ScriptedFactory, counter, manifest, open_core


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``perf_counter`` and ``monotonic`` of the admission module, moved by the test."""
    now = [1000.0]
    monkeypatch.setattr(admission.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(admission.time, "monotonic", lambda: now[0])
    return now


def _interval(queue: QueueDelay, now: list[float], waits: list[float]) -> int:
    """One update interval in which events waited ``waits``; how many of 1,000 new events
    were then refused."""
    for waited in waits:
        queue.observe(waited)
    now[0] += queue.interval_s
    before = queue.refused
    admitted = sum(queue.admit() for _ in range(1000))
    assert queue.refused - before == 1000 - admitted
    return 1000 - admitted


def test_a_standing_queue_is_shed_and_admission_reopens_when_it_clears(
    fake_time: list[float],
) -> None:
    queue = QueueDelay(target_s=0.05, interval_s=0.015, seed=1)
    assert _interval(queue, fake_time, [0.001, 0.002]) == 0  # under the target: no refusal
    # A standing queue: every interval, events waited 300 ms. The share refused climbs.
    refused = [_interval(queue, fake_time, [0.3, 0.3]) for _ in range(40)]
    assert refused[0] < 100  # one interval of long waits sheds little
    assert refused[-1] > 500
    assert refused[-1] >= refused[10] >= refused[0]
    assert queue.overloaded
    # The waits fall under the target: the share refused falls back to none.
    refused = [_interval(queue, fake_time, [0.01]) for _ in range(400)]
    assert refused[-1] == 0
    assert not queue.overloaded


def test_a_burst_after_a_quiet_spell_is_not_shed(fake_time: list[float]) -> None:
    queue = QueueDelay(target_s=0.05, interval_s=0.015, seed=2)
    # 135 ms of long waits (RFC 8033's burst allowance is 150 ms): nothing refused.
    assert [_interval(queue, fake_time, [0.2]) for _ in range(9)] == [0] * 9
    assert queue.probability > 0  # ... though the controller saw it
    refused = [_interval(queue, fake_time, [0.01]) for _ in range(50)]
    assert refused == [0] * 50
    # Quiet again, the allowance is back: the next burst passes too.
    assert [_interval(queue, fake_time, [0.2]) for _ in range(9)] == [0] * 9


def test_an_idle_host_stops_refusing(fake_time: list[float]) -> None:
    queue = QueueDelay(target_s=0.05, interval_s=0.015, seed=3)
    for _ in range(40):
        _interval(queue, fake_time, [0.5])
    assert queue.probability > 0.5
    # Nothing starts any more (the queue emptied): the probability decays to zero.
    refused = [_interval(queue, fake_time, []) for _ in range(300)]
    assert refused[-1] == 0


def test_a_kind_whose_events_queue_is_shed_not_its_neighbours(fake_time: list[float]) -> None:
    queues = QueueDelays(target_s=0.05, interval_s=0.015)
    for _ in range(60):
        queues.observe("storm", 0.5)
        queues.observe("echo", 0.002)
        fake_time[0] += 0.015
        queues.admit("storm")
    admitted = {kind: sum(queues.admit(kind) for _ in range(1000)) for kind in ("storm", "echo")}
    assert admitted["storm"] < 500
    assert admitted["echo"] == 1000
    assert queues.admit("new-kind")  # no event of it started yet: nothing queues
    assert queues.of("echo").refused == 0
    assert queues.refused == queues.of("storm").refused >= 1000 - admitted["storm"]


def test_activations_of_a_kind_are_held_to_a_rate(fake_time: list[float]) -> None:
    rate = ActivationRate(10.0)
    assert [rate.take("k") for _ in range(10)] == [0.0] * 10  # a second's worth at once
    assert rate.take("k") == pytest.approx(0.1)
    assert rate.take("other") == 0.0  # per kind
    fake_time[0] += 0.25
    assert rate.take("k") == 0.0
    assert rate.take("k") == 0.0
    assert rate.take("k") > 0


async def test_an_agent_past_its_cpu_deadline_is_cooled_down_doubling(
    clock: MockClock, store: SqliteStore
) -> None:

    def runaway_then_fine(call: Call) -> None:
        if call.message == "loop":
            raise CpuDeadlineExceeded("guest on-event ran past the kind's CPU deadline")
        counter(call)

    async with open_core(store, cool_down_s=10.0) as core:
        core.deploy(manifest("k"), ScriptedFactory(runaway_then_fine))

        t0 = trio.current_time()
        with pytest.raises(CpuDeadlineExceeded):
            await core.send("k/a", "loop")
        with pytest.raises(AgentCoolingDown) as refused:
            await core.send("k/a", "count")
        assert refused.value.retry_after_s == pytest.approx(10.0)
        assert await core.send("k/b", "count") == [1]  # its neighbours are served
        assert core.registry.cooling_down == 1
        await trio.sleep(10)
        with pytest.raises(CpuDeadlineExceeded):  # again: the cool-down doubles
            await core.send("k/a", "loop")
        with pytest.raises(AgentCoolingDown) as refused:
            await core.send("k/a", "count")
        assert refused.value.retry_after_s == pytest.approx(20.0)
        await trio.sleep(20)
        assert await core.send("k/a", "count") == [1]  # behaves: its strikes are forgotten
        with pytest.raises(CpuDeadlineExceeded):
            await core.send("k/a", "loop")
        with pytest.raises(AgentCoolingDown) as refused:
            await core.send("k/a", "count")
        assert refused.value.retry_after_s == pytest.approx(10.0)
        assert core.services.metrics.cool_downs() == {"k": 3}
        assert trio.current_time() - t0 == 30

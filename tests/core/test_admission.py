"""Admission: by queueing delay (CoDel), by activation rate, and the cool-down of agents
that run past their CPU deadline."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from roost.core import admission
from roost.core.admission import ActivationRate, QueueDelay
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


def test_a_standing_queue_closes_admission_a_burst_does_not(fake_time: list[float]) -> None:
    queue = QueueDelay(target_s=0.05, interval_s=0.1)
    # A burst: one event waited long, another in the same interval did not.
    queue.observe(0.5)
    queue.observe(0.001)
    fake_time[0] += 0.1
    assert queue.admit()
    # A standing queue: every event of an interval waited longer than the target.
    for waited in (0.2, 0.08, 0.3):
        queue.observe(waited)
    fake_time[0] += 0.1
    assert not queue.admit()
    assert not queue.admit()
    assert queue.refused == 2
    # The next interval's shortest wait is under the target again: admission reopens.
    queue.observe(0.04)
    queue.observe(0.2)
    fake_time[0] += 0.1
    assert queue.admit()


def test_an_interval_with_no_event_starting_reopens_admission(fake_time: list[float]) -> None:
    queue = QueueDelay(target_s=0.05, interval_s=0.1)
    queue.observe(1.0)
    fake_time[0] += 0.1
    assert not queue.admit()
    fake_time[0] += 0.1  # nothing started in that interval: nothing waits any more
    assert queue.admit()


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

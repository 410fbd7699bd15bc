"""The recent turns the host keeps, in bounded memory (``TurnRecorder``), fed by every
turn the host runs."""

from __future__ import annotations

import itertools

import pytest

from roost import GuestError, Host
from roost.address import AgentAddress
from roost.telemetry import HostMetrics, TurnRecorder

A, B, C = (AgentAddress("k", agent_id) for agent_id in ("a", "b", "c"))


def _recorder(**bounds: int) -> TurnRecorder:
    ticks = itertools.count(1000)
    return TurnRecorder(clock=lambda: float(next(ticks)), **bounds)


def test_keeps_the_last_turns_of_each_agent_newest_first() -> None:
    recorder = _recorder(per_agent=3)
    for n in range(5):
        recorder.record(A, "on-event", "ok", n / 1000)
    turns = recorder.turns(A)
    assert [t.seconds for t in turns] == [0.004, 0.003, 0.002]
    assert [t.at for t in turns] == [1004.0, 1003.0, 1002.0]
    assert recorder.turns(B) == []


def test_forgets_the_oldest_turns_past_its_capacity() -> None:
    recorder = _recorder(capacity=3)
    recorder.record(B, "on-event", "ok", 0.001)  # forgotten last: it is the oldest turn
    recorder.record(A, "on-event", "ok", 0.001)
    recorder.record(A, "on-complete", "guest_trap", 0.002)  # A is now the most recent
    recorder.record(C, "on-event", "ok", 0.001)  # B goes
    assert len(recorder) == 2
    assert recorder.turns(B) == []
    assert [address for address, _ in recorder.recent(10)] == [C, A]
    assert [turn.outcome for _, turn in recorder.recent(10, kind="k")][1] == "guest_trap"
    assert recorder.recent(10, kind="other") == []
    assert len(recorder.recent(1)) == 1


def test_listeners_see_each_turn_of_their_agent_until_stopped() -> None:
    recorder = _recorder()
    seen: list[str] = []
    stop = recorder.listen(A, lambda turn: seen.append(turn.outcome))
    recorder.record(A, "on-event", "ok", 0.001)
    recorder.record(B, "on-event", "ok", 0.001)
    stop()
    stop()  # stopping twice is harmless
    recorder.record(A, "on-event", "guest_trap", 0.001)
    assert seen == ["ok"]


def test_metrics_record_turns_with_their_histogram() -> None:
    metrics = HostMetrics()
    metrics.observe_turn(A, 0.002, "on-event", "ok")
    assert metrics.turn_seconds()["k"].count == 1
    [turn] = metrics.turns.turns(A)
    assert (turn.export, turn.outcome, turn.seconds) == ("on-event", "ok", 0.002)


async def test_the_host_records_each_turn_with_its_export_and_outcome(probe_host: Host) -> None:
    await probe_host.send("probe/a", {"op": "count"})
    await probe_host.send("probe/a", {"op": "sleep", "seconds": 0.01})
    with pytest.raises(GuestError):
        await probe_host.send("probe/a", {"op": "raise"})
    turns = probe_host.metrics().turns.turns(AgentAddress("probe", "a"))
    assert [(t.export, t.outcome) for t in reversed(turns)] == [
        ("on-event", "ok"),
        ("on-event", "ok"),
        ("on-complete", "ok"),
        ("on-event", "guest_trap"),
    ]
    assert all(t.seconds > 0 for t in turns)

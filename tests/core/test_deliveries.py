"""The delivery loop against a scripted guest: timers due in virtual time, deliveries
waiting for their kind, back-off, recurring timers."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from roost.address import AgentAddress
from roost.errors import GuestTrap
from roost.store.sqlite import SqliteStore

from .conftest import Call, ScriptedFactory, build_kind, manifest, open_core


def timer_handler(call: Call) -> None:
    call.reply({"fired": call.message, "kind": call.event_kind})
    call.finish()


async def test_a_timer_fires_at_exactly_its_due_time_and_its_commit_removes_it(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(timer_handler)
            core.deploy(manifest("k"), factory)
            address = AgentAddress("k", "a")
            t0 = trio.current_time()
            async with core.pushes.subscribe(address) as pushed:
                delivery = await core.commit_delivery("k/a", "t1", after_s=10, payload="ping")
                assert core.trio_time(delivery.due_at) == t0 + 10
                assert store.read_deliveries(address) == [delivery]

                assert await pushed.receive() == {"fired": "ping", "kind": "timer"}

            assert trio.current_time() == t0 + 10
            assert [(call.at, call.event_kind) for call in factory.calls] == [(t0 + 10, "timer")]
            assert store.read_deliveries(address) == []
            assert store.next_due_at() is None
            record = core.record("k/a")
            assert record is not None and record.turns == 1
            await trio.sleep(100)
            assert len(factory.calls) == 1


async def test_a_delivery_to_a_kind_not_deployed_yet_waits_for_its_deployment(
    clock: MockClock, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(1000):
        async with open_core(store) as core:
            attempts: list[tuple[float, str]] = []
            looks: list[float] = []
            deliver = core.dispatcher.deliver
            due_deliveries = store.due_deliveries

            async def counting_deliver(address: AgentAddress, *args: Any, **kw: Any) -> Any:
                attempts.append((trio.current_time(), str(address)))
                return await deliver(address, *args, **kw)

            def counting_due_deliveries(now: float, limit: int, **kw: Any) -> Any:
                looks.append(trio.current_time())
                return due_deliveries(now, limit, **kw)

            monkeypatch.setattr(core.dispatcher, "deliver", counting_deliver)
            monkeypatch.setattr(store, "due_deliveries", counting_due_deliveries)
            address = AgentAddress("later", "a")
            t0 = trio.current_time()
            await core.commit_delivery("later/a", "t1", after_s=0, payload="hello")

            await trio.sleep(300)

            assert attempts == [(t0, "later/a")]  # found once, then no retries
            # No busy loop: the loop looks at the store when rung and once a minute.
            assert len(looks) <= 2 + 300 // 60
            assert store.read_deliveries(address) != []

            # Put the kind in the table (as Host.deploy does), then tell the loop.
            factory = ScriptedFactory(timer_handler)
            core.kinds.put(build_kind(manifest("later"), factory, core.host_services))
            await wait_all_tasks_blocked()
            assert factory.calls == []  # not before kind_deployed
            core.deliveries.kind_deployed("later")
            await factory.wait_calls(1)
            await wait_all_tasks_blocked()

            assert trio.current_time() == t0 + 300
            assert attempts == [(t0, "later/a"), (t0 + 300, "later/a")]
            assert [call.message for call in factory.calls] == ["hello"]
            assert store.read_deliveries(address) == []
            await trio.sleep(300)
            assert len(factory.calls) == 1


async def test_a_trapping_delivery_backs_off_exponentially_up_to_a_minute(
    clock: MockClock, store: SqliteStore
) -> None:
    def trap(call: Call) -> None:
        raise GuestTrap("no")

    with trio.fail_after(1000):
        async with open_core(store) as core:
            factory = ScriptedFactory(trap)
            core.deploy(manifest("k"), factory)
            t0 = trio.current_time()
            await core.commit_delivery("k/a", "t1", after_s=0)

            await factory.wait_calls(10)
            await wait_all_tasks_blocked()

            times = [call.at - t0 for call in factory.calls]
            assert times == [0, 1, 3, 7, 15, 31, 63, 123, 183, 243]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert gaps == [1, 2, 4, 8, 16, 32, 60, 60, 60]
            # Still there, for the next attempt.
            assert len(store.read_deliveries(AgentAddress("k", "a"))) == 1
            assert core.services.metrics.traps() == {"k/guest_trap": 10}


async def test_a_recurring_timer_fires_every_period(clock: MockClock, store: SqliteStore) -> None:
    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(timer_handler)
            core.deploy(manifest("k"), factory)
            address = AgentAddress("k", "a")
            t0 = trio.current_time()
            delivery = await core.commit_delivery("k/a", "tick", after_s=5, every_s=10)

            await factory.wait_calls(3)
            await wait_all_tasks_blocked()

            assert [call.at - t0 for call in factory.calls] == [5, 15, 25]
            (rearmed,) = store.read_deliveries(address)
            assert rearmed.delivery_id == "tick"
            assert rearmed.due_at == delivery.due_at + 3 * 10
            assert core.trio_time(rearmed.due_at) == t0 + 35


async def test_a_crowd_of_deliveries_in_flight_is_not_read_again_as_each_one_ends(
    clock: MockClock, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every delivery that ends rings the doorbell. While dozens are in flight, the loop
    does not read them all again after each one: it pauses between such crowded passes."""
    reads = 0
    due_deliveries = store.due_deliveries

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return due_deliveries(*args, **kwargs)

    monkeypatch.setattr(store, "due_deliveries", counted)

    def handle(call: Call) -> None:
        if call.export == "on-event":  # agent i's timer takes i ms: one ends every ms
            call.sleep(int(call.message) / 1000)
            return
        call.finish()

    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(handle)
            core.deploy(manifest("k"), factory)
            for i in range(100):
                await core.commit_delivery(f"k/a{i}", "t", after_s=10, payload=i)
            await trio.sleep(9)
            reads = 0
            await factory.wait_calls(200)
            await wait_all_tasks_blocked()
            await trio.sleep(1)

            assert store.next_due_at() is None
            records = [core.record(f"k/a{i}") for i in range(100)]
            assert all(r is not None and r.turns == 2 for r in records)  # each handled once
            # A read per delivery that ended is 100; crowded passes are 20 ms apart until
            # fewer than 32 are in flight, then a read per delivery again.
            assert reads < 50, reads

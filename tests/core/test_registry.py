"""The registry against a scripted guest: LRU hibernation past the resident cap,
admission (Overloaded, AgentUnavailable), draining, fencing and redeploys."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from roost.address import AgentAddress
from roost.errors import AgentUnavailable, Overloaded
from roost.store.sqlite import SqliteStore

from .conftest import Call, Core, ScriptedFactory, counter, manifest, open_core


def counter_or_sleep(call: Call) -> None:
    """Counts ``count`` events; ``sleep N`` awaits a sleep of N seconds, then counts."""
    if call.export == "on-event" and isinstance(call.message, str):
        verb, _, seconds = call.message.partition(" ")
        if verb == "sleep":
            call.sleep(float(seconds))
            return
    counter(call)


def resident(core: Core, *ids: str, kind: str = "k") -> list[bool]:
    return [core.registry.is_resident(AgentAddress(kind, i)) for i in ids]


async def test_lru_eviction_hibernates_the_least_recently_used_idle_agent(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        async with open_core(store, max_resident=2) as core:
            factory = ScriptedFactory(counter)
            core.deploy(manifest("k"), factory)
            t0 = trio.current_time()
            await core.send("k/a", "count")
            await core.send("k/b", "count")
            await core.send("k/a", "count")  # a is now more recently used than b

            assert await core.send("k/c", "count") == [1]
            await wait_all_tasks_blocked()

            assert resident(core, "a", "b", "c") == [True, False, True]
            assert factory.closed == ["k/b"]
            assert core.services.counters.hibernations == 1
            assert core.registry.resident == 2
            assert trio.current_time() == t0  # evicted, not timed out
            # b comes back from its committed state, evicting a (now the LRU).
            assert await core.send("k/b", "count") == [2]
            await wait_all_tasks_blocked()
            assert resident(core, "a", "b", "c") == [False, True, True]
            assert factory.closed == ["k/b", "k/a"]


async def test_a_new_activation_is_overloaded_when_every_resident_agent_is_busy(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        async with open_core(store, max_resident=2) as core:
            factory = ScriptedFactory(counter_or_sleep)
            core.deploy(manifest("k"), factory)
            t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(core.send, "k/a", "sleep 100")
                nursery.start_soon(core.send, "k/b", "sleep 100")
                await wait_all_tasks_blocked()

                with pytest.raises(Overloaded, match="max_resident_agents") as raised:
                    await core.send("k/c", "count")

                assert raised.value.retry_after_s == 1.0
                assert factory.instantiations == 2
                assert resident(core, "a", "b", "c") == [True, True, False]
            # Once they are idle, c evicts one of them.
            assert trio.current_time() == t0 + 100
            assert await core.send("k/c", "count") == [1]
            await wait_all_tasks_blocked()
            assert factory.closes == 1
            assert core.registry.resident == 2


async def test_over_the_memory_cap_the_kind_that_fills_it_is_refused_not_its_neighbours(
    clock: MockClock, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(300):
        async with open_core(store, memory_cap_bytes=100) as core:
            used = [0]
            monkeypatch.setattr(core.registry._memory, "resident_bytes", lambda: used[0])
            hog, small = ScriptedFactory(counter_or_sleep), ScriptedFactory(counter_or_sleep)
            core.deploy(manifest("hog"), hog)
            core.deploy(manifest("small"), small)
            assert await core.send("small/idle", "count") == [1]  # idle between events
            async with trio.open_nursery() as nursery:
                for name in ("a", "b", "c"):
                    nursery.start_soon(core.send, f"hog/{name}", "sleep 100")
                assert await core.send("hog/done", "count") == [1]  # idle too
                await wait_all_tasks_blocked()
                used[0] = 200  # over the cap from now on
                # Over the cap, the hog kind's idle agent is hibernated to make room for
                # one more hog; the small kind's idle agent is not.
                nursery.start_soon(core.send, "hog/d", "sleep 100")
                await wait_all_tasks_blocked()
                assert resident(core, "done", kind="hog") == [False]
                assert resident(core, "idle", kind="small") == [True]
                # The hog kind, with the most agents resident and none idle, is refused...
                with pytest.raises(Overloaded, match="max_host_memory_bytes") as raised:
                    await core.send("hog/e", "count")
                assert "'hog'" in str(raised.value)
                assert resident(core, "idle", kind="small") == [True]
                # ...not the kind beside it: its agent answers, its new agent starts, making
                # room from the small kind's own idle agents.
                assert await core.send("small/idle", "count") == [2]
                await wait_all_tasks_blocked()
                assert await core.send("small/new", "count") == [1]
                assert resident(core, "idle", "new", kind="small") == [False, True]
            assert hog.instantiations == 5


async def test_max_in_flight_reached_is_overloaded(clock: MockClock, store: SqliteStore) -> None:
    with trio.fail_after(300):
        async with open_core(store, max_in_flight=2) as core:
            factory = ScriptedFactory(counter_or_sleep)
            core.deploy(manifest("k"), factory)
            t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(core.send, "k/a", "sleep 10")
                nursery.start_soon(core.send, "k/b", "sleep 10")
                await wait_all_tasks_blocked()
                assert core.registry.in_flight == 2

                with pytest.raises(Overloaded, match="in flight") as raised:
                    await core.send("k/c", "count")

                assert raised.value.retry_after_s == 1.0
                assert resident(core, "c") == [False]
            assert trio.current_time() == t0 + 10
            assert core.registry.in_flight == 0
            assert await core.send("k/c", "count") == [1]


async def test_draining_stops_accepting_and_waits_for_in_flight_events(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(counter_or_sleep)
            core.deploy(manifest("k"), factory)
            t0 = trio.current_time()
            results: list[list[Any]] = []
            drained_at: list[float] = []

            async def send() -> None:
                results.append(await core.send("k/a", "sleep 10"))

            async def drain() -> None:
                await core.registry.drain()
                drained_at.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await wait_all_tasks_blocked()
                nursery.start_soon(drain)
                await wait_all_tasks_blocked()

                assert not core.registry.accepting
                assert drained_at == []
                with pytest.raises(Overloaded, match="shutting down"):
                    await core.send("k/b", "count")

            assert drained_at == [t0 + 10]
            assert results == [[1]]
            await wait_all_tasks_blocked()
            assert core.registry.resident == 0
            assert factory.closed == ["k/a"]
            assert factory.instantiations == 1  # b was never activated


async def test_fencing_waits_for_the_running_event_and_holds_events_off(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(counter_or_sleep)
            core.deploy(manifest("k", mailbox_size=4), factory)
            address = AgentAddress("k", "a")
            t0 = trio.current_time()
            assert await core.send("k/a", "count") == [1]
            outcomes: dict[str, Any] = {}
            fenced_at: list[float] = []
            release = trio.Event()

            async def send(message: str) -> None:
                try:
                    outcomes[message] = await core.send("k/a", message)
                except AgentUnavailable as exc:
                    outcomes[message] = exc

            async def fence() -> None:
                async with core.registry.fenced(address):
                    fenced_at.append(trio.current_time())
                    assert factory.live == []
                    assert await core.services.stores.run(store.delete_agent, address)
                    await release.wait()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, "sleep 10")
                await wait_all_tasks_blocked()
                nursery.start_soon(send, "queued")  # behind the running event
                await wait_all_tasks_blocked()
                nursery.start_soon(fence)
                await wait_all_tasks_blocked()

                with pytest.raises(AgentUnavailable, match="being erased or forked"):
                    await core.send("k/a", "count")
                assert fenced_at == []

                await trio.sleep(10)
                await wait_all_tasks_blocked()

                assert fenced_at == [t0 + 10]
                assert outcomes["sleep 10"] == [2]
                assert isinstance(outcomes["queued"], AgentUnavailable)
                assert factory.closed == ["k/a"]
                with pytest.raises(AgentUnavailable, match="being erased or forked"):
                    await core.send("k/a", "count")
                release.set()

            # After the block the agent serves again, from what the fence left (nothing).
            assert await core.send("k/a", "count") == [1]
            assert factory.instantiations == 2
            assert factory.instances[1].restored is None


async def test_a_redeployed_kind_serves_the_next_event_on_a_new_instance(
    clock: MockClock, store: SqliteStore
) -> None:
    def v2(call: Call) -> None:
        count = call.state["n"] + 1
        call.set_state({"n": count})
        call.reply(f"v2:{count}")
        call.finish()

    with trio.fail_after(300):
        async with open_core(store) as core:
            old = ScriptedFactory(counter)
            core.deploy(manifest("k"), old)
            assert await core.send("k/a", "count") == [1]
            assert resident(core, "a") == [True]

            new = ScriptedFactory(v2)
            core.deploy(manifest("k", version="0.2.0"), new)
            assert await core.send("k/a", "count") == ["v2:2"]

            await wait_all_tasks_blocked()
            assert old.closed == ["k/a"]
            assert old.instantiations == 1
            assert new.instantiations == 1
            assert new.instances[0].restored == {"n": 1}
            assert core.registry.resident == 1
            assert core.state("k/a") == {"n": 2}


async def test_a_redeploy_during_an_event_keeps_one_instance_per_agent(
    clock: MockClock, store: SqliteStore
) -> None:
    def slow_counter(call: Call) -> None:
        if call.export == "on-event" and call.message == "slow":
            call.sleep(10)  # counts when the sleep is over
            return
        counter(call)

    with trio.fail_after(300):
        async with open_core(store) as core:
            old = ScriptedFactory(slow_counter)
            core.deploy(manifest("k"), old)
            t0 = trio.current_time()
            results: dict[str, list[Any]] = {}

            async def send(message: str) -> None:
                results[message] = await core.send("k/a", message)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, "slow")
                await wait_all_tasks_blocked()
                await trio.sleep(1)
                new = ScriptedFactory(counter)
                core.deploy(manifest("k", version="0.2.0"), new)
                nursery.start_soon(send, "count")
                await wait_all_tasks_blocked()

                assert len(old.live) + len(new.live) == 1  # one instance of k/a at a time
            assert trio.current_time() == t0 + 10
            # Both events counted, each seeing the other's commit.
            assert sorted(reply for replies in results.values() for reply in replies) == [1, 2]
            assert core.state("k/a") == {"n": 2}

"""The agent actor against a scripted guest: idle hibernation, its mailbox, failed turns,
awaited ops and the inline slice path, in exact virtual time."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from roost.address import AgentAddress
from roost.core.actor import AgentActor
from roost.errors import AgentBusy, GuestAbiError, GuestTrap
from roost.payload import pack
from roost.sandbox.protocol import TurnSliceExceeded
from roost.store.sqlite import SqliteStore
from roost.wall_clock import utc_day

from .conftest import Call, Core, ScriptedFactory, counter, manifest, open_core


def resident_actor(core: Core, address: str) -> AgentActor:
    actor = core.registry.actor(AgentAddress.parse(address))
    assert actor is not None, f"{address} is not resident"
    return actor


def sleeper(seconds: float) -> ScriptedFactory:
    """A guest whose handler replies, awaits ``timers.sleep(seconds)``, then replies again
    and finishes."""

    def handle(call: Call) -> None:
        if call.export == "on-event":
            call.reply("before")
            call.sleep(seconds)
        else:
            call.reply("after")
            call.finish()

    return ScriptedFactory(handle)


async def test_idle_agent_hibernates_exactly_at_the_idle_timeout(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(counter)
            core.deploy(manifest("counter", idle_timeout_s=30), factory)
            t0 = trio.current_time()
            assert await core.send("counter/a", "hi") == [1]
            actor = resident_actor(core, "counter/a")

            await actor.finished.wait()

            assert trio.current_time() == t0 + 30
            assert factory.closed == ["counter/a"]
            assert not core.registry.is_resident(AgentAddress("counter", "a"))
            assert core.services.counters.hibernations == 1
            # The next event wakes it from its committed state.
            assert await core.send("counter/a", "hi") == [2]
            assert factory.instantiations == 2
            assert factory.instances[1].restored == {"n": 1}
            assert core.services.counters.activations == 2


async def test_an_event_before_the_timeout_resets_the_idle_timer(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(counter)
            core.deploy(manifest("counter", idle_timeout_s=30), factory)
            t0 = trio.current_time()
            assert await core.send("counter/a", "hi") == [1]
            actor = resident_actor(core, "counter/a")
            await trio.sleep(20)
            assert await core.send("counter/a", "hi") == [2]
            assert resident_actor(core, "counter/a") is actor

            await actor.finished.wait()

            assert trio.current_time() == t0 + 20 + 30
            assert [call.at for call in factory.calls] == [t0, t0 + 20]
            assert factory.instantiations == 1
            assert factory.closes == 1


async def test_the_mailbox_is_bounded(clock: MockClock, store: SqliteStore) -> None:
    def handle(call: Call) -> None:
        if call.export == "on-event" and call.message == "block":
            call.sleep(100)
            return
        call.reply(call.message if call.export == "on-event" else "unblocked")
        call.finish()

    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(handle)
            core.deploy(manifest("box", mailbox_size=2), factory)
            t0 = trio.current_time()
            results: dict[str, list[object]] = {}

            async def send(message: str) -> None:
                results[message] = await core.send("box/a", message)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, "block")
                await wait_all_tasks_blocked()
                for message in ("q1", "q2"):
                    nursery.start_soon(send, message)
                    await wait_all_tasks_blocked()
                assert resident_actor(core, "box/a").queued == 2

                with pytest.raises(AgentBusy, match="mailbox_size"):
                    await core.send("box/a", "q3")

                assert core.registry.in_flight == 3
                assert trio.current_time() == t0

            # The queued events are handled, in order, once the blocker's sleep ends.
            assert trio.current_time() == t0 + 100
            assert results == {"block": ["unblocked"], "q1": ["q1"], "q2": ["q2"]}
            assert [call.message for call in factory.events()] == ["block", "q1", "q2"]


async def test_a_trapping_turn_commits_nothing_and_drops_the_instance(
    clock: MockClock, store: SqliteStore
) -> None:
    def handle(call: Call) -> None:
        if call.message == "boom":
            call.set_state({"n": 999})
            assert call.host("kv", "set", "k", b"v") is None
            call.reply("lost")
            call.finish()
            raise GuestTrap("the guest raised", guest_traceback="Traceback ...")
        counter(call)

    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(handle)
            core.deploy(manifest("trap", capabilities={"kv": {}}), factory)
            address = AgentAddress("trap", "a")
            assert await core.send("trap/a", "count") == [1]
            before = store.read_agent(address)
            assert before is not None

            streamed: list[object] = []
            with pytest.raises(GuestTrap):
                await core.send("trap/a", "boom", on_reply=streamed.append)

            assert store.read_agent(address) == before
            assert core.state("trap/a") == {"n": 1}
            assert store.read_kv(address, "k") is None
            assert streamed == []
            usage = store.read_usage(address, utc_day(core.services.clock.now()))
            assert (usage.turns, usage.errors) == (1, 1)
            assert factory.closes == 1
            assert factory.instances[0].closed
            assert not core.registry.is_resident(address)
            assert core.services.metrics.traps() == {"trap/guest_trap": 1}

            # The next event re-activates from the committed state.
            assert await core.send("trap/a", "count") == [2]
            assert factory.instantiations == 2
            assert factory.instances[1].restored == {"n": 1}
            assert core.state("trap/a") == {"n": 2}


async def test_an_awaited_sleep_resumes_at_exactly_plus_five_seconds(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = sleeper(5)
            core.deploy(manifest("sleepy"), factory)
            t0 = trio.current_time()
            streamed: list[tuple[float, object]] = []

            replies = await core.send(
                "sleepy/a", "go", on_reply=lambda r: streamed.append((trio.current_time(), r))
            )

            assert replies == ["before", "after"]
            assert trio.current_time() == t0 + 5
            assert streamed == [(t0, "before"), (t0 + 5, "after")]
            event, complete = factory.calls
            assert (event.export, event.at) == ("on-event", t0)
            assert (complete.export, complete.at) == ("on-complete", t0 + 5)
            assert (complete.op_id, complete.ok, complete.value) == (
                factory.op_ids[0],
                True,
                pack(None),
            )
            record = core.record("sleepy/a")
            assert record is not None and record.turns == 2


async def test_a_pending_op_holds_the_agent_resident_past_its_idle_timeout(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = sleeper(60)
            core.deploy(manifest("sleepy", idle_timeout_s=10), factory)
            t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(core.send, "sleepy/a", "go")
                await wait_all_tasks_blocked()
                actor = resident_actor(core, "sleepy/a")
                assert actor.pending_ops == 1
                assert actor.held_by(trio.current_time()) == ()

                await trio.sleep(30)

                assert actor.held_by(trio.current_time()) == ("pending_op",)
                assert core.registry.held_resident() == {
                    "pending_op": 1,
                    "turn_running": 0,
                    "mailbox_not_empty": 0,
                }
                assert core.registry.is_resident(AgentAddress("sleepy", "a"))
            assert trio.current_time() == t0 + 60
            assert actor.pending_ops == 0
            assert actor.held_by(trio.current_time()) == ()

            await actor.finished.wait()

            assert trio.current_time() == t0 + 60 + 10
            assert factory.closes == 1


async def test_a_handler_that_neither_finishes_nor_awaits_an_op_fails(
    clock: MockClock, store: SqliteStore
) -> None:
    def handle(call: Call) -> None:
        call.reply("and then?")

    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(handle)
            core.deploy(manifest("lost"), factory)
            t0 = trio.current_time()

            with pytest.raises(GuestAbiError, match="neither finished nor awaits"):
                await core.send("lost/a", "hi")

            assert trio.current_time() == t0
            assert factory.closes == 1
            assert not core.registry.is_resident(AgentAddress("lost", "a"))
            assert core.services.metrics.traps() == {"lost/guest_abi_error": 1}


async def test_a_light_kind_runs_event_turns_inline_until_one_overruns_its_slice(
    clock: MockClock, store: SqliteStore
) -> None:
    def handle(call: Call) -> None:
        counter(call)
        if call.message == "long" and call.slice_ms is not None:
            raise TurnSliceExceeded

    with trio.fail_after(300):
        async with open_core(store, inline_slice_ms=5) as core:
            factory = ScriptedFactory(handle, light=True)
            core.deploy(manifest("light"), factory)

            assert await core.send("light/a", "count") == [1]
            assert factory.calls[0].slice_ms == 5
            assert core.workers.calls == 0

            # Too long for the loop: nothing of it counts; it runs again from the committed
            # state, on a worker, in a new instance.
            assert await core.send("light/a", "long") == [2]
            assert [call.slice_ms for call in factory.calls[1:]] == [5, None]
            assert factory.closes == 1
            assert factory.instantiations == 2
            assert factory.instances[1].restored == {"n": 1}
            assert core.workers.calls == 1
            assert core.state("light/a") == {"n": 2}

            # That agent's turns stay on workers.
            assert await core.send("light/a", "count") == [3]
            assert factory.calls[-1].slice_ms is None
            assert core.workers.calls == 2

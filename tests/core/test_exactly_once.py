"""Exactly once per message, against a scripted guest on a MockClock: a handler's effects
are held until its final turn, the inbox and the journal carry it across a crash, keyed
messages and asks are handled once, continuation-form ops resume after a restart, and the
delivery loop handles each timer occurrence once, backs off, and gives up into dead letters.

A crash is the core cancelled in the middle of a handler (``host_that_crashes``); the
restart is a new core on the same store, with the same wall clock, so that stored unix
times keep their place in virtual time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from roost.address import AgentAddress
from roost.core.ops import request_digest
from roost.errors import AlreadyHandled, GuestTrap, IdempotencyKeyReused
from roost.payload import pack, unpack
from roost.store.protocol import Commit, DeadLetter, Delivery, JournalEntry, Usage
from roost.store.sqlite import SqliteStore
from roost.wall_clock import WallClock, utc_day

from .conftest import Call, Core, Handler, ScriptedFactory, build_kind, manifest, open_core

KV_AND_TIMERS: dict[str, dict[str, Any]] = {"timers": {}, "kv": {}}
A = AgentAddress("k", "a")


@asynccontextmanager
async def host_that_crashes(
    store: SqliteStore, **options: Any
) -> AsyncIterator[tuple[Core, trio.Nursery]]:
    """A core, and a nursery for the test's senders; when the block ends, the host dies:
    everything is cancelled where it stands, nothing more is committed."""
    with trio.CancelScope() as crash:
        async with open_core(store, **options) as core, trio.open_nursery() as nursery:
            yield core, nursery
            crash.cancel()


def counting_sleeper(*sleeps: float) -> Handler:
    """Counts the event in its state (``n``) and in kv (``count``), replies "before", awaits
    ``sleeps`` one after the other, then replies "after" and finishes."""

    def handle(call: Call) -> None:
        memo = call.sandbox.memo
        if call.export == "on-event":
            call.set_state({"n": (call.state or {}).get("n", 0) + 1})
            count = call.host("kv", "get", "count")
            assert call.host("kv", "set", "count", b"%d" % (int(count or b"0") + 1)) is None
            call.reply("before")
            step = 0
        else:
            assert call.ok is True and call.value == pack(None)
            step = memo.pop(call.op_id)
        if step < len(sleeps):
            memo[call.sleep(sleeps[step])] = step + 1
            return
        call.reply("after")
        call.finish()

    return handle


def timeline(factory: ScriptedFactory, since: float) -> list[tuple[str, float]]:
    """Each call into the guest: its export and its virtual time after ``since``."""
    return [(call.export, call.at - since) for call in factory.calls]


def today(core: Core) -> str:
    return utc_day(core.services.clock.now())


def the_inbox_entry(store: SqliteStore, address: AgentAddress) -> Delivery:
    (entry,) = store.read_deliveries(address)
    assert entry.event_kind in ("message", "agent")
    return entry


def assert_counted_once(store: SqliteStore, address: AgentAddress) -> None:
    record = store.read_agent(address)
    assert record is not None and record.state is not None
    assert unpack(record.state) == {"n": 1}
    assert store.read_kv(address, "count") == b"1"


# -- held effects and the inbox ---------------------------------------------------------------


async def test_a_handler_commits_nothing_until_its_final_turn_then_everything_at_once(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(counting_sleeper(5.0))
            core.deploy(manifest("k", capabilities=KV_AND_TIMERS), factory)
            t0 = trio.current_time()
            replies: list[Any] = []

            async def send() -> None:
                replies.extend(await core.send("k/a", "hello"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await factory.wait_calls(1)
                await wait_all_tasks_blocked()

                # Waiting on the sleep: nothing of the handler's effects is in the store...
                assert trio.current_time() == t0
                assert store.read_agent(A) is None
                assert store.read_kv(A, "count") is None
                assert store.read_usage(A, today(core)) == Usage()
                assert store.statistics().commits == 0
                # ... but the message is, in the inbox, under the message's id.
                entry = the_inbox_entry(store, A)
                assert entry.event_kind == "message"
                assert entry.payload == pack("hello")
                assert entry.idempotency_key is None
                assert core.trio_time(entry.due_at) == t0
                assert entry.delivery_id.startswith("in-")
                assert core.dispatcher.is_handling(A, entry.delivery_id)
                assert store.read_journal(A, entry.delivery_id) == []

                # The entry is due, and the loop looks (it was rung): it leaves it alone.
                await trio.sleep(4)
                assert len(factory.calls) == 1
                assert store.read_agent(A) is None
                assert store.read_deliveries(A) == [entry]

            assert replies == ["before", "after"]
            assert trio.current_time() == t0 + 5
            assert timeline(factory, t0) == [("on-event", 0), ("on-complete", 5)]
            # One turn commit with all of it: state, kv, usage, the inbox entry gone.
            assert store.statistics().commits == 1
            record = store.read_agent(A)
            assert record is not None and record.turns == 2
            assert_counted_once(store, A)
            assert store.read_usage(A, today(core)).turns == 2
            assert store.read_deliveries(A) == []
            await trio.sleep(100)
            assert len(factory.calls) == 2


async def test_a_message_cut_short_by_a_crash_is_handled_again_from_the_inbox_once(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        t0 = trio.current_time()
        async with host_that_crashes(store) as (core, nursery):
            crashed = ScriptedFactory(counting_sleeper(5.0))
            core.deploy(manifest("k", capabilities=KV_AND_TIMERS), crashed)
            nursery.start_soon(core.send, "k/a", "hello")
            await trio.sleep(2)
            entry = the_inbox_entry(store, A)
            wall = core.services.clock
        t1 = trio.current_time()
        assert t1 == t0 + 2
        assert len(crashed.calls) == 1
        assert store.read_agent(A) is None
        assert store.read_deliveries(A) == [entry]

        async with open_core(store, wall_clock=wall) as core:
            factory = ScriptedFactory(counting_sleeper(5.0))
            async with core.pushes.subscribe(A) as pushed:
                core.deploy(manifest("k", capabilities=KV_AND_TIMERS), factory)
                assert await pushed.receive() == "before"
                assert await pushed.receive() == "after"

            # Re-run at once, from the last committed state, whole.
            assert timeline(factory, t1) == [("on-event", 0), ("on-complete", 5)]
            assert factory.calls[0].message == "hello"
            assert factory.instances[0].restored is None
            assert_counted_once(store, A)
            record = store.read_agent(A)
            assert record is not None and record.turns == 2
            assert store.read_usage(A, today(core)).turns == 2
            assert store.read_deliveries(A) == []
            await trio.sleep(100)
            assert len(factory.calls) == 2


async def test_an_op_result_journaled_before_a_crash_is_replayed_not_waited_again(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        t0 = trio.current_time()
        async with host_that_crashes(store) as (core, nursery):
            crashed = ScriptedFactory(counting_sleeper(5.0, 7.0))
            core.deploy(manifest("k", capabilities=KV_AND_TIMERS), crashed)
            nursery.start_soon(core.send, "k/a", "hello")
            await trio.sleep(8)  # the first sleep ended at +5; the second runs until +12
            message_id = the_inbox_entry(store, A).delivery_id
            wall = core.services.clock
        t1 = trio.current_time()
        assert timeline(crashed, t0) == [("on-event", 0), ("on-complete", 5)]
        # The consumed result of the first sleep, and nothing else of the handler.
        assert store.read_journal(A, message_id) == [
            JournalEntry(
                message_id=message_id,
                seq=1,
                capability="timers",
                call="sleep",
                request_sha=request_digest("timers", "sleep", pack(5.0)),
                ok=True,
                value=pack(None),
            )
        ]
        assert store.read_agent(A) is None
        assert store.read_kv(A, "count") is None

        async with open_core(store, wall_clock=wall) as core:
            factory = ScriptedFactory(counting_sleeper(5.0, 7.0))
            async with core.pushes.subscribe(A) as pushed:
                core.deploy(manifest("k", capabilities=KV_AND_TIMERS), factory)
                assert [await pushed.receive(), await pushed.receive()] == ["before", "after"]

            # The first sleep completes at once from the journal; the second runs whole.
            assert timeline(factory, t1) == [
                ("on-event", 0),
                ("on-complete", 0),
                ("on-complete", 7),
            ]
            assert trio.current_time() == t1 + 7
            assert_counted_once(store, A)
            record = store.read_agent(A)
            assert record is not None and record.turns == 3
            assert store.read_journal(A, message_id) == []
            assert store.read_deliveries(A) == []
            await trio.sleep(100)
            assert len(factory.calls) == 3


# -- keyed messages -----------------------------------------------------------------------------


async def crash_a_keyed_message(
    store: SqliteStore, message: Any, key: str
) -> tuple[WallClock, float]:
    """Send ``message`` with ``key`` to ``k/a`` and crash 2 s into its 5 s sleep; returns the
    wall clock and the time of the crash."""
    async with host_that_crashes(store) as (core, nursery):
        core.deploy(
            manifest("k", capabilities=KV_AND_TIMERS), ScriptedFactory(counting_sleeper(5.0))
        )

        async def send() -> None:
            await core.dispatcher.deliver(A, "message", message, idempotency_key=key)

        nursery.start_soon(send)
        await trio.sleep(2)
        entry = the_inbox_entry(store, A)
        assert (entry.event_kind, entry.idempotency_key) == ("message", key)
        assert entry.payload == pack(message)
        wall = core.services.clock
    return wall, trio.current_time()


async def test_a_client_retry_of_a_crashed_keyed_message_handles_it_once(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        wall, t1 = await crash_a_keyed_message(store, "hello", "k1")

        async with open_core(store, wall_clock=wall) as core:
            await wait_all_tasks_blocked()  # the loop found the entry; the kind is not there
            factory = ScriptedFactory(counting_sleeper(5.0))
            core.kinds.put(
                build_kind(manifest("k", capabilities=KV_AND_TIMERS), factory, core.host_services)
            )

            streamed: list[Any] = []
            replies = await core.dispatcher.deliver(
                A, "message", "hello", idempotency_key="k1", on_reply=streamed.append
            )

            assert replies == streamed == ["before", "after"]
            assert timeline(factory, t1) == [("on-event", 0), ("on-complete", 5)]
            assert_counted_once(store, A)
            assert store.read_deliveries(A) == []
            record = store.read_response(A, "k1")
            assert record is not None and unpack(record.response) == ["before", "after"]

            # The loop, told of the kind now, has nothing left to deliver.
            core.deliveries.kind_deployed("k")
            await trio.sleep(100)
            assert len(factory.calls) == 2

            # A retry of the finished message: its replies, recorded; the guest does not run.
            now = trio.current_time()
            assert await core.dispatcher.deliver(A, "message", "hello", idempotency_key="k1") == [
                "before",
                "after",
            ]
            assert trio.current_time() == now
            assert len(factory.calls) == 2
            # The same key with another message is refused.
            with pytest.raises(IdempotencyKeyReused):
                await core.dispatcher.deliver(A, "message", "other", idempotency_key="k1")
            assert len(factory.calls) == 2
            assert_counted_once(store, A)


async def test_a_client_retry_while_the_loop_re_runs_a_keyed_message_waits_for_its_replies(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        wall, t1 = await crash_a_keyed_message(store, "hello", "k1")

        async with open_core(store, wall_clock=wall) as core:
            factory = ScriptedFactory(counting_sleeper(5.0))
            core.deploy(manifest("k", capabilities=KV_AND_TIMERS), factory)
            await trio.sleep(1)
            assert timeline(factory, t1) == [("on-event", 0)]  # the loop's re-run

            replies = await core.dispatcher.deliver(A, "message", "hello", idempotency_key="k1")

            assert replies == ["before", "after"]
            assert trio.current_time() == t1 + 5
            assert timeline(factory, t1) == [("on-event", 0), ("on-complete", 5)]
            assert_counted_once(store, A)
            assert store.read_deliveries(A) == []
            await trio.sleep(100)
            assert len(factory.calls) == 2


async def test_the_same_key_with_another_message_does_not_take_over_a_crashed_one(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        wall, _ = await crash_a_keyed_message(store, "hello", "k1")

        async with open_core(store, wall_clock=wall) as core:
            await wait_all_tasks_blocked()  # the loop found the entry; the kind is not there
            factory = ScriptedFactory(counting_sleeper(5.0))
            core.kinds.put(
                build_kind(manifest("k", capabilities=KV_AND_TIMERS), factory, core.host_services)
            )

            with pytest.raises(IdempotencyKeyReused):
                await core.dispatcher.deliver(A, "message", "other", idempotency_key="k1")

            core.deliveries.kind_deployed("k")
            await trio.sleep(100)
            assert [call.message for call in factory.events()] == ["hello"]
            assert_counted_once(store, A)


# -- asks ---------------------------------------------------------------------------------------


def answerer(call: Call) -> None:
    """Counts the asks it sees (state ``asks``), sleeps 10 s, then answers."""
    if call.export == "on-event":
        assert call.event_kind == "agent"
        call.set_state({"asks": (call.state or {}).get("asks", 0) + 1})
        call.sleep(10.0)
        return
    call.reply("answer")
    call.finish()


def asker(call: Call) -> None:
    """Asks ``b/b`` and awaits it; counts the answers it got (state ``n``) and replies them."""
    if call.export == "on-event":
        call.ask("b/b", {"q": call.message})
        return
    assert call.ok is True and isinstance(call.value, bytes)
    answer = unpack(call.value)
    call.set_state({"n": (call.state or {}).get("n", 0) + 1, "answer": answer})
    call.reply(answer)
    call.finish()


ASKER = manifest("a", capabilities={"agents": {"kinds": ["b"]}})
ANSWERER = manifest("b", capabilities={"timers": {}})
ASKING = AgentAddress("a", "a")
ASKED = AgentAddress("b", "b")


async def test_an_ask_cut_short_by_a_crash_is_answered_once(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        t0 = trio.current_time()
        async with host_that_crashes(store) as (core, nursery):
            core.deploy(ASKER, ScriptedFactory(asker))
            asked_before = ScriptedFactory(answerer)
            core.deploy(ANSWERER, asked_before)
            nursery.start_soon(core.send, "a/a", "hi")
            await trio.sleep(3)
            assert timeline(asked_before, t0) == [("on-event", 0)]
            assert the_inbox_entry(store, ASKING).event_kind == "message"
            ask = the_inbox_entry(store, ASKED)
            assert ask.event_kind == "agent"
            assert ask.idempotency_key is not None and ask.idempotency_key.startswith("ask-")
            wall = core.services.clock
        t1 = trio.current_time()
        assert store.read_agent(ASKED) is None

        async with open_core(store, wall_clock=wall) as core:
            asking = ScriptedFactory(asker)
            asked = ScriptedFactory(answerer)
            async with core.pushes.subscribe(ASKING) as pushed:
                core.deploy(ASKER, asking)
                core.deploy(ANSWERER, asked)
                assert await pushed.receive() == ["answer"]

            assert trio.current_time() == t1 + 10
            # The asked agent handled the ask once, though both the loop (its inbox entry)
            # and the asker's re-run (the ask, with the same key) brought it.
            assert timeline(asked, t1) == [("on-event", 0), ("on-complete", 10)]
            assert asked.calls[0].message == {"sender": "a/a", "message": {"q": "hi"}}
            assert unpack_state(store, ASKED) == {"asks": 1}
            assert timeline(asking, t1) == [("on-event", 0), ("on-complete", 10)]
            assert unpack_state(store, ASKING) == {"n": 1, "answer": ["answer"]}
            assert store.read_deliveries(ASKING) == store.read_deliveries(ASKED) == []
            await trio.sleep(100)
            assert (len(asking.calls), len(asked.calls)) == (2, 2)


def unpack_state(store: SqliteStore, address: AgentAddress) -> Any:
    record = store.read_agent(address)
    assert record is not None and record.state is not None
    return unpack(record.state)


def asker_then(call: Call) -> None:
    """Asks ``b/b`` in the continuation form and finishes; keeps the continuations it gets."""
    if call.event_kind == "message":
        call.ask("b/b", call.message, then="on_answer", tag={"t": 1})
        call.reply("asked")
        call.finish()
        return
    assert call.event_kind == "continuation"
    answers = (call.state or {}).get("answers", [])
    call.set_state({"answers": [*answers, call.message]})
    call.finish()


async def test_a_continuation_op_pending_at_a_crash_resumes_and_continues_once(
    clock: MockClock, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(300):
        t0 = trio.current_time()
        async with host_that_crashes(store) as (core, _):
            core.deploy(ASKER, ScriptedFactory(asker_then))
            asked_before = ScriptedFactory(answerer)
            core.deploy(ANSWERER, asked_before)
            assert await core.send("a/a", "hi") == ["asked"]
            await trio.sleep(3)
            assert timeline(asked_before, t0) == [("on-event", 0)]
            (pending,) = store.pending_ops(10)
            wall = core.services.clock
        t1 = trio.current_time()
        assert pending.address == ASKING
        assert (pending.capability, pending.call, pending.handler) == ("agents", "ask", "on_answer")
        assert pending.op_key.startswith("in-") and pending.op_key.endswith("/1")
        assert unpack(pending.tag) == {"t": 1}
        assert unpack(pending.request)["message"] == "hi"
        record = store.read_agent(ASKING)  # the asking handler committed, without state
        assert record is not None and (record.state, record.turns) == (None, 1)

        async with open_core(store, wall_clock=wall) as core:
            delivered: list[tuple[str, str, str | None]] = []
            deliver = core.dispatcher.deliver

            async def recording_deliver(
                address: AgentAddress, kind: str, *a: Any, **kw: Any
            ) -> Any:
                handled = kw.get("handled")
                delivered.append(
                    (str(address), kind, None if handled is None else handled.delivery_id)
                )
                return await deliver(address, kind, *a, **kw)

            monkeypatch.setattr(core.dispatcher, "deliver", recording_deliver)
            asking = ScriptedFactory(asker_then)
            asked = ScriptedFactory(answerer)
            core.deploy(ASKER, asking)
            core.deploy(ANSWERER, asked)
            await core.continuations.resume()
            await core.continuations.resume()  # once per process, however often resumed

            await asking.wait_calls(1)
            await wait_all_tasks_blocked()

            assert trio.current_time() == t1 + 10
            assert timeline(asked, t1) == [("on-event", 0), ("on-complete", 10)]
            assert unpack_state(store, ASKED) == {"asks": 1}
            result = {"handler": "on_answer", "tag": {"t": 1}, "ok": True, "value": ["answer"]}
            assert [(c.event_kind, c.at - t1, c.message) for c in asking.calls] == [
                ("continuation", 10, result)
            ]
            assert unpack_state(store, ASKING) == {"answers": [result]}
            assert ("a/a", "continuation", f"c-{pending.op_key}") in delivered
            assert store.pending_ops(10) == []
            assert store.read_deliveries(ASKING) == store.read_deliveries(ASKED) == []
            await trio.sleep(100)
            assert (len(asking.calls), len(asked.calls)) == (1, 2)


async def test_an_op_finished_since_the_pending_ops_were_read_is_not_run_again(
    clock: MockClock,
    store: SqliteStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``resume`` reads the pending ops, then takes each agent's lease: an op whose result
    was handed over in between (a read of the pending ops gone stale) does not run again."""
    with trio.fail_after(300):
        async with host_that_crashes(store) as (core, _):
            core.deploy(ASKER, ScriptedFactory(asker_then))
            core.deploy(ANSWERER, ScriptedFactory(answerer))
            assert await core.send("a/a", "hi") == ["asked"]
            await trio.sleep(3)
            wall = core.services.clock
        (pending,) = stale = store.pending_ops(10)

        async with open_core(store, wall_clock=wall) as core:
            asking = ScriptedFactory(asker_then)
            asked = ScriptedFactory(answerer)
            core.deploy(ASKER, asking)
            core.deploy(ANSWERER, asked)
            await core.continuations.resume()
            await asking.wait_calls(1)
            await wait_all_tasks_blocked()
            assert not store.op_pending(ASKING, pending.op_key)

            monkeypatch.setattr(store, "pending_ops", lambda limit, owner=None: stale)
            await core.continuations.resume()  # reads the finished op as pending
            await trio.sleep(100)
            assert (len(asking.calls), len(asked.calls)) == (1, 2)
            assert "not handed over" not in caplog.text
            assert store.read_deliveries(ASKING) == store.read_deliveries(ASKED) == []


# -- timers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("turns", [1, 2], ids=["one-turn", "two-turn"])
async def test_fifty_timers_due_at_once_are_each_handled_once(
    clock: MockClock, store: SqliteStore, turns: int
) -> None:
    def handle(call: Call) -> None:
        if call.export == "on-event":
            call.sandbox.memo[None] = call.message
            if turns == 2:
                call.sleep(1.0)
                return
        timer = call.sandbox.memo.pop(None)
        counts = dict((call.state or {}).get("counts", {}))
        counts[timer] = counts.get(timer, 0) + 1
        call.set_state({"counts": counts})
        call.finish()

    with trio.fail_after(600):
        async with open_core(store) as core:
            factory = ScriptedFactory(handle)
            core.deploy(manifest("k"), factory)
            t0 = trio.current_time()
            now = core.services.clock.now()
            timers = [Delivery(A, f"t{i}", now + 10, "timer", pack(f"t{i}")) for i in range(50)]
            await core.services.stores.commit(Commit(A, at=now, turn=False, deliveries=timers))
            core.services.deliveries_due.ring()

            await factory.wait_calls(50 * turns)
            await wait_all_tasks_blocked()

            events = sorted(call.at - t0 for call in factory.events())
            assert events == ([10.0] * 50 if turns == 1 else [10.0 + i for i in range(50)])
            assert unpack_state(store, A) == {"counts": {f"t{i}": 1 for i in range(50)}}
            record = store.read_agent(A)
            assert record is not None and record.turns == 50 * turns
            assert store.read_deliveries(A) == []
            await trio.sleep(100)
            assert len(factory.calls) == 50 * turns


async def test_a_recurring_catch_up_all_timer_far_behind_fires_at_most_max_catch_up_more(
    clock: MockClock, store: SqliteStore
) -> None:
    def handle(call: Call) -> None:
        call.reply(call.message)
        call.finish()

    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(handle)
            core.deploy(manifest("k", capabilities={"timers": {"max_catch_up": 5}}), factory)
            t0 = trio.current_time()
            # Fell due 100 periods ago (the host was down).
            behind = await core.commit_delivery(
                "k/a", "tick", after_s=-1000, every_s=10, catch_up="all", payload="tick"
            )

            await factory.wait_calls(8)
            await wait_all_tasks_blocked()

            # The 5 latest missed occurrences and the current one, then every period.
            assert [call.at - t0 for call in factory.calls] == [0] * 6 + [10, 20]
            assert all(call.event_kind == "timer" for call in factory.calls)
            (rearmed,) = store.read_deliveries(A)
            assert rearmed.due_at == behind.due_at + 103 * 10
            assert core.trio_time(rearmed.due_at) == t0 + 30
            record = store.read_agent(A)
            assert record is not None and record.turns == 8


async def test_a_timer_deleted_while_its_handler_runs_commits_nothing_of_that_handler(
    clock: MockClock, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def handle(call: Call) -> None:
        if call.export == "on-event":
            call.set_state({"n": 1})
            assert call.host("kv", "set", "count", b"1") is None
            assert call.host("agents", "send", "k", "other", pack("hi")) is None
            call.sleep(5.0)
            return
        call.reply("done")
        call.finish()

    with trio.fail_after(300):
        async with open_core(store) as core:
            outcomes: list[BaseException | list[Any]] = []
            deliver = core.dispatcher.deliver

            async def recording_deliver(*args: Any, **kw: Any) -> Any:
                try:
                    replies = await deliver(*args, **kw)
                except Exception as exc:
                    outcomes.append(exc)
                    raise
                outcomes.append(replies)
                return replies

            monkeypatch.setattr(core.dispatcher, "deliver", recording_deliver)
            factory = ScriptedFactory(handle)
            capabilities = {**KV_AND_TIMERS, "agents": {"kinds": ["k"]}}
            core.deploy(manifest("k", capabilities=capabilities), factory)
            t0 = trio.current_time()
            await core.commit_delivery("k/a", "t1", after_s=10)
            await trio.sleep(12)
            assert timeline(factory, t0) == [("on-event", 10)]

            # Someone else handled (or cancelled) the timer meanwhile.
            await core.services.stores.commit(Commit(A, at=0.0, turn=False, cancelled=["t1"]))
            await trio.sleep(100)

            assert timeline(factory, t0) == [("on-event", 10), ("on-complete", 15)]
            (outcome,) = outcomes
            assert isinstance(outcome, AlreadyHandled)
            assert store.read_agent(A) is None
            assert store.read_kv(A, "count") is None
            assert store.read_deliveries(AgentAddress("k", "other")) == []
            assert store.read_deliveries(A) == []
            assert store.read_usage(A, today(core)).turns == 0


async def test_a_timer_that_always_fails_is_dead_lettered_after_max_attempts(
    clock: MockClock, store: SqliteStore
) -> None:
    def trap(call: Call) -> None:
        raise GuestTrap("no luck")

    with trio.fail_after(300):
        async with open_core(store, max_delivery_attempts=3) as core:
            factory = ScriptedFactory(trap)
            core.deploy(manifest("k"), factory)
            t0 = trio.current_time()
            await core.commit_delivery("k/a", "t1", after_s=0, payload="p")

            await trio.sleep(0.5)
            (row,) = store.read_deliveries(A)
            assert row.attempts == 1
            assert row.last_error is not None and row.last_error.startswith("GuestTrap: ")
            assert core.trio_time(row.due_at) == t0 + 1

            await factory.wait_calls(3)
            await wait_all_tasks_blocked()

            assert [call.at - t0 for call in factory.calls] == [0, 1, 3]
            (dead,) = store.read_dead_letters(A)
            assert dead == DeadLetter(
                address=A,
                delivery_id="t1",
                event_kind="timer",
                payload=pack("p"),
                attempts=3,
                last_error=dead.last_error,
                failed_at=core.services.clock.now(),
            )
            assert dead.last_error.startswith("GuestTrap: ") and "no luck" in dead.last_error
            assert core.trio_time(dead.failed_at) == t0 + 3
            assert store.read_deliveries(A) == []
            assert store.count_dead_letters() == {"k": 1}
            assert store.count_dead_letters("k") == {"k": 1}
            assert store.count_dead_letters("other") == {}
            await trio.sleep(200)
            assert len(factory.calls) == 3


# -- failures -----------------------------------------------------------------------------------


def trap_in_a_later_turn(fail: list[bool]) -> Handler:
    """Awaits two sleeps (1 s, 4 s), then traps while ``fail[0]``; else counts and finishes."""
    counting = counting_sleeper(1.0, 4.0)

    def handle(call: Call) -> None:
        if call.export == "on-complete" and call.sandbox.memo.get(call.op_id) == 2 and fail[0]:
            raise GuestTrap("a later turn failed")
        counting(call)

    return handle


async def test_a_fresh_message_failing_in_a_later_turn_leaves_the_inbox(
    clock: MockClock, store: SqliteStore
) -> None:
    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(trap_in_a_later_turn([True]))
            core.deploy(manifest("k", capabilities=KV_AND_TIMERS), factory)
            t0 = trio.current_time()
            journaled: list[int] = []

            async def send() -> None:
                with pytest.raises(GuestTrap, match="a later turn failed"):
                    await core.send("k/a", "hello")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await trio.sleep(2)
                message_id = the_inbox_entry(store, A).delivery_id
                journaled.append(len(store.read_journal(A, message_id)))

            # The sender was told: the message leaves the inbox, and its journal goes too.
            assert journaled == [1]
            assert trio.current_time() == t0 + 5
            assert timeline(factory, t0) == [
                ("on-event", 0),
                ("on-complete", 1),
                ("on-complete", 5),
            ]
            assert store.read_deliveries(A) == []
            assert store.read_journal(A, message_id) == []
            assert store.read_agent(A) is None
            assert store.read_usage(A, today(core)).errors == 1
            await trio.sleep(100)
            assert len(factory.calls) == 3


async def test_a_replayed_message_failing_in_a_later_turn_stays_for_the_loop(
    clock: MockClock, store: SqliteStore
) -> None:
    fail = [True]
    with trio.fail_after(300):
        t0 = trio.current_time()
        async with host_that_crashes(store) as (core, nursery):
            core.deploy(
                manifest("k", capabilities=KV_AND_TIMERS),
                ScriptedFactory(trap_in_a_later_turn(fail)),
            )
            nursery.start_soon(core.send, "k/a", "hello")
            await trio.sleep(2)  # the first sleep ended at +1, journaled
            message_id = the_inbox_entry(store, A).delivery_id
            wall = core.services.clock
        t1 = trio.current_time()
        assert t1 == t0 + 2

        async with open_core(store, wall_clock=wall) as core:
            factory = ScriptedFactory(trap_in_a_later_turn(fail))
            core.deploy(manifest("k", capabilities=KV_AND_TIMERS), factory)
            await factory.wait_calls(3)
            await wait_all_tasks_blocked()

            # The re-run replays the first sleep, waits the second, and fails: nobody was
            # told, so the entry stays, with the attempt counted, for the loop to retry.
            assert trio.current_time() == t1 + 4
            assert timeline(factory, t1) == [
                ("on-event", 0),
                ("on-complete", 0),
                ("on-complete", 4),
            ]
            (entry,) = store.read_deliveries(A)
            assert (entry.delivery_id, entry.attempts) == (message_id, 1)
            assert entry.last_error is not None and "a later turn failed" in entry.last_error
            assert core.trio_time(entry.due_at) == t1 + 5
            assert len(store.read_journal(A, message_id)) == 1
            assert store.read_agent(A) is None

            fail[0] = False
            await factory.wait_calls(6)
            await wait_all_tasks_blocked()

            # Retried after its back-off; the journaled first sleep is still replayed.
            assert timeline(factory, t1)[3:] == [
                ("on-event", 5),
                ("on-complete", 5),
                ("on-complete", 9),
            ]
            assert_counted_once(store, A)
            assert store.read_deliveries(A) == []
            assert store.read_journal(A, message_id) == []
            await trio.sleep(100)
            assert len(factory.calls) == 6


async def test_the_loop_does_not_re_run_an_inbox_entry_it_read_before_the_handler_committed(
    clock: MockClock, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read of due deliveries runs on a worker thread in the host: it can read the inbox
    # entry of a message whose handler is running and return after the handler's commit.
    with trio.fail_after(300):
        async with open_core(store) as core:
            factory = ScriptedFactory(counting_sleeper(5.0))
            core.deploy(manifest("k", capabilities=KV_AND_TIMERS), factory)
            t0 = trio.current_time()
            stores = core.services.stores
            run = stores.run
            answered = trio.Event()
            slow_reads = [1]

            async def slow_run(method: Any, *args: Any, **kw: Any) -> Any:
                result = await run(method, *args, **kw)
                if getattr(method, "__name__", "") == "due_deliveries" and slow_reads[0]:
                    slow_reads[0] -= 1
                    await answered.wait()  # returns only once the sender has its replies
                return result

            async def send() -> None:
                assert await core.send("k/a", "hello") == ["before", "after"]
                answered.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await trio.sleep(4)
                monkeypatch.setattr(stores, "run", slow_run)
                core.services.deliveries_due.ring()  # another agent's commit, say
                await trio.sleep(50)

            assert slow_reads == [0]
            assert [call.message for call in factory.events()] == ["hello"]
            assert timeline(factory, t0) == [("on-event", 0), ("on-complete", 5)]
            assert_counted_once(store, A)
            assert store.read_deliveries(A) == []

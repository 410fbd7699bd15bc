"""End-to-end behaviour of the host facade with real guests, on both guest tiers.

Tests that take the ``tier`` fixture run twice: against the Python probe
(``tests/agents/probe``) and against its C twin (``tests/agents/native_probe``), which
answer the same messages. Timers run on trio's MockClock: guest turns run on real worker
threads (or inline on the loop), so time is driven explicitly once the host has settled.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from roost import (
    AgentCoolingDown,
    CpuDeadlineExceeded,
    DeployError,
    GuestTrap,
    Host,
    HostConfig,
    InvalidMessage,
    LimitExceeded,
    Manifest,
    MemoryLimitExceeded,
    Overloaded,
    UnknownKind,
    open_host,
)
from roost.address import AgentAddress
from roost.errors import AgentBusy, InvalidAddress

from .conftest import Tier, until, with_limits


@pytest.fixture
def clock() -> MockClock:
    return MockClock()  # no autojump: time moves only when a test jumps it


async def _settle(host: Host, *, in_flight: int = 0) -> None:
    """Wait until ``in_flight`` events are left and every task is blocked."""
    await until(lambda: host._registry.in_flight == in_flight)
    await wait_all_tasks_blocked()


async def _until_awaiting_ops(host: Host, *addresses: str) -> None:
    """Wait until each agent's handler awaits an op (its first turn committed) and the
    ops have started."""

    def awaiting() -> bool:
        actors = [host._registry.actor(AgentAddress.parse(a)) for a in addresses]
        return all(actor is not None and actor.pending_ops > 0 for actor in actors)

    await until(awaiting)
    await wait_all_tasks_blocked()


# -- state ---------------------------------------------------------------------------------------


async def test_echo_round_trip(host_config: Callable[..., HostConfig], tier: Tier) -> None:
    kind = tier.echo.name
    async with open_host(host_config()) as host:
        info = await host.deploy(tier.echo)
        assert info.name == kind
        assert await host.send(f"{kind}/alice", "hello") == [{"echo": "hello", "count": 1}]
        assert await host.send(f"{kind}/alice", {"n": [1, 2], "b": b"\x00"}) == [
            {"echo": {"n": [1, 2], "b": b"\x00"}, "count": 2}
        ]
        assert await host.send(f"{kind}/bob", "hi") == [{"echo": "hi", "count": 1}]


async def test_state_survives_host_restart(
    host_config: Callable[..., HostConfig], tier: Tier
) -> None:
    config = host_config()
    a = tier.at("a")
    async with open_host(config) as host:
        await host.deploy(tier.probe)
        assert await host.send(a, "count") == [1]
        assert await host.send(a, {"op": "kv_set", "key": "k", "value": b"v"}) == ["ok"]
        assert await host.send(a, "count") == [2]
    async with open_host(config) as host:
        await host.deploy(tier.probe)
        assert await host.send(a, "count") == [3]
        assert await host.send(a, {"op": "kv_get", "key": "k"}) == [b"v"]
        assert (await host.statistics()).activations == 1


async def test_state_survives_hibernate_and_wake(tier_host: Host, tier: Tier) -> None:
    a = tier.at("a")
    assert await tier_host.send(a, "count") == [1]
    tier_host.hibernate_idle()
    await wait_all_tasks_blocked()
    assert not tier_host.is_resident(a)
    stats = await tier_host.statistics()
    assert (stats.resident, stats.hibernated, stats.hibernations) == (0, 1, 1)
    assert await tier_host.send(a, "count") == [2]
    stats = await tier_host.statistics()
    assert (stats.resident, stats.activations, stats.hibernations) == (1, 2, 1)


async def test_statistics_time_the_garbage_collectors_pauses(probe_host: Host) -> None:
    before = (await probe_host.statistics()).gc_pause_seconds["2"]
    gc.collect()
    after = (await probe_host.statistics()).gc_pause_seconds["2"]
    assert after.count == before.count + 1
    assert after.total > before.total


# -- hibernation -------------------------------------------------------------------------------


async def test_idle_agent_hibernates_after_timeout(
    clock: MockClock, host_config: Callable[..., HostConfig], tier: Tier
) -> None:
    a = tier.at("a")
    async with open_host(host_config()) as host:
        await host.deploy(with_limits(tier.probe, idle_timeout_s=30))
        assert await host.send(a, "count") == [1]
        await _settle(host)
        clock.jump(29.9)
        await wait_all_tasks_blocked()
        assert host.is_resident(a)
        clock.jump(0.2)
        await wait_all_tasks_blocked()
        assert not host.is_resident(a)
        stats = await host.statistics()
        assert (stats.resident, stats.hibernated, stats.hibernations) == (0, 1, 1)
        # The next event wakes it with its committed state.
        assert await host.send(a, "count") == [2]
        assert (await host.statistics()).activations == 2


async def test_activity_resets_the_idle_timer(
    clock: MockClock, host_config: Callable[..., HostConfig], tier: Tier
) -> None:
    a = tier.at("a")
    async with open_host(host_config()) as host:
        await host.deploy(with_limits(tier.probe, idle_timeout_s=30))
        await host.send(a, "count")
        await _settle(host)
        clock.jump(20)
        await host.send(a, "count")
        await _settle(host)
        clock.jump(20)  # 40 s after the first event, 20 s after the last
        await wait_all_tasks_blocked()
        assert host.is_resident(a)
        clock.jump(10.5)
        await wait_all_tasks_blocked()
        assert not host.is_resident(a)


async def test_lru_eviction_past_the_resident_cap(
    host_config: Callable[..., HostConfig], tier: Tier
) -> None:
    async with open_host(host_config(max_resident_agents=2)) as host:
        await host.deploy(tier.probe)
        await host.send(tier.at("a"), "count")
        await host.send(tier.at("b"), "count")
        await host.send(tier.at("a"), "count")  # a is now more recently used than b
        await host.send(tier.at("c"), "count")
        await wait_all_tasks_blocked()
        assert [host.is_resident(tier.at(x)) for x in "abc"] == [True, False, True]
        stats = await host.statistics()
        assert (stats.resident, stats.hibernated, stats.hibernations) == (2, 1, 1)
        assert await host.send(tier.at("b"), "count") == [2]  # woke with its state
        await wait_all_tasks_blocked()
        assert [host.is_resident(tier.at(x)) for x in "abc"] == [False, True, True]


async def test_overloaded_when_every_resident_agent_is_busy(
    clock: MockClock, host_config: Callable[..., HostConfig], tier: Tier
) -> None:
    a, b, c = tier.at("a"), tier.at("b"), tier.at("c")
    async with open_host(host_config(max_resident_agents=2)) as host:
        await host.deploy(tier.probe)
        replies: dict[str, list[object]] = {}

        async def sleep(address: str) -> None:
            replies[address] = await host.send(address, {"op": "sleep", "seconds": 60})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleep, a)
            await _until_awaiting_ops(host, a)
            nursery.start_soon(sleep, b)  # b is now more recently used than a
            await _until_awaiting_ops(host, a, b)
            # Both resident agents are mid-event: none can be evicted for a third.
            with pytest.raises(Overloaded, match="max_resident_agents") as refused:
                await host.send(c, "count")
            assert refused.value.retry_after_s > 0
            assert (await host.statistics()).resident == 2
            clock.jump(60)
        assert replies == {a: ["before", {"after": 1}], b: ["before", {"after": 1}]}
        await _settle(host)
        # Once they are idle again, the least recently used one makes room.
        assert await host.send(c, "count") == [1]
        await wait_all_tasks_blocked()
        assert [host.is_resident(x) for x in (a, b, c)] == [False, True, True]
        assert await host.send(a, {"op": "sleep", "seconds": 0}) == ["before", {"after": 2}]


async def test_a_standing_queue_is_shed_by_queueing_delay_then_admission_reopens(
    host_config: Callable[..., HostConfig], native_probe_manifest: Manifest
) -> None:
    # Turns on one worker thread (none inline on the loop) and a 1 ms target: 60 agents
    # woken at once queue for the worker far longer than that, so the host refuses a share
    # of the new events, naming the setting.
    config = host_config(
        worker_threads=1,
        inline_slice_ms=0,
        queue_target_ms=1,
        queue_interval_ms=1,
        max_activations_per_s=10_000,
    )
    async with open_host(config) as host:
        kind = (await host.deploy(native_probe_manifest)).name
        outcomes: list[str] = []

        async def send(n: int) -> None:
            for _ in range(5):  # a few waves, each admitted or refused on its own
                try:  # a turn with some work in it: 60 KB of state to write
                    await host.send(f"{kind}/u{n}", {"op": "big_state", "size": 60_000})
                    outcomes.append("ok")
                except Overloaded as exc:
                    assert "queue_target_ms" in str(exc)
                    assert exc.retry_after_s > 0
                    outcomes.append("refused")

        async with trio.open_nursery() as nursery:
            for n in range(60):
                nursery.start_soon(send, n)
        assert outcomes.count("refused") > 0
        assert outcomes.count("ok") > 0
        # The queue is gone: within a few hundred milliseconds every event is admitted.
        admitted_in_a_row = 0
        with trio.fail_after(5):
            while admitted_in_a_row < 20:
                try:
                    await host.send(f"{kind}/after", "count")
                    admitted_in_a_row += 1
                except Overloaded:
                    admitted_in_a_row = 0
                    await trio.sleep(0.01)  # real time: admission measures real waits


# -- isolation and limits ------------------------------------------------------------------------


async def test_kv_is_private_to_each_agent(tier_host: Host, tier: Tier) -> None:
    alice, bob = tier.at("alice"), tier.at("bob")
    await tier_host.send(alice, {"op": "kv_set", "key": "secret", "value": b"A"})
    await tier_host.send(alice, {"op": "kv_set", "key": "x/y", "value": b"B"})
    for key in [
        "secret",
        "x/y",
        "alice/secret",
        f"{alice}/secret",
        "../alice/secret",
        "%",
        "_ecret",
        "secret\x00",
        " secret",
    ]:
        assert await tier_host.send(bob, {"op": "kv_get", "key": key}) == [None]
    assert await tier_host.send(bob, {"op": "kv_keys"}) == [[]]
    assert await tier_host.send(alice, {"op": "kv_keys"}) == [["secret", "x/y"]]
    await tier_host.send(bob, {"op": "kv_delete", "key": "secret"})
    assert await tier_host.send(alice, {"op": "kv_get", "key": "secret"}) == [b"A"]


async def test_kv_quota_is_enforced(tier_host: Host, tier: Tier) -> None:
    # max_value_bytes = 4096 (grant), max_kv_bytes = 16384 (limits)
    a = tier.at("a")
    [reply] = await tier_host.send(a, {"op": "kv_try_set", "key": "k", "value": b"v" * 5000})
    assert "max_value_bytes" in reply["error"]
    for i in range(4):  # 4 x 4002 bytes fit in 16384
        chunk = {"op": "kv_try_set", "key": f"k{i}", "value": b"v" * 4000}
        assert await tier_host.send(a, chunk) == ["ok"]
    [reply] = await tier_host.send(a, {"op": "kv_try_set", "key": "k9", "value": b"v" * 4000})
    assert "max_kv_bytes" in reply["error"]
    # Overwriting an existing key only counts the difference.
    overwrite = {"op": "kv_try_set", "key": "k0", "value": b"w" * 4000}
    assert await tier_host.send(a, overwrite) == ["ok"]
    assert await tier_host.send(a, {"op": "kv_get", "key": "k0"}) == [b"w" * 4000]


async def test_failed_turn_commits_nothing_and_agent_recovers(tier_host: Host, tier: Tier) -> None:
    a = tier.at("a")
    assert await tier_host.send(a, "count") == [1]
    with pytest.raises(GuestTrap) as info:
        await tier_host.send(a, {"op": "kv_set_then_raise", "key": "k", "value": b"lost"})
    assert "boom after writing" in str(info.value)
    for name in tier.traceback_names:
        assert name in info.value.guest_traceback
    assert await tier_host.send(a, {"op": "kv_get", "key": "k"}) == [None]
    assert await tier_host.send(a, "count") == [2]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"op": "loop"}, CpuDeadlineExceeded),
        ({"op": "bomb"}, MemoryLimitExceeded),
        ({"op": "big_state", "size": 100_000}, LimitExceeded),
        ({"op": "big_reply", "size": 100_000}, LimitExceeded),
    ],
)
async def test_runaway_guest_fails_only_its_own_turn(
    tier_host: Host, tier: Tier, message: dict[str, object], error: type[Exception]
) -> None:
    bad, good = tier.at("bad"), tier.at("good")
    assert await tier_host.send(bad, "count") == [1]
    assert await tier_host.send(good, "count") == [1]
    neighbour_replies: list[object] = []
    runaway_done = trio.Event()

    async def runaway() -> None:
        with pytest.raises(error):
            await tier_host.send(bad, message)
        runaway_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runaway)
        for _ in range(5):
            neighbour_replies.extend(await tier_host.send(good, "count"))
        # The neighbour's turns were not held up behind the runaway one.
        if message["op"] == "loop":
            assert not runaway_done.is_set()
    assert neighbour_replies == [2, 3, 4, 5, 6]
    if error is CpuDeadlineExceeded:
        # An agent that ran past its deadline is cooled down: refused a while (429).
        with pytest.raises(AgentCoolingDown) as cooling:
            await tier_host.send(bad, "count")
        assert 0 < cooling.value.retry_after_s <= 10
        return
    # The failing agent keeps serving from its last committed state.
    assert await tier_host.send(bad, "count") == [2]


async def test_guest_sees_host_clock_random_and_config(tier_host: Host, tier: Tier) -> None:
    a = tier.at("a")
    [first] = await tier_host.send(a, "env")
    [second] = await tier_host.send(a, "env")
    assert first["address"] == a
    assert first["config"] == {"greeting": "hello"}
    assert first["now"] > 1.7e9
    assert first["random"] != second["random"] or first["now"] != second["now"]


async def test_deploy_rejects_ungranted_imports(
    host_config: Callable[..., HostConfig], tier: Tier
) -> None:
    narrow = tier.probe.model_copy(update={"capabilities": {"log": {}, "clock": {}}})
    async with open_host(host_config()) as host:
        with pytest.raises(DeployError) as info:
            await host.deploy(narrow)
        assert host.kinds() == []
    message = str(info.value)
    for name in ("kv", "random", "timers"):
        assert f"roost:agent/{name}@0.1.0" in message
    assert "roost:agent/log@" not in message
    assert "[capabilities.kv]" in message


async def test_unknown_kind_and_bad_address(probe_host: Host) -> None:
    with pytest.raises(UnknownKind, match="nope"):
        await probe_host.send("nope/a", "count")
    with pytest.raises(InvalidAddress):
        await probe_host.send("probe/has space", "count")


async def test_mailbox_is_bounded(
    host_config: Callable[..., HostConfig], tier: Tier, autojump_clock: MockClock
) -> None:
    a = tier.at("a")
    async with open_host(host_config()) as host:
        await host.deploy(with_limits(tier.probe, mailbox_size=2))
        results: list[object] = []

        async def send_sleep() -> None:
            try:
                results.append(await host.send(a, {"op": "sleep", "seconds": 10}))
            except AgentBusy as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_sleep)
            await until(lambda: host._services.counters.turns >= 1)  # first event is being handled
            for _ in range(3):
                nursery.start_soon(send_sleep)
        busy = [r for r in results if isinstance(r, AgentBusy)]
        # One event is being handled, two wait in the mailbox, the fourth is refused.
        assert len(busy) == 1
        assert "mailbox_size" in str(busy[0])
        assert results.count(["before", {"after": 1}]) == 1
        assert len(results) == 4


# -- async ops ---------------------------------------------------------------------------------


async def test_sleep_completes_by_reentry_while_others_run(
    clock: MockClock, host_config: Callable[..., HostConfig], tier: Tier
) -> None:
    sleepy, busy = tier.at("sleepy"), tier.at("busy")
    async with open_host(host_config()) as host:
        # The idle timeout is shorter than the sleep: a pending op keeps the agent resident.
        await host.deploy(with_limits(tier.probe, idle_timeout_s=5))
        replies: list[object] = []
        started_at = trio.current_time()

        async def sleeper() -> None:
            replies.extend(await host.send(sleepy, {"op": "sleep", "seconds": 60}))
            replies.append(trio.current_time() - started_at)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            await until(lambda: host._services.counters.turns >= 1)
            # While the sleeper waits, other agents are served at once.
            for expected in (1, 2, 3):
                assert await host.send(busy, "count") == [expected]
            assert replies == []
            await _settle(host, in_flight=1)
            clock.jump(59)
            await wait_all_tasks_blocked()
            assert replies == []
            assert host.is_resident(sleepy)
            clock.jump(1)
        assert replies == ["before", {"after": 1}, 60]
        # The turn after the sleep committed its state.
        assert await host.send(sleepy, {"op": "sleep", "seconds": 0}) == [
            "before",
            {"after": 2},
        ]


async def test_two_sleeps_in_one_handler_and_a_refused_sleep(
    host_config: Callable[..., HostConfig], tier: Tier, autojump_clock: MockClock
) -> None:
    a = tier.at("a")
    async with open_host(host_config()) as host:
        await host.deploy(tier.probe)
        start = trio.current_time()
        assert await host.send(a, {"op": "sleep_twice", "seconds": 30}) == ["twice"]
        assert trio.current_time() - start >= 60
        # A sleep the timers capability refuses is an error the guest sees and handles.
        [reply] = await host.send(a, {"op": "sleep_bad"})
        assert "non-negative" in reply["error"]


# -- redeploys -----------------------------------------------------------------------------------


async def test_redeploy_keeps_resident_agents_state_and_runs_the_new_version(
    host_config: Callable[..., HostConfig], tier: Tier
) -> None:
    a, b = tier.at("a"), tier.at("b")
    async with open_host(host_config()) as host:
        first = await host.deploy(tier.probe)
        assert await host.send(a, "count") == [1]
        assert await host.send(a, "count") == [2]
        assert await host.send(b, {"op": "kv_set", "key": "k", "value": b"v"}) == ["ok"]
        assert host.is_resident(a) and host.is_resident(b)

        # The same component with a changed [config] and version.
        changed = tier.probe.model_copy(update={"version": "0.2.0", "config": {"greeting": "hi"}})
        second = await host.deploy(changed)
        assert (second.version, second.wasm_sha256) == ("0.2.0", first.wasm_sha256)
        [env] = await host.send(a, "env")
        assert env["config"] == {"greeting": "hi"}
        assert await host.send(a, "count") == [3]
        assert await host.send(b, {"op": "kv_get", "key": "k"}) == [b"v"]

        # Another component under the same kind name: the echo example, which counts
        # under the same state key as the probe.
        third = await host.deploy(tier.echo.model_copy(update={"name": tier.kind}))
        assert third.wasm_sha256 != first.wasm_sha256
        assert [k.wasm_sha256 for k in host.kinds()] == [third.wasm_sha256]
        assert await host.send(a, "count") == [{"echo": "count", "count": 4}]
        assert await host.send(b, "hi") == [{"echo": "hi", "count": 1}]
        assert (await host.statistics()).resident == 2


async def test_redeploy_lets_the_event_in_progress_finish_on_the_old_version(
    clock: MockClock, host_config: Callable[..., HostConfig], tier: Tier
) -> None:
    a, b = tier.at("a"), tier.at("b")
    async with open_host(host_config()) as host:
        await host.deploy(tier.probe)
        assert await host.send(a, "count") == [1]
        replies: list[object] = []

        async def send(address: str, message: object) -> None:
            replies.append(await host.send(address, message))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, a, {"op": "sleep", "seconds": 60})
            await _until_awaiting_ops(host, a)
            await host.deploy(tier.echo.model_copy(update={"name": tier.kind}))
            # Another agent of the kind runs the new version at once...
            assert await host.send(b, "now") == [{"echo": "now", "count": 1}]
            # ...while a's next event waits behind the one it is handling.
            nursery.start_soon(send, a, "next")
            await until(lambda: host._registry.in_flight == 2)
            await wait_all_tasks_blocked()
            assert replies == []
            clock.jump(60)
        # The sleep finished on the probe, then the waiting event ran on the echo, from
        # the state the probe committed.
        assert replies == [["before", {"after": 1}], [{"echo": "next", "count": 2}]]
        assert host.is_resident(a)
        # a's probe instance, b's echo instance, a's echo instance: one at a time for a.
        assert (await host.statistics()).activations == 3


# -- the facade ----------------------------------------------------------------------------------


async def test_restart_loads_compiled_component_from_cache(
    host_config: Callable[..., HostConfig], echo_manifest: Manifest, tmp_path: Path
) -> None:
    config = host_config(cache_dir=tmp_path / "fresh-cache")
    async with open_host(config) as host:
        await host.deploy(echo_manifest)
        assert (host._engine.compiled_fresh, host._engine.compiled_from_cache) == (1, 0)
    async with open_host(config) as host:
        await host.deploy(echo_manifest)
        assert (host._engine.compiled_fresh, host._engine.compiled_from_cache) == (0, 1)
        assert await host.send("echo/a", "x") == [{"echo": "x", "count": 1}]


async def test_errors_in_the_body_of_open_host_are_not_wrapped(
    host_config: Callable[..., HostConfig], echo_manifest: Manifest
) -> None:
    with pytest.raises(InvalidMessage, match="msgpack"):
        async with open_host(host_config()) as host:
            await host.deploy(echo_manifest)
            await host.send("echo/a", {1, 2, 3})


async def test_closing_the_host_does_not_wait_for_idle_timeouts(
    host_config: Callable[..., HostConfig], echo_manifest: Manifest, autojump_clock: MockClock
) -> None:
    async with open_host(host_config()) as host:
        await host.deploy(echo_manifest)
        await host.send("echo/a", "x")
        opened_until = trio.current_time()
    # Leaving the block neither slept through the 30 s idle timeout nor lost state.
    assert trio.current_time() - opened_until < 30
    async with open_host(host_config()) as host:
        await host.deploy(echo_manifest)
        assert await host.send("echo/a", "y") == [{"echo": "y", "count": 2}]

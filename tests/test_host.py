"""End-to-end behaviour of the host with real guests."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from roost import (
    CpuDeadlineExceeded,
    DeployError,
    GuestTrap,
    Host,
    HostConfig,
    InvalidMessage,
    LimitExceeded,
    Manifest,
    MemoryLimitExceeded,
    UnknownKind,
    open_host,
)
from roost.errors import AgentBusy, InvalidAddress

from .conftest import until, with_limits


async def test_echo_round_trip(
    host_config: Callable[..., HostConfig], echo_manifest: Manifest
) -> None:
    async with open_host(host_config()) as host:
        info = await host.deploy(echo_manifest)
        assert info.name == "echo"
        assert await host.send("echo/alice", "hello") == [{"echo": "hello", "count": 1}]
        assert await host.send("echo/alice", {"n": [1, 2]}) == [{"echo": {"n": [1, 2]}, "count": 2}]
        assert await host.send("echo/bob", "hi") == [{"echo": "hi", "count": 1}]


async def test_state_survives_host_restart(
    host_config: Callable[..., HostConfig], probe_manifest: Manifest
) -> None:
    config = host_config()
    async with open_host(config) as host:
        await host.deploy(probe_manifest)
        assert await host.send("probe/a", "count") == [1]
        assert await host.send("probe/a", {"op": "kv_set", "key": "k", "value": b"v"}) == ["ok"]
        assert await host.send("probe/a", "count") == [2]
    async with open_host(config) as host:
        await host.deploy(probe_manifest)
        assert await host.send("probe/a", "count") == [3]
        assert await host.send("probe/a", {"op": "kv_get", "key": "k"}) == [b"v"]
        stats = await host.statistics()
        assert stats.activations == 1


async def test_state_survives_hibernate_and_wake(probe_host: Host) -> None:
    assert await probe_host.send("probe/a", "count") == [1]
    probe_host.hibernate_idle()
    await trio.testing.wait_all_tasks_blocked()
    assert not probe_host.is_resident("probe/a")
    stats = await probe_host.statistics()
    assert (stats.resident, stats.hibernated, stats.hibernations) == (0, 1, 1)
    assert await probe_host.send("probe/a", "count") == [2]
    stats = await probe_host.statistics()
    assert (stats.resident, stats.activations) == (1, 2)


async def test_statistics_time_the_garbage_collectors_pauses(probe_host: Host) -> None:
    before = (await probe_host.statistics()).gc_pause_seconds["2"]
    gc.collect()
    after = (await probe_host.statistics()).gc_pause_seconds["2"]
    assert after.count == before.count + 1
    assert after.total > before.total


async def test_kv_is_private_to_each_agent(probe_host: Host) -> None:
    await probe_host.send("probe/alice", {"op": "kv_set", "key": "secret", "value": b"A"})
    await probe_host.send("probe/alice", {"op": "kv_set", "key": "x/y", "value": b"B"})
    for key in [
        "secret",
        "x/y",
        "alice/secret",
        "probe/alice/secret",
        "../alice/secret",
        "%",
        "_ecret",
        "secret\x00",
        " secret",
    ]:
        assert await probe_host.send("probe/bob", {"op": "kv_get", "key": key}) == [None]
    assert await probe_host.send("probe/bob", {"op": "kv_keys"}) == [[]]
    assert await probe_host.send("probe/alice", {"op": "kv_keys"}) == [["secret", "x/y"]]
    await probe_host.send("probe/bob", {"op": "kv_delete", "key": "secret"})
    assert await probe_host.send("probe/alice", {"op": "kv_get", "key": "secret"}) == [b"A"]


async def test_kv_quota_is_enforced(probe_host: Host) -> None:
    # max_value_bytes = 4096 (grant), max_kv_bytes = 16384 (limits)
    big = {"op": "kv_try_set", "key": "k", "value": b"v" * 5000}
    [reply] = await probe_host.send("probe/a", big)
    assert "max_value_bytes" in reply["error"]
    for i in range(4):  # 4 x 4002 bytes fit in 16384
        chunk = {"op": "kv_try_set", "key": f"k{i}", "value": b"v" * 4000}
        assert await probe_host.send("probe/a", chunk) == ["ok"]
    [reply] = await probe_host.send(
        "probe/a", {"op": "kv_try_set", "key": "k9", "value": b"v" * 4000}
    )
    assert "max_kv_bytes" in reply["error"]
    # Overwriting an existing key only counts the difference.
    assert await probe_host.send(
        "probe/a", {"op": "kv_try_set", "key": "k0", "value": b"w" * 4000}
    ) == ["ok"]


async def test_failed_turn_commits_nothing_and_agent_recovers(probe_host: Host) -> None:
    assert await probe_host.send("probe/a", "count") == [1]
    with pytest.raises(GuestTrap) as info:
        await probe_host.send("probe/a", {"op": "kv_set_then_raise", "key": "k", "value": b"lost"})
    assert "boom after writing" in str(info.value)
    assert "agent.py" in info.value.guest_traceback
    assert "ValueError" in info.value.guest_traceback
    assert await probe_host.send("probe/a", {"op": "kv_get", "key": "k"}) == [None]
    assert await probe_host.send("probe/a", "count") == [2]


async def test_deploy_rejects_ungranted_imports(
    host_config: Callable[..., HostConfig], probe_manifest: Manifest
) -> None:
    narrow = probe_manifest.model_copy(update={"capabilities": {"log": {}, "clock": {}}})
    async with open_host(host_config()) as host:
        with pytest.raises(DeployError) as info:
            await host.deploy(narrow)
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
    probe_host: Host, message: dict[str, object], error: type[Exception]
) -> None:
    assert await probe_host.send("probe/bad", "count") == [1]
    assert await probe_host.send("probe/good", "count") == [1]
    neighbour_replies: list[object] = []
    runaway_done = trio.Event()

    async def runaway() -> None:
        with pytest.raises(error):
            await probe_host.send("probe/bad", message)
        runaway_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runaway)
        for _ in range(5):
            neighbour_replies.extend(await probe_host.send("probe/good", "count"))
        # The neighbour's turns were not held up behind the runaway one.
        if message["op"] in ("loop", "bomb"):
            assert not runaway_done.is_set()
    assert neighbour_replies == [2, 3, 4, 5, 6]
    # The failing agent keeps serving from its last committed state.
    assert await probe_host.send("probe/bad", "count") == [2]


async def test_guest_sees_host_clock_random_and_config(probe_host: Host) -> None:
    [first] = await probe_host.send("probe/a", "env")
    [second] = await probe_host.send("probe/a", "env")
    assert first["address"] == "probe/a"
    assert first["config"] == {"greeting": "hello"}
    assert first["now"] > 1.7e9
    assert first["random"] != second["random"] or first["now"] != second["now"]


async def test_mailbox_is_bounded(
    host_config: Callable[..., HostConfig], probe_manifest: Manifest, autojump_clock: object
) -> None:
    manifest = with_limits(probe_manifest, mailbox_size=2)
    async with open_host(host_config()) as host:
        await host.deploy(manifest)
        results: list[object] = []

        async def send_sleep() -> None:
            try:
                results.append(await host.send("probe/a", {"op": "sleep", "seconds": 10}))
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


async def test_builds_are_cached(cache_dir: Path, tmp_path: Path) -> None:
    from roost.build import build_agent

    source = Path(__file__).parents[1] / "examples" / "echo" / "agent.py"
    first = build_agent(source, tmp_path / "a.wasm", cache_dir=cache_dir)
    second = build_agent(source, tmp_path / "b.wasm", cache_dir=cache_dir)
    assert second.cached
    assert first.digest == second.digest
    assert (tmp_path / "a.wasm").read_bytes() == (tmp_path / "b.wasm").read_bytes()


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
    host_config: Callable[..., HostConfig], echo_manifest: Manifest, autojump_clock: object
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

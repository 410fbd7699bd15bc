"""Idle hibernation, LRU eviction and async-op re-entry, on trio's MockClock.

Guest turns run on real worker threads, so time is driven explicitly: the clock never
advances by itself, and each test jumps it once the host has settled.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from roost import Host, HostConfig, Manifest, open_host

from .conftest import until, with_limits


@pytest.fixture
def clock() -> MockClock:
    return MockClock()  # no autojump: time moves only when a test jumps it


async def _settle(host: Host) -> None:
    await until(lambda: host._registry.in_flight == 0)
    await wait_all_tasks_blocked()


async def test_idle_agent_hibernates_after_timeout(
    clock: MockClock, host_config: Callable[..., HostConfig], probe_manifest: Manifest
) -> None:
    async with open_host(host_config()) as host:
        await host.deploy(with_limits(probe_manifest, idle_timeout_s=30))
        assert await host.send("probe/a", "count") == [1]
        await _settle(host)
        clock.jump(29.9)
        await wait_all_tasks_blocked()
        assert host.is_resident("probe/a")
        clock.jump(0.2)
        await wait_all_tasks_blocked()
        assert not host.is_resident("probe/a")
        stats = await host.statistics()
        assert (stats.resident, stats.hibernated, stats.hibernations) == (0, 1, 1)
        # The next event wakes it with its committed state.
        assert await host.send("probe/a", "count") == [2]
        assert (await host.statistics()).activations == 2


async def test_activity_resets_the_idle_timer(
    clock: MockClock, host_config: Callable[..., HostConfig], probe_manifest: Manifest
) -> None:
    async with open_host(host_config()) as host:
        await host.deploy(with_limits(probe_manifest, idle_timeout_s=30))
        await host.send("probe/a", "count")
        await _settle(host)
        clock.jump(20)
        await host.send("probe/a", "count")
        await _settle(host)
        clock.jump(20)  # 40 s after the first event, 20 s after the last
        await wait_all_tasks_blocked()
        assert host.is_resident("probe/a")
        clock.jump(10.5)
        await wait_all_tasks_blocked()
        assert not host.is_resident("probe/a")


async def test_lru_eviction_past_the_resident_cap(
    host_config: Callable[..., HostConfig], probe_manifest: Manifest
) -> None:
    async with open_host(host_config(max_resident_agents=2)) as host:
        await host.deploy(probe_manifest)
        await host.send("probe/a", "count")
        await host.send("probe/b", "count")
        await host.send("probe/a", "count")  # a is now more recently used than b
        await host.send("probe/c", "count")
        await wait_all_tasks_blocked()
        assert [host.is_resident(f"probe/{x}") for x in "abc"] == [True, False, True]
        stats = await host.statistics()
        assert (stats.resident, stats.hibernated, stats.hibernations) == (2, 1, 1)
        assert await host.send("probe/b", "count") == [2]  # woke with its state
        await wait_all_tasks_blocked()
        assert [host.is_resident(f"probe/{x}") for x in "abc"] == [False, True, True]


async def test_sleep_completes_by_reentry_while_others_run(
    clock: MockClock, host_config: Callable[..., HostConfig], probe_manifest: Manifest
) -> None:
    async with open_host(host_config()) as host:
        # The idle timeout is shorter than the sleep: a pending op keeps the agent resident.
        await host.deploy(with_limits(probe_manifest, idle_timeout_s=5))
        replies: list[object] = []
        started_at = trio.current_time()

        async def sleeper() -> None:
            replies.extend(await host.send("probe/sleepy", {"op": "sleep", "seconds": 60}))
            replies.append(trio.current_time() - started_at)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            await until(lambda: host._services.counters.turns >= 1)
            # While the sleeper waits, other agents are served at once.
            for expected in (1, 2, 3):
                assert await host.send("probe/busy", "count") == [expected]
            assert replies == []
            await _settle_except_sleeper(host)
            clock.jump(59)
            await wait_all_tasks_blocked()
            assert replies == []
            assert host.is_resident("probe/sleepy")
            clock.jump(1)
        assert replies == ["before", {"after": 1}, 60]
        # The turn after the sleep committed its state.
        assert await host.send("probe/sleepy", {"op": "sleep", "seconds": 0}) == [
            "before",
            {"after": 2},
        ]


async def _settle_except_sleeper(host: Host) -> None:
    await until(lambda: host._registry.in_flight == 1)
    await wait_all_tasks_blocked()


async def test_two_sleeps_in_one_handler(
    host_config: Callable[..., HostConfig], probe_manifest: Manifest, autojump_clock: MockClock
) -> None:
    async with open_host(host_config()) as host:
        await host.deploy(probe_manifest)
        start = trio.current_time()
        assert await host.send("probe/a", {"op": "sleep_twice", "seconds": 30}) == ["twice"]
        assert trio.current_time() - start >= 60


async def test_denied_sleep_is_an_error_the_guest_sees(probe_host: Host) -> None:
    [reply] = await probe_host.send("probe/a", {"op": "sleep_bad"})
    assert "non-negative" in reply["error"]

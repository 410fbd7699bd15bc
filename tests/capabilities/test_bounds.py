"""Per-agent bounds with clear errors: asks and async ops per turn, pending timers per
agent, log bytes per handler, and guest log lines that cannot forge the host's."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import trio

from roost import HostConfig, Manifest

from ..conftest import with_limits
from .conftest import caller_host


def _granting(manifest: Manifest, capability: str, **grant: object) -> Manifest:
    capabilities = dict(manifest.capabilities)
    capabilities[capability] = {**capabilities.get(capability, {}), **grant}
    return manifest.model_copy(update={"capabilities": capabilities})


async def test_asks_per_handler_are_bounded_by_the_grant(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    manifest = _granting(caller_manifest, "agents", max_asks_per_turn=3)
    async with caller_host(host_config, manifest) as host:
        [reply] = await host.send("caller/a", {"op": "ask_many", "n": 10})
    assert reply["started"] == 3
    assert "more than 3 asks in one handler (agents grant max_asks_per_turn)" in reply["error"]


async def test_async_ops_per_turn_are_bounded_by_the_kind(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    manifest = with_limits(caller_manifest, max_ops_per_turn=5)
    async with caller_host(host_config, manifest) as host:
        [reply] = await host.send("caller/a", {"op": "ask_many", "n": 10})
    assert reply["started"] == 5
    assert "more than 5 async ops in one turn (limits.max_ops_per_turn)" in reply["error"]


async def test_pending_timers_are_bounded_per_agent_not_per_turn(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    manifest = _granting(caller_manifest, "timers", max_timers=5)
    async with caller_host(host_config, manifest) as host:
        [first] = await host.send("caller/a", {"op": "schedule_many", "n": 3, "prefix": "x"})
        assert first == {"scheduled": 3}
        [second] = await host.send("caller/a", {"op": "schedule_many", "n": 3, "prefix": "y"})
        assert second["scheduled"] == 2  # five pending in all
        assert "has 5 timers pending" in second["error"]
        # Reusing an id replaces a timer: no new one.
        [again] = await host.send("caller/a", {"op": "schedule_many", "n": 3, "prefix": "x"})
        assert again == {"scheduled": 3}
        exported = await host.export("caller/a")
        assert exported is not None
        assert len(exported.deliveries) == 5


async def test_guest_log_lines_are_escaped_and_bounded_per_handler(
    host_config: Callable[..., HostConfig],
    caller_manifest: Manifest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manifest = _granting(caller_manifest, "log", max_bytes_per_turn=1000)
    forged = "ok\nERROR roost.host: the host is on fire\r\x1b[31m"
    with caplog.at_level(logging.INFO):
        async with caller_host(host_config, manifest) as host:
            await host.send("caller/a", {"op": "log_many", "n": 50, "text": forged})
    guest = [r.getMessage() for r in caplog.records if r.name == "roost.guest"]
    lines = [line for line in guest if "the host is on fire" in line]
    assert lines, guest
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x1b" not in line
        assert line.endswith("ok\\nERROR roost.host: the host is on fire\\r\\x1b[31m")
    assert len(lines) == 1000 // len(forged.encode("unicode_escape")) or len(lines) < 50
    assert any("dropped" in line and "max_bytes_per_turn" in line for line in guest)


async def test_asks_past_the_bound_in_flight_wait_for_a_slot_and_nested_asks_still_run(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    # Two agents each ask four agents at once, which each ask one more: of one agent's
    # asks, two of each depth run at once and the rest wait; none fails, asks holding a
    # slot never wait on their own nested asks, and one agent's waits hold up no other's.
    async with caller_host(host_config, caller_manifest, max_asks_in_flight=2) as host:
        slots = host._dispatcher._ask_slots
        most: dict[tuple[str, int], int] = {}
        most_at_depth_1 = waited = 0

        async def watch() -> None:
            nonlocal most_at_depth_1, waited
            while True:
                at_depth_1 = 0
                for slot, limiter in list(slots.items()):
                    stats = limiter.statistics()
                    most[slot] = max(most.get(slot, 0), stats.borrowed_tokens)
                    waited = max(waited, stats.tasks_waiting)
                    at_depth_1 += stats.borrowed_tokens if slot[1] == 1 else 0
                most_at_depth_1 = max(most_at_depth_1, at_depth_1)
                await trio.sleep(0.005)

        replies: dict[str, list[object]] = {}

        async def ask_all(agent: str) -> None:
            message = {"op": "ask_all", "n": 4, "timeout": 20}
            [replies[agent]] = await host.send(f"caller/{agent}", message)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            with trio.fail_after(30):
                async with trio.open_nursery() as senders:
                    senders.start_soon(ask_all, "a")
                    senders.start_soon(ask_all, "b")
            nursery.cancel_scope.cancel()
    assert replies == {"a": [[["slept"]]] * 4, "b": [[["slept"]]] * 4}
    assert most == {("caller/a", 1): 2, ("caller/a", 2): 2, ("caller/b", 1): 2, ("caller/b", 2): 2}
    assert most_at_depth_1 == 4  # both agents' asks ran side by side
    assert waited > 0
    assert not slots  # slots of no ask in flight are forgotten


async def test_a_guest_refused_again_and_again_logs_one_warning_per_turn(
    host_config: Callable[..., HostConfig],
    caller_manifest: Manifest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="roost.capabilities"):
        async with caller_host(host_config, caller_manifest) as host:
            for _ in range(2):
                [reply] = await host.send("caller/a", {"op": "refused_many", "n": 500})
                assert reply == {"refused": 500}
            statistics = await host.statistics()
    refusals = [r for r in caplog.records if "agents.ask refused" in r.getMessage()]
    warnings = [r for r in refusals if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # the first of each turn
    assert "further refusals" in warnings[0].getMessage()
    assert len(refusals) == 1000  # the others at debug level
    assert statistics.denied["caller/agents"] == 1000  # roost_capability_denials_total

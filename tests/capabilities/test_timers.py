"""Durable timers: firing while hibernated, recurring timers, cancelling, and catching
up on the ones missed while the host was down, on trio's MockClock."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from roost import HostConfig, Manifest
from roost.address import AgentAddress
from roost.store.protocol import Commit, Delivery

from ..conftest import until
from .conftest import caller_host, caller_state, settle


async def test_timer_fires_after_its_delay_and_is_removed(
    clock: MockClock, host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with caller_host(host_config, caller_manifest) as host:
        await host.send("caller/a", {"op": "schedule", "after": 60, "payload": "ping"})
        await settle(host)
        host.hibernate_idle()
        await wait_all_tasks_blocked()
        clock.jump(59)
        await settle(host)
        assert (await host.statistics()).activations == 1
        clock.jump(1.5)
        await until(lambda: host._services.counters.turns >= 2)
        await settle(host)
        state = await caller_state(host, "a")
        assert state["fired"] == 1
        assert state["timer_payloads"] == ["ping"]
        assert (await host.statistics()).activations == 2  # it was woken for the timer
        exported = await host.export("caller/a")
        assert exported is not None and exported.deliveries == []
        assert not any(
            d.delivery_id for d in host.store.read_deliveries(AgentAddress("caller", "a"))
        )


async def test_recurring_timer_and_cancel(
    clock: MockClock, host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with caller_host(host_config, caller_manifest) as host:
        await host.send("caller/a", {"op": "schedule", "after": 10, "every": 10, "id": "tick"})
        for expected in (1, 2, 3):
            await settle(host)
            clock.jump(10)
            await until(lambda e=expected: host._services.counters.turns >= 1 + e)
        await settle(host)
        assert (await caller_state(host, "a"))["fired"] == 3
        assert await host.send("caller/a", {"op": "cancel", "id": "tick"}) == [True]
        await settle(host)
        clock.jump(100)
        await settle(host)
        assert (await caller_state(host, "a"))["fired"] == 3


@pytest.mark.parametrize(("policy", "fired"), [("once", 1), ("all", 4), ("skip", 0)])
async def test_catch_up_policy_for_timers_missed_while_down(
    clock: MockClock,
    host_config: Callable[..., HostConfig],
    caller_manifest: Manifest,
    policy: str,
    fired: int,
) -> None:
    config = host_config()
    async with caller_host(host_config, caller_manifest) as host:
        await host.send("caller/a", "state")  # the agent exists
        # A recurring timer whose last run was 35 s ago, every 10 s: while the host was
        # down it missed the occurrences at -35, -25, -15 and -5.
        now = host._services.clock.now()
        tick = Delivery(
            address=AgentAddress("caller", "a"),
            delivery_id="tick",
            due_at=now - 35,
            event_kind="timer",
            payload=msgpack.packb("tick"),
            every_s=10.0,
            catch_up=policy,  # type: ignore[arg-type]
        )
        commit = Commit(tick.address, at=now, turn=False, deliveries=[tick])
        await trio.to_thread.run_sync(host.store.commit, commit)
    async with caller_host(lambda **_: config, caller_manifest) as host:
        await until(lambda: host._services.counters.turns >= fired)
        await settle(host)
        await settle(host)
        state = await caller_state(host, "a")
        assert state.get("fired", 0) == fired
        exported = await host.export("caller/a")
        assert exported is not None
        [tick] = exported.deliveries
        assert tick.due_at > host._services.clock.now()  # re-armed in the future

"""The agents capability: send is committed with the turn, ask returns the other agent's
replies, grants are checked, and an ask cycle is an error rather than a deadlock."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from roost import GuestTrap, HostConfig, Manifest

from ..conftest import until
from .conftest import caller_host, caller_state


async def test_send_is_committed_with_the_turn(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with caller_host(host_config, caller_manifest) as host:
        with pytest.raises(GuestTrap):
            await host.send(
                "caller/a",
                {"op": "send_then_raise", "kind": "caller", "id": "b", "message": "lost"},
            )
        assert await host.send(
            "caller/a", {"op": "send", "kind": "caller", "id": "b", "message": "hello"}
        ) == ["sent"]
        await until(lambda: host._services.counters.turns >= 2 and host._registry.in_flight == 0)
        for _ in range(3_000):  # the delivery loop hands it over after the commit
            if "received" in await caller_state(host, "b"):
                break
            await trio.sleep(0.01)
        assert (await caller_state(host, "b"))["received"] == [["caller/a", "hello"]]


async def test_ask_returns_the_other_agents_replies_and_grants_are_checked(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with caller_host(host_config, caller_manifest) as host:
        reply = await host.send(
            "caller/a", {"op": "ask", "kind": "caller", "id": "b", "message": {"q": 1}}
        )
        assert reply == [[{"from": "caller/a", "got": {"q": 1}}]]
        [denied] = await host.send(
            "caller/a", {"op": "ask", "kind": "echo", "id": "b", "message": 1}
        )
        assert "may not message kind 'echo'" in denied["error"]
        assert "[capabilities.agents]" in denied["error"]


async def test_ops_awaited_in_turn_may_complete_in_any_order(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    # Real time: the slow agent sleeps 0.5 s, so the second ask completes first.
    async with caller_host(host_config, caller_manifest) as host:
        [[slow, fast]] = await host.send("caller/a", {"op": "ask_two"})
        assert slow == ["slept"]
        assert fast == [{"from": "caller/a", "got": "quick"}]


async def test_ask_cycle_is_a_clear_error_not_a_deadlock(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with caller_host(host_config, caller_manifest) as host:
        with trio.fail_after(20):
            [[inner]] = await host.send(
                "caller/a",
                {"op": "ask", "kind": "caller", "id": "b", "message": {"ask_back": True}},
            )
        assert "ask cycle: caller/a -> caller/b -> caller/a" in inner["error"]

"""Durable timers, agent messages, the llm (against the simulated provider) and continuations."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from loadtests.sim_llm import SimLLMConfig, SimLLMServer, serve_sim_llm
from roost import GuestTrap, Host, HostConfig, Manifest, open_host
from roost.address import AgentAddress
from roost.store.protocol import Commit, Delivery

from ..conftest import until

CALLER = "caller"


@asynccontextmanager
async def caller_host(
    host_config: Callable[..., HostConfig], manifest: Manifest, **settings: Any
) -> AsyncIterator[Host]:
    async with open_host(host_config(**settings)) as host:
        await host.deploy(manifest)
        yield host


@asynccontextmanager
async def sim_llm(**config: Any) -> AsyncIterator[SimLLMServer]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_sim_llm, SimLLMConfig(**config))
        yield server
        nursery.cancel_scope.cancel()


async def _state(host: Host, agent_id: str) -> dict[str, Any]:
    [state] = await host.send(f"{CALLER}/{agent_id}", "state")
    return dict(state)


async def _settle(host: Host) -> None:
    await until(lambda: host._registry.in_flight == 0)
    await wait_all_tasks_blocked()


# -- timers ---------------------------------------------------------------------------------


@pytest.fixture
def clock() -> MockClock:
    return MockClock()


async def test_timer_fires_after_its_delay_and_is_removed(
    clock: MockClock, host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with caller_host(host_config, caller_manifest) as host:
        await host.send("caller/a", {"op": "schedule", "after": 60, "payload": "ping"})
        await _settle(host)
        host.hibernate_idle()
        await wait_all_tasks_blocked()
        clock.jump(59)
        await _settle(host)
        assert (await host.statistics()).activations == 1
        clock.jump(1.5)
        await until(lambda: host._services.counters.turns >= 2)
        await _settle(host)
        state = await _state(host, "a")
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
            await _settle(host)
            clock.jump(10)
            await until(lambda e=expected: host._services.counters.turns >= 1 + e)
        await _settle(host)
        assert (await _state(host, "a"))["fired"] == 3
        assert await host.send("caller/a", {"op": "cancel", "id": "tick"}) == [True]
        await _settle(host)
        clock.jump(100)
        await _settle(host)
        assert (await _state(host, "a"))["fired"] == 3


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
        await _settle(host)
        await _settle(host)
        state = await _state(host, "a")
        assert state.get("fired", 0) == fired
        exported = await host.export("caller/a")
        assert exported is not None
        [tick] = exported.deliveries
        assert tick.due_at > host._services.clock.now()  # re-armed in the future


# -- agents ---------------------------------------------------------------------------------


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
            if "received" in await _state(host, "b"):
                break
            await trio.sleep(0.01)
        assert (await _state(host, "b"))["received"] == [["caller/a", "hello"]]


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


# -- llm --------------------------------------------------------------------------------------


async def test_llm_chat_uses_the_host_key_and_records_usage(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with sim_llm(api_key="host-secret", completion_tokens=5) as server:
        settings = {"llm_base_url": server.url, "llm_api_key": "host-secret"}
        async with caller_host(host_config, caller_manifest, **settings) as host:
            [content] = await host.send("caller/a", {"op": "chat", "text": "hello there"})
            assert isinstance(content, str) and content
            assert (await _state(host, "a"))["tokens"] == 5
            status = await host.agent_status("caller/a")
            assert status.usage_today.llm_output_tokens == 5
            assert status.usage_today.llm_input_tokens > 0
        async with caller_host(
            host_config, caller_manifest, llm_base_url=server.url, llm_api_key="wrong"
        ) as host:
            [failed] = await host.send("caller/a", {"op": "chat", "text": "hi"})
            assert "401" in failed["error"]


async def test_llm_streams_tokens_to_the_caller(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with (
        sim_llm(completion_tokens=4) as server,
        caller_host(host_config, caller_manifest, llm_base_url=server.url) as host,
    ):
        tokens: list[str] = []
        [content] = await host.send(
            "caller/a",
            {"op": "chat", "text": "stream please", "stream": True},
            on_token=tokens.append,
        )
        assert len(tokens) >= 2
        assert "".join(tokens) == content


async def test_llm_token_budget(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    manifest = caller_manifest.model_copy(
        update={"budgets": caller_manifest.budgets.model_copy(update={"llm_tokens_per_day": 10})}
    )
    async with (
        sim_llm(completion_tokens=8) as server,
        caller_host(host_config, manifest, llm_base_url=server.url) as host,
    ):
        [first] = await host.send("caller/a", {"op": "chat", "text": "one two three"})
        assert isinstance(first, str)
        [second] = await host.send("caller/a", {"op": "chat", "text": "again"})
        assert "llm_tokens_per_day" in second["error"]


async def test_continuation_lets_the_agent_hibernate_while_the_llm_works(
    clock: MockClock, host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with (
        sim_llm(latency_ms=30_000) as server,
        caller_host(host_config, caller_manifest, llm_base_url=server.url) as host,
    ):
        assert await host.send(
            "caller/a", {"op": "chat_then", "text": "slow", "tag": {"n": 7}}
        ) == ["started"]
        await _settle(host)
        host.hibernate_idle()
        await wait_all_tasks_blocked()
        assert not host.is_resident("caller/a")  # hibernated, call still pending
        clock.jump(31)
        await until(lambda: host._services.counters.turns >= 2)
        await _settle(host)
        state = await _state(host, "a")
        assert state["tag"] == {"n": 7}
        assert isinstance(state["answer"], str) and state["answer"]
        assert (await host.statistics()).activations == 2


async def test_a_thousand_pending_llm_calls_do_not_hold_threads(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest, autojump_clock: object
) -> None:
    async with (
        sim_llm(latency_ms=2_000) as server,
        caller_host(
            host_config,
            caller_manifest,
            llm_base_url=server.url,
            max_resident_agents=1_000,
        ) as host,
    ):
        peak_threads = 0
        done = 0

        async def chat(i: int) -> None:
            nonlocal done
            [content] = await host.send(f"caller/u{i}", {"op": "chat", "text": f"hi {i}"})
            assert isinstance(content, str)
            done += 1

        async def watch() -> None:
            nonlocal peak_threads
            while done < 1_000:
                peak_threads = max(peak_threads, threading.active_count())
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for i in range(1_000):
                nursery.start_soon(chat, i)
        assert done == 1_000
        assert peak_threads < 64

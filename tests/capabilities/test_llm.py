"""The llm capability against the SIMULATED provider (``loadtests/sim_llm.py``): the
host's key, usage, streaming, the token budget, continuations, and pending calls that hold
no thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from roost import HostConfig, Manifest

from ..conftest import sim_llm, until
from .conftest import caller_host, caller_state, settle


async def test_llm_chat_uses_the_host_key_and_records_usage(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with sim_llm(api_key="host-secret", completion_tokens=5) as server:
        settings = {"llm_base_url": server.url, "llm_api_key": "host-secret"}
        async with caller_host(host_config, caller_manifest, **settings) as host:
            [content] = await host.send("caller/a", {"op": "chat", "text": "hello there"})
            assert isinstance(content, str) and content
            assert (await caller_state(host, "a"))["tokens"] == 5
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


async def test_llm_token_budget_reserves_max_tokens_when_a_call_starts(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    # Each call reserves its max_tokens (the grant's 64 here) when it starts.
    manifest = caller_manifest.model_copy(
        update={"budgets": caller_manifest.budgets.model_copy(update={"llm_tokens_per_day": 70})}
    )
    async with (
        sim_llm(completion_tokens=8) as server,
        caller_host(host_config, manifest, llm_base_url=server.url) as host,
    ):
        [first] = await host.send("caller/a", {"op": "chat", "text": "one two three"})
        assert isinstance(first, str)
        used = (await host.agent_status("caller/a")).usage_today.llm_tokens
        assert 8 < used < 30  # what the call really used, not what it reserved
        [second] = await host.send("caller/a", {"op": "chat", "text": "again"})
        assert "llm_tokens_per_day" in second["error"]  # used + 64 > 70
        assert server.statistics().requests == 1  # refused before it reached the provider


async def test_a_call_whose_max_tokens_pass_the_budget_is_refused_at_once(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    manifest = caller_manifest.model_copy(
        update={"budgets": caller_manifest.budgets.model_copy(update={"llm_tokens_per_day": 60})}
    )
    async with (
        sim_llm(completion_tokens=8) as server,
        caller_host(host_config, manifest, llm_base_url=server.url) as host,
    ):
        [refused] = await host.send("caller/a", {"op": "chat", "text": "hello"})  # 64 > 60
        assert "llm_tokens_per_day" in refused["error"]
        assert server.statistics().requests == 0


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
        await settle(host)
        host.hibernate_idle()
        await wait_all_tasks_blocked()
        assert not host.is_resident("caller/a")  # hibernated, call still pending
        clock.jump(31)
        await until(lambda: host._services.counters.turns >= 2)
        await settle(host)
        state = await caller_state(host, "a")
        assert state["tag"] == {"n": 7}
        assert isinstance(state["answer"], str) and state["answer"]
        assert (await host.statistics()).activations == 2


@pytest.mark.slow
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
            max_activations_per_s=1e6,  # a thousand agents start at once on purpose
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


async def test_send_with_status_reads_the_status_the_final_commit_left(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    # The status is read on the worker thread of the handler's final commit (one trip fewer
    # per message than send, then agent_status); it says what agent_status says after it.
    async with (
        sim_llm(completion_tokens=3) as server,
        caller_host(host_config, caller_manifest, llm_base_url=server.url) as host,
    ):
        for turns in (2, 4):
            replies, status = await host.send_with_status(
                "caller/a", {"op": "chat", "text": "hello"}
            )
            assert len(replies) == 1
            assert status == await host.agent_status("caller/a")
            assert status.turns == turns  # the message's turn and the llm result's
            assert status.resident
            assert status.inbox == 0  # the final commit took the message out of the inbox
            assert status.usage_today.llm_output_tokens == 3 * turns // 2

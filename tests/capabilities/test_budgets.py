"""Per-agent daily budgets across capabilities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from roost import GuestError, HostConfig, Manifest, QuotaExceeded

from ..conftest import sim_llm
from .conftest import caller_host


def _with_budgets(manifest: Manifest, **budgets: Any) -> Manifest:
    return manifest.model_copy(update={"budgets": manifest.budgets.model_copy(update=budgets)})


async def test_cpu_budget_refuses_events_once_spent(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    manifest = _with_budgets(caller_manifest, cpu_ms_per_day=0.001)
    async with caller_host(host_config, manifest) as host:
        await host.send("caller/a", "state")  # spends more than a microsecond of CPU
        with pytest.raises(QuotaExceeded, match="cpu_ms_per_day"):
            await host.send("caller/a", "state")
        # Another agent of the kind has its own budget.
        await host.send("caller/b", "state")
        status = await host.agent_status("caller/a")
        assert status.usage_today.turns == 1
        assert status.usage_today.cpu_ms > 0.001


async def test_http_call_budget_and_denial_metrics(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    manifest = _with_budgets(caller_manifest, http_calls_per_day=1)
    async with (
        sim_llm() as server,
        caller_host(host_config, manifest, http_allow_private=True) as host,
    ):
        url = server.url + "/models"
        [first] = await host.send("caller/a", {"op": "fetch", "url": url})
        assert first["status"] == 200
        [second] = await host.send("caller/a", {"op": "fetch", "url": url})
        assert "http_calls_per_day" in second["error"]
        stats = await host.statistics()
        assert stats.denied["caller/http"] == 1
        assert stats.denied["caller/llm"] == 0
        assert (await host.agent_status("caller/a")).usage_today.http_calls == 1


async def test_a_failed_handler_is_charged_for_the_calls_it_started(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    manifest = _with_budgets(caller_manifest, http_calls_per_day=3, llm_tokens_per_day=100)
    async with (
        sim_llm(completion_tokens=5) as server,
        caller_host(
            host_config, manifest, http_allow_private=True, llm_base_url=server.url
        ) as host,
    ):
        url = server.url + "/models"
        spend = {"op": "spend_then_fail", "url": url, "fetches": 2, "chats": 1, "max_tokens": 40}
        with pytest.raises(GuestError, match="failing after spending"):
            await host.send("caller/a", spend)
        usage = (await host.agent_status("caller/a")).usage_today
        assert usage.errors == 1
        assert usage.http_calls == 2  # both ran: the handler awaited them
        # The chat's tokens: what it used, or its reservation (max_tokens) where the
        # failed handler never recorded it; never nothing.
        assert 5 <= usage.llm_tokens <= 40 + 5
        # Two more calls would pass the budget of 3: the second is refused as it starts
        # (the agent replies with the error), the first is charged.
        [refused] = await host.send("caller/a", spend)
        assert "http_calls_per_day" in refused["error"]
        [refused] = await host.send("caller/a", {"op": "fetch", "url": url})
        assert "http_calls_per_day" in refused["error"]
        assert (await host.agent_status("caller/a")).usage_today.http_calls == 3


async def test_storage_budget_refuses_a_turn_that_would_pass_it(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    manifest = _with_budgets(caller_manifest, storage_bytes=200)
    async with caller_host(host_config, manifest) as host:
        assert await host.send("caller/a", {"op": "remember", "text": "short"}) == ["ok"]
        with pytest.raises(QuotaExceeded, match="storage_bytes"):
            await host.send("caller/a", {"op": "remember", "text": "x" * 500})
        [state] = await host.send("caller/a", "state")
        assert state == {"notes": "short"}  # the refused turn committed nothing

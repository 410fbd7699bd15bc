"""Per-agent daily budgets across capabilities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from roost import HostConfig, Manifest, QuotaExceeded

from .test_timers import caller_host, sim_llm


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

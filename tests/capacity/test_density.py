"""Thousands of agents of one kind in one process."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from roost import HostConfig, Manifest, open_host

AGENTS = 2_000


@pytest.mark.slow
async def test_two_thousand_resident_agents(
    host_config: Callable[..., HostConfig], echo_manifest: Manifest
) -> None:
    # A burst far past what the host serves at once, on purpose: no activation rate and no
    # queueing-delay admission (they would rightly shed it).
    config = host_config(
        max_resident_agents=AGENTS, max_activations_per_s=1e6, queue_target_ms=3_600_000
    )
    async with open_host(config) as host:
        await host.deploy(echo_manifest)
        replies: dict[int, list[object]] = {}
        limiter = trio.CapacityLimiter(16)

        async def talk(i: int) -> None:
            async with limiter:
                replies[i] = await host.send(f"echo/user-{i}", f"hi {i}")

        async with trio.open_nursery() as nursery:
            for i in range(AGENTS):
                nursery.start_soon(talk, i)
        assert all(replies[i] == [{"echo": f"hi {i}", "count": 1}] for i in range(AGENTS))
        stats = await host.statistics()
        assert (stats.resident, stats.activations, stats.hibernations) == (AGENTS, AGENTS, 0)
        # Every one of them is still live and keeps its own state.
        assert await host.send("echo/user-0", "again") == [{"echo": "again", "count": 2}]
        assert await host.send(f"echo/user-{AGENTS - 1}", "again") == [
            {"echo": "again", "count": 2}
        ]

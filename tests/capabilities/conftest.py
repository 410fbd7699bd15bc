"""Shared by the capability tests: a host with the caller agent (tests/agents/caller)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from trio.testing import MockClock, wait_all_tasks_blocked

from roost import Host, HostConfig, Manifest, open_host

from ..conftest import until


@pytest.fixture
def clock() -> MockClock:
    """Virtual time that moves only when the test jumps it (guest turns run on threads)."""
    return MockClock()


@asynccontextmanager
async def caller_host(
    host_config: Callable[..., HostConfig], manifest: Manifest, **settings: Any
) -> AsyncIterator[Host]:
    """A host with ``manifest`` (the caller, or a variant of it) deployed."""
    async with open_host(host_config(**settings)) as host:
        await host.deploy(manifest)
        yield host


async def caller_state(host: Host, agent_id: str) -> dict[str, Any]:
    """The state of ``caller/<agent_id>``, as the agent itself sees it."""
    [state] = await host.send(f"caller/{agent_id}", "state")
    return dict(state)


async def settle(host: Host) -> None:
    """Wait until no event is in flight and every task is blocked."""
    await until(lambda: host._registry.in_flight == 0)
    await wait_all_tasks_blocked()

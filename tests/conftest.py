"""Shared fixtures: real guests built once per session by the real toolchain (cached)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel

from roost import Host, HostConfig, Manifest, load_manifest, open_host
from roost.build import build_agent
from roost.capabilities import HostServices
from roost.telemetry import HostMetrics

ROOT = Path(__file__).resolve().parents[1]
ECHO_DIR = ROOT / "examples" / "echo"
PROBE_DIR = ROOT / "tests" / "agents" / "probe"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build outputs and compiled components, shared by the whole session."""
    return tmp_path_factory.mktemp("roost-cache")


def _built(source: Path, out_dir: Path, cache_dir: Path) -> Path:
    out = out_dir / f"{source.parent.name}.wasm"
    build_agent(source, out, cache_dir=cache_dir)
    return out


@pytest.fixture(scope="session")
def echo_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    wasm = _built(ECHO_DIR / "agent.py", tmp_path_factory.mktemp("echo"), cache_dir)
    return load_manifest(ECHO_DIR / "agent.toml").with_component(wasm)


@pytest.fixture(scope="session")
def probe_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    wasm = _built(PROBE_DIR / "agent.py", tmp_path_factory.mktemp("probe"), cache_dir)
    return load_manifest(PROBE_DIR / "agent.toml").with_component(wasm)


def with_limits(manifest: Manifest, **limits: Any) -> Manifest:
    return manifest.model_copy(update={"limits": manifest.limits.model_copy(update=limits)})


HostFactory = Callable[..., AbstractAsyncContextManager[Host]]


@pytest.fixture
def host_config(tmp_path: Path, cache_dir: Path) -> Callable[..., HostConfig]:
    def make(**overrides: Any) -> HostConfig:
        settings: dict[str, Any] = {"data_dir": tmp_path / "data", "cache_dir": cache_dir}
        settings.update(overrides)
        return HostConfig(**settings)

    return make


@pytest.fixture
async def probe_host(
    host_config: Callable[..., HostConfig], probe_manifest: Manifest
) -> AsyncIterator[Host]:
    async with open_host(host_config()) as host:
        await host.deploy(probe_manifest)
        yield host


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """The ``(event, data)`` pairs of a server-sent event stream, as they arrive."""
    name = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            yield name, json.loads(line[len("data: ") :])


async def until(predicate: Callable[[], bool], *, timeout_s: float = 30.0) -> None:
    """Let the loop run until ``predicate()`` holds. Bounded in real time, so it works
    under a MockClock that never advances by itself."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await trio.lowlevel.checkpoint()


CALLER_DIR = ROOT / "tests" / "agents" / "caller"


@pytest.fixture(scope="session")
def caller_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    wasm = _built(CALLER_DIR / "agent.py", tmp_path_factory.mktemp("caller"), cache_dir)
    return load_manifest(CALLER_DIR / "agent.toml").with_component(wasm)


def offline_services() -> HostServices:
    """Host services for capabilities bound outside a host, that make no outbound calls."""

    async def no_ask(*_args: Any, **_kwargs: Any) -> list[Any]:
        raise AssertionError("no agent to ask outside a host")

    return HostServices(
        settings=HostConfig(),
        http_client=None,  # type: ignore[arg-type]
        metrics=HostMetrics(),
        ask=no_ask,
    )

"""Shared fixtures: real guests built once per session by the real toolchain (cached)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel

from loadtests.pg_server import scratch_postgres, why_not
from loadtests.sim_llm import SimLLMConfig, SimLLMServer, serve_sim_llm
from roost import Host, HostConfig, Manifest, load_manifest, open_host
from roost.build import build_agent
from roost.capabilities import HostServices
from roost.telemetry import HostMetrics

ROOT = Path(__file__).resolve().parents[1]
ECHO_DIR = ROOT / "examples" / "echo"
C_ECHO_DIR = ROOT / "examples" / "echo_c"
PROBE_DIR = ROOT / "tests" / "agents" / "probe"
NATIVE_PROBE_DIR = ROOT / "tests" / "agents" / "native_probe"
DEVPROBE_DIR = ROOT / "tests" / "agents" / "devprobe"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build outputs and compiled components, shared by the whole session."""
    return tmp_path_factory.mktemp("roost-cache")


@pytest.fixture(scope="session")
def roost_cache_dir(cache_dir: Path) -> Path:
    """roost.testing's fixtures build into the session's cache too."""
    return cache_dir


@pytest.fixture
def devprobe_dir(tmp_path: Path) -> Path:
    """A copy of tests/agents/devprobe that a test may edit."""
    return Path(shutil.copytree(DEVPROBE_DIR, tmp_path / "devprobe"))


def built(manifest_path: Path, out_dir: Path, cache_dir: Path) -> Manifest:
    """The manifest at ``manifest_path``, with its source built (Python, C or Zig, by its
    suffix) into ``out_dir`` by the real toolchain, cached in ``cache_dir``."""
    manifest = load_manifest(manifest_path)
    assert manifest.source is not None
    out = out_dir / f"{manifest.name}.wasm"
    build_agent(manifest.source, out, cache_dir=cache_dir)
    return manifest.with_component(out)


@pytest.fixture(scope="session")
def echo_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(ECHO_DIR / "agent.toml", tmp_path_factory.mktemp("echo"), cache_dir)


@pytest.fixture(scope="session")
def probe_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(PROBE_DIR / "agent.toml", tmp_path_factory.mktemp("probe"), cache_dir)


@pytest.fixture(scope="session")
def c_echo_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(C_ECHO_DIR / "agent.toml", tmp_path_factory.mktemp("echo-c"), cache_dir)


@pytest.fixture(scope="session")
def native_probe_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """The C twin of the probe: the same ops, grants and limits, a 4 MiB memory cap."""
    return built(NATIVE_PROBE_DIR / "agent.toml", tmp_path_factory.mktemp("nprobe"), cache_dir)


# -- guest tiers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tier:
    """One guest tier: the probe agent (tests/agents/probe or its C twin, which answer the
    same messages) and the echo example, built for that tier."""

    name: str
    probe: Manifest
    echo: Manifest
    traceback_names: tuple[str, ...]
    """What the guest traceback of the probe's failing ``kv_set_then_raise`` names."""

    @property
    def kind(self) -> str:
        return self.probe.name

    def at(self, agent_id: str) -> str:
        """The address of the probe agent ``agent_id``."""
        return f"{self.kind}/{agent_id}"


@pytest.fixture(params=["python", "native"])
def tier(request: pytest.FixtureRequest) -> Tier:
    """Runs the test once with Python guests and once with native (C) guests."""
    if request.param == "python":
        return Tier(
            "python",
            request.getfixturevalue("probe_manifest"),
            request.getfixturevalue("echo_manifest"),
            traceback_names=("agent.py", "ValueError", "boom after writing"),
        )
    return Tier(
        "native",
        request.getfixturevalue("native_probe_manifest"),
        request.getfixturevalue("c_echo_manifest"),
        traceback_names=("boom after writing",),
    )


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


@pytest.fixture
async def tier_host(host_config: Callable[..., HostConfig], tier: Tier) -> AsyncIterator[Host]:
    """A host with the tier's probe deployed."""
    async with open_host(host_config()) as host:
        await host.deploy(tier.probe)
        yield host


@asynccontextmanager
async def sim_llm(**config: Any) -> AsyncIterator[SimLLMServer]:
    """The SIMULATED OpenAI-compatible server (``loadtests/sim_llm.py``) on loopback."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_sim_llm, SimLLMConfig(**config))
        yield server
        nursery.cancel_scope.cancel()


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
    under a MockClock that never advances by itself. Each round lets go of the GIL for a
    moment: the loop spinning here would otherwise hold it from the worker threads (at a
    lower priority, on a busy machine) whose turns the predicate waits for."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        os.sched_yield()  # releases the GIL, and the core, for a moment
        await trio.lowlevel.checkpoint()


CALLER_DIR = ROOT / "tests" / "agents" / "caller"


@pytest.fixture(scope="session")
def caller_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(CALLER_DIR / "agent.toml", tmp_path_factory.mktemp("caller"), cache_dir)


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a throwaway PostgreSQL server for the session (``loadtests/pg_server.py``);
    skips the test, saying why, when the server binaries are not installed."""
    reason = why_not()
    if reason is not None:
        pytest.skip(f"needs a PostgreSQL server: {reason}")
    with scratch_postgres() as server:
        yield server.url


# -- an MCP server on loopback ----------------------------------------------------------------


@dataclass
class McpServer:
    """The notes MCP server of ``examples/notes_mcp`` (the official ``mcp`` SDK's server)."""

    url: str
    notebooks: dict[str, list[str]]
    """Notes by session id (``shared`` when the client has none)."""
    requests: list[dict[str, Any]]
    """Every JSON-RPC message received (its method, and the session it named)."""
    forgotten: set[str] = field(default_factory=set)

    def forget_sessions(self) -> None:
        """Answer every session seen so far as a restarted server does: 404, not found."""
        self.forgotten |= {r["session"] for r in self.requests if r["session"]}
        self.notebooks.clear()


def _handshake_era(app: Any, requests: list[dict[str, Any]], forgotten: set[str]) -> Any:
    """An ASGI app that records each JSON-RPC message, and (``handshake`` era) answers
    ``server/discover`` as servers of the 2025 protocol do: an unknown method."""

    async def recorded(scope: Any, receive: Any, send: Any, *, refuse_discover: bool) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            rpc = json.loads(body)
        except ValueError:
            rpc = {}
        headers = dict(scope["headers"])
        session = headers.get(b"mcp-session-id", b"").decode() or None
        requests.append({"method": rpc.get("method"), "session": session})
        if session in forgotten:
            reply = {
                "jsonrpc": "2.0",
                "id": rpc.get("id"),
                "error": {"code": -32001, "message": "Session not found"},
            }
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(reply).encode()})
            return
        if refuse_discover and rpc.get("method") == "server/discover":
            reply = {
                "jsonrpc": "2.0",
                "id": rpc.get("id"),
                "error": {"code": -32601, "message": "Method not found"},
            }
            payload = json.dumps(reply).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return recorded


@asynccontextmanager
async def mcp_server(era: str = "discover") -> AsyncIterator[McpServer]:
    """The notes MCP server on a loopback port, speaking the 2026 protocol (``discover``)
    or only the handshake era (``handshake``: sessions with ``Mcp-Session-Id``)."""
    from functools import partial

    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    spec = importlib.util.spec_from_file_location(
        "notes_mcp_server", ROOT / "examples" / "notes_mcp" / "server.py"
    )
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:  # pydantic resolves the server's generic models through sys.modules
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    server, notebooks = module.build_server()
    requests: list[dict[str, Any]] = []
    forgotten: set[str] = set()
    inner = server.streamable_http_app()
    recorder = _handshake_era(inner, requests, forgotten)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await inner(scope, receive, send)
        else:
            await recorder(scope, receive, send, refuse_discover=era == "handshake")

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.0
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve, app, config, mode="asgi"))
        yield McpServer(f"{urls[0]}/mcp", notebooks, requests, forgotten)
        nursery.cancel_scope.cancel()

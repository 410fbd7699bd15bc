"""``roost serve``: a host behind the HTTP API on hypercorn's trio worker.

Shutdown: the first SIGTERM/SIGINT stops accepting connections, closes WebSockets with
1001, lets in-flight requests finish (``graceful_timeout_s``), then the host drains and
commits; a second signal exits at once.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, AsyncExitStack, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from .._progress import progress
from ..build import ensure_component
from ..config import HostConfig, ServerConfig
from ..errors import ConfigError, RoostError
from ..host import Host, open_host
from ..manifest import Manifest, load_manifest
from . import Credentials, create_app, load_credentials
from ._saved_kinds import saved_kinds
from .peers import HttpPeers
from .proxy_agent import WorkSlots, serve_proxy_agent

logger = logging.getLogger("roost.server")

_ANSWER_GRACE_S = 2.0
"""How long requests cut short at the end of the grace period have to answer."""
_LISTEN_BACKLOG = 2048
"""Connections the kernel holds for the server to accept. A burst of new connections past
the backlog loses its SYNs, and TCP retries them after 1, 3, 7... seconds: a short
backlog turns a burst into latencies of seconds that no admission control can see."""


@dataclass(frozen=True)
class Serving:
    urls: list[str]
    """Where the server listens, e.g. ``http://127.0.0.1:8470``."""
    host: Host
    shutting_down: trio.Event
    proxy_agent_port: int | None = None
    """Where it answers the proxy's agent check, if it does."""

    def shut_down(self) -> None:
        """Start a graceful shutdown, as the first SIGTERM does."""
        self.shutting_down.set()


def manifests_to_deploy(paths: list[Path]) -> list[Path]:
    """Manifest files named directly, or found in named directories (``*.toml`` and
    ``*/agent.toml``)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.glob("*.toml")) + sorted(path.glob("*/agent.toml"))
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"--deploy {path}: no such file or directory")
    return found


def check_dev_mode(settings: ServerConfig) -> None:
    if not settings.dev:
        return
    try:
        loopback = ipaddress.ip_address(settings.bind_host).is_loopback
    except ValueError:
        loopback = settings.bind_host == "localhost"
    if not loopback:
        raise ConfigError(
            f"--dev disables auth, so it only binds to loopback; got {settings.bind_host!r}"
        )


async def deploy_all(
    host: Host, manifests: Sequence[Path | Manifest], *, show_progress: bool = False
) -> None:
    """Kinds deployed over the API earlier, then the given manifests (built if needed).

    A saved kind that cannot be deployed any more is logged, with its files, and left out:
    the server serves the others. With ``show_progress``, builds and native compilation
    that take more than a second say so on stderr."""
    for saved in saved_kinds(host.config.data_dir):
        try:
            with _maybe(show_progress, f"compiling {saved.name} to native code (cached)"):
                await host.deploy(saved.manifest, component=saved.component)
        except RoostError as exc:
            logger.error(
                "saved kind %r could not be deployed and is not served (%s, %s): %s",
                saved.name,
                saved.manifest,
                saved.component,
                exc,
            )
    for item in manifests:
        if isinstance(item, Manifest):
            manifest = item
        else:
            manifest = await trio.to_thread.run_sync(load_manifest, item)
        source = manifest.source.name if manifest.source else manifest.name
        with _maybe(show_progress, f"building {source} (cached by content)"):
            built = await trio.to_thread.run_sync(
                partial(ensure_component, manifest, cache_dir=host.config.cache_dir)
            )
        with _maybe(show_progress, f"compiling {manifest.name} to native code (cached)"):
            await host.deploy(built)


def _maybe(show: bool, label: str) -> AbstractContextManager[None]:
    return progress(label) if show else nullcontext()


async def serve(
    host_config: HostConfig,
    settings: ServerConfig,
    *,
    deploy: Sequence[Path | Manifest],
    handle_signals: bool = True,
    show_progress: bool = False,
    task_status: trio.TaskStatus[Serving] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until a shutdown signal, :meth:`Serving.shut_down`, or cancellation.
    ``task_status`` receives a :class:`Serving` (the URLs, the host)."""
    check_dev_mode(settings)
    manifests: list[Path | Manifest] = [m for m in deploy if isinstance(m, Manifest)]
    manifests += manifests_to_deploy([p for p in deploy if not isinstance(p, Manifest)])
    credentials = await trio.to_thread.run_sync(load_credentials, settings, host_config.data_dir)
    # On a shared store, events for agents another host serves are forwarded to it; the
    # hosts of one store share the admin token (ROOST_ADMIN_TOKEN), which authorizes them.
    peers = HttpPeers(credentials.admin_token) if host_config.store_url else None
    async with AsyncExitStack() as stack:
        if peers is not None:
            stack.push_async_callback(peers.aclose)
        host = await stack.enter_async_context(open_host(host_config, peers=peers))
        await _serve_host(
            host,
            host_config,
            settings,
            credentials,
            manifests,
            handle_signals=handle_signals,
            show_progress=show_progress,
            task_status=task_status,
        )
        # Leaving open_host lets in-flight events finish and hibernates every agent.


async def _serve_host(
    host: Host,
    host_config: HostConfig,
    settings: ServerConfig,
    credentials: Credentials,
    manifests: Sequence[Path | Manifest],
    *,
    handle_signals: bool,
    show_progress: bool,
    task_status: trio.TaskStatus[Serving],
) -> None:
    await deploy_all(host, manifests, show_progress=show_progress)
    work_slots = None
    if settings.proxy_agent_port is not None:
        work_slots = WorkSlots(
            most=settings.proxy_slots,
            fewest=host.config.worker_threads,
            target_s=host.config.queue_target_ms / 1000,
        )
    app = create_app(host, settings, credentials, work_slots)
    api = app.state.api
    config = HypercornConfig()
    config.bind = [f"{_bracketed(settings.bind_host)}:{settings.port}"]
    # Hypercorn waits a little longer than the grace period, so that requests cut short
    # at its end can still answer 503 (see ApiState.expire_requests).
    config.graceful_timeout = settings.graceful_timeout_s + _ANSWER_GRACE_S
    config.keep_alive_timeout = settings.keep_alive_timeout_s
    config.accesslog = None
    config.errorlog = logging.getLogger("roost.http")
    config.websocket_max_message_size = settings.max_body_bytes

    async def shutdown_trigger() -> None:
        await api.shutting_down.wait()

    async def expire_after_grace() -> None:
        await api.shutting_down.wait()
        await trio.sleep(settings.graceful_timeout_s)
        if expired := api.expire_requests():
            logger.warning(
                "graceful timeout (%ss) passed: %d requests answered 503",
                settings.graceful_timeout_s,
                expired,
            )

    async with trio.open_nursery() as watchers:
        if handle_signals:
            watchers.start_soon(_watch_signals, api.shutting_down)
        watchers.start_soon(expire_after_grace)
        await watchers.start(app.state.console.history.run)  # the console's charts
        agent_port = None
        if settings.proxy_agent_port is not None and work_slots is not None:
            agent_port = await watchers.start(
                serve_proxy_agent, host, settings.bind_host, settings.proxy_agent_port, work_slots
            )
            logger.info("answering the proxy's agent check on port %d", agent_port)
        async with trio.open_nursery() as server:
            urls = await server.start(
                partial(
                    hypercorn_serve,
                    app,  # type: ignore[arg-type]
                    config,
                    shutdown_trigger=shutdown_trigger,
                )
            )
            if host.shared_store:
                await host.advertise(host_config.advertise_url or urls[0])
            task_status.started(Serving(urls, host, api.shutting_down, agent_port))
        # hypercorn stopped accepting and finished in-flight requests; now let the
        # agents finish and commit, with a second signal still exiting at once.
        await host.aclose()
        watchers.cancel_scope.cancel()


async def _watch_signals(shutting_down: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if shutting_down.is_set():
                print("roost: second signal, exiting now", file=sys.stderr, flush=True)
                os._exit(128 + signum)
            print(
                "roost: shutting down (finishing in-flight requests; signal again to exit now)",
                file=sys.stderr,
                flush=True,
            )
            shutting_down.set()


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

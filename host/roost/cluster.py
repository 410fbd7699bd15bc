"""``roost cluster up``: N hosts on one shared PostgreSQL store behind HAProxy, on this
machine, for trying a cluster (docs/cluster.md says how to run one on many machines).

Each host is a ``roost serve`` process of its own (``ROOST_HOST_ID=h1`` ... ``hN``, one
data directory each, ports ``port+1`` ... ``port+N``, their agent checks on the N ports
after); they share the store, the admin token and the token-signing secret. HAProxy
listens on ``port`` and hashes each request on the agent's ``kind/id`` (consistent
hashing), with health checks on ``/readyz``. The proxy
only spreads the load: a host that gets a request for an agent another host serves
forwards it there. A host that stops is restarted (it rejoins by itself).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import DEFAULT_PROXY_SLOTS
from .errors import ConfigError

HAPROXY_TEMPLATE = """\
# HAProxy in front of Roost hosts that share one PostgreSQL store (docs/cluster.md).
# Requests are hashed on the agent's kind/id (the 4th and 5th fields of
# /v1/agents/KIND/ID/...), with consistent hashing: when a host joins or leaves, only its
# share of agents moves. Correctness never depends on this: a host forwards a request for
# an agent another host serves to that host.
global
    maxconn 4000            # raise with the process's file limit (ulimit -n)

defaults
    mode http
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    # Overload is shed here, before it reaches a host: each host gets at most `maxconn`
    # requests at once (default-server below); the rest wait in this proxy's queue, and
    # one that waits longer than this is answered 503 at once, at no cost to the host.
    timeout queue {queue_timeout_ms}ms
    # ... in the API's JSON error shape, with Retry-After.
    {overloaded}
    # A request is sent again (to another host once the health checks mark its host down)
    # only if it never reached its host. One whose host failed after taking it may have
    # been applied: it is answered 502, and the client retries it with its
    # Idempotency-Key (the host answers a retry with the first outcome).
    {host_failed}
    option redispatch
    retries 3
    retry-on conn-failure

frontend roost
    bind {bind}
    # A stream (a WebSocket, or a message answered as server-sent events) is open for as
    # long as its client stays: a wait, not work. It goes to the same host by the same
    # hash, but does not take one of the host's `maxconn` slots.
    acl stream hdr(upgrade) -i websocket
    acl stream req.hdr(accept) -m sub text/event-stream
    use_backend streams if stream
    default_backend hosts

backend hosts
    balance hash path,field(4,/,2)
    hash-type consistent
    option httpchk GET /readyz
    http-check expect status 200
    # `maxconn` until a host's agent check answers; then what the host says it can take:
    # its requests doing work plus those waiting on LLM calls and other ops
    # (`roost serve --proxy-agent-port`).
    default-server inter 500ms fall 2 rise 2 maxconn {maxconn} agent-inter 250ms
{servers}

backend streams
    balance hash path,field(4,/,2)
    hash-type consistent
{tracking}
"""


_OVERLOADED = {
    "error": {
        "type": "Overloaded",
        "message": "every host is at capacity; retry shortly",
        "retryable": True,
    }
}
_HOST_FAILED = {
    "error": {
        "type": "HostFailed",
        "message": "the host handling this request stopped before answering, and the "
        "message may have been applied: retry it with its Idempotency-Key to get its outcome "
        "(without one, a retry may apply it twice)",
        "retryable": False,
    }
}


def _http_error(status: int, body: Mapping[str, object], headers: str = "") -> str:
    return (
        f"http-error status {status} content-type application/json {headers}string "
        + json.dumps(json.dumps(body, separators=(",", ":")))
    )


@dataclass(frozen=True)
class ProxiedHost:
    """A host as the proxy sees it."""

    name: str
    address: str
    """``ip:port`` of its HTTP API."""
    agent_port: int | None = None
    """The port of its agent check (``ServerConfig.proxy_agent_port``), if it answers one."""


def haproxy_config(
    bind: str,
    servers: Sequence[ProxiedHost],
    *,
    maxconn: int = DEFAULT_PROXY_SLOTS,
    queue_timeout_ms: int = 500,
) -> str:
    """HAProxy's configuration for ``servers``, listening on ``bind``: each host gets at most
    ``maxconn`` requests at once, or what its agent check says; one that waits in the
    proxy's queue longer than ``queue_timeout_ms`` is answered 503."""
    lines = "\n".join(f"    server {h.name} {h.address} check{_agent(h)}" for h in servers)
    tracking = "\n".join(f"    server {h.name} {h.address} track hosts/{h.name}" for h in servers)
    return HAPROXY_TEMPLATE.format(
        bind=bind,
        servers=lines,
        tracking=tracking,
        overloaded=_http_error(503, _OVERLOADED, "hdr Retry-After 1 "),
        host_failed=_http_error(502, _HOST_FAILED),
        maxconn=maxconn,
        queue_timeout_ms=queue_timeout_ms,
    )


def _agent(host: ProxiedHost) -> str:
    return "" if host.agent_port is None else f" agent-check agent-port {host.agent_port}"


@dataclass
class ClusterSettings:
    hosts: int
    store_url: str
    deploy: list[Path]
    port: int = 8470
    """The proxy's port; the hosts listen on the next ``hosts`` ports."""
    directory: Path = Path(".roost-cluster")
    """Each host's data directory, the proxy's configuration and the logs."""
    bind_host: str = "127.0.0.1"
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Member:
    name: str
    port: int
    agent_port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").is_file() else None
    )
    if found is None:
        raise ConfigError("roost cluster up needs HAProxy (Debian package `haproxy`)")
    return found


def _shared_secret(path: Path, env: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    if path.is_file():
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _start_host(settings: ClusterSettings, member: _Member, env: dict[str, str]) -> None:
    data = settings.directory / member.name
    data.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "roost.cli", "serve", "--port", str(member.port)]
    command += ["--host", settings.bind_host, "--data-dir", str(data)]
    command += ["--proxy-agent-port", str(member.agent_port)]
    for manifest in settings.deploy:
        command += ["--deploy", str(manifest)]
    host_env = {
        **env,
        "ROOST_HOST_ID": member.name,
        "ROOST_ADVERTISE_URL": f"http://{settings.bind_host}:{member.port}",
    }
    with member.log.open("ab") as log:
        member.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=host_env
        )


def _wait_listening(member: _Member, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = member.log.read_text(errors="replace")
        if f":{member.port}" in text and "listening on" in text:
            return
        assert member.process is not None
        if member.process.poll() is not None:
            raise ConfigError(f"host {member.name} exited at start:\n{text[-2000:]}")
        time.sleep(0.1)
    raise ConfigError(f"host {member.name} did not start in {timeout_s:.0f}s ({member.log})")


def run_cluster(
    settings: ClusterSettings,
    report: Callable[[str], None],
    *,
    stop_after_s: float | None = None,
) -> int:
    """Start the hosts and the proxy; keep them running (restarting a host that exits)
    until SIGINT/SIGTERM (or ``stop_after_s``); stop them all."""
    if settings.hosts < 1:
        raise ConfigError("--hosts must be at least 1")
    haproxy = haproxy_binary()
    directory = settings.directory
    directory.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **settings.extra_env,
        "ROOST_STORE_URL": settings.store_url,
        "ROOST_ADMIN_TOKEN": _shared_secret(directory / "admin_token", "ROOST_ADMIN_TOKEN"),
        "ROOST_SECRET": _shared_secret(directory / "secret", "ROOST_SECRET"),
    }
    members = [
        _Member(
            f"h{i}", settings.port + i, settings.port + settings.hosts + i, directory / f"h{i}.log"
        )
        for i in range(1, settings.hosts + 1)
    ]
    proxy: subprocess.Popen[bytes] | None = None
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    previous = [signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)]
    try:
        for member in members:
            _start_host(settings, member, env)
        for member in members:
            _wait_listening(member, 300)
            report(f"host {member.name} listening on http://{settings.bind_host}:{member.port}")
        config = directory / "haproxy.cfg"
        config.write_text(
            haproxy_config(
                f"{settings.bind_host}:{settings.port}",
                [
                    ProxiedHost(m.name, f"{settings.bind_host}:{m.port}", m.agent_port)
                    for m in members
                ],
            )
        )
        with (directory / "haproxy.log").open("ab") as log:
            proxy = subprocess.Popen(
                [haproxy, "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT
            )
        report(f"proxy (HAProxy) listening on http://{settings.bind_host}:{settings.port}")
        report(f"admin token in {directory / 'admin_token'}; logs and data in {directory}")
        started = time.monotonic()
        while not stopping:
            if stop_after_s is not None and time.monotonic() - started > stop_after_s:
                break
            time.sleep(0.5)
            for member in members:
                assert member.process is not None
                if member.process.poll() is not None and not stopping:
                    report(f"host {member.name} exited ({member.process.returncode}); restarting")
                    _start_host(settings, member, env)
            if proxy.poll() is not None:
                raise ConfigError(f"HAProxy exited: see {directory / 'haproxy.log'}")
    finally:
        for s, handler in zip((signal.SIGINT, signal.SIGTERM), previous, strict=True):
            signal.signal(s, handler)
        if proxy is not None and proxy.poll() is None:
            proxy.terminate()
            proxy.wait(timeout=10)
        for member in members:
            if member.process is not None and member.process.poll() is None:
                member.process.terminate()
        for member in members:
            if member.process is not None:
                try:
                    member.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    member.process.kill()
    report("cluster stopped")
    return 0

"""Real hosts (``roost serve`` processes) on one throwaway PostgreSQL server, and HAProxy in
front of them: what a cluster test starts for itself."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from loadtests.crash import ADMIN_TOKEN, MANIFEST, SECRET
from loadtests.failover import HostProcess, start_host, wait_ready
from loadtests.pg_server import free_port
from roost.cluster import ProxiedHost, haproxy_config
from roost.config import DEFAULT_PROXY_SLOTS

from ..conftest import ECHO_DIR

_DATABASES = itertools.count(1)


@pytest.fixture
def store_url(postgres_server: str) -> str:
    """A new, empty database on the session's PostgreSQL server."""
    name = f"cluster_{os.getpid()}_{next(_DATABASES)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"


def haproxy() -> str | None:
    for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if Path(path).is_file():
            return path
    return None


@dataclass
class Cluster:
    hosts: list[HostProcess]
    env: dict[str, str]
    proxy_url: str | None
    store_url: str

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=60, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kw
        )

    def owner(self, kind: str, agent_id: str) -> str | None:
        """The host id holding the agent's lease now, if any."""
        with psycopg.connect(self.store_url) as conn:
            row = conn.execute(
                "SELECT owner FROM leases WHERE kind = %s AND id = %s AND owner <> ''"
                " AND expires_at > extract(epoch from clock_timestamp())",
                (kind, agent_id),
            ).fetchone()
        return None if row is None else str(row[0]).split("/", 1)[0]

    def deliveries(self, kind: str, agent_id: str) -> int:
        """The agent's pending deliveries (timers, its inbox) in the store now."""
        with psycopg.connect(self.store_url) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM deliveries WHERE kind = %s AND id = %s", (kind, agent_id)
            ).fetchone()
        return 0 if row is None else int(row[0])

    async def export(self, url: str, kind: str, agent_id: str) -> dict[str, Any]:
        async with self.client() as client:
            response = await client.get(f"{url}/v1/agents/{kind}/{agent_id}/export")
        assert response.status_code == 200, response.text
        exported: dict[str, Any] = response.json()
        return exported


ClusterFactory = Callable[..., AbstractAsyncContextManager[Cluster]]


@pytest.fixture
def cluster(store_url: str, cache_dir: Path, tmp_path: Path) -> ClusterFactory:
    """``async with cluster(hosts=2, proxy=True, lease_ttl_s=...) as c``: hosts serving the
    ledger and echo agents on one store, and HAProxy in front when asked."""

    @asynccontextmanager
    async def open_cluster(
        hosts: int = 2,
        *,
        proxy: bool = False,
        lease_ttl_s: float = 10.0,
        proxy_maxconn: int = DEFAULT_PROXY_SLOTS,
        proxy_queue_ms: int = 500,
        proxy_agent: bool = True,
    ) -> AsyncIterator[Cluster]:
        binary = haproxy()
        if proxy and binary is None:
            pytest.skip("needs HAProxy (Debian package haproxy)")
        env = {
            **os.environ,
            "ROOST_STORE_URL": store_url,
            "ROOST_ADMIN_TOKEN": ADMIN_TOKEN,
            "ROOST_SECRET": SECRET,
            "ROOST_CACHE_DIR": str(cache_dir),
            "ROOST_GRACEFUL_TIMEOUT_S": "2",
            "ROOST_LEASE_TTL_S": str(lease_ttl_s),
            "ROOST_LLM_BASE_URL": "http://127.0.0.1:9/v1",
        }
        members = [
            HostProcess(
                f"h{i}",
                free_port(),
                tmp_path / f"h{i}.log",
                agent_port=free_port() if proxy_agent else None,
            )
            for i in range(1, hosts + 1)
        ]
        manifests = (MANIFEST, ECHO_DIR / "agent.toml")
        proxy_process: subprocess.Popen[bytes] | None = None
        try:
            await start_host(members[0], env, manifests)  # builds into the shared cache
            await wait_ready(members[0])
            for member in members[1:]:
                await start_host(member, env, manifests)
            for member in members[1:]:
                await wait_ready(member)
            proxy_url = None
            if proxy:
                assert binary is not None
                port = free_port()
                config = tmp_path / "haproxy.cfg"
                config.write_text(
                    haproxy_config(
                        f"127.0.0.1:{port}",
                        [ProxiedHost(m.name, f"127.0.0.1:{m.port}", m.agent_port) for m in members],
                        maxconn=proxy_maxconn,
                        queue_timeout_ms=proxy_queue_ms,
                    )
                )
                proxy_process = subprocess.Popen(  # noqa: ASYNC220 - started once, killed below
                    [binary, "-f", str(config), "-db"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                proxy_url = f"http://127.0.0.1:{port}"
                await _wait_proxy(proxy_url)
            yield Cluster(members, env, proxy_url, store_url)
        finally:
            if proxy_process is not None:
                proxy_process.kill()
                proxy_process.wait()
            for member in members:
                if member.process is not None and member.process.poll() is None:
                    member.process.kill()
            for member in members:
                if member.process is not None:
                    await member.process.wait()

    return open_cluster


async def _wait_proxy(url: str) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        with trio.fail_after(30):
            while True:
                try:
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)

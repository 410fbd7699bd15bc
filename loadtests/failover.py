"""Failover under load: kill -9 one of several hosts sharing a PostgreSQL store behind
HAProxy, and check that its agents serve from the others within the lease TTL, that no
acknowledged message is lost or applied twice, and that its timers fire.

Hosts (``roost serve``, the ``ledger`` test agent) share one store and sit behind HAProxy
(``roost.cluster.haproxy_config``: consistent hashing on ``kind/id``). Clients send
messages through the proxy, each agent one at a time with an idempotency key, retrying on
a cut connection or a 503 until acknowledged. Mid-run one host is killed with SIGKILL; the
figures are the failover time of each agent that host served (from the kill to the first
successful reply to that agent), then the host is started again and must serve again (it
rejoins by itself). Finally every agent's marks (``tests/agents/ledger``) are read back
and each message must have left each of them exactly once::

    python -m loadtests.failover --hosts 3 --agents 24 --json

Without ``--store``, a throwaway PostgreSQL server is started (``loadtests/pg_server.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from roost.cluster import ProxiedHost, haproxy_binary, haproxy_config

from .crash import ADMIN_TOKEN, MANIFEST, SECRET, VIAS, _read_marks, _Run, _settle, _verdict
from .pg_server import free_port, scratch_postgres
from .sim_llm import SimLLMConfig, serve_sim_llm

_START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class FailoverSettings:
    hosts: int = 3
    agents: int = 24
    seed: int = 1
    lease_ttl_s: float = 10.0
    load_before_kill_s: float = 4.0
    """Load before the kill (every agent is served by then)."""
    load_after_kill_s: float = 20.0
    """Load after the kill (past the lease TTL); then the killed host restarts."""
    store_url: str | None = None
    cache_dir: Path | None = None
    vias: tuple[str, ...] = VIAS


@dataclass
class HostProcess:
    name: str
    port: int
    log: Path
    process: trio.Process | None = None
    agent_port: int | None = None
    """Where it answers the proxy's agent check, if it does."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class _Load:
    run: _Run
    next_id: int = 1
    ok_at: dict[str, list[float]] = field(default_factory=dict)
    """Agent -> times of its acknowledged replies (perf_counter)."""
    errors: Counter[str] = field(default_factory=Counter)


async def start_host(
    host: HostProcess, env: dict[str, str], manifests: Sequence[Path] = (MANIFEST,)
) -> None:
    """Start ``roost serve`` as ``host`` (its log in a file), deploying ``manifests``."""
    log = host.log.open("ab")
    deploy = [arg for manifest in manifests for arg in ("--deploy", str(manifest))]
    host.process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "roost.cli",
            "serve",
            *deploy,
            "--port",
            str(host.port),
            *(() if host.agent_port is None else ("--proxy-agent-port", str(host.agent_port))),
        ],
        env={
            **env,
            "ROOST_HOST_ID": host.name,
            "ROOST_DATA_DIR": str(host.log.parent / host.name),
            "ROOST_ADVERTISE_URL": host.url,
        },
        stdout=log,
        stderr=log,
    )
    log.close()


async def wait_ready(host: HostProcess) -> None:
    """Wait until ``host`` answers ``/readyz``."""
    deadline = trio.current_time() + _START_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            assert host.process is not None
            if host.process.poll() is not None:
                raise RuntimeError(f"{host.name} exited:\n{host.log.read_text()[-3000:]}")
            try:
                if (await client.get(f"{host.url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if trio.current_time() > deadline:
                raise RuntimeError(f"{host.name} did not start:\n{host.log.read_text()[-3000:]}")
            await trio.sleep(0.1)


async def _send_loop(load: _Load, client: httpx.AsyncClient, agent: str, stop: trio.Event) -> None:
    """One agent's messages, one at a time, each retried until acknowledged."""
    run = load.run
    while not stop.is_set():
        n = load.next_id
        load.next_id += 1
        run.sent[n] = run.settings_vias[n % len(run.settings_vias)]  # type: ignore[attr-defined]
        run.agent_of[n] = agent
        while n not in run.acknowledged:
            run.attempts[n] += 1
            try:
                response = await client.post(
                    f"/v1/agents/ledger/{agent}/messages",
                    json={"message": {"id": n, "via": run.sent[n]}},
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": f"m{n}"},
                )
            except httpx.HTTPError as exc:
                load.errors[type(exc).__name__] += 1
                await trio.sleep(0.1)
                continue
            if response.status_code == 200:
                run.acknowledged[n] = response.json()["replies"]
                load.ok_at.setdefault(agent, []).append(time.perf_counter())
            elif response.status_code in (429, 502, 503, 504):
                load.errors[str(response.status_code)] += 1
                await trio.sleep(0.1)
            else:
                raise RuntimeError(f"message {n}: {response.status_code} {response.text}")
        await trio.sleep(0.05)


def _owners(store_url: str) -> dict[str, str]:
    """Agent id -> the host id holding its lease now."""
    import psycopg

    with psycopg.connect(store_url) as conn:
        rows = conn.execute(
            "SELECT id, owner FROM leases WHERE kind = 'ledger' AND owner <> ''"
            " AND expires_at > extract(epoch from clock_timestamp())"
        ).fetchall()
    return {str(agent): str(owner).split("/", 1)[0] for agent, owner in rows}


async def run_failover(
    settings: FailoverSettings, report: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run it; the figures and the verdict."""
    with ExitStack() as stack:
        store_url = settings.store_url
        if store_url is None:
            store_url = stack.enter_context(scratch_postgres()).url
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="roost-failover-")))
        return await _run(settings, store_url, tmp, report)
    raise AssertionError("unreachable")


async def _run(
    settings: FailoverSettings, store_url: str, tmp: Path, report: Callable[[str], None]
) -> dict[str, Any]:
    rng = random.Random(settings.seed)
    run = _Run(settings=None, rng=rng)  # type: ignore[arg-type]
    run.settings_vias = settings.vias  # type: ignore[attr-defined]
    load = _Load(run)
    hosts = [
        HostProcess(f"h{i}", free_port(), tmp / f"h{i}.log") for i in range(1, settings.hosts + 1)
    ]
    proxy_port = free_port()
    async with trio.open_nursery() as nursery:
        llm = await nursery.start(
            serve_sim_llm,
            SimLLMConfig.model_validate({"latency_ms": 80, "tokens_per_s": 200, "models": ["sim"]}),
        )
        env = {
            **os.environ,
            "ROOST_STORE_URL": store_url,
            "ROOST_ADMIN_TOKEN": ADMIN_TOKEN,
            "ROOST_SECRET": SECRET,
            "ROOST_CACHE_DIR": str(settings.cache_dir or tmp / "cache"),
            "ROOST_LLM_BASE_URL": llm.url,
            "ROOST_GRACEFUL_TIMEOUT_S": "2",
            "ROOST_LEASE_TTL_S": str(settings.lease_ttl_s),
        }
        # The first host compiles the agent into the shared cache; the others reuse it.
        await start_host(hosts[0], env)
        await wait_ready(hosts[0])
        for host in hosts[1:]:
            await start_host(host, env)
        for host in hosts[1:]:
            await wait_ready(host)
        config = tmp / "haproxy.cfg"
        config.write_text(
            haproxy_config(
                f"127.0.0.1:{proxy_port}",
                [ProxiedHost(h.name, f"127.0.0.1:{h.port}", h.agent_port) for h in hosts],
            )
        )
        with (tmp / "haproxy.log").open("wb") as proxy_log:
            proxy = await trio.lowlevel.open_process(
                [haproxy_binary(), "-f", str(config), "-db"],
                stdout=proxy_log,
                stderr=subprocess.STDOUT,
            )
        try:
            run.url = f"http://127.0.0.1:{proxy_port}"
            report(f"{settings.hosts} hosts and the proxy are up; load on {settings.agents} agents")
            stop = trio.Event()
            agents = [f"a{i}" for i in range(settings.agents)]
            async with httpx.AsyncClient(base_url=run.url, timeout=60) as client:
                async with trio.open_nursery() as senders:
                    for agent in agents:
                        senders.start_soon(_send_loop, load, client, agent, stop)
                    await trio.sleep(settings.load_before_kill_s)
                    owners = await trio.to_thread.run_sync(_owners, store_url)
                    victim = hosts[rng.randrange(len(hosts))]
                    affected = sorted(a for a in agents if owners.get(a) == victim.name)
                    assert victim.process is not None
                    victim.process.kill()
                    killed_at = time.perf_counter()
                    await victim.process.wait()
                    report(
                        f"killed {victim.name} (served {len(affected)} agents; "
                        f"{len(run.acknowledged)} messages acknowledged so far)"
                    )
                    await trio.sleep(settings.load_after_kill_s)
                    failover = {
                        a: min((t for t in load.ok_at.get(a, []) if t > killed_at), default=None)
                        for a in affected
                    }
                    report(f"restarting {victim.name}")
                    await start_host(victim, env)
                    await wait_ready(victim)
                    await trio.sleep(3)
                    stop.set()
                rejoined = await _served_by(client, victim)
            await _settle(run)
            marks = await _read_marks(run)
        finally:
            proxy.terminate()
            with trio.move_on_after(10):
                await proxy.wait()
            for host in hosts:
                if host.process is not None and host.process.poll() is None:
                    host.process.send_signal(signal.SIGTERM)
            for host in hosts:
                if host.process is not None:
                    with trio.move_on_after(60):
                        await host.process.wait()
                    if host.process.poll() is None:
                        host.process.kill()
            nursery.cancel_scope.cancel()
    verdict = _verdict(run, marks)
    times = [t - killed_at for t in failover.values() if t is not None]
    verdict.update(
        {
            "hosts": settings.hosts,
            "agents": settings.agents,
            "lease_ttl_s": settings.lease_ttl_s,
            "killed": victim.name,
            "affected_agents": len(affected),
            "failed_over": len(times),
            "failover_p50_s": round(statistics.median(times), 2) if times else None,
            "failover_max_s": round(max(times), 2) if times else None,
            "not_failed_over": [a for a, t in failover.items() if t is None],
            "rejoined": rejoined,
            "client_errors": dict(load.errors),
        }
    )
    return verdict


async def _served_by(client: httpx.AsyncClient, host: HostProcess) -> bool:
    """Whether the restarted host serves a message sent to it directly."""
    response = await client.post(
        f"{host.url}/v1/agents/ledger/rejoin-check/messages",
        json={"message": {"id": 0, "via": "none"}},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    return response.status_code == 200


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.failover",
        description="Kill -9 one of several hosts under load; check failover and exactly-once.",
    )
    parser.add_argument("--hosts", type=int, default=FailoverSettings.hosts, metavar="N")
    parser.add_argument("--agents", type=int, default=FailoverSettings.agents, metavar="N")
    parser.add_argument("--seed", type=int, default=FailoverSettings.seed)
    parser.add_argument("--lease-ttl-s", type=float, default=FailoverSettings.lease_ttl_s)
    parser.add_argument("--store", metavar="URL", help="PostgreSQL (default: a throwaway one)")
    parser.add_argument("--cache-dir", type=Path, metavar="D")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    settings = FailoverSettings(
        hosts=args.hosts,
        agents=args.agents,
        seed=args.seed,
        lease_ttl_s=args.lease_ttl_s,
        store_url=args.store,
        cache_dir=args.cache_dir,
    )
    verdict = trio.run(run_failover, settings, lambda line: print(line, file=sys.stderr))
    print(json.dumps(verdict) if args.json else json.dumps(verdict, indent=2))
    ok = verdict["lost"] == 0 and verdict["applied_twice"] == 0 and not verdict["not_failed_over"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The crash harness: kill -9 a real ``roost serve`` at random moments and check that no
accepted message is lost or applied twice.

While multi-turn handlers run (a sleep, a simulated LLM call, an ask to another agent), and
timers and continuation-form LLM calls are in flight, the server process is killed with
SIGKILL at a random moment, restarted on the same data directory, and every message the
client has not seen acknowledged is sent again with the same ``Idempotency-Key``, until
all are. Then the harness waits for the timers and continuations to land and reads every
agent back through the admin export. Each message leaves marks (see
``tests/agents/ledger``): in the state before and after its await, a kv counter, the
peer's record of an ask, a fired timer, a continuation; each must be there exactly once::

    python -m loadtests.crash --kills 100 --json

The simulated LLM (``loadtests/sim_llm.py``) runs in this process, on loopback.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import trio

from .sim_llm import SimLLMConfig, serve_sim_llm

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "agents" / "ledger" / "agent.toml"
ADMIN_TOKEN = "crash-harness-admin"
SECRET = "crash-harness-signing-secret-32b"
VIAS = ("sleep", "llm", "ask", "cont", "timer", "none")
"""What a message's handler awaits or starts (``none``: a single turn)."""
_START_TIMEOUT_S = 120.0
_SETTLE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class CrashSettings:
    kills: int = 3
    """Times the server is killed (each run then restarts it)."""
    messages_per_round: int = 12
    """New messages sent between two kills."""
    agents: int = 3
    seed: int = 1
    min_kill_after_s: float = 0.05
    max_kill_after_s: float = 0.8
    """A kill comes this long after the round's first message (uniformly at random)."""
    cache_dir: Path | None = None
    """Compiled components (a temporary folder when None: the first start compiles)."""
    data_dir: Path | None = None
    """The server's data (a temporary folder when None)."""
    store_url: str | None = None
    """A PostgreSQL store (``postgresql://...``) instead of SQLite in the data directory.
    The server keeps one host id across restarts, so each restart takes its agents'
    leases back at once."""


@dataclass
class _Run:
    settings: CrashSettings
    rng: random.Random
    url: str = ""
    sent: dict[int, str] = field(default_factory=dict)
    """Message id -> its ``via``."""
    agent_of: dict[int, str] = field(default_factory=dict)
    acknowledged: dict[int, Any] = field(default_factory=dict)
    attempts: Counter[int] = field(default_factory=Counter)
    kills: int = 0
    restarts: int = 0


async def run_crash(
    settings: CrashSettings, report: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the harness; the figures and the verdict (``lost``, ``applied_twice``)."""
    with tempfile.TemporaryDirectory(prefix="roost-crash-") as tmp:
        settings = replace(
            settings,
            cache_dir=settings.cache_dir or Path(tmp) / "cache",
            data_dir=settings.data_dir or Path(tmp) / "data",
        )
        run = _Run(settings, random.Random(settings.seed))
        started = time.perf_counter()
        llm_config = SimLLMConfig.model_validate(
            {"latency_ms": 80, "tokens_per_s": 200, "models": ["sim"]}
        )
        async with trio.open_nursery() as nursery:
            llm = await nursery.start(serve_sim_llm, llm_config)
            env = _environment(settings, llm.url)
            next_id = 1
            for round_ in range(settings.kills + 1):
                killing = round_ < settings.kills
                process = await _start(env, Path(tmp) / f"server-{round_}.log", run)
                fresh = list(range(next_id, next_id + settings.messages_per_round))
                next_id += settings.messages_per_round
                for n in fresh:
                    run.sent[n] = VIAS[n % len(VIAS)]
                    run.agent_of[n] = f"a{run.rng.randrange(settings.agents)}"
                pending = [n for n in run.sent if n not in run.acknowledged]
                await _round(run, process, pending, killing)
                if killing:
                    run.kills += 1
                    report(
                        f"kill {run.kills}/{settings.kills}: "
                        f"{len(run.acknowledged)}/{len(run.sent)} acknowledged"
                    )
                else:
                    await _settle(run)
                    marks = await _read_marks(run)
                    process.send_signal(signal.SIGTERM)
                    with trio.fail_after(60):
                        await process.wait()
            nursery.cancel_scope.cancel()
        verdict = _verdict(run, marks)
        verdict["elapsed_s"] = round(time.perf_counter() - started, 1)
        return verdict


def _environment(settings: CrashSettings, llm_url: str) -> dict[str, str]:
    store = (
        {"ROOST_STORE_URL": settings.store_url, "ROOST_HOST_ID": "crash-host"}
        if settings.store_url
        else {}
    )
    return {
        **store,
        **os.environ,
        "ROOST_ADMIN_TOKEN": ADMIN_TOKEN,
        "ROOST_SECRET": SECRET,
        "ROOST_CACHE_DIR": str(settings.cache_dir),
        "ROOST_DATA_DIR": str(settings.data_dir),
        "ROOST_LLM_BASE_URL": llm_url,
        "ROOST_GRACEFUL_TIMEOUT_S": "2",
    }


async def _start(env: dict[str, str], log_path: Path, run: _Run) -> trio.Process:
    """Start ``roost serve`` (its log in a file, so it never blocks on a full pipe) and
    wait until it listens."""
    log = log_path.open("wb")
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "roost.cli",
            "serve",
            "--deploy",
            str(MANIFEST),
            "--port",
            "0",
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    log.close()
    deadline = trio.current_time() + _START_TIMEOUT_S
    while "listening on " not in (text := await trio.Path(log_path).read_text(errors="replace")):
        if process.poll() is not None:
            raise RuntimeError(f"roost serve exited early:\n{text}")
        if trio.current_time() > deadline:
            process.kill()
            raise RuntimeError(f"roost serve did not start in {_START_TIMEOUT_S}s:\n{text}")
        await trio.sleep(0.05)
    run.url = text.split("listening on ", 1)[1].split()[0]
    run.restarts += 1
    return process


async def _round(run: _Run, process: trio.Process, pending: list[int], killing: bool) -> None:
    """Send ``pending`` (each until acknowledged or the server dies); with ``killing``,
    kill the server at a random moment."""
    settings = run.settings
    async with (
        httpx.AsyncClient(base_url=run.url, timeout=30) as client,
        trio.open_nursery() as nursery,
    ):
        by_agent: dict[str, list[int]] = {}
        for n in pending:
            by_agent.setdefault(run.agent_of[n], []).append(n)
        for agent, messages in by_agent.items():
            nursery.start_soon(_send_all, run, client, agent, messages)
        if killing:
            await trio.sleep(run.rng.uniform(settings.min_kill_after_s, settings.max_kill_after_s))
            process.kill()
            await process.wait()
            nursery.cancel_scope.cancel()


async def _send_all(run: _Run, client: httpx.AsyncClient, agent: str, ids: list[int]) -> None:
    """One agent's messages, two at a time, each retried until acknowledged."""
    limiter = trio.CapacityLimiter(2)

    async def send(n: int) -> None:
        async with limiter:
            while n not in run.acknowledged:
                run.attempts[n] += 1
                try:
                    response = await client.post(
                        f"/v1/agents/ledger/{agent}/messages",
                        json={"message": {"id": n, "via": run.sent[n]}},
                        headers={
                            "Authorization": f"Bearer {ADMIN_TOKEN}",
                            "Idempotency-Key": f"m{n}",
                        },
                    )
                except httpx.TransportError:
                    return  # the server is gone: the next round sends it again
                if response.status_code == 200:
                    run.acknowledged[n] = response.json()["replies"]
                elif response.status_code in (429, 503):
                    await trio.sleep(0.2)
                else:
                    raise RuntimeError(f"message {n}: {response.status_code} {response.text}")

    async with trio.open_nursery() as nursery:
        for n in ids:
            nursery.start_soon(send, n)


def _expected(run: _Run) -> dict[str, Counter[int]]:
    """The marks each agent field must hold, message by message."""
    expected: dict[str, Counter[int]] = {}
    for n, via in run.sent.items():
        agent = run.agent_of[n]
        for mark in ("before", "after"):
            expected.setdefault(f"{agent}.{mark}", Counter())[n] += 1
        if via == "ask":
            expected.setdefault(f"peer-{agent}.asked", Counter())[n] += 1
        elif via == "cont":
            expected.setdefault(f"{agent}.continued", Counter())[n] += 1
        elif via == "timer":
            expected.setdefault(f"{agent}.fired", Counter())[n] += 1
    return expected


async def _read_marks(run: _Run) -> dict[str, Counter[int]]:
    """Every agent's marks, from the admin export (state lists and kv counters)."""
    marks: dict[str, Counter[int]] = {}
    agents = {run.agent_of[n] for n in run.sent}
    agents |= {f"peer-{a}" for a in agents}
    async with httpx.AsyncClient(base_url=run.url, timeout=30) as client:
        for agent in sorted(agents):
            response = await client.get(
                f"/v1/agents/ledger/{agent}/export",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            exported = response.json()
            for name, values in (exported.get("state") or {}).items():
                marks[f"{agent}.{name}"] = Counter(values)
            kv: Counter[int] = Counter()
            for key, value in exported.get("kv", {}).items():
                kv[int(key.split(":")[1])] = int(base64.b64decode(value).decode())
            marks[f"{agent}.kv"] = kv
    return marks


async def _settle(run: _Run) -> None:
    """Wait until every timer fired and every continuation came back (or time runs out)."""
    expected = _expected(run)
    deadline = trio.current_time() + _SETTLE_TIMEOUT_S
    while trio.current_time() < deadline:
        marks = await _read_marks(run)
        if all(
            marks.get(field, Counter()).keys() >= counts.keys()
            for field, counts in expected.items()
        ):
            return
        await trio.sleep(0.25)


def _verdict(run: _Run, marks: dict[str, Counter[int]]) -> dict[str, Any]:
    expected = _expected(run)
    lost: list[str] = []
    twice: list[str] = []
    for field_name, counts in sorted(expected.items()):
        got = marks.get(field_name, Counter())
        for n in counts:
            if got[n] == 0:
                lost.append(f"{field_name}:{n}")
            elif got[n] > 1:
                twice.append(f"{field_name}:{n}x{got[n]}")
    for field_name, got in marks.items():
        if field_name.endswith(".kv"):
            agent = field_name.removesuffix(".kv")
            for n in (n for n, a in run.agent_of.items() if a == agent):
                if got[n] != 1:
                    (lost if got[n] == 0 else twice).append(f"{field_name}:{n}={got[n]}")
    unacknowledged = sorted(set(run.sent) - set(run.acknowledged))
    return {
        "kills": run.kills,
        "restarts": run.restarts,
        "messages": len(run.sent),
        "by_via": dict(Counter(run.sent.values())),
        "acknowledged": len(run.acknowledged),
        "unacknowledged": unacknowledged,
        "retries": sum(run.attempts.values()) - len(run.attempts),
        "lost": len(lost) + len(unacknowledged),
        "applied_twice": len(twice),
        "lost_marks": lost[:20],
        "twice_marks": twice[:20],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.crash",
        description="Kill -9 a real roost serve at random moments; check exactly-once.",
    )
    parser.add_argument("--kills", type=int, default=CrashSettings.kills, metavar="N")
    parser.add_argument(
        "--messages",
        type=int,
        default=CrashSettings.messages_per_round,
        metavar="N",
        help="new messages per round (between kills)",
    )
    parser.add_argument("--agents", type=int, default=CrashSettings.agents, metavar="N")
    parser.add_argument("--seed", type=int, default=CrashSettings.seed)
    parser.add_argument("--cache-dir", type=Path, metavar="D")
    parser.add_argument(
        "--store", metavar="URL", help="a PostgreSQL store (postgresql://...) instead of SQLite"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    settings = CrashSettings(
        kills=args.kills,
        messages_per_round=args.messages,
        agents=args.agents,
        seed=args.seed,
        cache_dir=args.cache_dir,
        store_url=args.store,
    )
    verdict = trio.run(run_crash, settings, lambda line: print(line, file=sys.stderr))
    print(json.dumps(verdict) if args.json else json.dumps(verdict, indent=2))
    return 0 if verdict["lost"] == 0 and verdict["applied_twice"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

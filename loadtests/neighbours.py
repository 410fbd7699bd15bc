"""``python -m loadtests.neighbours``: can an abusive guest, a flood or an overload starve
the agents next to it?

For each abusive pattern the harness starts a real ``roost serve`` (pinned to one core when
the machine has two or more; this process, the load generator, is pinned to another) with
the neighbour kinds and the pattern's abusive kinds deployed, and drives it over HTTP on
loopback. The neighbours are plain echo agents, in Python (``examples/echo``) and in C
(``examples/echo_c``): a few clients send to them at a steady pace, one message after the
other, first for a phase before the attack (the baseline), then for a phase during it.
The abusive agents are in ``tests/agents/abuse_*``.

For each pattern the report gives, per neighbour kind, the p50 and p99 latency (ms) before
and during the attack, their ratio and the neighbour's errors; what became of the attack
(its requests by status and error, and why the host refused what it refused, as the guest
saw it); and the host's CPU share, memory and counters. The target: every neighbour's p99
during the attack within 2x of its baseline, with no neighbour errors::

    python -m loadtests.neighbours --json         # every pattern: about 6 minutes
    python -m loadtests.neighbours --quick        # shorter phases
    python -m loadtests.neighbours --pattern looping_agents --pattern log_flood

Each pattern gets a fresh server (and data directory), so what one leaves behind (timers
still firing, agents still resident) does not weigh on the next. The first run compiles
the components (cached afterwards, in ``ROOST_CACHE_DIR`` or ``--cache-dir``).
"""

from __future__ import annotations

import argparse
import ast
import gc
import itertools
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import trio

from roost.build import build_agent
from roost.config import load_config
from roost.manifest import load_manifest

from .http_sink import HttpSink, run_http_sink
from .sim_llm import SimLLMConfig, SimLLMServer, serve_sim_llm

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ROOT / "tests" / "agents"
NEIGHBOUR_MANIFESTS = (
    ROOT / "examples" / "echo" / "agent.toml",
    ROOT / "examples" / "echo_c" / "agent.toml",
)
NEIGHBOUR_KINDS = ("echo", "echo-c")
ABUSE_PY = AGENTS / "abuse_py"
ABUSE_C = AGENTS / "abuse_c" / "agent.toml"
ABUSE_START_C = AGENTS / "abuse_start_c" / "agent.toml"
HOST_CORE = 0
LOAD_CORE = 1
TARGET_RATIO = 2.0
_START_TIMEOUT_S = 600.0
"""A first start compiles every component to native code (cached afterwards)."""
_REQUEST_TIMEOUT_S = 30.0
_REFUSED_PAUSE_S = 0.02
"""An attacker's pause after a refusal: it ignores Retry-After, but does not spin."""


def _reasons() -> tuple[str, ...]:
    """The settings an error may name, to say why the host refused: the list the abusive
    Python agent counts its own refusals by (``REASONS`` in its source)."""
    tree = ast.parse((AGENTS / "abuse_py" / "agent.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "REASONS" for target in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("tests/agents/abuse_py/agent.py defines no REASONS")


_REASONS = _reasons()


_HOST_ENV = {"ROOST_MAX_DELIVERY_ATTEMPTS": "3"}
"""Host settings every pattern runs with: deliveries that keep failing are given up on
after 3 attempts (back-off 1 s, then 2 s), so a run sees it happen."""
_RETRY_SETTLE_S = 3.5
"""Time for the last failing deliveries to use up their attempts."""


@dataclass(frozen=True)
class NeighbourSettings:
    patterns: tuple[str, ...] = ()
    """The patterns to run (all when empty), by name (see :data:`PATTERNS`)."""
    phase_s: float = 10.0
    """Measured time before the attack, and again during it: about 700 replies per
    neighbour kind, so that a p99 is the seventh slowest of them (in 4 s phases it was the
    third, and which pattern crossed the 2x line changed from run to run)."""
    warm_s: float = 1.0
    """Neighbour traffic before the baseline is measured (not counted)."""
    neighbours_per_kind: int = 2
    """Neighbour agents per neighbour kind, each with its own client."""
    pause_s: float = 0.02
    """A neighbour client's pause between a reply and its next message."""
    drain_s: float = 10.0
    """How long the neighbours' requests still running when the attack ends may take to
    answer before they count as errors."""
    host_memory_mib: int = 1536
    """The host's ``max_host_memory_bytes`` (its memory cap), in MiB."""
    target_ratio: float = TARGET_RATIO
    pin: bool = True
    """Pin the host to one core and this process to another (when there are two)."""
    cache_dir: Path | None = None
    """Build outputs and compiled components (the host's default cache when None)."""


QUICK = NeighbourSettings(phase_s=1.5, warm_s=0.5, drain_s=5.0)


# -- the run --------------------------------------------------------------------------------


Progress = Callable[[str], None]


async def run_neighbours(
    settings: NeighbourSettings, progress: Progress = lambda _line: None
) -> dict[str, Any]:
    """Run the patterns; the report (see the module docstring)."""
    chosen = settings.patterns or tuple(PATTERNS)
    unknown = sorted(set(chosen) - set(PATTERNS))
    if unknown:
        raise ValueError(f"unknown patterns {unknown}; known: {', '.join(PATTERNS)}")
    started = time.perf_counter()
    cache_dir = settings.cache_dir or load_config().cache_dir
    settings = replace(settings, cache_dir=cache_dir)
    pinned = settings.pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    report: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="roost-neighbours-") as tmp,
        _pinned_to(LOAD_CORE if pinned else None),
        run_http_sink(keep_requests=False) as sink,
    ):
        work = Path(tmp)
        needed = {m for name in chosen for m in PATTERNS[name].manifests}
        progress(f"building {len(needed) + len(NEIGHBOUR_MANIFESTS)} kinds (cached by content)")
        deployable = await trio.to_thread.run_sync(
            _build_all, [*NEIGHBOUR_MANIFESTS, *sorted(needed)], work, cache_dir
        )
        async with trio.open_nursery() as nursery:
            llm: SimLLMServer = await nursery.start(
                serve_sim_llm, SimLLMConfig.model_validate({"latency_ms": 20})
            )
            for name in chosen:
                pattern = PATTERNS[name]
                progress(f"{name}: {pattern.what}")
                run = _PatternRun(settings, pattern, work, pinned, sink, llm, deployable)
                report[name] = await run.run()
                progress(f"  {_one_line(report[name])}")
                # Requests cut off at the end of an attack leave httpx's body iterators
                # suspended in reference cycles: collected here, trio closes them.
                gc.collect()
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    met = [name for name, r in report.items() if r["target_met"]]
    return {
        "target": (
            f"every neighbour's p99 during the attack within {settings.target_ratio:g}x of "
            "its p99 before it, and no neighbour errors"
        ),
        "patterns": report,
        "summary": {"met": met, "missed": [name for name in report if name not in met]},
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "host_core": HOST_CORE if pinned else None,
            "load_core": LOAD_CORE if pinned else None,
        },
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def _one_line(result: dict[str, Any]) -> str:
    kinds = ", ".join(
        f"{kind} p99 {n['before']['p99_ms']} -> {n['during']['p99_ms']} ms (x{n['p99_ratio']})"
        for kind, n in result["neighbour"].items()
    )
    top = ", ".join(f"{k} x{v}" for k, v in Counter(result["abuse"]["outcomes"]).most_common(3))
    verdict = "meets the target" if result["target_met"] else "MISSES the target"
    return f"{kinds}; neighbour errors {result['neighbour_errors']}; attack: {top}; {verdict}"


# -- building and serving ---------------------------------------------------------------------


def _build_all(manifests: list[Path], work: Path, cache_dir: Path) -> dict[Path, Path]:
    """Build each manifest's source into ``work`` and write a manifest that deploys the
    build as it is (nothing is written beside the sources)."""
    out = work / "kinds"
    out.mkdir(exist_ok=True)
    deployable: dict[Path, Path] = {}
    for path in manifests:
        manifest = load_manifest(path)
        assert manifest.source is not None, f"{path} has no source"
        component = out / f"{manifest.name}.wasm"
        build_agent(manifest.source, component, cache_dir=cache_dir, manifest=path)
        text = re.sub(r"(?m)^(source|component)\s*=.*\n", "", path.read_text(encoding="utf-8"))
        target = out / f"{manifest.name}.toml"
        target.write_text(f"component = {json.dumps(str(component))}\n{text}", encoding="utf-8")
        deployable[path] = target
    return deployable


@contextmanager
def _pinned_to(core: int | None) -> Iterator[None]:
    """Pin this thread (and the threads it starts) to ``core``; restore on exit."""
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _pin(core: int | None) -> Callable[[], None] | None:
    if core is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {core})

    return pin


async def _start_host(
    deploy: Sequence[Path], env: dict[str, str], log_path: Path, core: int | None
) -> tuple[trio.Process, str]:
    """Start ``roost serve`` (its log in a file, never a pipe that could fill) and wait
    until it listens; the process and its URL."""
    command = [sys.executable, "-m", "roost.cli", "serve", "--dev", "-v", "--port", "0"]
    for manifest in deploy:
        command += ["--deploy", str(manifest)]
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            command,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=_pin(core),
        )
    deadline = trio.current_time() + _START_TIMEOUT_S
    while "listening on " not in (text := await trio.Path(log_path).read_text(errors="replace")):
        if process.poll() is not None:
            raise RuntimeError(f"roost serve exited early:\n{text[-3000:]}")
        if trio.current_time() > deadline:
            process.kill()
            raise RuntimeError(f"roost serve did not start in {_START_TIMEOUT_S:.0f}s")
        await trio.sleep(0.05)
    return process, text.split("listening on ", 1)[1].split()[0]


async def _stop_host(process: trio.Process) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(5):
            await process.wait()
        if process.poll() is None:
            process.kill()
    await process.wait()


# -- HTTP --------------------------------------------------------------------------------------


async def _post(
    client: httpx.AsyncClient, kind: str, agent_id: str, message: Any
) -> tuple[str, Any]:
    """Send a message; ``(outcome, replies)``: ``"200"`` and the replies, or a label of
    the refusal (``429 AgentCoolingDown``, ``503 Overloaded (queue_target_ms)``, ...)."""
    try:
        response = await client.post(
            f"/v1/agents/{kind}/{agent_id}/messages", json={"message": message}
        )
    except httpx.TimeoutException:
        return "no answer (timed out)", None
    except httpx.TransportError as exc:
        return f"no answer ({type(exc).__name__})", None
    if response.status_code == 200:
        return "200", response.json().get("replies", [])
    return _refusal(response), None


def _refusal(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        kind, message = str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return str(response.status_code)
    why = reason(message)
    return f"{response.status_code} {kind}" + (f" ({why})" if why else "")


def reason(text: str) -> str:
    """The setting an error names, or ``""``."""
    return next((marker for marker in _REASONS if marker in text), "")


def _client(url: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        timeout=_REQUEST_TIMEOUT_S,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


# -- neighbours --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    phase: str
    kind: str
    ms: float
    outcome: str


class _Neighbours:
    """Clients that each send to one neighbour agent, one message after the other, and
    record each round trip under the phase it started in."""

    def __init__(self, settings: NeighbourSettings) -> None:
        self.settings = settings
        self.phase = "warm"
        self.samples: list[Sample] = []
        self.done = trio.Event()
        """Set once every client has had its last answer (after the phase ``stop``)."""

    async def run(self, client: httpx.AsyncClient) -> None:
        async with trio.open_nursery() as nursery:
            for kind in NEIGHBOUR_KINDS:
                for i in range(self.settings.neighbours_per_kind):
                    nursery.start_soon(self._client, client, kind, f"n{i}")
        self.done.set()

    async def _client(self, client: httpx.AsyncClient, kind: str, agent_id: str) -> None:
        n = 0
        while self.phase != "stop":
            phase = self.phase
            started = time.perf_counter()
            outcome = "no answer (cut at the end of the run)"
            try:
                outcome, _ = await _post(client, kind, agent_id, f"ping {n}")
            finally:
                ms = (time.perf_counter() - started) * 1000
                self.samples.append(Sample(phase, kind, ms, outcome))
            n += 1
            await trio.sleep(self.settings.pause_s)

    def figures(self, target_ratio: float) -> dict[str, dict[str, Any]]:
        figures: dict[str, dict[str, Any]] = {}
        for kind in NEIGHBOUR_KINDS:
            before = _latency(s for s in self.samples if s.kind == kind and s.phase == "before")
            during = _latency(s for s in self.samples if s.kind == kind and s.phase == "during")
            p99_ratio = _ratio(during["p99_ms"], before["p99_ms"])
            figures[kind] = {
                "before": before,
                "during": during,
                "p50_ratio": _ratio(during["p50_ms"], before["p50_ms"]),
                "p99_ratio": p99_ratio,
                "errors": during["errors"],
                "p99_within_target": p99_ratio is not None and p99_ratio <= target_ratio,
            }
        return figures


def _latency(samples: Iterable[Sample]) -> dict[str, Any]:
    samples = list(samples)
    ok = sorted(s.ms for s in samples if s.outcome == "200")
    errors = Counter(s.outcome for s in samples if s.outcome != "200")
    return {
        "requests": len(samples),
        "p50_ms": _percentile(ok, 0.50),
        "p99_ms": _percentile(ok, 0.99),
        "max_ms": round(ok[-1], 2) if ok else None,
        "errors": sum(errors.values()),
        "error_outcomes": dict(errors),
    }


def _percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (None when there are none)."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 2)


def _ratio(during: float | None, before: float | None) -> float | None:
    if not before or during is None:
        return None
    return round(during / before, 2)


# -- host figures ------------------------------------------------------------------------------


class _HostWatch:
    """The host process's CPU share and peak memory, and how busy the load generator's
    core was, by phase."""

    def __init__(self, pid: int, load_core: int | None) -> None:
        self._process = psutil.Process(pid)
        self._load_core = load_core
        self.phase = "warm"
        self.peak_rss: dict[str, int] = {}
        self._at: dict[str, tuple[float, float, Any]] = {}
        self.cpu_share: dict[str, float] = {}
        self.load_core_busy: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """End the current phase's window and start ``phase``'s."""
        now = (self._cpu_seconds(), time.perf_counter(), self._core_times())
        if self.phase in self._at:
            cpu_before, wall_before, core_before = self._at[self.phase]
            share = (now[0] - cpu_before) / max(now[1] - wall_before, 1e-9)
            self.cpu_share[self.phase] = round(share, 2)
            if core_before is not None and now[2] is not None:
                self.load_core_busy[self.phase] = _busy_share(core_before, now[2])
        self.phase = phase
        self._at[phase] = now

    async def sample(self) -> None:
        while True:
            try:
                rss = int(self._process.memory_info().rss)
            except psutil.Error:
                return
            self.peak_rss[self.phase] = max(self.peak_rss.get(self.phase, 0), rss)
            await trio.sleep(0.1)

    def figures(self) -> dict[str, Any]:
        return {
            "cpu_share": self.cpu_share,
            "load_core_busy": self.load_core_busy,
            "peak_rss_mib": {k: round(v / 2**20) for k, v in self.peak_rss.items()},
        }

    def _cpu_seconds(self) -> float:
        try:
            times = self._process.cpu_times()
        except psutil.Error:
            return math.nan
        return float(times.user + times.system)

    def _core_times(self) -> Any:
        if self._load_core is None:
            return None
        return psutil.cpu_times(percpu=True)[self._load_core]


def _busy_share(before: Any, after: Any) -> float:
    """The busy share of one core between two of its ``cpu_times`` readings."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (
        before.idle + getattr(before, "iowait", 0.0)
    )
    return 0.0 if total <= 0 else round(max(0.0, min(1.0, 1 - idle / total)), 2)


_METRIC_LINE = re.compile(r"^(roost_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN|[+-]Inf)$", re.M)
_KIND_LABEL = re.compile(r'kind="([^"]+)"')
_COUNTERS = (
    "roost_activations_total",
    "roost_hibernations_total",
    "roost_requests_rejected_total",
    "roost_traps_total",
    "roost_deadline_cool_downs_total",
    "roost_capability_denials_total",
)
_GAUGES = (
    "roost_agents_resident",
    "roost_agents_cooling_down",
    "roost_events_in_flight",
    "roost_dead_letters",
    "roost_mailbox_depth",
)


async def _scrape(client: httpx.AsyncClient) -> dict[str, float]:
    try:
        text = (await client.get("/metrics")).text
    except httpx.HTTPError:
        return {}
    return {name + labels: float(value) for name, labels, value in _METRIC_LINE.findall(text)}


def _metric_changes(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Counters that moved during the attack, the gauges (non-zero) after it, and by kind
    the activations, turns and mean turn time during the attack."""
    changes: dict[str, Any] = {}
    by_kind: dict[str, dict[str, float]] = {}
    for series, value in sorted(after.items()):
        delta = value - before.get(series, 0.0)
        if series.startswith(_COUNTERS):
            if delta:
                changes[series] = delta
        elif series.startswith(_GAUGES):
            if value:
                changes[series] = value
        elif series.startswith(("roost_wake_seconds_count", "roost_turn_seconds_")):
            kind = _KIND_LABEL.search(series)
            if kind is None or not delta or "_bucket" in series:
                continue
            figures = by_kind.setdefault(kind.group(1), {})
            if series.startswith("roost_wake_seconds_count"):
                figures["activations"] = delta
            elif series.startswith("roost_turn_seconds_count"):
                figures["turns"] = delta
            else:
                figures["turn_seconds"] = delta
    for figures in by_kind.values():
        seconds = figures.pop("turn_seconds", 0.0)
        if figures.get("turns"):
            figures["mean_turn_ms"] = round(seconds / figures["turns"] * 1000, 2)
    changes["by_kind"] = by_kind
    return changes


# -- attacks -----------------------------------------------------------------------------------


@dataclass
class Attack:
    """What an attack uses and what it records."""

    client: httpx.AsyncClient
    url: str
    settings: NeighbourSettings
    sink: HttpSink
    llm: SimLLMServer
    log_path: Path
    outcomes: Counter[str] = field(default_factory=Counter)
    """The attack's requests, by outcome."""
    refused: Counter[str] = field(default_factory=Counter)
    """What the guests were refused (as their replies say), by reason."""
    facts: dict[str, Any] = field(default_factory=dict)
    by_input: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    """Outcomes by malformed input (``bad_input``)."""
    answered_ms: list[float] = field(default_factory=list)
    """Round trips of the attack's requests that were answered 200."""
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def fresh(self, prefix: str) -> str:
        """A new agent id."""
        return f"{prefix}{next(self._ids)}"

    async def send(self, kind: str, agent_id: str, message: Any) -> tuple[str, Any]:
        started = time.perf_counter()
        outcome = "unanswered when the attack ended"
        try:
            outcome, replies = await _post(self.client, kind, agent_id, message)
        finally:
            self.outcomes[outcome] += 1
        if outcome == "200":
            self.answered_ms.append((time.perf_counter() - started) * 1000)
        else:
            await trio.sleep(_REFUSED_PAUSE_S)
        return outcome, replies

    def summary(self) -> dict[str, Any]:
        answered = sorted(self.answered_ms)
        return {
            "requests": sum(self.outcomes.values()),
            "outcomes": dict(self.outcomes.most_common()),
            "answered_p50_ms": _percentile(answered, 0.5),
            "answered_max_ms": round(answered[-1], 1) if answered else None,
            "refused_inside": dict(self.refused.most_common()),
            **(
                {"by_input": {k: dict(v) for k, v in self.by_input.items()}}
                if self.by_input
                else {}
            ),
            **self.facts,
        }

    async def post_raw(self, kind: str, agent_id: str, body: bytes) -> str:
        """Post ``body`` as it is to an agent's messages endpoint; its outcome."""
        outcome = "unanswered when the attack ended"
        try:
            try:
                response = await self.client.post(
                    f"/v1/agents/{kind}/{agent_id}/messages",
                    content=body,
                    headers={"content-type": "application/json"},
                )
            except httpx.TransportError as exc:
                outcome = f"no answer ({type(exc).__name__})"
            else:
                outcome = "200" if response.status_code == 200 else _refusal(response)
        finally:
            self.outcomes[outcome] += 1
        return outcome

    def count_refused(self, reply: Any) -> None:
        if isinstance(reply, dict) and isinstance(reply.get("refused"), dict):
            for why, times in reply["refused"].items():
                self.refused[str(why)] += int(times)

    def bump(self, fact: str, amount: float = 1) -> None:
        self.facts[fact] = self.facts.get(fact, 0) + amount


async def _in_parallel(tasks: int, one: Callable[[int], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(one, i)


async def _evading(attack: Attack, kind: str, prefix: str, message: Any, tasks: int) -> None:
    """``tasks`` clients, each sending ``message`` to one agent until the host cools it
    down (429), then to a fresh one: runaway agents that dodge the cool-down."""

    async def one(_task: int) -> None:
        agent = attack.fresh(prefix)
        while True:
            outcome, _replies = await attack.send(kind, agent, message)
            if outcome.startswith("429"):
                agent = attack.fresh(prefix)
                attack.bump("fresh_agents")

    await _in_parallel(tasks, one)


async def _fixed(attack: Attack, kind: str, prefix: str, message: Any, agents: int) -> None:
    """A client per agent, each sending ``message`` to its agent again and again."""

    async def one(i: int) -> None:
        while True:
            await attack.send(kind, f"{prefix}{i}", message)

    await _in_parallel(agents, one)


async def looping_start(attack: Attack) -> None:
    await _fixed(attack, "abuse-start-c", "start", "hi", agents=4)


async def looping_start_evading(attack: Attack) -> None:
    await _evading(attack, "abuse-start-c", "s", "hi", tasks=8)


async def looping_agents(attack: Attack) -> None:
    await _fixed(attack, "abuse-loop", "loop", {"op": "loop"}, agents=8)


async def looping_agents_evading(attack: Attack) -> None:
    await _evading(attack, "abuse-loop", "l", {"op": "loop"}, tasks=8)


async def looping_two_kinds(attack: Attack) -> None:
    async with trio.open_nursery() as nursery:
        for kind in ("abuse-loop", "abuse-storm"):
            nursery.start_soon(_evading, attack, kind, f"{kind}-", {"op": "loop"}, 8)


async def large_results(attack: Attack) -> None:
    size = 1_000_000

    async def one(i: int) -> None:
        while True:
            outcome, replies = await attack.send("abuse-c", f"big{i}", {"op": "big", "size": size})
            if outcome == "200":
                attack.bump("result_bytes", size * len(replies))

    await _in_parallel(4, one)


async def ask_storm(attack: Attack) -> None:
    message = {"op": "ask_storm", "depth": 3, "fanout": 50, "timeout": 5.0}

    async def one(_task: int) -> None:
        while True:
            _, replies = await attack.send("abuse-storm", attack.fresh("ask"), message)
            for reply in replies or []:
                attack.bump("agents_reached", int(reply.get("reached", 0)))
                attack.count_refused(reply)

    await _in_parallel(3, one)


async def send_storm(attack: Attack) -> None:
    message = {"op": "send_storm", "depth": 4, "fanout": 200}

    async def one(_task: int) -> None:
        while True:
            _, replies = await attack.send("abuse-storm", attack.fresh("send"), message)
            for reply in replies or []:
                attack.bump("sent_by_roots", int(reply.get("sent", 0)))
                attack.count_refused(reply)
            await trio.sleep(0.25)

    await _in_parallel(2, one)


async def sleep_storm(attack: Attack) -> None:
    message = {"op": "sleeps", "n": 20_000, "seconds": 0.5}

    async def one(i: int) -> None:
        while True:
            _, replies = await attack.send("abuse-c", f"sleeper{i}", message)
            for reply in replies or []:
                attack.facts["most_started_in_a_turn"] = max(
                    attack.facts.get("most_started_in_a_turn", 0), int(reply["started"])
                )
                attack.bump("sleeps_started", int(reply["started"]))
                if reply.get("error"):
                    attack.refused[reason(reply["error"]) or reply["error"][:60]] += 1

    await _in_parallel(4, one)


_TIMER_AGENTS = 4


async def timer_storm(attack: Attack) -> None:
    for i in range(_TIMER_AGENTS):
        _, replies = await attack.send(
            "abuse-storm", f"timers{i}", {"op": "timer_storm", "fanout": 100}
        )
        for reply in replies or []:
            attack.bump("scheduled_by_the_message", int(reply.get("scheduled", 0)))
            attack.count_refused(reply)
    await trio.sleep_forever()  # the timers go on by themselves


async def timer_storm_report(attack: Attack) -> None:
    totals: Counter[str] = Counter()
    pending = []
    with trio.move_on_after(20):
        for i in range(_TIMER_AGENTS):
            while True:
                # Refused (503, 429) while the storm goes on, or asked before the agent's
                # first timer fired (a loaded machine may take a while): ask again.
                outcome, replies = await _post(
                    attack.client, "abuse-storm", f"timers{i}", {"op": "timer_stats"}
                )
                if outcome == "200" and any(int(r.get("fired", 0)) for r in replies or []):
                    break
                await trio.sleep(0.2)
            for reply in replies or []:
                totals.update({k: int(v) for k, v in reply.items()})
            pending.append(
                (await _status(attack.client, "abuse-storm", f"timers{i}")).get("pending_timers")
            )
    attack.facts.update(
        timers_fired=totals["fired"],
        timers_scheduled=totals["scheduled"],
        schedules_refused=totals["refused"],
        pending_timers_by_agent=pending,
    )


async def _status(client: httpx.AsyncClient, kind: str, agent_id: str) -> dict[str, Any]:
    """The agent's status (``GET /v1/agents/{kind}/{id}``), or ``{}``."""
    try:
        response = await client.get(f"/v1/agents/{kind}/{agent_id}")
        status = response.json().get("agent", {})
    except (httpx.HTTPError, ValueError, AttributeError):
        return {}
    return status if isinstance(status, dict) else {}


async def log_flood(attack: Attack) -> None:
    attack.facts["log_bytes_at_start"] = attack.log_path.stat().st_size
    attack.facts["started_at"] = time.perf_counter()
    lines = 2000
    message = {"op": "log_flood", "lines": lines, "pad": 3000}

    async def one(i: int) -> None:
        while True:
            outcome, _ = await attack.send("abuse-log", f"flood{i}", message)
            if outcome == "200":
                attack.bump("lines_attempted", lines)

    await _in_parallel(4, one)


async def log_flood_report(attack: Attack) -> None:
    start = attack.facts.pop("log_bytes_at_start")
    seconds = time.perf_counter() - attack.facts.pop("started_at")
    forged = written = dropped_warnings = 0
    with attack.log_path.open("rb") as log:
        log.seek(start)
        for line in log:
            if line.startswith(b"ERROR roost.host: FORGED"):
                forged += 1
            elif b"roost.host: FORGED" in line:
                written += 1
            elif b"agent log lines dropped" in line:
                dropped_warnings += 1
        grown = log.tell() - start
    attack.facts.update(
        log_bytes_written=grown,
        log_mib_per_s=round(grown / 2**20 / max(seconds, 1e-9), 2),
        guest_lines_written=written,
        forged_host_lines=forged,
        dropped_warnings=dropped_warnings,
    )


_FAILING_PER_MESSAGE = 50


async def failing_deliveries(attack: Attack) -> None:
    message = {"op": "send_failing", "n": _FAILING_PER_MESSAGE}

    async def one(_task: int) -> None:
        while True:
            _, replies = await attack.send("abuse-storm", attack.fresh("fail"), message)
            for reply in replies or []:
                attack.bump("deliveries_sent", int(reply.get("sent", 0)))
                attack.count_refused(reply)
            await trio.sleep(0.25)

    await _in_parallel(2, one)


async def failing_deliveries_report(attack: Attack) -> None:
    """How many of the failing deliveries the host gave up on (moved to dead letters),
    within ``max_delivery_attempts`` (the harness sets it, see :data:`_HOST_ENV`)."""
    await trio.sleep(_RETRY_SETTLE_S)
    metrics = await _scrape(attack.client)
    attack.facts.update(
        max_delivery_attempts=int(_HOST_ENV["ROOST_MAX_DELIVERY_ATTEMPTS"]),
        dead_letters=int(metrics.get('roost_dead_letters{kind="abuse-storm"}', 0)),
        delivery_traps=int(
            sum(
                v
                for k, v in metrics.items()
                if k.startswith('roost_traps_total{kind="abuse-storm"')
            )
        ),
    )


_BAD_BODIES: tuple[tuple[str, bytes], ...] = (
    ("nested 2,000 deep", b'{"message": ' + b"[" * 2000 + b"]" * 2000 + b"}"),
    ("a 5,000-digit number", b'{"message": ' + b"7" * 5000 + b"}"),
    ("NaN", b'{"message": NaN}'),
    ("Infinity", b'{"message": [Infinity]}'),
    ("not JSON", b'{"message": "unterminated'),
    ("no message", b'{"text": "hi"}'),
)
"""Bodies a client may send to an agent's messages endpoint, each refused with a 4xx."""


async def bad_input(attack: Attack) -> None:
    """Clients posting malformed bodies to an agent of a neighbour kind, as fast as the
    host answers (each must be a 4xx in the JSON error shape, before any turn)."""

    async def one(task: int) -> None:
        for what, body in itertools.cycle(_BAD_BODIES):
            outcome = await attack.post_raw("echo", f"bad{task}", body)
            attack.by_input[what][outcome] += 1

    await _in_parallel(4, one)


async def memory_hogs(attack: Attack) -> None:
    message = {"op": "hog", "chunk": 4 * 2**20}

    async def one(_task: int) -> None:
        while True:
            _, replies = await attack.send("abuse-hog", attack.fresh("hog"), message)
            for reply in replies or []:
                attack.bump("hogs_grown")
                attack.bump("bytes_held", int(reply.get("held", 0)))

    await _in_parallel(6, one)


_BUDGET_AGENTS = 2
_HTTP_CALLS_PER_DAY = 2
"""``budgets.http_calls_per_day`` in tests/agents/abuse_py/budget.toml."""
_LLM_TOKENS_PER_DAY = 100


async def budget_abuse(attack: Attack) -> None:
    def calls(path: str) -> dict[str, Any]:
        return {"url": f"{attack.sink.url}/{path}", "fetches": 20, "chats": 20, "tokens": 64}

    async def spender(i: int) -> None:
        while True:
            _, replies = await attack.send(
                "abuse-budget", f"spender{i}", {"op": "budget", **calls(f"spender{i}")}
            )
            for reply in replies or []:
                attack.count_refused(reply)
            await trio.sleep(0.05)

    async def failing(i: int) -> None:
        while True:
            await attack.send(
                "abuse-budget", f"failing{i}", {"op": "budget_then_fail", **calls(f"failing{i}")}
            )
            await trio.sleep(0.05)

    async def storer(_task: int) -> None:
        while True:
            message = {"op": "store", "values": 10, "value_bytes": 1024}
            await attack.send("abuse-budget", "storer", message)
            await trio.sleep(0.05)

    attack.facts["llm_at_start"] = attack.llm.statistics()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_in_parallel, _BUDGET_AGENTS, spender)
        nursery.start_soon(_in_parallel, _BUDGET_AGENTS, failing)
        nursery.start_soon(_in_parallel, 1, storer)


async def budget_report(attack: Attack) -> None:
    """The calls the agents made (as the HTTP sink and the simulated LLM saw them) against
    what the host recorded in their usage, which their budgets are checked against."""
    await trio.sleep(0.5)  # calls started just before the attack ended
    http: dict[str, dict[str, int]] = {}
    tokens_recorded = 0
    for role in ("spender", "failing"):
        for i in range(_BUDGET_AGENTS):
            agent = f"{role}{i}"
            usage = (await _status(attack.client, "abuse-budget", agent)).get("usage_today") or {}
            http[agent] = {
                "made": attack.sink.posts_by_path.get(f"/{agent}", 0),
                "recorded": int(usage.get("http_calls", 0)),
            }
            tokens_recorded += int(usage.get("llm_input_tokens", 0))
            tokens_recorded += int(usage.get("llm_output_tokens", 0))
    start, end = attack.facts.pop("llm_at_start"), attack.llm.statistics()
    attack.facts.update(
        http_calls_per_day=_HTTP_CALLS_PER_DAY,
        http_calls_by_agent=http,
        http_calls_past_budget=sum(
            max(0, calls["made"] - _HTTP_CALLS_PER_DAY) for calls in http.values()
        ),
        llm_tokens_per_day=_LLM_TOKENS_PER_DAY,
        llm_calls_made=end.requests - start.requests,
        llm_tokens_served=(end.prompt_tokens + end.completion_tokens)
        - (start.prompt_tokens + start.completion_tokens),
        llm_tokens_recorded=tokens_recorded,
    )


@dataclass(frozen=True)
class Pattern:
    what: str
    manifests: tuple[Path, ...]
    attack: Callable[[Attack], Awaitable[None]]
    report: Callable[[Attack], Awaitable[None]] | None = None


PATTERNS: dict[str, Pattern] = {
    "looping_start": Pattern(
        "4 agents of a native kind whose start function loops, sent to again and again",
        (ABUSE_START_C,),
        looping_start,
    ),
    "looping_start_evading": Pattern(
        "agents of a native kind whose start function loops, 8 at a time, each cooled "
        "down replaced by a fresh one",
        (ABUSE_START_C,),
        looping_start_evading,
    ),
    "looping_agents": Pattern(
        "8 Python agents whose handler loops, sent to again and again",
        (ABUSE_PY / "loop.toml",),
        looping_agents,
    ),
    "looping_agents_evading": Pattern(
        "looping Python agents, 8 at a time, each cooled down replaced by a fresh one",
        (ABUSE_PY / "loop.toml",),
        looping_agents_evading,
    ),
    "looping_two_kinds": Pattern(
        "looping Python agents of two kinds, 8 at a time in each, replaced when cooled down",
        (ABUSE_PY / "loop.toml", ABUSE_PY / "storm.toml"),
        looping_two_kinds,
    ),
    "large_results": Pattern(
        "a native kind replying 1 MB per message (4 clients)",
        (ABUSE_C,),
        large_results,
    ),
    "ask_storm": Pattern(
        "asks fanning out to new agents 3 levels down, 50 per handler (3 clients)",
        (ABUSE_PY / "storm.toml",),
        ask_storm,
    ),
    "send_storm": Pattern(
        "sends fanning out to new agents 4 levels down, 200 per handler (2 clients)",
        (ABUSE_PY / "storm.toml",),
        send_storm,
    ),
    "sleep_storm": Pattern(
        "a native handler starting 20,000 sleeps in one turn (4 agents)",
        (ABUSE_C,),
        sleep_storm,
    ),
    "timer_storm": Pattern(
        "timers due now whose on_timer schedules 100 more (4 agents)",
        (ABUSE_PY / "storm.toml",),
        timer_storm,
        timer_storm_report,
    ),
    "log_flood": Pattern(
        "2,000 lines of 3 KB with forged host lines per message (4 clients)",
        (ABUSE_PY / "flood.toml",),
        log_flood,
        log_flood_report,
    ),
    "failing_deliveries": Pattern(
        f"messages to other agents whose every delivery fails, {_FAILING_PER_MESSAGE} per "
        "handler (2 clients)",
        (ABUSE_PY / "storm.toml",),
        failing_deliveries,
        failing_deliveries_report,
    ),
    "bad_input": Pattern(
        "malformed request bodies (deep nesting, huge numbers, NaN, not JSON) as fast as "
        "the host answers (4 clients)",
        (),
        bad_input,
    ),
    "memory_hogs": Pattern(
        "fresh agents each taking its 64 MiB memory cap (6 clients)",
        (ABUSE_PY / "hog.toml",),
        memory_hogs,
    ),
    "budget_abuse": Pattern(
        "20 HTTP and 20 LLM calls at once against budgets of 2 calls and 100 tokens, "
        "the same then failing the handler, and kv writes past a storage budget",
        (ABUSE_PY / "budget.toml",),
        budget_abuse,
        budget_report,
    ),
}


# -- one pattern -------------------------------------------------------------------------------


class _PatternRun:
    def __init__(
        self,
        settings: NeighbourSettings,
        pattern: Pattern,
        work: Path,
        pinned: bool,
        sink: HttpSink,
        llm: SimLLMServer,
        deployable: dict[Path, Path],
    ) -> None:
        self.settings = settings
        self.pattern = pattern
        self.work = work
        self.pinned = pinned
        self.sink = sink
        self.llm = llm
        self.deploy = [deployable[m] for m in (*NEIGHBOUR_MANIFESTS, *pattern.manifests)]

    async def run(self) -> dict[str, Any]:
        settings = self.settings
        name = self.pattern.attack.__name__
        log_path = self.work / f"{name}.log"
        env = {
            "ROOST_CACHE_DIR": str(settings.cache_dir),
            "ROOST_DATA_DIR": str(self.work / f"data-{name}"),
            "ROOST_LLM_BASE_URL": self.llm.url,
            "ROOST_HTTP_ALLOW_PRIVATE": "true",
            "ROOST_GRACEFUL_TIMEOUT_S": "1",
            "ROOST_MAX_HOST_MEMORY_BYTES": str(settings.host_memory_mib * 2**20),
            **_HOST_ENV,
        }
        process, url = await _start_host(
            self.deploy, env, log_path, HOST_CORE if self.pinned else None
        )
        try:
            return await self._measure(process, url, log_path)
        finally:
            await _stop_host(process)

    async def _measure(self, process: trio.Process, url: str, log_path: Path) -> dict[str, Any]:
        settings = self.settings
        neighbours = _Neighbours(settings)
        watch = _HostWatch(process.pid, LOAD_CORE if self.pinned else None)
        connections = 2 * settings.neighbours_per_kind * len(NEIGHBOUR_KINDS)
        async with (
            _client(url, connections) as neighbour_client,
            _client(url, 64) as attack_client,
            trio.open_nursery() as nursery,
        ):
            attack = Attack(attack_client, url, settings, self.sink, self.llm, log_path)
            nursery.start_soon(neighbours.run, neighbour_client)
            nursery.start_soon(watch.sample)
            await trio.sleep(settings.warm_s)
            neighbours.phase = "before"
            watch.mark("before")
            await trio.sleep(settings.phase_s)
            metrics_before = await _scrape(neighbour_client)
            neighbours.phase = "during"
            watch.mark("during")
            with trio.move_on_after(settings.phase_s):
                await self.pattern.attack(attack)
            watch.mark("after")
            neighbours.phase = "stop"
            with trio.move_on_after(settings.drain_s):
                await neighbours.done.wait()
            nursery.cancel_scope.cancel()
        async with _client(url, 4) as client:
            attack.client = client
            if self.pattern.report is not None:
                await self.pattern.report(attack)
            metrics_after = await _scrape(client)
        figures = neighbours.figures(settings.target_ratio)
        errors = sum(f["errors"] for f in figures.values())
        ratios = [f["p99_ratio"] for f in figures.values()]
        worst = None if None in ratios else max(ratios)
        return {
            "what": self.pattern.what,
            "neighbour": figures,
            "p99_ratio": worst,
            "neighbour_errors": errors,
            "target_met": worst is not None and worst <= settings.target_ratio and errors == 0,
            "abuse": attack.summary(),
            "host": {
                **watch.figures(),
                "memory_cap_mib": settings.host_memory_mib,
                "metrics": _metric_changes(metrics_before, metrics_after),
            },
        }


# -- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.neighbours",
        description="Run abusive guests next to plain echo agents; report the neighbours' "
        "latency before and during each attack, and what the host refused.",
    )
    parser.add_argument(
        "--pattern",
        action="append",
        choices=sorted(PATTERNS),
        default=[],
        metavar="NAME",
        help=f"run only this pattern; may be repeated ({', '.join(PATTERNS)})",
    )
    parser.add_argument("--quick", action="store_true", help="shorter phases")
    parser.add_argument("--phase-s", type=float, metavar="S", help="each measured phase")
    parser.add_argument("--cache-dir", type=Path, metavar="D")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to cores")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    settings = replace(
        QUICK if args.quick else NeighbourSettings(),
        patterns=tuple(args.pattern),
        cache_dir=args.cache_dir,
        pin=not args.no_pin,
    )
    if args.phase_s:
        settings = replace(settings, phase_s=args.phase_s)
    report = trio.run(run_neighbours, settings, lambda line: print(line, file=sys.stderr))
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``roost bench density``: sessions per core at the latency SLO, measured.

The harness starts the *simulated* LLM, then for each guest tier (the Python chat agent and
a native one in C) ramps chat sessions in steps with locust (headless) pinned to one core,
against a fresh ``roost serve`` host pinned to the other (one host per step, so a step's
memory is its own sessions'). Each session owns one agent, sends a message, waits for the
reply and thinks at human pace. At each step it records throughput, host-added latency
(each reply's time minus the time its agent waited on the simulated LLM, from the host's
``Server-Timing`` header), errors, the host's CPU share, CPU per message and memory, full
garbage-collector pauses, and resident/hibernated agents. A tier stops at its first step
that breaks the SLO (p99 host-added latency over 100 ms, or any error) and reports its last
good step as sessions per core. Each tier's wake latency is ``roost bench wake``'s, on the
host's core.

In the same run it measures the baseline: the same agent logic as one OS process per
session, for memory per session and start time, so the report gives ratios.

Outputs: ``density.json`` (the report ``roost capacity --density`` reads: its top-level
figures are the first tier's, the Python one; ``tiers`` holds every tier's), ``density.md``
and ``density.png`` in the output directory.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from roost.build import ensure_component
from roost.config import load_config
from roost.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = ROOT / "loadtests" / "agents" / "chat" / "agent.toml"
NATIVE_MANIFEST = ROOT / "examples" / "chat_c" / "agent.toml"
WAKE_MANIFESTS = {
    "python": ROOT / "examples" / "echo" / "agent.toml",
    "native": ROOT / "examples" / "echo_c" / "agent.toml",
}
"""The agents whose wake latency is reported per tier: the echo examples, whose turn is
trivial and calls no model, so a wake is the host's own cost (loading the state,
instantiating, the guest's init, one turn, its commit)."""
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
SLO_P99_MS = 100.0
FULL_STEPS = (2000, 3000, 4000, 5000, 6000)
NATIVE_STEPS = (5000, 10000, 12500, 15000)
SMOKE_STEPS = (10, 20)
HOST_CORE = 0
LOAD_CORE = 1
WAKE_AGENTS = 1000
"""Agents ``roost bench wake`` wakes one at a time for each tier's wake latency."""


@dataclass(frozen=True)
class Tier:
    """One guest tier: its chat agent and the session counts to step through."""

    name: str
    manifest: Path
    steps: tuple[int, ...]


@dataclass(frozen=True)
class DensitySettings:
    steps: tuple[int, ...] = FULL_STEPS
    """Steps of the Python tier (the first)."""
    native_steps: tuple[int, ...] = NATIVE_STEPS
    """Steps of the native tier; empty leaves it out."""
    step_s: float = 90.0
    """Measured time per step, after the ramp."""
    ramp_s: float = 30.0
    think_min_s: float = 10.0
    think_max_s: float = 30.0
    llm_latency_ms: float = 200.0
    baseline_sessions: int = 50
    slo_p99_ms: float = SLO_P99_MS
    """p99 host-added latency a step must stay under (the smoke run only checks plumbing,
    on whatever machine runs it, so it uses a loose one)."""
    manifest: Path = DEFAULT_MANIFEST
    """The first tier's agent (the Python chat agent unless given)."""
    native_manifest: Path = NATIVE_MANIFEST
    wake_agents: int = WAKE_AGENTS
    out_dir: Path = Path("density-report")

    @property
    def tiers(self) -> tuple[Tier, ...]:
        first = Tier(_tier_of(self.manifest), self.manifest, self.steps)
        if not self.native_steps:
            return (first,)
        return (first, Tier("native", self.native_manifest, self.native_steps))


def _tier_of(manifest: Path) -> str:
    source = load_manifest(manifest).source
    return "python" if source is None or source.suffix == ".py" else "native"


SMOKE = DensitySettings(
    steps=SMOKE_STEPS,
    native_steps=SMOKE_STEPS,
    wake_agents=20,
    slo_p99_ms=5000.0,
    step_s=8.0,
    ramp_s=3.0,
    think_min_s=0.5,
    think_max_s=1.5,
    llm_latency_ms=50.0,
    baseline_sessions=5,
)


@dataclass
class Step:
    sessions: int
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    host_added_p50_ms: float
    host_added_p99_ms: float
    host_added_from: str
    """``server-timing`` (reply time minus the host's ``ops`` time), or ``set latency``
    (minus the simulated LLM's configured latency) when replies carry no such header."""
    first_message_p50_ms: float
    """Median reply time of a session's first message (creates the agent), apart."""
    host_cpu_share: float
    load_core_busy: float
    """Share of the load core (locust and the simulated LLM) that was busy: near 1, the
    load side itself adds latency."""
    full_gc_pauses: int
    """Full passes of the host's garbage collector during the measured window..."""
    full_gc_pause_s: float
    """...and the seconds they paused it (every request in flight waits)."""
    host_cpu_ms_per_message: float
    """Host CPU time per message handled (request, both turns, the LLM call, commits)."""
    host_rss_bytes: int
    host_pss_bytes: int
    host_idle_rss_bytes: int
    """The host's RSS before the step's sessions started (kind deployed, no agent)..."""
    host_idle_pss_bytes: int
    """...and its PSS: memory per session is the growth over these, per session."""
    resident_agents: int
    hibernated_agents: int
    slo_met: bool
    notes: list[str] = field(default_factory=list)


Progress = Callable[[str], None]


def run_density(settings: DensitySettings, progress: Progress) -> dict[str, Any]:
    """Run the whole measurement; returns the report (also written to ``out_dir``)."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    config = load_config()
    tiers: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="roost-density-") as tmp:
        work = Path(tmp)
        llm_proc, llm_url = _start(
            [
                sys.executable,
                "-m",
                "loadtests.sim_llm",
                "--port",
                "0",
                "--latency-ms",
                str(settings.llm_latency_ms),
            ],
            "simulated LLM listening on ",
            core=LOAD_CORE,
            log=work / "llm.log",
        )
        try:
            for tier in settings.tiers:
                manifest = ensure_component(
                    load_manifest(tier.manifest), cache_dir=config.cache_dir
                )
                progress(f"{tier.name} tier: built {manifest.name}")
                steps = _ramp(settings, tier, manifest.name, llm_url, work, progress)
                progress(f"{tier.name} tier: waking {settings.wake_agents} agents one at a time")
                wake = measure_wake(WAKE_MANIFESTS[tier.name], settings.wake_agents)
                tiers.append(_tier_report(tier, manifest.name, steps, wake))
        finally:
            _stop(llm_proc)
    progress("measuring the process-per-session baseline")
    baseline = measure_baseline(settings.baseline_sessions)
    report = _report(settings, tiers, baseline)
    _write_outputs(settings.out_dir, report)
    progress(f"wrote {settings.out_dir / 'density.json'}, density.md and density.png")
    return report


def _start_host(
    settings: DensitySettings, tier: Tier, sessions: int, llm_url: str, work: Path
) -> tuple[subprocess.Popen[bytes], str]:
    config = load_config()
    env = {
        "ROOST_LLM_BASE_URL": f"{llm_url}/v1",
        "ROOST_MAX_RESIDENT_AGENTS": str(sessions * 2),
        "ROOST_MAX_IN_FLIGHT": "100000",
        "ROOST_MAX_ACTIVATIONS_PER_S": "100000",
        "ROOST_CACHE_DIR": str(config.cache_dir),
    }
    data = work / f"data-{tier.name}-{sessions}"
    return _start(
        [
            sys.executable,
            "-m",
            "roost.cli",
            "serve",
            "--dev",
            "--port",
            "0",
            "--data-dir",
            str(data),
            "--deploy",
            str(tier.manifest),
        ],
        "listening on ",
        core=HOST_CORE,
        env=env,
        log=work / f"host-{tier.name}-{sessions}.log",
    )


def measure_wake(manifest: Path, agents: int) -> dict[str, Any]:
    """``roost bench wake`` for ``manifest`` on the host's core: activation and wake
    latencies, one agent at a time."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "roost.cli",
            "bench",
            "wake",
            "--agents",
            str(agents),
            "--manifest",
            str(manifest),
            "--json",
        ],
        capture_output=True,
        preexec_fn=_pin(HOST_CORE),
        cwd=ROOT,
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"roost bench wake failed:\n{out.stderr.decode()[-2000:]}")
    figures = json.loads(out.stdout)
    return {
        "agents": agents,
        "manifest": _shown(manifest),
        **{k: v for k, v in figures.items() if isinstance(v, int | float) and k != "agents"},
    }


# -- processes ------------------------------------------------------------------------------


def _pin(core: int) -> Callable[[], None]:
    def pin() -> None:
        if hasattr(os, "sched_setaffinity") and core < (os.cpu_count() or 1):
            os.sched_setaffinity(0, {core})

    return pin


def _start(
    cmd: Sequence[str], banner: str, *, core: int, log: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server process pinned to ``core`` and return it with the URL it prints."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=_pin(core),
            cwd=ROOT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if banner in text:
            url = text.split(banner, 1)[1].split()[0]
            return proc, url
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[2:4]} exited early:\n{text[-2000:]}")
        time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"{cmd[2:4]} did not start in time:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the ramp -------------------------------------------------------------------------------


def _ramp(
    settings: DensitySettings,
    tier: Tier,
    kind: str,
    llm_url: str,
    work: Path,
    progress: Progress,
) -> list[Step]:
    steps: list[Step] = []
    for sessions in tier.steps:
        progress(
            f"step: {sessions} sessions (ramp {settings.ramp_s:.0f}s, "
            f"measure {settings.step_s:.0f}s)"
        )
        # A fresh host for every step: its sessions' agents are all it holds.
        host_proc, url = _start_host(settings, tier, sessions, llm_url, work)
        try:
            host = psutil.Process(host_proc.pid)
            step = _run_step(settings, kind, sessions, 0, host, url, work)
        finally:
            _stop(host_proc)
        steps.append(step)
        progress(
            f"  {step.throughput_rps:.1f} req/s, host-added p50 {step.host_added_p50_ms:.0f} ms "
            f"p99 {step.host_added_p99_ms:.0f} ms, errors {step.errors}, host CPU "
            f"{step.host_cpu_share:.0%}, load core {step.load_core_busy:.0%}, "
            f"first message p50 {step.first_message_p50_ms:.0f} ms, "
            f"{step.host_cpu_ms_per_message:.2f} ms CPU per message, "
            f"full GC {step.full_gc_pauses} ({step.full_gc_pause_s * 1000:.0f} ms), "
            f"PSS {step.host_pss_bytes / 2**20:.0f} MiB"
            + ("" if step.slo_met else "  <- breaks the SLO")
        )
        if not step.slo_met:
            break
    return steps


def _run_step(
    settings: DensitySettings,
    kind: str,
    sessions: int,
    offset: int,
    host: psutil.Process,
    url: str,
    work: Path,
) -> Step:
    prefix = work / f"step-{kind}-{sessions}"
    env = {
        **os.environ,
        "ROOST_LOAD_KIND": kind,
        "ROOST_LOAD_THINK_MIN_S": str(settings.think_min_s),
        "ROOST_LOAD_THINK_MAX_S": str(settings.think_max_s),
        "ROOST_LOAD_USER_OFFSET": str(offset),
    }
    run_time = settings.ramp_s + settings.think_max_s + settings.step_s
    idle = host.memory_full_info()
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(sessions),
        "-r",
        str(max(1.0, sessions / settings.ramp_s)),
        "--run-time",
        f"{int(run_time)}s",
        "--host",
        url,
        "--csv",
        str(prefix),
        "--reset-stats",
        "--only-summary",
        "--stop-timeout",
        "30",
        "--loglevel",
        "WARNING",
    ]
    with (work / f"locust-{kind}-{sessions}.log").open("wb") as log:
        locust = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_pin(LOAD_CORE), cwd=ROOT
        )
        time.sleep(settings.ramp_s + settings.think_max_s)  # everyone has sent a message
        cpu_before, wall_before = _cpu_seconds(host), time.monotonic()
        load_before = _core_times(LOAD_CORE)
        gc_before = _scrape(url)
        locust.wait(timeout=run_time + 120)
        cpu_after, wall_after = _cpu_seconds(host), time.monotonic()
        load_after = _core_times(LOAD_CORE)
    stats = _locust_totals(prefix)
    memory = host.memory_full_info()
    metrics = _scrape(url)
    p50, p99 = stats["p50_ms"], stats["p99_ms"]
    host_p50, host_p99 = stats["host_added_p50_ms"], stats["host_added_p99_ms"]
    host_added_from = "server-timing"
    if host_p50 is None or host_p99 is None:  # no Server-Timing: subtract the set latency
        sim_ms = settings.llm_latency_ms
        host_p50, host_p99 = max(0.0, p50 - sim_ms), max(0.0, p99 - sim_ms)
        host_added_from = "set latency"
    notes = _failure_samples(prefix)
    cpu_share = (cpu_after - cpu_before) / max(wall_after - wall_before, 1e-9)
    if locust.returncode not in (0, 1):
        notes.append(f"locust exited with {locust.returncode}")
    return Step(
        sessions=sessions,
        requests=stats["requests"],
        errors=stats["failures"],
        throughput_rps=stats["rps"],
        p50_ms=p50,
        p99_ms=p99,
        host_added_p50_ms=host_p50,
        host_added_p99_ms=host_p99,
        host_added_from=host_added_from,
        first_message_p50_ms=stats["first_p50_ms"],
        host_cpu_share=cpu_share,
        host_cpu_ms_per_message=(
            round(cpu_share / stats["rps"] * 1000, 3) if stats["rps"] else 0.0
        ),
        load_core_busy=_busy_share(load_before, load_after),
        full_gc_pauses=int(_delta(metrics, gc_before, "roost_gc_pause_seconds_count")),
        full_gc_pause_s=_delta(metrics, gc_before, "roost_gc_pause_seconds_sum"),
        host_rss_bytes=int(memory.rss),
        host_pss_bytes=int(getattr(memory, "pss", memory.rss)),
        host_idle_rss_bytes=int(idle.rss),
        host_idle_pss_bytes=int(getattr(idle, "pss", idle.rss)),
        resident_agents=int(metrics.get("roost_agents_resident", 0)),
        hibernated_agents=int(metrics.get("roost_agents_hibernated", 0)),
        slo_met=stats["failures"] == 0
        and stats["requests"] > 0
        and host_p99 <= settings.slo_p99_ms,
        notes=notes,
    )


def _failure_samples(prefix: Path, limit: int = 3) -> list[str]:
    path = Path(f"{prefix}_failures.csv")
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [f"{r.get('Occurrences')}x {r.get('Error', '')[:200]}" for r in rows[:limit]]


def _core_times(core: int) -> Any:
    times = psutil.cpu_times(percpu=True)
    return times[core] if core < len(times) else None


def _busy_share(before: Any, after: Any) -> float:
    """The busy share of one core between two of its ``cpu_times`` readings."""
    if before is None or after is None:
        return 0.0
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (
        before.idle + getattr(before, "iowait", 0.0)
    )
    return 0.0 if total <= 0 else max(0.0, min(1.0, 1 - idle / total))


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _locust_totals(prefix: Path) -> dict[str, Any]:
    path = Path(f"{prefix}_stats.csv")
    rows: dict[str, dict[str, str]] = {}
    if path.is_file():
        with path.open(newline="") as handle:
            rows = {row.get("Name") or "": row for row in csv.DictReader(handle)}
    message = rows.get("message", {})
    first = rows.get("first message", {})
    host_added = rows.get("host-added", {})
    return {
        "requests": int(_float(message.get("Request Count"))),
        # Errors count for every request, first messages included; no stats at all is one.
        "failures": int(_float(rows.get("Aggregated", {}).get("Failure Count"))) if rows else 1,
        "first_p50_ms": _float(first.get("50%")),
        "rps": _float(message.get("Requests/s")) + _float(first.get("Requests/s")),
        "p50_ms": _float(message.get("50%")),
        "p99_ms": _float(message.get("99%")),
        "host_added_p50_ms": _float(host_added.get("50%"), None),
        "host_added_p99_ms": _float(host_added.get("99%"), None),
    }


def _float(value: str | None, missing: float | None = 0.0) -> Any:
    return missing if value in (None, "", "N/A") else float(value)


_METRIC = re.compile(
    r'^(roost_agents_(?:resident|hibernated)|roost_gc_pause_seconds_(?:count|sum)(?=\{generation="2"\}))'
    r"(?:\{[^}]*\})? ([0-9.e+-]+)$",
    re.M,
)


def _delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def _scrape(url: str) -> dict[str, float]:
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    return {name: float(value) for name, value in _METRIC.findall(text)}


# -- baseline -------------------------------------------------------------------------------


def measure_baseline(sessions: int) -> dict[str, Any]:
    """Start ``sessions`` one-process-per-session agents; memory per session and start time."""
    procs: list[subprocess.Popen[str]] = []
    starts: list[float] = []
    try:
        for _ in range(sessions):
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "loadtests.baseline_agent"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            _read_line(proc.stdout)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps("hello") + "\n")
            proc.stdin.flush()
            _read_line(proc.stdout)  # one turn done, like the host's footprint figure
            starts.append((time.perf_counter() - started) * 1000)
            procs.append(proc)
        pss = [psutil.Process(p.pid).memory_full_info().pss for p in procs]
        rss = [psutil.Process(p.pid).memory_info().rss for p in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
    return {
        "model": "one OS process per session (CPython running the same agent logic)",
        "sessions": sessions,
        "pss_per_session_bytes": int(statistics.median(pss)),
        "rss_per_session_bytes": int(statistics.median(rss)),
        "start_ms": round(statistics.median(starts), 1),
    }


def _read_line(stream: IO[str] | None) -> str:
    assert stream is not None
    line = stream.readline()
    if not line:
        raise RuntimeError("baseline agent process exited")
    return line


# -- report ---------------------------------------------------------------------------------


def _shown(path: Path) -> str:
    """A path as the report shows it: relative to the checkout, else its name (a report
    says nothing about the machine's directories)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _tier_report(tier: Tier, kind: str, steps: list[Step], wake: dict[str, Any]) -> dict[str, Any]:
    good = [s for s in steps if s.slo_met]
    broken = next((s for s in steps if not s.slo_met), None)
    return {
        "tier": tier.name,
        "kind": kind,
        "manifest": _shown(tier.manifest),
        "sessions_per_core": good[-1].sessions if good else 0,
        **_per_session(good[-1] if good else None),
        "limit": _limit_reason(broken, steps),
        "wake": wake,
        "steps": [asdict(s) for s in steps],
    }


def _per_session(step: Step | None) -> dict[str, Any]:
    """The per-session figures of a tier's last step within the SLO (None without one):
    memory growth over the idle host, the share of the sessions' agents resident (the rest
    hibernated; memory per session counts both), events and host CPU."""
    if step is None:
        return dict.fromkeys(_PER_SESSION_KEYS)
    agents = step.resident_agents + step.hibernated_agents
    figures = (
        max(1, round((step.host_rss_bytes - step.host_idle_rss_bytes) / step.sessions)),
        max(1, round((step.host_pss_bytes - step.host_idle_pss_bytes) / step.sessions)),
        round(step.resident_agents / max(1, agents), 3),
        round(step.throughput_rps / step.sessions, 4),
        step.host_cpu_ms_per_message,
    )
    return dict(zip(_PER_SESSION_KEYS, figures, strict=True))


_PER_SESSION_KEYS = (
    "rss_per_session_bytes",
    "pss_per_session_bytes",
    "resident_share",
    "events_per_session_per_s",
    "host_cpu_ms_per_message",
)


def _report(
    settings: DensitySettings, tiers: list[dict[str, Any]], baseline: dict[str, Any]
) -> dict[str, Any]:
    first = tiers[0]
    pss_per_session = first["pss_per_session_bytes"]
    return {
        # The first (Python) tier's figures, for roost capacity --density.
        **{k: v for k, v in first.items() if k not in ("wake",)},
        "slo": {"host_added_p99_ms": settings.slo_p99_ms, "errors": 0},
        "tiers": tiers,
        "baseline": baseline,
        "ratios": {
            "memory_per_session": (
                round(baseline["pss_per_session_bytes"] / pss_per_session, 1)
                if pss_per_session
                else None
            ),
            **{
                f"memory_per_session_{t['tier']}": (
                    round(baseline["pss_per_session_bytes"] / t["pss_per_session_bytes"], 1)
                    if t["pss_per_session_bytes"]
                    else None
                )
                for t in tiers
            },
        },
        "settings": {
            k: (_shown(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "host_core": HOST_CORE,
            "load_core": LOAD_CORE,
        },
        "measured_on": time.strftime("%Y-%m-%d"),
        "smoke": settings.steps == SMOKE.steps and settings.step_s == SMOKE.step_s,
    }


def _limit_reason(broken: Step | None, steps: list[Step]) -> str:
    if broken is None:
        return (
            f"no step broke the SLO up to {steps[-1].sessions} sessions; "
            "the limit is above the largest step"
            if steps
            else "no steps ran"
        )
    if broken.errors:
        return f"{broken.errors} errors at {broken.sessions} sessions"
    if broken.load_core_busy > 0.9:
        return (
            f"the load generator's core was {broken.load_core_busy:.0%} busy at "
            f"{broken.sessions} sessions: the measurement is limited by the load side"
        )
    if broken.host_cpu_share > 0.9:
        return (
            f"host CPU saturated ({broken.host_cpu_share:.0%} of its core) at "
            f"{broken.sessions} sessions: p99 host-added {broken.host_added_p99_ms:.0f} ms"
        )
    return (
        f"p99 host-added latency {broken.host_added_p99_ms:.0f} ms at {broken.sessions} "
        f"sessions with host CPU at {broken.host_cpu_share:.0%}, the load core "
        f"{broken.load_core_busy:.0%} busy, first messages (activations) taking "
        f"{broken.first_message_p50_ms:.0f} ms at the median and {broken.full_gc_pauses} full "
        f"garbage collections pausing the host {broken.full_gc_pause_s * 1000:.0f} ms"
    )


def _write_outputs(out_dir: Path, report: dict[str, Any]) -> None:
    (out_dir / "density.json").write_text(json.dumps(report, indent=2) + "\n")
    slo = report["slo"]["host_added_p99_ms"]
    lines = ["# Density report", ""]
    if report["smoke"]:
        lines += ["**Smoke run**: checks the harness works; it measures no capacity.", ""]
    lines += [
        f"Sessions per core at the SLO (p99 host-added <= {slo:.0f} ms, no errors), one host "
        "pinned to one core:",
        "",
        "| tier | agent | sessions per core | CPU per message | PSS per session | resident "
        "share | wake p50 | limit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in report["tiers"]:
        cpu = t["host_cpu_ms_per_message"]
        pss = t["pss_per_session_bytes"]
        share = t.get("resident_share")
        wake = t["wake"].get("wake_us_p50")
        lines.append(
            f"| {t['tier']} | `{t['manifest']}` | **{t['sessions_per_core']}** | "
            f"{'-' if cpu is None else f'{cpu:.2f} ms'} | "
            f"{'-' if pss is None else f'{pss / 2**20:.2f} MiB'} | "
            f"{'-' if share is None else f'{share:.0%}'} | "
            f"{'-' if wake is None else f'{wake:,.0f} us'} | {t['limit']} |"
        )
    for t in report["tiers"]:
        lines += [
            "",
            f"## {t['tier']} tier (`{t['manifest']}`)",
            "",
            "| sessions | req/s | p50 host-added ms | p99 host-added ms | errors | host CPU | "
            "CPU ms per message | load core | first message p50 ms | full GC pauses | "
            "host PSS MiB | resident | within SLO |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in t["steps"]:
            lines.append(
                f"| {s['sessions']} | {s['throughput_rps']:.1f} | {s['host_added_p50_ms']:.0f} | "
                f"{s['host_added_p99_ms']:.0f} | {s['errors']} | {s['host_cpu_share']:.0%} | "
                f"{s['host_cpu_ms_per_message']:.2f} | {s['load_core_busy']:.0%} | "
                f"{s['first_message_p50_ms']:.0f} | "
                f"{s['full_gc_pauses']} ({s['full_gc_pause_s'] * 1000:.0f} ms) | "
                f"{s['host_pss_bytes'] / 2**20:.0f} | {s['resident_agents']} | "
                f"{'yes' if s['slo_met'] else 'no'} |"
            )
        wake = t["wake"]
        shown = ("wake_us_p50", "wake_us_p99", "wake_instantiate_us_p50", "turn_us_p50")
        lines += [
            "",
            f"Wake ({wake['agents']} hibernated agents, one at a time): "
            + f"`{wake['manifest']}`, "
            + ", ".join(f"{k} {wake[k]:,.0f}" for k in shown if k in wake),
        ]
    b = report["baseline"]
    lines += [
        "",
        f"Baseline ({b['model']}, {b['sessions']} sessions): "
        f"{b['pss_per_session_bytes'] / 2**20:.1f} MiB PSS per session, "
        f"start {b['start_ms']} ms.",
        "Memory ratio (baseline / host, per session): "
        + ", ".join(
            f"{t['tier']} {report['ratios'].get('memory_per_session_' + t['tier'])}"
            for t in report["tiers"]
        ),
    ]
    (out_dir / "density.md").write_text("\n".join(lines) + "\n")
    _plot(out_dir / "density.png", report)


def _plot(path: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(9, 5))
    right = left.twinx()
    colours = {"python": "tab:blue", "native": "tab:orange"}
    for t in report["tiers"]:
        steps = t["steps"]
        sessions = [s["sessions"] for s in steps]
        colour = colours.get(t["tier"], "tab:green")
        left.plot(
            sessions,
            [s["host_added_p99_ms"] for s in steps],
            "o-",
            color=colour,
            label=f"{t['tier']}: p99 host-added (ms)",
        )
        left.plot(
            sessions,
            [s["host_added_p50_ms"] for s in steps],
            "o--",
            color=colour,
            alpha=0.6,
            label=f"{t['tier']}: p50 host-added (ms)",
        )
        right.plot(
            sessions,
            [s["host_pss_bytes"] / 2**20 for s in steps],
            "s:",
            color=colour,
            alpha=0.6,
            label=f"{t['tier']}: host memory (PSS, MiB)",
        )
    slo = report["slo"]["host_added_p99_ms"]
    left.axhline(slo, color="red", linewidth=1, label=f"SLO: p99 host-added <= {slo:.0f} ms")
    left.set_yscale("log")
    left.set_xlabel("concurrent chat sessions on one core")
    left.set_ylabel("latency added by the host (ms, log scale)")
    right.set_ylabel("host memory (MiB, PSS)")
    b = report["baseline"]
    handles, labels = left.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    left.legend(
        handles + more_handles,
        labels + more_labels,
        loc="upper left",
        fontsize=7,
        title=f"process per session: {b['pss_per_session_bytes'] / 2**20:.1f} MiB each",
        title_fontsize=7,
    )
    title = "Roost density: host-added latency and memory against sessions per core"
    if report["smoke"]:
        title = "SMOKE RUN (checks the harness, measures no capacity)\n" + title
    left.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

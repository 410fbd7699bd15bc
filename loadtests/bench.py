"""``roost bench footprint`` and ``roost bench wake``: what one agent costs.

Both run the same harness on a fresh temporary data dir and report the same numbers:

1. deploy the kind (building its source if needed) and warm up one agent;
2. time trivial turns on that resident agent (``turn_us_*``);
3. take the baseline RSS, then activate N fresh agents with one message each, all kept
   resident: the first ``LATENCY_SAMPLE`` one after another (``first_turn_us_*`` and the
   host's own ``instantiate_us_*``), the rest concurrently; RSS growth / N is
   ``rss_per_resident_agent_bytes``;
4. hibernate every agent and measure the store (``store_bytes_*``, ``state_bytes_per_agent``);
5. wake hibernated agents with one message each, one after another (``wake_us_*``).

Latencies are measured sequentially so they are not inflated by queueing.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.metadata
import json
import math
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

import roost
from roost.build import ensure_component
from roost.config import load_config
from roost.host import Host, open_host
from roost.manifest import Manifest, load_manifest

DEFAULT_MANIFEST = Path(roost.__file__).resolve().parents[2] / "examples" / "echo" / "agent.toml"
"""The bundled echo example, located relative to the repository."""

LATENCY_SAMPLE = 1_000
"""First-turn and wake latencies are measured, one at a time, on up to this many agents."""
TURN_SAMPLES = 500
"""Warm turns timed on one resident agent."""
WARMUP_TURNS = 20
CONCURRENCY = 8
"""Sends in flight while activating the agents past the latency sample."""
IDLE_TIMEOUT_S = 24 * 3600.0
"""Keeps every agent resident until the harness hibernates them."""
HIBERNATE_TIMEOUT_S = 300.0
MESSAGE = "ping"

BENCHMARKS = ("footprint", "wake")

_LANGUAGES = {".py": "python", ".c": "native, C", ".zig": "native, Zig"}
_TIERS = {".py": "python", ".c": "native", ".zig": "native"}
"""By the manifest's source: Python agents carry an interpreter, native ones do not."""


@dataclass(frozen=True)
class _Metric:
    label: str
    unit: str
    meaning: str


_METRICS: dict[str, _Metric] = {
    "rss_per_resident_agent_bytes": _Metric(
        "RSS per resident agent",
        "bytes",
        "process RSS growth while N fresh agents became resident (one turn each), divided by N",
    ),
    "pss_per_resident_agent_bytes": _Metric(
        "PSS per resident agent",
        "bytes",
        "growth of the proportional set size (Pss in /proc/self/smaps_rollup) over the same "
        "N agents, divided by N: physical memory, counting pages shared by every instance "
        "of the kind (the component's memory image) once rather than once per instance",
    ),
    "store_bytes_per_hibernated_agent": _Metric(
        "store per hibernated agent",
        "bytes",
        "SQLite database size (page_count x page_size: the file once the WAL is checkpointed) "
        "divided by N, after all agents hibernated; includes the fixed schema pages",
    ),
    "store_marginal_bytes_per_agent": _Metric(
        "store growth per agent",
        "bytes",
        "growth of that database size over the N agents, divided by N (page granular)",
    ),
    "state_bytes_per_agent": _Metric(
        "state + kv per agent",
        "bytes",
        "the store's own count of state and kv bytes (stored_bytes) added by the N agents / N",
    ),
    "db_file_bytes": _Metric(
        "db + wal files",
        "bytes",
        "size on disk of the database file plus its write-ahead log, after hibernation",
    ),
    "first_turn_us_p50": _Metric(
        "first turn p50",
        "us",
        "send to reply for a fresh agent's first message: activation (instantiate + init) "
        "+ the turn + its commit",
    ),
    "first_turn_us_p99": _Metric("first turn p99", "us", "as first_turn_us_p50, 99th pct"),
    "instantiate_us_p50": _Metric(
        "instantiate p50",
        "us",
        "the host's own timing of an activation (instantiate the component + guest init) "
        "for fresh agents",
    ),
    "instantiate_us_p99": _Metric("instantiate p99", "us", "as instantiate_us_p50, 99th pct"),
    "wake_us_p50": _Metric(
        "wake p50",
        "us",
        "send to reply for a hibernated agent: load its record, instantiate, init with the "
        "restored state, the turn and its commit",
    ),
    "wake_us_p99": _Metric("wake p99", "us", "as wake_us_p50, 99th pct"),
    "wake_instantiate_us_p50": _Metric(
        "wake instantiate p50",
        "us",
        "the host's own timing of the activations during the wakes (init restores state)",
    ),
    "turn_us_p50": _Metric(
        "turn p50",
        "us",
        "send to reply for a trivial message to a resident, warm agent (turn + commit)",
    ),
    "turn_us_p99": _Metric("turn p99", "us", "as turn_us_p50, 99th pct"),
}

_ORDER: dict[str, tuple[str, ...]] = {
    "footprint": (
        "rss_per_resident_agent_bytes",
        "store_bytes_per_hibernated_agent",
        "store_marginal_bytes_per_agent",
        "state_bytes_per_agent",
        "db_file_bytes",
        "instantiate_us_p50",
        "first_turn_us_p50",
        "wake_us_p50",
        "turn_us_p50",
    ),
    "wake": (
        "wake_us_p50",
        "wake_us_p99",
        "wake_instantiate_us_p50",
        "first_turn_us_p50",
        "first_turn_us_p99",
        "instantiate_us_p50",
        "instantiate_us_p99",
        "turn_us_p50",
        "turn_us_p99",
        "rss_per_resident_agent_bytes",
        "store_bytes_per_hibernated_agent",
        "state_bytes_per_agent",
    ),
}


def run_benchmark(
    benchmark: str, *, agents: int, manifest: Path | None = None, as_json: bool = False
) -> int:
    """Run one benchmark and print its result (one JSON object, or a table)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    result = trio.run(
        functools.partial(measure, manifest or DEFAULT_MANIFEST, agents, benchmark=benchmark)
    )
    if as_json:
        print(json_line(result))
    else:
        print(format_table(result))
    return 0


def json_line(result: dict[str, Any]) -> str:
    """A :func:`measure` result as one line of JSON."""
    return json.dumps(result)


async def measure(
    manifest_path: Path,
    agents: int,
    *,
    benchmark: str = "footprint",
    latency_sample: int = LATENCY_SAMPLE,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the harness with ``agents`` agents of the kind in ``manifest_path``."""
    if agents < 1:
        raise ValueError("agents must be at least 1")
    report = progress or _Progress()
    started = time.perf_counter()
    base = load_config()
    manifest = await prepared_manifest(manifest_path, base.cache_dir, report)
    sampled = min(agents, latency_sample)

    with tempfile.TemporaryDirectory(prefix="roost-bench-") as data_dir:
        config = load_config(
            data_dir=Path(data_dir),
            max_resident_agents=max(base.max_resident_agents, agents + 1),
            # The benchmark starts agents back to back: not the rate a kind is held to.
            max_activations_per_s=1e9,
        )
        async with open_host(config) as roost:
            await roost.deploy(manifest)
            kind = manifest.name
            activations = _ActivationTimes(roost)

            report("warming up")
            warm = f"{kind}/bench-warmup"
            for _ in range(WARMUP_TURNS):
                await roost.send(warm, MESSAGE)
            turn_ns = await _timed_sends(roost, [warm] * TURN_SAMPLES)

            addresses = [f"{kind}/bench-{i}" for i in range(agents)]
            gc.collect()
            rss_before = _rss_bytes()
            pss_before = _pss_bytes()
            db_before = _database_bytes(config.database_path)
            state_before = await trio.to_thread.run_sync(roost.store.stored_bytes)

            report(f"activating {agents} agents ({sampled} timed one at a time)")
            activations.start()
            first_turn_ns = await _timed_sends(roost, addresses[:sampled], report)
            instantiate_s = activations.stop()
            await _send_concurrently(roost, addresses[sampled:], report)
            resident = (await roost.statistics()).resident
            if resident < agents + 1:
                raise RuntimeError(
                    f"only {resident} of {agents + 1} agents stayed resident; "
                    "the RSS figure would be wrong"
                )
            gc.collect()
            rss_after = _rss_bytes()
            pss_after = _pss_bytes()

            report("hibernating")
            await _hibernate_all(roost)
            db_after = _database_bytes(config.database_path)
            state_after = await trio.to_thread.run_sync(roost.store.stored_bytes)
            db_files = _file_bytes(config.database_path)

            report(f"waking {sampled} agents one at a time")
            activations.start()
            wake_ns = await _timed_sends(roost, addresses[:sampled], report)
            wake_instantiate_s = activations.stop()

    suffix = manifest.source.suffix if manifest.source is not None else ""
    return {
        "benchmark": benchmark,
        "agents": agents,
        "guest_kind": f"{manifest.name} ({_LANGUAGES.get(suffix, 'prebuilt component')})",
        "guest_tier": _TIERS.get(suffix, "unknown"),
        "rss_per_resident_agent_bytes": round((rss_after - rss_before) / agents),
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "pss_per_resident_agent_bytes": (
            round((pss_after - pss_before) / agents) if pss_after and pss_before else None
        ),
        "store_bytes_per_hibernated_agent": round(db_after / agents),
        "store_marginal_bytes_per_agent": round((db_after - db_before) / agents),
        "state_bytes_per_agent": round((state_after - state_before) / agents),
        "db_file_bytes": db_files,
        "first_turn_us_p50": _us(_percentile(first_turn_ns, 50)),
        "first_turn_us_p99": _us(_percentile(first_turn_ns, 99)),
        "instantiate_us_p50": _us(_percentile(instantiate_s, 50) * 1e9),
        "instantiate_us_p99": _us(_percentile(instantiate_s, 99) * 1e9),
        "wake_us_p50": _us(_percentile(wake_ns, 50)),
        "wake_us_p99": _us(_percentile(wake_ns, 99)),
        "wake_instantiate_us_p50": _us(_percentile(wake_instantiate_s, 50) * 1e9),
        "turn_us_p50": _us(_percentile(turn_ns, 50)),
        "turn_us_p99": _us(_percentile(turn_ns, 99)),
        "latency_samples": sampled,
        "turn_samples": len(turn_ns),
        "worker_threads": config.worker_threads,
        "python": platform.python_version(),
        "wasmtime": _package_version("wasmtime"),
        "componentize_py": _package_version("componentize-py"),
        "roost": _package_version("roost"),
        "cpu_count": os.cpu_count() or 0,
        "platform": platform.platform(),
        "elapsed_s": round(time.perf_counter() - started, 2),
        "notes": {key: metric.meaning for key, metric in _METRICS.items()},
    }


def format_table(result: dict[str, Any]) -> str:
    """A readable report of a :func:`measure` result."""
    lines = [
        f"roost bench {result['benchmark']}: {result['agents']} agents of {result['guest_kind']}",
        f"  Python {result['python']}, wasmtime {result['wasmtime']}, "
        f"{result['cpu_count']} CPUs, {result['worker_threads']} worker threads",
        "",
    ]
    keys = _ORDER.get(result["benchmark"], tuple(_METRICS))
    width = max(len(_METRICS[key].label) for key in keys)
    for key in keys:
        metric = _METRICS[key]
        value = _format_value(result[key], metric.unit)
        lines.append(f"  {metric.label:<{width}}  {value:>10}  {metric.meaning}")
    lines.append("")
    lines.append(
        f"  latencies: {result['latency_samples']} agents timed one at a time, "
        f"{result['turn_samples']} warm turns; took {result['elapsed_s']}s"
    )
    return "\n".join(lines)


# -- phases ------------------------------------------------------------------------------


async def _timed_sends(
    roost: Host, addresses: Sequence[str], report: Callable[[str], None] | None = None
) -> list[int]:
    """Send one message to each address in turn; the latency of each, in nanoseconds."""
    latencies: list[int] = []
    step = _progress_step(len(addresses))
    for done, address in enumerate(addresses, 1):
        start = time.perf_counter_ns()
        await roost.send(address, MESSAGE)
        latencies.append(time.perf_counter_ns() - start)
        if report is not None and done % step == 0 and done < len(addresses):
            report(f"  {done}/{len(addresses)}")
    return latencies


async def _send_concurrently(
    roost: Host, addresses: Sequence[str], report: Callable[[str], None]
) -> None:
    if not addresses:
        return
    limiter = trio.CapacityLimiter(CONCURRENCY)
    step = _progress_step(len(addresses))
    done = 0

    async def send_one(address: str) -> None:
        nonlocal done
        async with limiter:
            await roost.send(address, MESSAGE)
        done += 1
        if done % step == 0 and done < len(addresses):
            report(f"  {done}/{len(addresses)} (concurrently)")

    async with trio.open_nursery() as nursery:
        for address in addresses:
            nursery.start_soon(send_one, address)


async def _hibernate_all(roost: Host) -> None:
    """Hibernate every agent and wait until none is resident. An agent whose reply was just
    delivered may not be idle yet, so ask again while waiting."""
    with trio.move_on_after(HIBERNATE_TIMEOUT_S) as scope:
        while (await roost.statistics()).resident:
            roost.hibernate_idle()
            await trio.sleep(0.01)
    if scope.cancelled_caught:
        resident = (await roost.statistics()).resident
        raise RuntimeError(f"{resident} agents still resident after {HIBERNATE_TIMEOUT_S}s")


class _ActivationTimes:
    """Collects the host's own timing of each activation (instantiate + guest init), as the
    host reports it to its metrics (``HostMetrics.observe_wake``)."""

    def __init__(self, roost: Host) -> None:
        self._samples: list[float] | None = None
        metrics = roost.metrics()
        original = metrics.observe_wake

        def observe(kind: str, seconds: float) -> None:
            if self._samples is not None:
                self._samples.append(seconds)
            original(kind, seconds)

        setattr(metrics, "observe_wake", observe)  # noqa: B010

    def start(self) -> None:
        self._samples = []

    def stop(self) -> list[float]:
        samples, self._samples = self._samples or [], None
        return samples


# -- measurements ------------------------------------------------------------------------


def _rss_bytes() -> int:
    """Resident set size of this process now (Linux), else its peak (other Unixes)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _pss_bytes() -> int | None:
    """Proportional set size of this process (Linux 4.14+), or None where unavailable."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _database_bytes(path: Path) -> int:
    """The database's logical size (page_count x page_size), read through the WAL: what the
    file holds once the WAL is checkpointed."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    return pages * page_size


def _file_bytes(path: Path) -> int:
    """Size on disk of the database file plus its write-ahead log."""
    total = 0
    for candidate in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += candidate.stat().st_size
    return total


def _percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


def _us(nanoseconds: float) -> float:
    return round(nanoseconds / 1000, 1)


async def prepared_manifest(
    manifest_path: Path, cache_dir: Path, report: Callable[[str], None]
) -> Manifest:
    """The benchmark's kind, built (cached) and kept resident until the harness says."""
    manifest = load_manifest(manifest_path)
    report(f"building {manifest.name} (cached after the first build)")
    built = await trio.to_thread.run_sync(lambda: ensure_component(manifest, cache_dir=cache_dir))
    return _resident_until_told(built)


def _resident_until_told(manifest: Manifest) -> Manifest:
    limits = manifest.limits.model_copy(update={"idle_timeout_s": IDLE_TIMEOUT_S})
    return manifest.model_copy(update={"limits": limits})


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _progress_step(total: int) -> int:
    return max(total // 10, 100)


def _format_value(value: float, unit: str) -> str:
    if unit == "bytes":
        magnitude = abs(value)
        if magnitude >= 1024 * 1024:
            return f"{value / (1024 * 1024):.1f} MiB"
        if magnitude >= 1024:
            return f"{value / 1024:.1f} KiB"
        return f"{value:.0f} B"
    if unit == "us":
        return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.0f} us"
    return str(value)


class _Progress:
    """Progress lines on stderr, stamped with the time since the run started."""

    def __init__(self) -> None:
        self._started = time.perf_counter()

    def __call__(self, message: str) -> None:
        elapsed = time.perf_counter() - self._started
        print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)

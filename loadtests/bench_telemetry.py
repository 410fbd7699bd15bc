"""``roost bench telemetry``: what OpenTelemetry costs a turn.

The turn benchmark of ``roost bench wake`` (trivial messages to one resident, warm agent;
send to reply, the turn and its commit) in three telemetry modes, in one run:

- ``off``: no providers (the default);
- ``on_no_exporter``: tracer, meter and logger providers, every span sampled, nothing
  exported: the cost of recording;
- ``on_otlp``: traces, metrics and logs exported over OTLP/HTTP (batch processors, metrics
  every second) to a receiver on loopback, set up from the same settings as
  ``OTEL_EXPORTER_OTLP_ENDPOINT``;
- ``on_otlp_sampled_10pct``: the same with ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``
  and ``OTEL_TRACES_SAMPLER_ARG=0.1``, as a busy host would run.

Each mode has its own host on a fresh data dir. The modes take turns, ``rounds`` times
``turns`` sends each, so drift (CPU frequency, page cache) spreads over all three; the
figures are over all the sends of a mode.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from roost.config import TelemetryConfig, load_config
from roost.host import open_host
from roost.manifest import Manifest
from roost.telemetry import Telemetry

from .bench import (
    DEFAULT_MANIFEST,
    MESSAGE,
    WARMUP_TURNS,
    _package_version,
    _percentile,
    _Progress,
    _us,
    prepared_manifest,
)
from .http_sink import HttpSink, run_http_sink

MODES = ("off", "on_no_exporter", "on_otlp", "on_otlp_sampled_10pct")
DEFAULT_TURNS = 500
"""Timed sends per mode per round."""
DEFAULT_ROUNDS = 5
OTLP_METRIC_INTERVAL_MS = 1_000


def run_telemetry_benchmark(
    *,
    turns: int = DEFAULT_TURNS,
    rounds: int = DEFAULT_ROUNDS,
    manifest: Path | None = None,
    as_json: bool = False,
) -> int:
    """Run the benchmark and print its result (one JSON object, or a table)."""
    result = trio.run(
        functools.partial(measure_telemetry, manifest or DEFAULT_MANIFEST, turns, rounds)
    )
    print(json.dumps(result) if as_json else format_table(result))
    return 0


async def measure_telemetry(
    manifest_path: Path,
    turns: int,
    rounds: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    if turns < 1 or rounds < 1:
        raise ValueError("turns and rounds must be at least 1")
    report = progress or _Progress()
    started = time.perf_counter()
    base = load_config()
    manifest = await prepared_manifest(manifest_path, base.cache_dir, report)
    samples: dict[str, list[int]] = {mode: [] for mode in MODES}
    round_p50: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu_s: dict[str, float] = dict.fromkeys(MODES, 0.0)
    with run_http_sink(keep_requests=False) as receiver:
        for round_number in range(1, rounds + 1):
            for mode in MODES:
                report(f"round {round_number}/{rounds}: {turns} turns, telemetry {mode}")
                latencies, cpu = await _timed_turns(manifest, mode, turns, receiver)
                samples[mode] += latencies
                round_p50[mode].append(_percentile(latencies, 50))
                cpu_s[mode] += cpu
        received = dict(receiver.posts_by_path)
        received_bytes = dict(receiver.bytes_by_path)

    modes: dict[str, Any] = {}
    for mode in MODES:
        ns = samples[mode]
        ratios = [m / o for m, o in zip(round_p50[mode], round_p50["off"], strict=True)]
        modes[mode] = {
            "turn_us_p50": _us(_percentile(ns, 50)),
            "turn_us_p90": _us(_percentile(ns, 90)),
            "turn_us_p99": _us(_percentile(ns, 99)),
            "turn_us_mean": _us(statistics.fmean(ns)),
            "round_p50_us": [_us(v) for v in round_p50[mode]],
            "p50_vs_off_median_of_rounds": round(statistics.median(ratios), 3),
            "cpu_us_per_turn": round(cpu_s[mode] / len(ns) * 1e6, 1),
            "samples": len(ns),
        }
    off = modes["off"]
    for mode in MODES:
        modes[mode]["p50_vs_off"] = round(modes[mode]["turn_us_p50"] / off["turn_us_p50"], 3)
        modes[mode]["mean_vs_off"] = round(modes[mode]["turn_us_mean"] / off["turn_us_mean"], 3)
        modes[mode]["cpu_vs_off"] = round(
            modes[mode]["cpu_us_per_turn"] / off["cpu_us_per_turn"], 3
        )
    return {
        "benchmark": "telemetry",
        "guest_kind": manifest.name,
        "turns_per_round": turns,
        "rounds": rounds,
        "modes": modes,
        "otlp_posts": received,
        "otlp_bytes": received_bytes,
        "python": platform.python_version(),
        "opentelemetry_sdk": _package_version("opentelemetry-sdk"),
        "wasmtime": _package_version("wasmtime"),
        "roost": _package_version("roost"),
        "cpu_count": os.cpu_count() or 0,
        "platform": platform.platform(),
        "elapsed_s": round(time.perf_counter() - started, 2),
        "notes": {
            "turn_us": "send to reply for a trivial message to a resident, warm agent "
            "(one guest call with one log host call, and the commit)",
            "p50_vs_off_median_of_rounds": "the median over rounds of the mode's p50 over "
            "the p50 of telemetry off in the same round (adjacent in time)",
            "cpu_us_per_turn": "process CPU time (every thread, exporters included) during "
            "the timed sends, per send",
            "off": "no OpenTelemetry providers (the default)",
            "on_no_exporter": "tracer, meter and logger providers, every span sampled, "
            "no processor or reader: the cost of recording",
            "on_otlp": "OTLP/HTTP export of spans, logs (batched) and metrics (every "
            f"{OTLP_METRIC_INTERVAL_MS} ms) to a receiver on loopback",
            "on_otlp_sampled_10pct": "as on_otlp, one trace in ten sampled "
            "(parentbased_traceidratio, 0.1)",
        },
    }


async def _timed_turns(
    manifest: Manifest, mode: str, turns: int, receiver: HttpSink
) -> tuple[list[int], float]:
    """The latency of each timed send (ns), and the process CPU time (all threads, the
    exporters' included) while they ran."""
    telemetry = _telemetry(mode, receiver)
    try:
        with tempfile.TemporaryDirectory(prefix="roost-bench-telemetry-") as data_dir:
            config = load_config(data_dir=Path(data_dir))
            async with open_host(config, telemetry=telemetry) as roost:
                await roost.deploy(manifest)
                address = f"{manifest.name}/bench"
                for _ in range(WARMUP_TURNS):
                    await roost.send(address, MESSAGE)
                latencies = []
                cpu_started = time.process_time()
                for _ in range(turns):
                    start = time.perf_counter_ns()
                    await roost.send(address, MESSAGE)
                    latencies.append(time.perf_counter_ns() - start)
                return latencies, time.process_time() - cpu_started
    finally:
        await trio.to_thread.run_sync(telemetry.shutdown)


def _telemetry(mode: str, receiver: HttpSink) -> Telemetry:
    if mode == "off":
        return Telemetry.off()
    if mode == "on_no_exporter":
        return Telemetry(
            tracer_provider=TracerProvider(sampler=ALWAYS_ON),
            meter_provider=MeterProvider(),
            logger_provider=LoggerProvider(),
        )
    if mode in ("on_otlp", "on_otlp_sampled_10pct"):
        sampled = mode == "on_otlp_sampled_10pct"
        return Telemetry.from_config(
            TelemetryConfig(
                exporter_otlp_endpoint=receiver.url,
                traces_sampler="parentbased_traceidratio" if sampled else "always_on",
                traces_sampler_arg=0.1 if sampled else 1.0,
                metric_export_interval=OTLP_METRIC_INTERVAL_MS,
            )
        )
    raise ValueError(f"unknown mode {mode!r}")


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"roost bench telemetry: {result['rounds']} rounds x {result['turns_per_round']} "
        f"turns per mode, {result['guest_kind']} agent, OpenTelemetry SDK "
        f"{result['opentelemetry_sdk']}",
        "",
        f"  {'mode':<24}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}{'cpu':>10}"
        f"{'p50/off':>9}{'cpu/off':>9}",
    ]
    for mode, figures in result["modes"].items():
        lines.append(
            f"  {mode:<24}{figures['turn_us_p50']:>8.0f}us{figures['turn_us_p90']:>8.0f}us"
            f"{figures['turn_us_p99']:>8.0f}us{figures['turn_us_mean']:>8.0f}us"
            f"{figures['cpu_us_per_turn']:>8.0f}us"
            f"{figures['p50_vs_off_median_of_rounds']:>9.3f}{figures['cpu_vs_off']:>9.3f}"
        )
    lines += ["", f"  OTLP receiver: {result['otlp_posts']}; took {result['elapsed_s']}s"]
    return "\n".join(lines)

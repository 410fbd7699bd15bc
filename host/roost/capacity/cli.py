"""The capacity model's command line: ``roost capacity``'s flags and how they become
:class:`~roost.capacity.CapacityInputs` (defaults, then a density report, then the flags)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from ..errors import ConfigError
from ..limits import DEFAULT_IDLE_TIMEOUT_S
from . import (
    IDLE_TIMEOUTS_S,
    POSTGRES_STORE_WRITE_IOPS,
    CapacityInputs,
    apply_density,
    model_capacity,
    parse_bytes,
    parse_count,
    parse_density_report,
    parse_range,
    parse_share,
    smoke_reason,
)
from ._table import format_report


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def add_capacity_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    capacity = commands.add_parser(
        "capacity",
        parents=[common],
        help="CPUs, memory, machines and cost for a population, containers beside Roost",
        description="The capacity model (docs/capacity.md). With no inputs: the published "
        "scenario (100 M people, 15%% concurrency, ~24 M sessions, 25-50 sessions per CPU in "
        "containers) beside this host's measured Python-tier figures. Counts take K/M/B "
        "suffixes, sizes KB/MB/GB or KiB/MiB/GiB, shares 15%% or 0.15.",
    )
    capacity.add_argument("--json", action="store_true", help="print one JSON object")
    capacity.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="draw CPUs needed against concurrency"
    )
    capacity.add_argument(
        "--density",
        type=Path,
        metavar="report.json",
        help="a density report of the load test: its measured sessions per core and memory "
        "per session replace the defaults (a smoke run's report is refused)",
    )
    capacity.add_argument(
        "--force",
        action="store_true",
        help="use a --density report even if it is from a smoke run",
    )
    who = capacity.add_argument_group("population")
    who.add_argument("--population", type=_quantity(parse_count), metavar="N")
    who.add_argument("--concurrency", type=_quantity(parse_share), metavar="SHARE")
    who.add_argument("--agents-per-person", type=_quantity(parse_count), metavar="N")
    who.add_argument(
        "--sessions",
        type=_quantity(parse_count),
        metavar="N",
        help="simultaneous sessions as stated by a source (default: the published 24 M "
        "unless a population input is given); both readings are shown",
    )
    containers = capacity.add_argument_group("containers")
    containers.add_argument(
        "--container-sessions-per-cpu",
        type=_quantity(parse_range),
        metavar="LOW[-HIGH]",
        help="sessions per CPU in containers (default 25-50)",
    )
    containers.add_argument(
        "--container-memory", type=_quantity(parse_bytes), metavar="SIZE", help="per session"
    )
    roost = capacity.add_argument_group("Roost, per session (defaults: measured)")
    roost.add_argument(
        "--sessions-per-core",
        type=_quantity(parse_count),
        metavar="N",
        help="measured sessions per core at the SLO; replaces the CPU bound",
    )
    roost.add_argument("--resident-memory", type=_quantity(parse_bytes), metavar="SIZE")
    roost.add_argument("--hibernated-memory", type=_quantity(parse_bytes), metavar="SIZE")
    residency = roost.add_mutually_exclusive_group()
    residency.add_argument(
        "--resident-share",
        type=_quantity(parse_share),
        metavar="SHARE",
        help="share of sessions whose agent is resident (default 100%%; not with --idle-timeout)",
    )
    residency.add_argument(
        "--idle-timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="seconds without an event before an agent hibernates (a kind's "
        f"limits.idle_timeout_s, {DEFAULT_IDLE_TIMEOUT_S:g} by default): the resident share "
        "becomes 1 - exp(-events/s x SECONDS), events taken as Poisson arrivals, and the "
        f"report adds what {IDLE_TIMEOUTS_S[0]:g} s to {IDLE_TIMEOUTS_S[-1]:g} s would give "
        "in memory, wake CPU and sessions per host (not with --resident-share)",
    )
    roost.add_argument(
        "--events-per-s", type=_quantity(parse_count), metavar="X", help="per session"
    )
    roost.add_argument("--cpu-ms-per-event", type=_quantity(parse_count), metavar="MS")
    roost.add_argument("--wake-ms", type=_quantity(parse_count), metavar="MS")
    roost.add_argument("--writes-per-event", type=_quantity(parse_count), metavar="X")
    roost.add_argument("--store-write-iops", type=_quantity(parse_count), metavar="X")
    roost.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        help="the store whose measured commit rate bounds sessions (default sqlite, per "
        "host; postgresql: per database, shared by every host of a cluster)",
    )
    machine = capacity.add_argument_group("machine and prices")
    machine.add_argument("--machine-cores", type=positive_int, metavar="N")
    machine.add_argument("--machine-memory", type=_quantity(parse_bytes), metavar="SIZE")
    machine.add_argument(
        "--reserved-memory",
        type=_quantity(parse_bytes),
        metavar="SIZE",
        help="per machine, not for sessions (default: 1 GiB + one host process per core)",
    )
    machine.add_argument(
        "--cpu-price", type=_quantity(parse_count), metavar="USD", help="per CPU-month"
    )
    machine.add_argument(
        "--gib-price", type=_quantity(parse_count), metavar="USD", help="per GiB-month"
    )
    capacity.set_defaults(handler=run_capacity)


def _quantity(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from one of the capacity model's parsers."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


_CAPACITY_FLAGS = {
    "population": "population",
    "concurrency": "concurrency",
    "agents_per_person": "agents_per_person",
    "container_memory": "container_memory_per_session_bytes",
    "sessions_per_core": "sessions_per_core",
    "resident_memory": "resident_bytes_per_session",
    "hibernated_memory": "hibernated_bytes_per_session",
    "resident_share": "resident_share",
    "idle_timeout": "idle_timeout_s",
    "events_per_s": "events_per_session_per_s",
    "cpu_ms_per_event": "cpu_ms_per_event",
    "wake_ms": "wake_cpu_ms",
    "writes_per_event": "writes_per_event",
    "store_write_iops": "store_write_iops",
}
_MACHINE_FLAGS = {
    "machine_cores": "cores",
    "machine_memory": "memory_bytes",
    "reserved_memory": "reserved_memory_bytes",
    "cpu_price": "cpu_usd_per_month",
    "gib_price": "memory_usd_per_gib_month",
}


def run_capacity(args: argparse.Namespace) -> int:
    """``roost capacity``: print the model's report (and draw its plot)."""
    inputs = _capacity_inputs(args)
    report = model_capacity(inputs)
    if args.json:
        print(json.dumps(report.model_dump(mode="json")))
    else:
        print(format_report(report))
    if args.plot is not None:
        from ._plot import plot_cpus_against_concurrency

        plot_cpus_against_concurrency(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr, flush=True)
    return 0


def _capacity_inputs(args: argparse.Namespace) -> CapacityInputs:
    """The defaults, then the density report, then the flags given (each wins over the
    one before)."""
    base = CapacityInputs()
    if args.density is not None:
        try:
            text = args.density.read_text()
        except OSError as exc:
            raise ConfigError(f"--density {args.density}: {exc.strerror or exc}") from None
        report = parse_density_report(text)
        reason = smoke_reason(report)
        if reason is not None and not args.force:
            raise ConfigError(
                f"--density {args.density}: {reason}. Its figures say the harness works, not "
                "what a core sustains, so the comparison with containers would be wrong. Run "
                "the full `roost bench density` (about 20 minutes; docs/capacity.md), or pass "
                "--force to use this report anyway"
            )
        base = apply_density(base, report, name=str(args.density))
    values = base.model_dump()
    if getattr(args, "store", None) == "postgresql":
        values["store_write_iops"] = POSTGRES_STORE_WRITE_IOPS
    for flag, field in _CAPACITY_FLAGS.items():
        if getattr(args, flag) is not None:
            values[field] = getattr(args, flag)
    for flag, field in _MACHINE_FLAGS.items():
        if getattr(args, flag) is not None:
            values["machine"][field] = getattr(args, flag)
    if args.container_sessions_per_cpu is not None:
        low, high = args.container_sessions_per_cpu
        values["container_sessions_per_cpu_low"] = low
        values["container_sessions_per_cpu_high"] = high
    if args.sessions is not None:
        values["stated_sessions"] = args.sessions
    elif any(
        getattr(args, f) is not None for f in ("population", "concurrency", "agents_per_person")
    ):
        values["stated_sessions"] = None
    try:
        return CapacityInputs.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            if err["loc"]
            else err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise ConfigError(f"invalid capacity inputs: {problems}") from None

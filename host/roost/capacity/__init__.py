"""The capacity model: CPUs, memory, machines and cost for N users, containers beside Roost.

Pure arithmetic over typed inputs; ``roost capacity`` (in the CLI) reads flags and files, this
module only computes. ``docs/capacity.md`` explains every input and where each default comes
from.

The published scenario (:data:`PUBLISHED`): more than 100 M US knowledge workers at 15 %
concurrency is ~24 M simultaneous sessions; at 25-50 sessions per CPU in containers that is
500 K-1 M server CPUs. Its arithmetic does not close: 24 M sessions at 15 % implies ~160 M
workers, and 100 M at 15 % is 15 M sessions. The model shows both readings
(:attr:`CapacityReport.readings`): *as published* (24 M sessions stated) and *as computed*
(population x concurrency x agents per person).

The container figure divides sessions by a sessions-per-CPU range (the published 25-50). The
Roost figure comes from sessions per host, the minimum of three bounds on one machine:

* memory: ``RAM / (a x resident bytes + (1 - a) x hibernated bytes)``, ``a`` the resident
  share;
* CPU: ``cores x 1000 / (events per second per session x CPU ms per event)``, where an event
  that finds its agent hibernated costs a wake, so CPU ms per event is
  ``a x turn ms + (1 - a) x wake ms``;
* store: ``write IOPS / (events per second per session x writes per event)``.

A density report from the load test (:class:`DensityReport`) replaces the per-session memory
and the CPU bound with measured figures (sessions per core at the latency SLO).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

__all__ = [
    "GIB",
    "MEASURED",
    "MIB",
    "OS_RESERVED_BYTES",
    "PUBLISHED",
    "UNBOUNDED",
    "Bottleneck",
    "Bound",
    "BoundName",
    "CapacityInputs",
    "CapacityReport",
    "CurvePoint",
    "DensityBaseline",
    "DensityMachine",
    "DensityReport",
    "DensityStep",
    "Footprint",
    "MachineShape",
    "MeasuredFigures",
    "PublishedScenario",
    "Ratio",
    "Reading",
    "apply_density",
    "bottleneck",
    "cpus_against_concurrency",
    "model_capacity",
    "parse_bytes",
    "parse_count",
    "parse_density_report",
    "parse_range",
    "parse_share",
]

GIB = 1024**3
MIB = 1024**2


# -- the published scenario and this host's measured figures --------------------------------


class PublishedScenario(BaseModel):
    """The napkin math as published, figures as stated (rounded) in the source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    population: int
    concurrency: float
    sessions: int
    sessions_per_cpu_low: float
    sessions_per_cpu_high: float
    cpus_low: int
    cpus_high: int


PUBLISHED = PublishedScenario(
    source='Cloudflare, "Welcome to Agents Week" (2026-04)',
    population=100_000_000,
    concurrency=0.15,
    sessions=24_000_000,
    sessions_per_cpu_low=25,
    sessions_per_cpu_high=50,
    cpus_low=500_000,
    cpus_high=1_000_000,
)


POSTGRES_STORE_WRITE_IOPS = 1_593.0
"""Turn commits per second of the PostgreSQL store on one 2-core machine that also ran the
writers (PostgreSQL 15, fsync and synchronous_commit on, each commit fenced by its
agent's lease; 128 writers on 32 threads): ``python -m loadtests.store_rate --store
scratch --commits 20000 --writers 128 --threads 32``, 2026-11-22. It bounds a whole
cluster (one database), not one host: ``roost capacity --store postgresql``."""


class MeasuredFigures(BaseModel):
    """Per-session figures of this host, with how and when they were measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resident_bytes_per_session: int
    hibernated_bytes_per_session: int
    cpu_ms_per_event: float
    wake_cpu_ms: float
    store_write_iops: float
    host_process_bytes: int
    measured_on: str
    commands: tuple[str, ...]
    description: str


MEASURED = MeasuredFigures(
    # pss_per_resident_agent_bytes: physical memory per resident echo agent, shared pages of
    # the kind's memory image counted once (RSS growth was 7,540,138 B per agent).
    resident_bytes_per_session=1_357_429,
    # store_bytes_per_hibernated_agent: the SQLite file per hibernated agent, schema included;
    # taken as its RAM cost if the store's pages stay in the page cache.
    hibernated_bytes_per_session=197,
    # turn_us_p50: send to reply for a warm agent's trivial turn, commit included.
    cpu_ms_per_event=0.4661,
    # wake_us_p50: send to reply for an event that wakes a hibernated agent.
    wake_cpu_ms=2.759,
    # turn_commits_per_s of the SQLite store (synchronous=NORMAL, 256 writers committing
    # from 4 worker threads, as a host's turns do).
    store_write_iops=8_670,
    # rss_before_bytes: one host process with the kind deployed and one agent warm.
    host_process_bytes=108_335_104,
    measured_on="2026-11-30",
    commands=(
        "roost bench footprint --agents 500 --json",
        "python -m loadtests.store_rate --commits 100000 --json",
    ),
    description="Python tier (bundled echo example, componentize-py), median of 3 runs "
    "on a 2-core x86-64 Linux machine, Python 3.11, wasmtime 50",
)


# -- inputs --------------------------------------------------------------------------------


OS_RESERVED_BYTES = 1 * GIB
"""Memory kept for the operating system on every machine."""


class MachineShape(BaseModel):
    """The machine the fleet is built from, and what its resources cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cores: int = Field(default=32, ge=1)
    memory_bytes: int = Field(default=128 * GIB, ge=1)
    reserved_memory_bytes: int | None = Field(default=None, ge=0)
    """Memory not available to sessions; None: the OS's share plus one host process per
    core (:data:`OS_RESERVED_BYTES` + cores x the measured host process)."""
    cpu_usd_per_month: float = Field(default=30.0, ge=0)
    """Price of one CPU (vCPU) for a month."""
    memory_usd_per_gib_month: float = Field(default=3.0, ge=0)

    @property
    def reserved_bytes(self) -> int:
        if self.reserved_memory_bytes is not None:
            return self.reserved_memory_bytes
        return OS_RESERVED_BYTES + self.cores * MEASURED.host_process_bytes

    @property
    def usable_memory_bytes(self) -> int:
        """What sessions may use: the machine's memory less the reserve."""
        return max(self.memory_bytes - self.reserved_bytes, 0)

    @property
    def usd_per_month(self) -> float:
        return (
            self.cores * self.cpu_usd_per_month
            + self.memory_bytes / GIB * self.memory_usd_per_gib_month
        )


class CapacityInputs(BaseModel):
    """Everything the model needs. The defaults are the published scenario for the population
    and containers, and this host's measured Python-tier figures for Roost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Who is using it.
    population: float = Field(default=PUBLISHED.population, gt=0)
    concurrency: float = Field(default=PUBLISHED.concurrency, gt=0, le=1)
    """Share of the population with a session at the same moment."""
    agents_per_person: float = Field(default=1.0, gt=0)
    stated_sessions: float | None = Field(default=PUBLISHED.sessions, gt=0)
    """Simultaneous sessions as stated by a source; when set, the first reading uses it and
    a second reading computes sessions from the population. None: computed only."""

    # The container-per-agent figure.
    container_sessions_per_cpu_low: float = Field(default=PUBLISHED.sessions_per_cpu_low, gt=0)
    container_sessions_per_cpu_high: float = Field(default=PUBLISHED.sessions_per_cpu_high, gt=0)
    container_memory_per_session_bytes: int = Field(default=128 * MIB, ge=0)

    # This host, per session.
    resident_bytes_per_session: int = Field(default=MEASURED.resident_bytes_per_session, gt=0)
    hibernated_bytes_per_session: int = Field(default=MEASURED.hibernated_bytes_per_session, ge=0)
    resident_share: float = Field(default=1.0, ge=0, le=1)
    """Share of simultaneous sessions whose agent is resident (the rest are hibernated)."""
    memory_per_session_bytes: int | None = Field(default=None, gt=0)
    """A measured mean memory per session (hibernation included) that replaces the
    resident/hibernated mix in the memory bound; set from a density report."""
    events_per_session_per_s: float = Field(default=0.1, gt=0)
    """A message every 20 s, each costing two events (the message, the LLM completion)."""
    cpu_ms_per_event: float = Field(default=MEASURED.cpu_ms_per_event, gt=0)
    wake_cpu_ms: float = Field(default=MEASURED.wake_cpu_ms, gt=0)
    writes_per_event: float = Field(default=1.0, ge=0)
    """Store writes per event: one transaction per committed turn."""
    store_write_iops: float = Field(default=MEASURED.store_write_iops, gt=0)
    sessions_per_core: float | None = Field(default=None, gt=0)
    """A measured sessions-per-core figure (at the latency SLO) that replaces the CPU bound."""
    roost_figures: str = f"measured defaults: {MEASURED.description}, {MEASURED.measured_on}"
    """Where the Roost per-session figures come from, for the report."""

    machine: MachineShape = MachineShape()

    @model_validator(mode="after")
    def _ordered_range(self) -> CapacityInputs:
        if self.container_sessions_per_cpu_low > self.container_sessions_per_cpu_high:
            raise ValueError("container sessions per CPU: low is above high")
        return self


# -- the density report of the load test ---------------------------------------------------


class DensityStep(BaseModel):
    """One step of the density ramp: a number of simulated sessions held for a while."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sessions: int = Field(ge=0)
    throughput_rps: float = Field(ge=0)
    """Messages answered per second."""
    host_added_p50_ms: float = Field(ge=0)
    """Reply time minus the simulated LLM's time, median."""
    host_added_p99_ms: float = Field(ge=0)
    errors: int = Field(ge=0)
    host_cpu_share: float = Field(ge=0)
    """CPU time of the host process / wall time (1.0 = one core busy)."""
    host_rss_bytes: int = Field(ge=0)
    resident_agents: int = Field(ge=0)
    hibernated_agents: int = Field(ge=0)
    slo_met: bool


class DensityMachine(BaseModel):
    """The machine the density run measured."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    cpu_count: int = Field(ge=1)
    memory_bytes: int = Field(ge=1)
    platform: str
    python: str | None = None
    cpu_model: str | None = None


class DensityBaseline(BaseModel):
    """The same agent logic as one OS process per session, measured in the same run."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    rss_per_session_bytes: int = Field(gt=0)
    start_ms: float = Field(ge=0)


class DensityReport(BaseModel):
    """What the load test's density harness writes and ``roost capacity --density`` reads."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sessions_per_core: float = Field(gt=0)
    """Sessions of the last step that met the SLO, per core the host was pinned to."""
    rss_per_session_bytes: int = Field(gt=0)
    """Host RSS growth over its idle baseline at that step, divided by its sessions."""
    pss_per_session_bytes: int | None = Field(default=None, gt=0)
    """The same with PSS (pages shared by instances counted once), where the OS reports it."""
    events_per_session_per_s: float | None = Field(default=None, gt=0)
    """The load each session offered (events per second), if the harness records it."""
    steps: list[DensityStep]
    machine: DensityMachine
    baseline: DensityBaseline | None = None
    measured_on: str | None = None
    smoke: bool = False
    """Written by ``roost bench density --smoke``: a run that checks the harness works."""
    settings: dict[str, Any] | None = None
    """The harness's settings (steps, seconds per step, ...)."""


SMOKE_MAX_SESSIONS = 100
"""A report whose largest step has fewer sessions than this measured no capacity."""
SMOKE_MAX_STEP_S = 30.0
"""...nor one whose steps lasted less than this."""


def smoke_reason(report: DensityReport) -> str | None:
    """Why ``report`` is a smoke run's and no measure of capacity, or None if it is not."""
    largest = max((s.sessions for s in report.steps), default=0)
    step_s = (report.settings or {}).get("step_s")
    if report.smoke:
        why = "it is a smoke run's report (roost bench density --smoke)"
    elif largest < SMOKE_MAX_SESSIONS:
        why = f"its largest step held {largest} sessions (a full run goes to thousands)"
    elif isinstance(step_s, int | float) and step_s < SMOKE_MAX_STEP_S:
        why = f"its steps lasted {step_s:g} s (a full run measures each for 90 s)"
    else:
        return None
    if not any(not s.slo_met for s in report.steps):
        why += f", and no step broke the SLO: {largest} sessions per core is a floor, not a limit"
    return why


def parse_density_report(text: str) -> DensityReport:
    """A density report from its JSON text; ConfigError naming the field if it is invalid."""
    try:
        return DensityReport.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'report'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid density report: {problems}") from None


def apply_density(
    inputs: CapacityInputs, report: DensityReport, *, name: str = "density report"
) -> CapacityInputs:
    """``inputs`` with the Roost figures the report measured: sessions per core (the CPU
    bound), memory per session (PSS if present, else RSS), the offered event rate, and the
    process-per-session baseline's memory for the container figure."""
    update: dict[str, object] = {
        "sessions_per_core": report.sessions_per_core,
        "memory_per_session_bytes": report.pss_per_session_bytes or report.rss_per_session_bytes,
        "roost_figures": f"{name}: {report.sessions_per_core:g} sessions per core measured on "
        f"{report.machine.cpu_count} cores ({report.machine.platform})"
        + (f", {report.measured_on}" if report.measured_on else ""),
    }
    if report.events_per_session_per_s is not None:
        update["events_per_session_per_s"] = report.events_per_session_per_s
    if report.baseline is not None:
        update["container_memory_per_session_bytes"] = report.baseline.rss_per_session_bytes
    return inputs.model_copy(update=update)


# -- outputs -------------------------------------------------------------------------------

BoundName = Literal["memory", "cpu", "store"]


class Bound(BaseModel):
    """One bound on sessions per host."""

    model_config = ConfigDict(frozen=True)

    name: BoundName
    sessions_per_host: int
    formula: str
    """The formula with this run's figures in it."""
    measured: bool
    """True when the bound uses a density report's (or a given) measured figure directly."""


class Bottleneck(BaseModel):
    """Sessions per host: the smallest of the three bounds, and which one it is."""

    model_config = ConfigDict(frozen=True)

    bounds: list[Bound]
    binding: BoundName
    sessions_per_host: int
    sessions_per_cpu: float
    memory_per_session_bytes: float
    cpu_ms_per_event: float


class Footprint(BaseModel):
    """What serving a number of sessions takes at one density."""

    model_config = ConfigDict(frozen=True)

    sessions_per_cpu: float
    cpus: int
    """CPUs needed: sessions / sessions per CPU, rounded up."""
    memory_bytes: int
    machines: int
    """Machines of the given shape: enough for both the CPUs and the memory."""
    usd_per_month: float


class Ratio(BaseModel):
    """Container figure / Roost figure; low uses the containers' best case (most sessions
    per CPU), high their worst."""

    model_config = ConfigDict(frozen=True)

    cpus_low: float
    cpus_high: float
    machines_low: float
    machines_high: float
    cost_low: float
    cost_high: float


class Reading(BaseModel):
    """One reading of the scenario: a number of sessions and what it takes both ways."""

    model_config = ConfigDict(frozen=True)

    name: str
    population: int
    """Stated, or (for a stated sessions figure) implied by the concurrency."""
    concurrency: float
    agents_per_person: float
    sessions: int
    container_best: Footprint
    container_worst: Footprint
    roost: Footprint
    ratio: Ratio


class CapacityReport(BaseModel):
    """The model's answer. The flat fields are the first reading's."""

    model_config = ConfigDict(frozen=True)

    sessions: int
    cpus_low: int
    """Container CPUs at the high sessions-per-CPU figure (the best case)."""
    cpus_high: int
    roost_cpus: int
    roost_machines: int
    ratio_low: float
    """Container CPUs / Roost CPUs, best case for containers."""
    ratio_high: float
    binding: BoundName
    readings: list[Reading]
    bottleneck: Bottleneck
    published: PublishedScenario | None
    """The published figures, when the inputs are the published scenario."""
    notes: list[str]
    inputs: CapacityInputs


class CurvePoint(BaseModel):
    """CPUs needed at one concurrency (for the plot)."""

    model_config = ConfigDict(frozen=True)

    concurrency: float
    sessions: int
    container_cpus_low: int
    container_cpus_high: int
    roost_cpus: int


# -- the model -----------------------------------------------------------------------------


def bottleneck(inputs: CapacityInputs) -> Bottleneck:
    """Sessions per host from its memory, CPU and store bounds; the smallest binds."""
    machine = inputs.machine
    a = inputs.resident_share
    total, reserved = format_bytes(machine.memory_bytes), format_bytes(machine.reserved_bytes)
    ram = f"({total} - {reserved} reserved) RAM" if machine.reserved_bytes else f"{total} RAM"
    if inputs.memory_per_session_bytes is not None:
        per_session = float(inputs.memory_per_session_bytes)
        memory_formula = f"{ram} / {format_bytes(per_session)} measured per session"
    else:
        per_session = (
            a * inputs.resident_bytes_per_session + (1 - a) * inputs.hibernated_bytes_per_session
        )
        memory_formula = (
            f"{ram} / ({a:g} x "
            f"{format_bytes(inputs.resident_bytes_per_session)} resident + {1 - a:g} x "
            f"{format_bytes(inputs.hibernated_bytes_per_session)} hibernated)"
        )
    memory = Bound(
        name="memory",
        sessions_per_host=math.floor(machine.usable_memory_bytes / per_session),
        formula=memory_formula,
        measured=inputs.memory_per_session_bytes is not None,
    )

    cpu_ms = a * inputs.cpu_ms_per_event + (1 - a) * inputs.wake_cpu_ms
    if inputs.sessions_per_core is not None:
        cpu = Bound(
            name="cpu",
            sessions_per_host=math.floor(machine.cores * inputs.sessions_per_core),
            formula=f"{machine.cores} cores x {inputs.sessions_per_core:g} measured sessions "
            "per core at the SLO",
            measured=True,
        )
    else:
        cpu_formula = (
            f"{machine.cores} cores x 1000 / ({inputs.events_per_session_per_s:g} events/s x "
            f"{cpu_ms:.3g} ms per event)"
        )
        if a < 1:
            cpu_formula += (
                f"; ms per event = {a:g} x {inputs.cpu_ms_per_event:g} turn + {1 - a:g} x "
                f"{inputs.wake_cpu_ms:g} wake"
            )
        cpu = Bound(
            name="cpu",
            sessions_per_host=math.floor(
                machine.cores * 1000 / (inputs.events_per_session_per_s * cpu_ms)
            ),
            formula=cpu_formula,
            measured=False,
        )

    writes = inputs.events_per_session_per_s * inputs.writes_per_event
    store = Bound(
        name="store",
        sessions_per_host=math.floor(inputs.store_write_iops / writes) if writes > 0 else UNBOUNDED,
        formula=f"{inputs.store_write_iops:,.0f} writes/s / "
        f"({inputs.events_per_session_per_s:g} events/s x {inputs.writes_per_event:g} "
        "writes per event)",
        measured=False,
    )

    bounds = [memory, cpu, store]
    binding = min(bounds, key=lambda b: b.sessions_per_host)
    if binding.sessions_per_host < 1:
        raise ConfigError(
            f"a {machine.cores}-core machine with {format_bytes(machine.memory_bytes)} holds no "
            f"session ({binding.name} bound: {binding.formula})"
        )
    return Bottleneck(
        bounds=bounds,
        binding=binding.name,
        sessions_per_host=binding.sessions_per_host,
        sessions_per_cpu=binding.sessions_per_host / machine.cores,
        memory_per_session_bytes=per_session,
        cpu_ms_per_event=cpu_ms,
    )


UNBOUNDED = 10**15
"""Sessions per host of a bound that does not apply (no store writes)."""


def _footprint(
    sessions: int, sessions_per_cpu: float, memory_per_session: float, machine: MachineShape
) -> Footprint:
    cpus = math.ceil(sessions / sessions_per_cpu)
    memory = math.ceil(sessions * memory_per_session)
    usable = machine.usable_memory_bytes
    machines = max(math.ceil(cpus / machine.cores), math.ceil(memory / usable) if usable else 0)
    return Footprint(
        sessions_per_cpu=sessions_per_cpu,
        cpus=cpus,
        memory_bytes=memory,
        machines=machines,
        usd_per_month=round(machines * machine.usd_per_month, 2),
    )


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 1) if denominator else math.inf


def _reading(
    name: str,
    population: float,
    sessions: float,
    inputs: CapacityInputs,
    neck: Bottleneck,
) -> Reading:
    count = round(sessions)
    machine = inputs.machine
    container_memory = inputs.container_memory_per_session_bytes
    best = _footprint(count, inputs.container_sessions_per_cpu_high, container_memory, machine)
    worst = _footprint(count, inputs.container_sessions_per_cpu_low, container_memory, machine)
    roost = _footprint(count, neck.sessions_per_cpu, neck.memory_per_session_bytes, machine)
    return Reading(
        name=name,
        population=round(population),
        concurrency=inputs.concurrency,
        agents_per_person=inputs.agents_per_person,
        sessions=count,
        container_best=best,
        container_worst=worst,
        roost=roost,
        ratio=Ratio(
            cpus_low=_ratio(best.cpus, roost.cpus),
            cpus_high=_ratio(worst.cpus, roost.cpus),
            machines_low=_ratio(best.machines, roost.machines),
            machines_high=_ratio(worst.machines, roost.machines),
            cost_low=_ratio(best.usd_per_month, roost.usd_per_month),
            cost_high=_ratio(worst.usd_per_month, roost.usd_per_month),
        ),
    )


def _is_published(inputs: CapacityInputs) -> bool:
    return (
        inputs.population == PUBLISHED.population
        and inputs.concurrency == PUBLISHED.concurrency
        and inputs.agents_per_person == 1
        and inputs.stated_sessions == PUBLISHED.sessions
        and inputs.container_sessions_per_cpu_low == PUBLISHED.sessions_per_cpu_low
        and inputs.container_sessions_per_cpu_high == PUBLISHED.sessions_per_cpu_high
    )


def model_capacity(inputs: CapacityInputs | None = None) -> CapacityReport:
    """Run the model. ``model_capacity()`` is the published scenario beside this host's
    measured figures."""
    inputs = inputs or CapacityInputs()
    neck = bottleneck(inputs)
    per_person = inputs.concurrency * inputs.agents_per_person
    computed = inputs.population * per_person
    published = PUBLISHED if _is_published(inputs) else None
    readings: list[Reading] = []
    notes: list[str] = []
    if inputs.stated_sessions is not None:
        implied = inputs.stated_sessions / per_person
        readings.append(
            _reading(
                "as published" if published else "as stated",
                implied,
                inputs.stated_sessions,
                inputs,
                neck,
            )
        )
        share = f"{inputs.concurrency:.0%}"
        notes.append(
            f"{format_count(inputs.stated_sessions)} sessions at {share} concurrency imply "
            f"{format_count(implied)} people; {format_count(inputs.population)} at {share} is "
            f"{format_count(computed)} sessions. Both readings are shown."
        )
    readings.append(
        _reading(
            f"as computed ({format_count(inputs.population)} x {inputs.concurrency:.0%}"
            + (f" x {inputs.agents_per_person:g}" if inputs.agents_per_person != 1 else "")
            + ")",
            inputs.population,
            computed,
            inputs,
            neck,
        )
    )
    if published is not None:
        first = readings[0]
        notes.append(
            f"The published {format_count(published.cpus_low)}-"
            f"{format_count(published.cpus_high)} CPUs "
            f"are {first.sessions:,} / {published.sessions_per_cpu_high:g} = "
            f"{first.container_best.cpus:,} and {first.sessions:,} / "
            f"{published.sessions_per_cpu_low:g} = {first.container_worst.cpus:,}, rounded."
        )
    first = readings[0]
    return CapacityReport(
        sessions=first.sessions,
        cpus_low=first.container_best.cpus,
        cpus_high=first.container_worst.cpus,
        roost_cpus=first.roost.cpus,
        roost_machines=first.roost.machines,
        ratio_low=first.ratio.cpus_low,
        ratio_high=first.ratio.cpus_high,
        binding=neck.binding,
        readings=readings,
        bottleneck=neck,
        published=published,
        notes=notes,
        inputs=inputs,
    )


def cpus_against_concurrency(
    inputs: CapacityInputs, concurrencies: Sequence[float]
) -> list[CurvePoint]:
    """CPUs needed both ways as the concurrency varies (population x concurrency x agents)."""
    neck = bottleneck(inputs)
    points = []
    for concurrency in concurrencies:
        sessions = round(inputs.population * concurrency * inputs.agents_per_person)
        points.append(
            CurvePoint(
                concurrency=concurrency,
                sessions=sessions,
                container_cpus_low=math.ceil(sessions / inputs.container_sessions_per_cpu_high),
                container_cpus_high=math.ceil(sessions / inputs.container_sessions_per_cpu_low),
                roost_cpus=math.ceil(sessions / neck.sessions_per_cpu),
            )
        )
    return points


# -- parsing quantities (the CLI's flags) --------------------------------------------------

_COUNT_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
_BYTE_SUFFIXES = {
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_count(text: str) -> float:
    """``"100M"``, ``"1.5e8"``, ``"160_000_000"``, ``"24k"`` -> a number."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    scale = _COUNT_SUFFIXES.get(cleaned[-1:].lower())
    if scale is not None:
        cleaned = cleaned[:-1]
    try:
        value = float(cleaned) * (scale or 1)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a non-negative number: {text!r}")
    return value


def parse_bytes(text: str) -> int:
    """``"1.3MB"``, ``"128GiB"``, ``"512 MiB"``, ``"1365213"`` -> bytes."""
    cleaned = text.strip().replace("_", "").replace(",", "").replace(" ", "").lower()
    for suffix in sorted(_BYTE_SUFFIXES, key=len, reverse=True):
        if cleaned.endswith(suffix):
            number, scale = cleaned[: -len(suffix)], _BYTE_SUFFIXES[suffix]
            break
    else:
        number, scale = cleaned, 1
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"not a size: {text!r} (try 1.3MB, 128GiB or a number of bytes)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a non-negative size: {text!r}")
    return round(value)


def parse_share(text: str) -> float:
    """``"15%"`` or ``"0.15"`` -> 0.15."""
    cleaned = text.strip()
    try:
        value = float(cleaned[:-1]) / 100 if cleaned.endswith("%") else float(cleaned)
    except ValueError:
        raise ValueError(f"not a share: {text!r} (try 15% or 0.15)") from None
    if not 0 <= value <= 1:
        raise ValueError(f"a share is between 0 and 1 (0% and 100%): {text!r}")
    return value


def parse_range(text: str) -> tuple[float, float]:
    """``"25-50"`` -> (25, 50); ``"40"`` -> (40, 40)."""
    low_text, sep, high_text = text.strip().partition("-")
    low = parse_count(low_text)
    high = parse_count(high_text) if sep else low
    if low <= 0 or high < low:
        raise ValueError(f"not a range LOW-HIGH of positive numbers: {text!r}")
    return low, high


# -- formatting ----------------------------------------------------------------------------


def format_count(value: float) -> str:
    """A count as people say it: 24 M, 480 K, 160 M."""
    for scale, suffix in ((1e9, " B"), (1e6, " M"), (1e3, " K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def format_bytes(value: float) -> str:
    for scale, unit in ((1024**5, "PiB"), (1024**4, "TiB"), (GIB, "GiB"), (MIB, "MiB")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    if value >= 1024:
        return f"{value / 1024:.3g} KiB"
    return f"{value:.0f} B"

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
  share (given, or derived from an idle timeout: below);
* CPU: ``cores x 1000 / (events per second per session x CPU ms per event)``, where an event
  that finds its agent hibernated costs a wake, so CPU ms per event is
  ``a x turn ms + (1 - a) x wake ms``;
* store: ``write IOPS / (events per second per session x writes per event)``.

An agent hibernates after its kind's idle timeout ``T`` without an event. Taking a session's
events as Poisson arrivals at ``λ`` per second, the gap ``G`` before an event is exponential
with mean ``1/λ``: the share of time the agent is resident is ``E[min(G, T)] / E[G] =
1 - exp(-λT)``, and the share of events that find it hibernated (and pay a wake) is
``P(G > T) = exp(-λT)``. So ``a = 1 - exp(-λT)`` serves both bounds above
(:func:`resident_share_after`), and :func:`idle_timeout_trade` shows what other timeouts
would give.

A density report from the load test (:class:`DensityReport`) replaces the per-session memory
and the CPU bound with measured figures (sessions per core at the latency SLO).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import ConfigError
from ._density import DensityBaseline as DensityBaseline
from ._density import DensityMachine as DensityMachine
from ._density import DensityReport as DensityReport
from ._density import DensityStep as DensityStep
from ._density import apply_density as apply_density
from ._density import parse_density_report as parse_density_report
from ._density import smoke_reason as smoke_reason
from ._quantities import GIB as GIB
from ._quantities import MIB as MIB
from ._quantities import format_bytes as format_bytes
from ._quantities import format_count as format_count
from ._quantities import parse_bytes as parse_bytes
from ._quantities import parse_count as parse_count
from ._quantities import parse_range as parse_range
from ._quantities import parse_share as parse_share

__all__ = [
    "GIB",
    "IDLE_TIMEOUTS_S",
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
    "IdleTimeoutPoint",
    "MachineShape",
    "MeasuredFigures",
    "PublishedScenario",
    "Ratio",
    "Reading",
    "ResidentShare",
    "ResidentShareSource",
    "apply_density",
    "bottleneck",
    "cpus_against_concurrency",
    "idle_timeout_trade",
    "model_capacity",
    "parse_bytes",
    "parse_count",
    "parse_density_report",
    "parse_range",
    "parse_share",
    "resident_share",
    "resident_share_after",
]


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
    resident_share: float | None = Field(default=None, ge=0, le=1)
    """Share of simultaneous sessions whose agent is resident (the rest are hibernated).
    None: derived from ``idle_timeout_s`` if that is set, else 1 (every session resident)."""
    idle_timeout_s: float | None = Field(default=None, gt=0)
    """Seconds without an event before an agent hibernates (a kind's
    ``limits.idle_timeout_s``); when set, the resident share is derived from it and the event
    rate (:func:`resident_share_after`). Not with ``resident_share``."""
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

    @model_validator(mode="after")
    def _one_resident_share(self) -> CapacityInputs:
        if self.resident_share is not None and self.idle_timeout_s is not None:
            raise ValueError(
                "give the resident share (--resident-share) or the idle timeout it follows "
                "from (--idle-timeout), not both"
            )
        return self


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
    resident_share: float
    """The share ``a`` of sessions resident that the bounds used."""
    memory_per_session_bytes: float
    cpu_ms_per_event: float


ResidentShareSource = Literal["given", "idle_timeout", "default"]


class ResidentShare(BaseModel):
    """The resident share the model used, and where it came from."""

    model_config = ConfigDict(frozen=True)

    value: float
    source: ResidentShareSource
    """``given`` (``resident_share``), ``idle_timeout`` (derived from ``idle_timeout_s`` and
    the event rate), or ``default`` (every session resident)."""
    idle_timeout_s: float | None
    events_per_session_per_s: float | None
    """The event rate it was derived at (``idle_timeout`` only)."""
    explanation: str
    """How it was found, with this run's figures."""


class IdleTimeoutPoint(BaseModel):
    """Sessions per host at one idle timeout: a longer one keeps more agents resident (more
    memory per session) and wakes fewer (less CPU per event)."""

    model_config = ConfigDict(frozen=True)

    idle_timeout_s: float
    resident_share: float
    memory_per_session_bytes: float
    cpu_ms_per_event: float
    bound_sessions_per_host: dict[BoundName, int]
    """Each bound's sessions per host at this timeout."""
    sessions_per_host: int
    """The smallest bound at this timeout (0: the machine holds no session)."""
    binding: BoundName
    given: bool
    """True for the idle timeout of the inputs."""


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
    resident_share: ResidentShare
    idle_timeouts: list[IdleTimeoutPoint]
    """What other idle timeouts would give (:data:`IDLE_TIMEOUTS_S` and the given one); empty
    unless the inputs set ``idle_timeout_s``."""
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


IDLE_TIMEOUTS_S = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""The idle timeouts :func:`idle_timeout_trade` compares (the given one is added)."""


def resident_share_after(idle_timeout_s: float, events_per_s: float) -> float:
    """The resident share of sessions whose agents hibernate after ``idle_timeout_s`` without
    an event, events arriving as a Poisson process at ``events_per_s`` per session:
    ``1 - exp(-events_per_s x idle_timeout_s)``, both the share of time an agent is resident
    and the share of events that find it so."""
    return -math.expm1(-events_per_s * idle_timeout_s)


def resident_share(inputs: CapacityInputs) -> ResidentShare:
    """The resident share the bounds use: given, derived from the idle timeout, or 1."""
    if inputs.resident_share is not None:
        return ResidentShare(
            value=inputs.resident_share,
            source="given",
            idle_timeout_s=None,
            events_per_session_per_s=None,
            explanation="given",
        )
    if inputs.idle_timeout_s is not None:
        rate, timeout = inputs.events_per_session_per_s, inputs.idle_timeout_s
        return ResidentShare(
            value=resident_share_after(timeout, rate),
            source="idle_timeout",
            idle_timeout_s=timeout,
            events_per_session_per_s=rate,
            explanation=f"1 - exp(-{rate:g} events/s x {timeout:g} s idle timeout), "
            "events as Poisson arrivals",
        )
    return ResidentShare(
        value=1.0,
        source="default",
        idle_timeout_s=None,
        events_per_session_per_s=None,
        explanation="default: every session resident",
    )


def bottleneck(inputs: CapacityInputs) -> Bottleneck:
    """Sessions per host from its memory, CPU and store bounds; the smallest binds.
    ConfigError if the machine holds no session."""
    neck = _bottleneck(inputs)
    if neck.sessions_per_host < 1:
        machine = inputs.machine
        [binding] = [b for b in neck.bounds if b.name == neck.binding]
        raise ConfigError(
            f"a {machine.cores}-core machine with {format_bytes(machine.memory_bytes)} holds no "
            f"session ({binding.name} bound: {binding.formula})"
        )
    return neck


def _bottleneck(inputs: CapacityInputs) -> Bottleneck:
    machine = inputs.machine
    a = resident_share(inputs).value
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
            f"{ram} / ({a:.3g} x "
            f"{format_bytes(inputs.resident_bytes_per_session)} resident + {1 - a:.3g} x "
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
                f"; ms per event = {a:.3g} x {inputs.cpu_ms_per_event:g} turn + {1 - a:.3g} x "
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
    return Bottleneck(
        bounds=bounds,
        binding=binding.name,
        sessions_per_host=binding.sessions_per_host,
        sessions_per_cpu=binding.sessions_per_host / machine.cores,
        resident_share=a,
        memory_per_session_bytes=per_session,
        cpu_ms_per_event=cpu_ms,
    )


UNBOUNDED = 10**15
"""Sessions per host of a bound that does not apply (no store writes)."""


def idle_timeout_trade(
    inputs: CapacityInputs, timeouts: Sequence[float] = IDLE_TIMEOUTS_S
) -> list[IdleTimeoutPoint]:
    """Sessions per host at each idle timeout (and at the inputs' own, if set), the resident
    share derived from each: what a longer timeout costs in memory and saves in wake CPU."""
    given = inputs.idle_timeout_s
    points = []
    for timeout in sorted({*timeouts, *([given] if given is not None else [])}):
        neck = _bottleneck(
            inputs.model_copy(update={"resident_share": None, "idle_timeout_s": timeout})
        )
        points.append(
            IdleTimeoutPoint(
                idle_timeout_s=timeout,
                resident_share=neck.resident_share,
                memory_per_session_bytes=neck.memory_per_session_bytes,
                cpu_ms_per_event=neck.cpu_ms_per_event,
                bound_sessions_per_host={b.name: b.sessions_per_host for b in neck.bounds},
                sessions_per_host=neck.sessions_per_host,
                binding=neck.binding,
                given=timeout == given,
            )
        )
    return points


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
    residency = resident_share(inputs)
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
    measured = " and ".join(
        bound
        for bound, figure in (
            ("memory", inputs.memory_per_session_bytes),
            ("CPU", inputs.sessions_per_core),
        )
        if figure is not None
    )
    if residency.source != "default" and measured:
        notes.append(
            f"The resident share ({residency.value:.1%}) does not enter the {measured} "
            f"bound{'s' if ' and ' in measured else ''}: a measured figure replaces it, and "
            "already counts the measured run's own hibernation."
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
        resident_share=residency,
        idle_timeouts=idle_timeout_trade(inputs) if inputs.idle_timeout_s is not None else [],
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

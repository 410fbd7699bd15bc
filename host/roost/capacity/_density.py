"""The density report of the load test: what ``roost bench density`` writes and
``roost capacity --density`` reads, whether it measured capacity at all (a smoke run's does
not), and the capacity inputs it replaces."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError

if TYPE_CHECKING:
    from . import CapacityInputs


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

"""``roost capacity`` without ``--json``: the capacity report as a table for people."""

from __future__ import annotations

from . import GIB, UNBOUNDED, CapacityReport, IdleTimeoutPoint, format_bytes, format_count


def format_report(report: CapacityReport) -> str:
    """The report as a table for people (``roost capacity`` without ``--json``)."""
    inputs, neck, machine = report.inputs, report.bottleneck, report.inputs.machine
    lines: list[str] = []
    scenario = "published: " + report.published.source if report.published else "given"
    lines.append(f"Scenario ({scenario})")
    stated = (
        f"; {format_count(inputs.stated_sessions)} simultaneous sessions stated"
        if inputs.stated_sessions is not None
        else ""
    )
    lines.append(
        f"  {format_count(inputs.population)} people, {inputs.concurrency:.0%} concurrency, "
        f"{inputs.agents_per_person:g} agent{'' if inputs.agents_per_person == 1 else 's'} "
        f"each{stated}"
    )
    lines.append(
        f"  containers: {inputs.container_sessions_per_cpu_low:g}-"
        f"{inputs.container_sessions_per_cpu_high:g} sessions per CPU, "
        f"{format_bytes(inputs.container_memory_per_session_bytes)} per session"
    )
    lines += [f"  note: {note}" for note in report.notes]
    lines.append("")
    lines.append(
        f"Roost sessions per host on a {machine.cores}-core, "
        f"{format_bytes(machine.memory_bytes)} machine"
    )
    lines.append(f"  figures: {inputs.roost_figures}")
    share = report.resident_share
    lines.append(f"  resident share: {share.value:.1%} ({share.explanation})")
    for bound in neck.bounds:
        mark = "  <- binds" if bound.name == neck.binding else ""
        shown = (
            "unbounded" if bound.sessions_per_host >= UNBOUNDED else f"{bound.sessions_per_host:,}"
        )
        lines.append(f"  {bound.name:<7}{shown:>14}  = {bound.formula}{mark}")
    lines.append(
        f"  => {neck.sessions_per_host:,} sessions per host, {neck.sessions_per_cpu:,.0f} per "
        f"CPU: the {neck.binding} bound binds"
    )
    if report.idle_timeouts:
        lines.append("")
        lines += _idle_timeout_table(report.idle_timeouts, inputs.events_per_session_per_s)
    for reading in report.readings:
        best, worst, roost, ratio = (
            reading.container_best,
            reading.container_worst,
            reading.roost,
            reading.ratio,
        )
        lines.append("")
        lines.append(
            f"Reading {reading.name}: {reading.sessions:,} sessions"
            + (
                f" (implies {format_count(reading.population)} people)"
                if reading.population != round(inputs.population)
                else ""
            )
        )
        header = (
            f"containers {best.sessions_per_cpu:g}/CPU",
            f"containers {worst.sessions_per_cpu:g}/CPU",
            "Roost",
            "ratio",
        )
        rows = [
            (
                "CPUs",
                f"{best.cpus:,}",
                f"{worst.cpus:,}",
                f"{roost.cpus:,}",
                _span(ratio.cpus_low, ratio.cpus_high),
            ),
            (
                "memory",
                format_bytes(best.memory_bytes),
                format_bytes(worst.memory_bytes),
                format_bytes(roost.memory_bytes),
                "",
            ),
            (
                "machines",
                f"{best.machines:,}",
                f"{worst.machines:,}",
                f"{roost.machines:,}",
                _span(ratio.machines_low, ratio.machines_high),
            ),
            (
                "USD/month",
                f"{best.usd_per_month:,.0f}",
                f"{worst.usd_per_month:,.0f}",
                f"{roost.usd_per_month:,.0f}",
                _span(ratio.cost_low, ratio.cost_high),
            ),
        ]
        lines.append(f"  {'':<11}" + "".join(f"{h:>22}" for h in header))
        for label, *cells in rows:
            lines.append(f"  {label:<11}" + "".join(f"{c:>22}" for c in cells))
    lines.append("")
    lines.append(
        f"machine price: {machine.cores} x ${machine.cpu_usd_per_month:g} per CPU + "
        f"{machine.memory_bytes / GIB:g} GiB x ${machine.memory_usd_per_gib_month:g} per GiB "
        f"= ${machine.usd_per_month:,.0f} per month"
    )
    return "\n".join(lines)


def _idle_timeout_table(points: list[IdleTimeoutPoint], events_per_s: float) -> list[str]:
    """What a longer idle timeout costs in memory per session and saves in wake CPU."""
    lines = [
        f"Idle timeouts at {events_per_s:g} events/s per session (Poisson arrivals): a longer "
        "one keeps more agents resident and wakes fewer"
    ]
    widths = (12, 10, 16, 14, 14, 12, 24)
    header = (
        "idle timeout",
        "resident",
        "memory/session",
        "CPU ms/event",
        "memory bound",
        "CPU bound",
        "sessions/host",
    )
    lines.append("  " + "".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for point in points:
        cells = (
            f"{point.idle_timeout_s:g} s",
            f"{point.resident_share:.1%}",
            format_bytes(point.memory_per_session_bytes),
            f"{point.cpu_ms_per_event:.3f}",
            f"{point.bound_sessions_per_host['memory']:,}",
            f"{point.bound_sessions_per_host['cpu']:,}",
            f"{point.sessions_per_host:,} ({point.binding})",
        )
        mark = "  <- given" if point.given else ""
        lines.append("  " + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)) + mark)
    return lines


def _span(low: float, high: float) -> str:
    def times(value: float) -> str:
        return f"{value:.0f}" if value >= 10 else f"{value:.1f}"

    return f"{times(low)}x" if times(low) == times(high) else f"{times(low)}-{times(high)}x"

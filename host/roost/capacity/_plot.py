"""``roost capacity --plot``: CPUs needed against concurrency, containers beside Roost."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

from . import CapacityReport, cpus_against_concurrency

_STEPS = 100
_MIN_TOP_CONCURRENCY = 0.5


def plot_cpus_against_concurrency(report: CapacityReport, path: Path) -> None:
    """Write a PNG of CPUs needed (log scale) as the concurrency goes from 0 to at least
    50 %, for the report's population: the container range, Roost, and the scenario's own
    concurrency (with the published figures marked when the scenario is the published one)."""
    inputs = report.inputs
    top = max(_MIN_TOP_CONCURRENCY, 2 * inputs.concurrency)
    concurrencies = [top * (i + 1) / _STEPS for i in range(_STEPS)]
    points = cpus_against_concurrency(inputs, concurrencies)
    x = [p.concurrency for p in points]

    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    low_label = f"{inputs.container_sessions_per_cpu_high:g}"
    high_label = f"{inputs.container_sessions_per_cpu_low:g}"
    axes.fill_between(
        x,
        [p.container_cpus_low for p in points],
        [p.container_cpus_high for p in points],
        color="tab:red",
        alpha=0.25,
        label=f"containers, {high_label}-{low_label} sessions per CPU",
    )
    axes.plot(x, [p.container_cpus_low for p in points], color="tab:red", linewidth=1)
    axes.plot(x, [p.container_cpus_high for p in points], color="tab:red", linewidth=1)
    neck = report.bottleneck
    axes.plot(
        x,
        [p.roost_cpus for p in points],
        color="tab:blue",
        linewidth=2,
        label=f"Roost, {neck.sessions_per_cpu:,.0f} sessions per CPU ({neck.binding} bound)",
    )
    axes.axvline(inputs.concurrency, color="grey", linestyle=":", linewidth=1)
    if report.published is not None:
        published = report.published
        axes.scatter(
            [published.concurrency] * 2,
            [report.cpus_low, report.cpus_high],
            color="black",
            marker="x",
            zorder=3,
            label=f"as published: {published.sessions / 1e6:g} M sessions, "
            f"{report.cpus_low:,}-{report.cpus_high:,} CPUs",
        )
    axes.set_yscale("log")
    axes.set_xlim(0, top)
    axes.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axes.yaxis.set_major_formatter(FuncFormatter(_short_count))
    axes.set_xlabel("concurrency (share of the population in a session at once)")
    axes.set_ylabel("CPUs needed (log scale)")
    people = inputs.population * inputs.agents_per_person
    axes.set_title(f"CPUs needed for {people / 1e6:g} M agents, by concurrency")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")


def _short_count(value: float, _position: float | None) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"

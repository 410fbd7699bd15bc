"""Line charts as inline SVG, drawn on the server: no chart library, nothing to load.

Each chart is a ``<figure>`` with a caption, an SVG with ``role="img"`` and a text summary
for screen readers, and a legend naming each line with its latest value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

_WIDTH = 480
_HEIGHT = 132
_LEFT = 44
"""Room for the y-axis labels."""
_TOP = 8
_BOTTOM = 18
"""Room for the x-axis labels."""


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float | None]


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if float(value).is_integer() and abs(value) < 1e15:
        text = f"{int(value):,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{text} {unit}".rstrip()


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def line_chart(
    title: str,
    unit: str,
    times: Sequence[float],
    series: Sequence[Series],
    *,
    chart_id: str,
) -> Markup:
    """A chart of ``series`` (one value per time in ``times``, None for no data)."""
    present = [v for s in series for v in s.values if v is not None]
    top = _nice_ceiling(max(present, default=0.0))
    plot_w = _WIDTH - _LEFT - 4
    plot_h = _HEIGHT - _TOP - _BOTTOM
    start, end = (times[0], times[-1]) if times else (0.0, 1.0)
    span = max(end - start, 1e-9)

    def x(t: float) -> float:
        return _LEFT + (t - start) / span * plot_w

    def y(v: float) -> float:
        return _TOP + plot_h - v / top * plot_h

    parts = [
        f'<svg class="chart-plot" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-summary" focusable="false">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        gy = y(top * fraction)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_WIDTH - 4}" y1="{gy:.1f}" y2="{gy:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{_LEFT - 4}" y="{gy + 4:.1f}" text-anchor="end">'
            f"{escape(format_value(top * fraction, ''))}</text>"
        )
    minutes = span / 60
    left_label = f"-{minutes:.0f} min" if minutes >= 1 else f"-{span:.0f} s"
    parts.append(
        f'<text class="axis" x="{_LEFT}" y="{_HEIGHT - 4}">{escape(left_label if times else "")}'
        "</text>"
        f'<text class="axis" x="{_WIDTH - 4}" y="{_HEIGHT - 4}" text-anchor="end">now</text>'
    )
    for index, line in enumerate(series):
        for run in _runs(times, line.values):
            if len(run) == 1:
                t, v = run[0]
                parts.append(f'<circle class="s{index}" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2"/>')
            else:
                points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
                parts.append(f'<polyline class="s{index}" points="{points}"/>')
    parts.append("</svg>")
    summary = "; ".join(
        f"{line.label}: now {format_value(_last(line.values), unit)}, "
        f"peak {format_value(max((v for v in line.values if v is not None), default=None), unit)}"
        for line in series
    )
    legend = "".join(
        f'<li><span class="swatch s{index}" aria-hidden="true"></span>{escape(line.label)} '
        f"<strong>{escape(format_value(_last(line.values), unit))}</strong></li>"
        for index, line in enumerate(series)
    )
    return Markup(
        f'<figure class="chart" id="{chart_id}"><figcaption>{escape(title)}</figcaption>'
        + "".join(parts)
        + f'<p class="visually-hidden" id="{chart_id}-summary">{escape(summary)}</p>'
        + f'<ul class="legend">{legend}</ul></figure>'
    )


def _last(values: Sequence[float | None]) -> float | None:
    for value in reversed(values):
        if value is not None:
            return value
    return None


def _runs(
    times: Sequence[float], values: Sequence[float | None]
) -> list[list[tuple[float, float]]]:
    """The stretches of consecutive points with a value."""
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for t, v in zip(times, values, strict=False):
        if v is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((t, v))
    if current:
        runs.append(current)
    return runs

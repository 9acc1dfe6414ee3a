"""A small server-side SVG chart builder: line and step charts drawn from data.

Pages must work under a strict Content-Security-Policy (no inline script, no inline style),
so charts are plain SVG elements with presentation attributes and CSS classes, computed here
from the numbers: no JavaScript charting library, no image made by hand. Pure Python (no
Django) so it is easy to test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from html import escape

WIDTH, HEIGHT = 640, 280
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 16, 44

# Colour-blind-safe palette (Okabe-Ito); the CSS may override via the series' class.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    step: bool = False  # draw as a step function (a value holds until the next point)
    dashed: bool = False
    css_class: str = ""
    # An uncertainty band around the line: (x, low, high) per point, drawn as one filled
    # polygon (the 95% interval of a noisy accuracy, say). Points without one are skipped.
    band: list[tuple[float, float, float]] = field(default_factory=list)


@dataclass
class Chart:
    title: str
    series: list[Series]
    x_label: str = ""
    y_label: str = ""
    x_format: Callable[[float], str] = field(default=lambda v: f"{v:g}")
    y_format: Callable[[float], str] = field(default=lambda v: f"{v:g}")
    y_min: float | None = 0.0
    y_max: float | None = None
    x_integer: bool = False  # ticks on whole numbers only (round numbers)
    empty_text: str = "No data yet."


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (the "nice numbers" of Heckbert, Graphics Gems)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    value = start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def render(chart: Chart) -> str:
    """The chart as an <svg> element (a string; the caller marks it safe)."""
    # A non-finite value (an infinite epsilon from a degenerate DP event) cannot be placed on
    # an axis: it is left out of the drawing, and the tables beside the chart still show it.
    chart = replace(
        chart,
        series=[
            replace(
                s,
                points=[(x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y)],
                band=[(x, lo, hi) for x, lo, hi in s.band if math.isfinite(x) and math.isfinite(lo) and math.isfinite(hi)],
            )
            for s in chart.series
        ],
    )
    points = [p for s in chart.series for p in s.points]
    points += [(x, v) for s in chart.series for x, lo, hi in s.band for v in (lo, hi)]
    title = escape(chart.title)
    head = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}" '
        f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet"><title>{title}</title>'
    )
    if not points:
        return (
            head
            + f'<rect class="chart-frame" x="0.5" y="0.5" width="{WIDTH - 1}" height="{HEIGHT - 1}" fill="none" stroke="#cfd8dc"/>'
            + f'<text class="chart-empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">{escape(chart.empty_text)}</text></svg>'
        )

    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo = chart.y_min if chart.y_min is not None else min(ys)
    y_hi = max(max(ys), chart.y_max if chart.y_max is not None else -math.inf)
    if y_hi <= y_lo:
        y_hi = y_lo + 1.0
    y_ticks = nice_ticks(y_lo, y_hi)
    y_lo, y_hi = min(y_ticks[0], y_lo), max(y_ticks[-1], y_hi)
    if chart.x_integer:
        span = int(x_hi - x_lo)
        step = max(1, math.ceil(span / 8))
        x_ticks = [float(v) for v in range(int(math.ceil(x_lo)), int(x_hi) + 1, step)]
    else:
        x_ticks = [t for t in nice_ticks(x_lo, x_hi, 6) if x_lo <= t <= x_hi] or [x_lo, x_hi]

    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return MARGIN_LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y: float) -> float:
        return MARGIN_TOP + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    out = [head]
    # Grid and axes.
    out.append('<g class="chart-grid" stroke="#eceff1" stroke-width="1">')
    for t in y_ticks:
        out.append(f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{_fmt(sy(t))}" y2="{_fmt(sy(t))}"/>')
    out.append("</g>")
    out.append('<g class="chart-axis" stroke="#90a4ae" stroke-width="1">')
    out.append(f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT}" y1="{MARGIN_TOP}" y2="{MARGIN_TOP + plot_h}"/>')
    out.append(f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{MARGIN_TOP + plot_h}" y2="{MARGIN_TOP + plot_h}"/>')
    out.append("</g>")
    out.append('<g class="chart-labels" fill="#455a64" font-size="11">')
    for t in y_ticks:
        out.append(f'<text x="{MARGIN_LEFT - 6}" y="{_fmt(sy(t) + 4)}" text-anchor="end">{escape(chart.y_format(t))}</text>')
    drawn = None
    for t in x_ticks:
        label = chart.x_format(t)
        if label == drawn:  # ticks closer than the label's resolution: draw each label once
            continue
        drawn = label
        out.append(f'<text x="{_fmt(sx(t))}" y="{MARGIN_TOP + plot_h + 16}" text-anchor="middle">{escape(label)}</text>')
    if chart.x_label:
        out.append(f'<text x="{MARGIN_LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">{escape(chart.x_label)}</text>')
    if chart.y_label:
        out.append(
            f'<text x="12" y="{MARGIN_TOP + plot_h / 2}" text-anchor="middle" '
            f'transform="rotate(-90 12 {MARGIN_TOP + plot_h / 2})">{escape(chart.y_label)}</text>'
        )
    out.append("</g>")

    # Series.
    for i, s in enumerate(chart.series):
        if not s.points:
            continue
        colour = PALETTE[i % len(PALETTE)]
        pts = sorted(s.points, key=lambda p: p[0])
        d = _path(pts, sx, sy, step=s.step, x_end=x_hi)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        cls = escape(f"series series-{i} {s.css_class}".strip())
        out.append(f'<g class="{cls}"><title>{escape(s.name)}</title>')
        if s.band:
            out.append(_band(sorted(s.band), sx, sy, colour, s.name))
        out.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        if not s.step and len(pts) <= 60:
            for x, y in pts:
                out.append(
                    f'<circle cx="{_fmt(sx(x))}" cy="{_fmt(sy(y))}" r="3" fill="{colour}">'
                    f"<title>{escape(s.name)}: {escape(chart.x_format(x))} → {escape(chart.y_format(y))}</title></circle>"
                )
        out.append("</g>")

    # Legend, top-left inside the plot.
    out.append('<g class="chart-legend" font-size="11" fill="#263238">')
    for i, s in enumerate(chart.series):
        colour = PALETTE[i % len(PALETTE)]
        y = MARGIN_TOP + 10 + i * 15
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        out.append(
            f'<line x1="{MARGIN_LEFT + 10}" x2="{MARGIN_LEFT + 30}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{MARGIN_LEFT + 36}" y="{y + 4}">{escape(s.name)}</text>')
    out.append("</g></svg>")
    return "".join(out)


def _band(band: Sequence[tuple[float, float, float]], sx, sy, colour: str, name: str) -> str:
    """The band as one polygon: the upper edge left to right, the lower edge back. A band of
    one point is drawn as a narrow bar so a single interval is still visible."""
    if len(band) == 1:
        x, lo, hi = band[0]
        band = [(x, lo, hi), (x, lo, hi)]
        xs = [sx(x) - 4, sx(x) + 4]
    else:
        xs = [sx(x) for x, _, _ in band]
    upper = [f"{_fmt(px)},{_fmt(sy(hi))}" for px, (_, _, hi) in zip(xs, band)]
    lower = [f"{_fmt(px)},{_fmt(sy(lo))}" for px, (_, lo, _) in reversed(list(zip(xs, band)))]
    return (
        f'<polygon class="band" points="{" ".join(upper + lower)}" fill="{colour}" fill-opacity="0.18" stroke="none">'
        f"<title>{escape(name)}: 95% interval</title></polygon>"
    )


def _path(pts: Sequence[tuple[float, float]], sx, sy, *, step: bool, x_end: float) -> str:
    parts = [f"M{_fmt(sx(pts[0][0]))},{_fmt(sy(pts[0][1]))}"]
    for (_x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if step:
            parts.append(f"L{_fmt(sx(x1))},{_fmt(sy(y0))}")
        parts.append(f"L{_fmt(sx(x1))},{_fmt(sy(y1))}")
    if step and pts[-1][0] < x_end:
        parts.append(f"L{_fmt(sx(x_end))},{_fmt(sy(pts[-1][1]))}")
    return " ".join(parts)


def budget_bar(
    *, spent: float, cost: float, budget: float, width: int = 320, height: int = 18, label: str | None = None
) -> str:
    """A horizontal bar: spent (dark), this round's cost (amber), the rest of the budget (light).

    Drawn as SVG because the CSP forbids style="width: ..%"; attributes are not styles.
    Overspend is clipped to the bar and flagged with the "over" class.
    """
    budget = max(float(budget or 0.0), 0.0)
    spent = max(float(spent or 0.0), 0.0)
    cost = max(float(cost or 0.0), 0.0)
    scale = width / budget if budget > 0 else 0.0
    spent_w = min(spent * scale, width)
    cost_w = min(cost * scale, width - spent_w)
    over = spent + cost > budget + 1e-12
    if label is None:
        label = (
            f"{spent:.3g} of {budget:.3g} spent"
            + (f", this round {cost:.3g}" if cost else "")
            + f", {max(budget - spent, 0):.3g} remaining"
        )
    cls = "budget-bar-svg over" if over else "budget-bar-svg"
    return (
        f'<svg class="{cls}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="none"><title>{escape(label)}</title>'
        f'<rect class="bar-rest" x="0" y="0" width="{width}" height="{height}" rx="3" fill="#eceff1"/>'
        f'<rect class="bar-spent" x="0" y="0" width="{_fmt(spent_w)}" height="{height}" fill="#546e7a"/>'
        f'<rect class="bar-cost" x="{_fmt(spent_w)}" y="0" width="{_fmt(cost_w)}" height="{height}" fill="{"#c62828" if over else "#ffb300"}"/>'
        f'<rect class="bar-frame" x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="3" fill="none" stroke="#90a4ae"/>'
        "</svg>"
    )


def interval_bar(
    *, value: float, low: float, high: float, width: int = 320, height: int = 22, label: str | None = None
) -> str:
    """One accuracy on a 0-100% scale with its 95% interval as a band (the round page).

    Same reason as ``budget_bar`` for SVG: no inline style under the CSP."""
    def px(v: float) -> float:
        return min(max(float(v), 0.0), 1.0) * (width - 2) + 1

    if label is None:
        label = f"accuracy {value:.1%}, 95% interval {low:.1%} to {high:.1%}"
    lo_x, hi_x, v_x = px(low), px(high), px(value)
    points = f"{_fmt(lo_x)},2 {_fmt(hi_x)},2 {_fmt(hi_x)},{height - 2} {_fmt(lo_x)},{height - 2}"
    return (
        f'<svg class="interval-bar-svg" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="none"><title>{escape(label)}</title>'
        f'<rect class="bar-rest" x="0" y="0" width="{width}" height="{height}" rx="3" fill="#eceff1"/>'
        f'<polygon class="band" points="{points}" fill="{PALETTE[0]}" fill-opacity="0.3" stroke="none"/>'
        f'<line class="interval-value" x1="{_fmt(v_x)}" x2="{_fmt(v_x)}" y1="0" y2="{height}" stroke="{PALETTE[0]}" stroke-width="2"/>'
        f'<rect class="bar-frame" x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="3" fill="none" stroke="#90a4ae"/>'
        "</svg>"
    )

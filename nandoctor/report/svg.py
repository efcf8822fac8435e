"""Charts as inline SVG text: a line chart over steps (linear or log axis) and a heatmap grid.

Hand-written rather than matplotlib: the report must stay torch- and
dependency-free, open without network or scripts, and be the same bytes for the
same run (tested as text). Every label goes through :func:`esc` (names come from
checkpoint files); colours and numbers are ours. The output is well-formed XML,
so the page that holds it can be checked with a strict parser.

Non-finite values are not plotted as numbers: a NaN/Inf point breaks its line
and is marked by a red cross at the top edge, since that is where a person looks
for "where did it go wrong".
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

NONFINITE_COLOUR = "#d62728"
_FONT = 'font-family="sans-serif" font-size="11"'


def esc(text: object) -> str:
    """Text for HTML/SVG: control characters made visible, then ``<>&"'`` escaped."""
    from nandoctor.report.text import safe

    return html.escape(safe(str(text)), quote=True)


def num(value: float) -> str:
    """A number for an axis or a tooltip: 3 significant digits, NaN/Inf spelled out."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.3g}"


@dataclass(frozen=True)
class Series:
    """One line: (x, y) points in x order; y may be NaN/Inf (drawn as a break and a cross)."""

    name: str
    points: Sequence[tuple[float, float]]
    colour: str
    dots: bool = False  # a dot on each finite point (few points: checkpoints)
    dot_colours: Sequence[str] = ()  # per point, overriding ``colour`` for its dot


@dataclass(frozen=True)
class Marker:
    """A vertical line at ``x`` (a checkpoint), labelled, in its verdict's colour."""

    x: float
    label: str
    colour: str
    tooltip: str = ""


@dataclass(frozen=True)
class Box:
    width: int = 760
    height: int = 230
    left: int = 64
    right: int = 16
    top: int = 26
    bottom: int = 34

    @property
    def plot_w(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> int:
        return self.height - self.top - self.bottom


# Coordinates are clamped to ±_LIMIT (and a log axis to _TINY and above), so that spans, ticks and positions stay
# finite floats whatever a trainer log holds (1e308, subnormal losses, a step of 10**400); labels keep the values.
_LIMIT, _TINY = 1e300, 1e-300


def _coordinate(value: float) -> float:
    """``value`` as a float on the chart: ±Inf for an integer too large for one, clamped to ±_LIMIT if finite."""
    try:
        f = float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    return min(max(f, -_LIMIT), _LIMIT) if math.isfinite(f) else f


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    raw = (hi - lo) / count
    if not (hi > lo and math.isfinite(raw) and raw >= _TINY):
        return [lo]
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    every = max(1, math.ceil((last - first) / 8))
    return [10.0**e for e in range(first, last + 1) if (e - first) % every == 0]


def auto_log(values: Sequence[float]) -> bool:
    """A log axis when every finite value is positive and they span more than a factor of 100."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 100


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    markers: Sequence[Marker] = (),
    log_y: bool | None = None,
    box: Box | None = None,
    chart_id: str = "chart",
) -> str:
    """An SVG line chart of ``series`` over a shared x axis, with vertical ``markers``."""
    box = box or Box()
    series = [dataclasses.replace(s, points=[(cx, _coordinate(y)) for x, y in s.points
                                             if math.isfinite(cx := _coordinate(x))]) for s in series]
    markers = [dataclasses.replace(m, x=cx) for m in markers if math.isfinite(cx := _coordinate(m.x))]
    ys = [y for s in series for _, y in s.points]
    xs = [x for s in series for x, _ in s.points] + [m.x for m in markers]
    log = auto_log(ys) if log_y is None else log_y
    finite = [max(y, _TINY) if log else y for y in ys if math.isfinite(y) and (y > 0 or not log)]
    out = [
        f'<svg class="chart" id="{esc(chart_id)}" width="{box.width}" height="{box.height}" '
        f'viewBox="0 0 {box.width} {box.height}" role="img" aria-label="{esc(title)}">',
        f"<title>{esc(title)}</title>",
        f'<text x="{box.left}" y="16" {_FONT} font-weight="bold">{esc(title)}'
        + (" (log scale)" if log else "") + "</text>",
    ]
    if not xs:
        out.append(f'<text x="{box.left}" y="{box.top + 20}" {_FONT}>nothing logged</text></svg>')
        return "".join(out)
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if finite:
        y_lo, y_hi = min(finite), max(finite)
    else:
        y_lo, y_hi = (1.0, 10.0) if log else (0.0, 1.0)
    if log:
        y_lo, y_hi = max(10 ** math.floor(math.log10(y_lo)), _TINY), min(10 ** math.ceil(math.log10(y_hi)), _LIMIT * 10)
        if y_hi == y_lo:
            y_hi *= 10
    elif y_hi == y_lo:
        y_lo, y_hi = y_lo - (abs(y_lo) or 1) / 2, y_hi + (abs(y_hi) or 1) / 2
    else:
        pad = (y_hi - y_lo) * 0.05
        y_lo, y_hi = (0.0 if y_lo >= 0 and y_lo - pad < 0 else y_lo - pad), y_hi + pad

    def px(x: float) -> float:
        return box.left + (x - x_lo) / (x_hi - x_lo) * box.plot_w

    def py(y: float) -> float:
        if log:
            frac = (math.log10(max(y, _TINY)) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))
        else:
            frac = (y - y_lo) / (y_hi - y_lo)
        return box.top + (1 - frac) * box.plot_h

    bottom, right = box.top + box.plot_h, box.left + box.plot_w
    out.append(f'<rect x="{box.left}" y="{box.top}" width="{box.plot_w}" height="{box.plot_h}" fill="#fff" stroke="#bbb"/>')
    for tick in _log_ticks(y_lo, y_hi) if log else _nice_ticks(y_lo, y_hi):
        y = py(tick)
        out.append(f'<line x1="{box.left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{box.left - 4}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{num(tick)}</text>')
    for tick in _nice_ticks(x_lo, x_hi, 8):
        x = px(tick)
        out.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" {_FONT}>{num(tick)}</text>')
    out.append(f'<text x="{right}" y="{box.height - 4}" text-anchor="end" {_FONT}>step</text>')
    for m in markers:
        x = px(m.x)
        anchor = 'text-anchor="end" ' if x > right - 40 else ""  # a label at the right edge goes left of its line
        out.append(f'<g class="marker" data-label="{esc(m.label)}"><title>{esc(m.tooltip or m.label)}</title>'
                   f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{box.top}" y2="{bottom}" stroke="{m.colour}" '
                   f'stroke-width="2" stroke-dasharray="4 3"/>'
                   f'<text x="{x - 3 if anchor else x + 3:.1f}" y="{box.top + 10}" {anchor}{_FONT} '
                   f'fill="{m.colour}">{esc(m.label)}</text></g>')
    for s in series:
        out.append(_draw_series(s, px, py, log, box.top))
    out.append(_legend(series, box))
    out.append("</svg>")
    return "".join(out)


def _draw_series(s: Series, px: Callable[[float], float], py: Callable[[float], float], log: bool, top: int) -> str:
    parts = [f'<g class="series" data-name="{esc(s.name)}" data-points="{len(s.points)}">']
    run: list[str] = []
    runs: list[list[str]] = []
    for i, (x, y) in enumerate(s.points):
        if not math.isfinite(y) or (log and y <= 0):
            if run:
                runs.append(run)
                run = []
            if not math.isfinite(y):
                cx = px(x)
                parts.append(f'<g class="nonfinite"><title>{esc(s.name)} at step {num(x)}: {num(y)}</title>'
                             f'<path d="M{cx - 4:.1f},{top + 2} l8,8 m0,-8 l-8,8" stroke="{NONFINITE_COLOUR}" '
                             'stroke-width="2"/></g>')
            continue
        cx, cy = px(x), py(y)
        run.append(f"{cx:.1f},{cy:.1f}")
        if s.dots:
            colour = s.dot_colours[i] if i < len(s.dot_colours) else s.colour
            parts.append(f'<circle class="dot" cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}">'
                         f"<title>{esc(s.name)} at step {num(x)}: {num(y)}</title></circle>")
    if run:
        runs.append(run)
    for r in runs:
        if len(r) > 1:
            parts.append(f'<polyline fill="none" stroke="{s.colour}" stroke-width="1.5" points="{" ".join(r)}"/>')
    parts.append("</g>")
    return "".join(parts)


def _legend(series: Sequence[Series], box: Box) -> str:
    x = box.width - box.right
    parts = []
    for s in reversed(series):
        label = esc(s.name)
        x -= 14 + 7 * len(s.name)
        parts.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{s.colour}"/>'
                     f'<text x="{x + 13}" y="17" {_FONT}>{label}</text>')
    return "".join(parts)


def heatmap(
    rows: Sequence[str],
    columns: Sequence[str],
    colours: Sequence[Sequence[str]],
    tooltips: Sequence[Sequence[str]],
    *,
    title: str,
    cell: int = 0,
    chart_id: str = "heatmap",
) -> str:
    """A grid of coloured cells: ``colours[r][c]`` ("" leaves the cell empty), a tooltip per cell.

    Column labels stand upright (rotated -90°), so a cell needs only a line's height; ``cell`` 0 picks
    larger cells for small grids."""
    cell = cell or (20 if len(columns) <= 40 else 14)
    label_w = min(300, 12 + 7 * max((len(r) for r in rows), default=4))
    head_h = 24 + min(110, 7 * max((len(c) for c in columns), default=4))
    width = label_w + cell * len(columns) + 10
    height = head_h + cell * len(rows) + 24
    out = [
        f'<svg class="heatmap" id="{esc(chart_id)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
        f"<title>{esc(title)}</title>",
        f'<text x="4" y="14" {_FONT} font-weight="bold">{esc(title)}</text>',
    ]
    for c, name in enumerate(columns):
        x = label_w + c * cell + cell / 2 + 4
        out.append(f'<text class="col" transform="translate({x:.1f},{head_h - 4}) rotate(-90)" {_FONT}>{esc(name)}</text>')
    for r, name in enumerate(rows):
        y = head_h + r * cell
        out.append(f'<text class="row" x="{label_w - 4}" y="{y + cell / 2 + 4:.1f}" text-anchor="end" {_FONT}>{esc(name)}</text>')
        for c in range(len(columns)):
            colour = colours[r][c]
            if not colour:
                continue
            out.append(f'<rect class="cell" data-row="{r}" data-col="{c}" x="{label_w + c * cell}" y="{y}" '
                       f'width="{cell - 1}" height="{cell - 1}" fill="{colour}"><title>{esc(tooltips[r][c])}</title></rect>')
    out.append("</svg>")
    return "".join(out)

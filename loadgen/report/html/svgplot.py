"""A small inline-SVG chart maker for the HTML reports: no JavaScript, no fonts, no network.

One :class:`Chart` is a 2-D plot with a linear or log x and y :class:`Axis` (or a categorical x),
any number of :class:`Series` (line, step, scatter, line with points), horizontal reference lines
(SLOs) and vertical markers (a knee), a legend and axis labels. :meth:`Chart.svg` returns the markup;
:attr:`Chart.points` is how many data points it draws (points outside a log axis's positive range,
NaNs and infinities are dropped and not counted).

Every drawn series carries ``class="series"`` and ``data-n`` (its drawn point count) and every scatter
marker ``class="mark"``, so a browser-side check can tell a plot that rendered data from an empty frame;
reference lines are ``class="ref"``, the axis labels ``class="xlabel"``/``"ylabel"``, the legend
``<g class="legend">``.

Colours are the Okabe–Ito palette (distinguishable with the common colour-vision deficiencies), dark
on a light background; series also differ by dash pattern or marker so they read in greyscale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "PALETTE", "Axis", "Chart", "RefLine", "Series", "Style", "cdf", "fmt_num", "linear_ticks", "log_ticks",
]

#: Okabe–Ito, without its yellow (too light on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
REF_COLOR = "#B00020"
GRID = "#e6e6e6"
FONT = "font-family='system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif'"

Style = Literal["line", "step", "scatter", "linepoints"]
FloatArray = npt.NDArray[np.float64]


@dataclass
class Axis:
    """``label`` should carry the unit, e.g. ``"TTFT (ms)"``. ``categories`` makes a categorical axis
    (x only): data x values are then 0-based category positions. ``zero`` starts a linear axis at 0."""

    label: str
    log: bool = False
    zero: bool = False
    lo: float | None = None
    hi: float | None = None
    categories: Sequence[str] | None = None


@dataclass
class Series:
    name: str
    x: Sequence[float] | FloatArray
    y: Sequence[float] | FloatArray
    style: Style = "line"
    color: str | None = None
    dashed: bool = False
    labels: Sequence[str] | None = None  # text beside each point (scatter / linepoints)
    highlight: Sequence[bool] | None = None  # points drawn larger, with a dark ring
    marker: Literal["circle", "square", "diamond"] = "circle"


@dataclass
class RefLine:
    """A horizontal (``Chart.hlines``) or vertical (``Chart.vlines``) line at a data value."""

    value: float
    label: str
    color: str = REF_COLOR
    dashed: bool = True


def fmt_num(v: float) -> str:
    """Short tick text: ``1,500``, ``12k``, ``3.5M``, ``0.002``, ``2.5``."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    if a >= 1000:
        return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"
    return f"{float(f'{v:.3g}'):g}"


def linear_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round-numbered ticks inside ``[lo, hi]``: the step of 1, 2, 2.5 or 5 × 10^k that gives the count
    closest to ``target``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    intervals = target - 1
    step = min((m * mag for m in (1, 2, 2.5, 5, 10)), key=lambda st: abs((hi - lo) / st - intervals))
    first = math.ceil(lo / step - 1e-9) * step
    ticks: list[float] = []
    t = float(first)
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks inside ``[lo, hi]`` (both > 0): decades; with 1-2-5 or 1..9 mantissas when few decades
    fit; plain linear ticks when the range is narrower than that."""
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0**e for e in range(e0, e1 + 1) for m in mantissas]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 3 and (len(ticks) <= 10 or mantissas == (1,)):
            return ticks
    return [t for t in linear_ticks(lo, hi, 6) if t > 0]


def cdf(values: Sequence[float] | FloatArray, max_points: int = 1200) -> tuple[FloatArray, FloatArray]:
    """Empirical CDF of ``values``: sorted values and the fraction ≤ each (in percent, 0–100].

    Long inputs are thinned to about ``max_points`` points, evenly in rank with extra points in the
    upper tail (the last 1 % keeps ~ a fifth of the points), and always keeping the maximum.
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return v, v
    frac = np.arange(1, n + 1, dtype=np.float64) / n * 100.0
    if n <= max_points:
        return v, frac
    body = np.linspace(0, n - 1, int(max_points * 0.8)).astype(np.int64)
    tail = np.linspace(int(n * 0.99), n - 1, max_points - body.size).astype(np.int64)
    idx = np.unique(np.concatenate([body, tail, [n - 1]]))
    return v[idx], frac[idx]


def _finite_pairs(s: Series, xlog: bool, ylog: bool) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    x = np.asarray(s.x, dtype=np.float64)
    y = np.asarray(s.y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if xlog:
        ok &= x > 0
    if ylog:
        ok &= y > 0
    return x, y, ok


@dataclass
class _Scale:
    lo: float
    hi: float
    a: float  # pixel at lo
    b: float  # pixel at hi
    log: bool

    def __call__(self, v: float | FloatArray) -> FloatArray:
        arr = np.asarray(v, dtype=np.float64)
        if self.log:
            t = (np.log10(arr) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            t = (arr - self.lo) / (self.hi - self.lo)
        return self.a + t * (self.b - self.a)


def _domain(values: list[float], axis: Axis) -> tuple[float, float]:
    """Axis range over ``values``: a log axis pads by 4 % of its span in log space; a
    linear one snaps each end to a tick when that widens the range by at most a tenth, else pads 3 %."""
    vals = [v for v in values if math.isfinite(v) and (v > 0 or not axis.log)]
    if axis.log:
        lo, hi = (min(vals), max(vals)) if vals else (1.0, 10.0)
        if hi <= lo * 1.0001:
            lo, hi = lo / 1.5, hi * 1.5
        pad = (hi / lo) ** 0.04
        lo, hi = lo / pad, hi * pad
    else:
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if axis.zero:
            lo = min(lo, 0.0)
        if hi - lo < 1e-12:
            pad = abs(hi) * 0.1 or 1.0
            lo, hi = (lo if axis.zero and lo >= 0 else lo - pad), hi + pad
        ticks = linear_ticks(lo, hi)
        step = ticks[1] - ticks[0] if len(ticks) > 1 else (hi - lo)
        span = hi - lo
        snap_lo = math.floor(lo / step + 1e-9) * step
        snap_hi = math.ceil(hi / step - 1e-9) * step
        data_lo, data_hi = lo, hi
        lo = snap_lo if lo - snap_lo <= span / 10 else lo - span * 0.03
        hi = snap_hi if snap_hi - hi <= span / 10 else hi + span * 0.03
        # keep data off the frame: a line at exactly the top or bottom would hide in the border
        if hi - data_hi < span * 0.02:
            hi = data_hi + span * 0.04
        if lo != 0 and data_lo - lo < span * 0.02:
            lo = data_lo - span * 0.04
    if axis.lo is not None:
        lo = axis.lo
    if axis.hi is not None:
        hi = axis.hi
    return lo, hi


@dataclass
class Chart:
    """A plot; build it, add series and lines, then call :meth:`svg`. Pixel sizes are the viewBox;
    the page scales the SVG to its column width."""

    title: str
    x: Axis
    y: Axis
    series: list[Series] = field(default_factory=list)
    hlines: list[RefLine] = field(default_factory=list)
    vlines: list[RefLine] = field(default_factory=list)
    width: int = 640
    height: int = 360
    note: str | None = None  # shown in the middle of an empty plot
    key: str = ""  # unique within the page (the clip-path id); defaults to the title

    def add(self, series: Series) -> Chart:
        self.series.append(series)
        return self

    @property
    def points(self) -> int:
        return sum(int(_finite_pairs(s, self.x.log, self.y.log)[2].sum()) for s in self.series)

    # ---- layout -----------------------------------------------------------------------------------

    def _legend_rows(self) -> list[list[tuple[str, str, Series]]]:
        items: list[tuple[str, str, Series]] = []
        for i, s in enumerate(self.series):
            items.append((s.name, s.color or PALETTE[i % len(PALETTE)], s))
        rows: list[list[tuple[str, str, Series]]] = [[]]
        used = 0.0
        avail = self.width - 80
        for item in items:
            w = 34 + 6.4 * len(item[0])
            if rows[-1] and used + w > avail:
                rows.append([])
                used = 0.0
            rows[-1].append(item)
            used += w
        return [r for r in rows if r]

    def svg(self) -> str:
        legend = self._legend_rows()
        top = 30 + 18 * len(legend) + 6
        left, right, bottom = 70, 22, 52
        f = _Frame(left, top, self.width - left - right, self.height - top - bottom)
        drawn = [(i, s, *_finite_pairs(s, self.x.log, self.y.log)) for i, s in enumerate(self.series)]
        xs_all = [v for _, _, x, _, ok in drawn for v in x[ok].tolist()]
        ys_all = [v for _, _, _, y, ok in drawn for v in y[ok].tolist()]
        if self.x.categories is not None:
            xlo, xhi = -0.5, len(self.x.categories) - 0.5
        else:
            xlo, xhi = _domain(xs_all + _ref_values(self.vlines, xs_all, self.x), self.x)
        ylo, yhi = _domain(ys_all + _ref_values(self.hlines, ys_all, self.y), self.y)
        sx = _Scale(xlo, xhi, f.left, f.left + f.w, self.x.log)
        sy = _Scale(ylo, yhi, f.top + f.h, f.top, self.y.log)
        clip = "clip-" + "".join(c if c.isalnum() else "-" for c in (self.key or self.title))
        out = [
            f"<svg viewBox='0 0 {self.width} {self.height}' "
            f"role='img' aria-label='{escape(self.title, quote=True)}' {FONT} font-size='12'>",
            f"<title>{escape(self.title)}</title>",
            f"<rect x='0' y='0' width='{self.width}' height='{self.height}' fill='#ffffff'/>",
            f"<text x='{f.left}' y='20' font-size='14' font-weight='600' fill='#111'>"
            f"{escape(self.title)}</text>",
            f"<defs><clipPath id='{clip}'><rect x='{f.left}' y='{f.top}' width='{f.w}' height='{f.h}'/>"
            "</clipPath></defs>",
            self._axes(f, sx, sy),
        ]
        out += [_hline(ref, sy, f) for ref in self.hlines]
        out += [_vline(ref, sx, f) for ref in self.vlines]
        out.append(f"<g clip-path='url(#{clip})'>")
        for i, s, x, y, ok in drawn:
            out.append(_series(s, s.color or PALETTE[i % len(PALETTE)], sx(x[ok]), sy(y[ok]), ok))
        out.append("</g>")
        # point labels go outside the clip so they stay readable at the edges; one that would overlap a
        # label already placed tries the other side of its point, then is left out
        placed: list[tuple[float, float, float, float]] = []
        for _i, s, x, y, ok in drawn:
            if s.labels is not None:
                labels = [lab for lab, keep in zip(s.labels, ok, strict=True) if keep]
                for px, py, lab in zip(sx(x[ok]), sy(y[ok]), labels, strict=True):
                    text = _point_label(float(px), float(py), lab, f, placed)
                    if text:
                        out.append(text)
        if not any(ok.any() for *_, ok in drawn):
            out.append(
                f"<text x='{f.left + f.w / 2:.1f}' y='{f.top + f.h / 2:.1f}' text-anchor='middle' "
                f"fill='#666'>{escape(self.note or 'no data')}</text>"
            )
        out.append(self._legend(legend, f.left))
        out.append("</svg>")
        return "".join(out)

    def _axes(self, f: _Frame, sx: _Scale, sy: _Scale) -> str:
        out = ["<g class='axes' stroke-width='1'>"]
        if self.x.categories is not None:
            xt: list[float] = list(range(len(self.x.categories)))
            xlabels = [_shorten(c) for c in self.x.categories]
        else:
            xt = log_ticks(sx.lo, sx.hi) if self.x.log else linear_ticks(sx.lo, sx.hi)
            xlabels = [fmt_num(t) for t in xt]
        for t, lab in zip(xt, xlabels, strict=True):
            px = float(sx(t))
            out.append(f"<line x1='{px:.1f}' y1='{f.top}' x2='{px:.1f}' y2='{f.top + f.h}' stroke='{GRID}'/>")
            out.append(f"<text x='{px:.1f}' y='{f.top + f.h + 16}' text-anchor='middle' fill='#333'>"
                       f"{escape(lab)}</text>")
        for t in log_ticks(sy.lo, sy.hi) if self.y.log else linear_ticks(sy.lo, sy.hi):
            py = float(sy(t))
            out.append(
                f"<line x1='{f.left}' y1='{py:.1f}' x2='{f.left + f.w}' y2='{py:.1f}' stroke='{GRID}'/>"
            )
            out.append(
                f"<text x='{f.left - 6}' y='{py + 4:.1f}' text-anchor='end' fill='#333'>{fmt_num(t)}</text>"
            )
        out.append(f"<rect x='{f.left}' y='{f.top}' width='{f.w}' height='{f.h}' fill='none' stroke='#888'/>")
        xl = self.x.label + ("  (log scale)" if self.x.log else "")
        yl = self.y.label + ("  (log scale)" if self.y.log else "")
        out.append(f"<text class='xlabel' x='{f.left + f.w / 2:.1f}' y='{self.height - 12}' "
                   f"text-anchor='middle' fill='#111'>{escape(xl)}</text>")
        out.append(f"<text class='ylabel' transform='translate(16 {f.top + f.h / 2:.1f}) rotate(-90)' "
                   f"text-anchor='middle' fill='#111'>{escape(yl)}</text></g>")
        return "".join(out)

    def _legend(self, rows: list[list[tuple[str, str, Series]]], left: float) -> str:
        out = ["<g class='legend' font-size='12'>"]
        for r, row in enumerate(rows):
            x = float(left)
            y = 30 + 18 * r + 6
            for name, color, item in row:
                if item.style == "scatter":
                    out.append(_marker(item.marker, x + 10, y - 4, 4.0, color))
                else:
                    dash = " stroke-dasharray='7 4'" if item.dashed else ""
                    out.append(f"<line x1='{x}' y1='{y - 4}' x2='{x + 22}' y2='{y - 4}' stroke='{color}' "
                               f"stroke-width='2.5'{dash}/>")
                    if item.style == "linepoints":
                        out.append(_marker(item.marker, x + 11, y - 4, 3.5, color))
                out.append(f"<text x='{x + 28}' y='{y}' fill='#111'>{escape(name)}</text>")
                x += 34 + 6.4 * len(name)
        out.append("</g>")
        return "".join(out)


@dataclass
class _Frame:
    """The plot area in viewBox pixels."""

    left: float
    top: float
    w: float
    h: float


def _ref_values(refs: list[RefLine], data: list[float], axis: Axis) -> list[float]:
    """Reference values that join the axis range: on a log axis, within 5× of the data; on a linear
    one, up to twice the data's maximum. Farther ones get an arrow and their value at the edge instead,
    so a distant SLO never squashes the data into a corner."""
    if not data:
        return [r.value for r in refs if math.isfinite(r.value) and (r.value > 0 or not axis.log)]
    lo, hi = min(data), max(data)
    keep = []
    for r in refs:
        if not math.isfinite(r.value) or (axis.log and r.value <= 0):
            continue
        if axis.log:
            if lo / 5 <= r.value <= hi * 5:
                keep.append(r.value)
        elif r.value <= hi + max(hi - min(lo, 0.0), abs(hi)) and r.value >= lo - max(hi - lo, abs(lo)):
            keep.append(r.value)
    return keep


def _hline(ref: RefLine, sy: _Scale, f: _Frame) -> str:
    dash = " stroke-dasharray='6 4'" if ref.dashed else ""
    label = escape(ref.label)
    right = f.left + f.w - 4
    if not sy.lo <= ref.value <= sy.hi:
        up = ref.value > sy.hi
        y = f.top + 14 if up else f.top + f.h - 6
        return (f"<text class='ref' x='{right}' y='{y}' text-anchor='end' font-size='11' fill='{ref.color}' "
                f"stroke='#fff' stroke-width='3' paint-order='stroke'>{'↑' if up else '↓'} {label} "
                f"({'above' if up else 'below'} the axis)</text>")
    py = float(sy(ref.value))
    ty = py - 4 if py - f.top > 16 else py + 13
    return (
        f"<g class='ref'><line x1='{f.left}' y1='{py:.1f}' x2='{f.left + f.w}' y2='{py:.1f}' "
        f"stroke='{ref.color}' stroke-width='1.5'{dash}/>"
        f"<text x='{right}' y='{ty:.1f}' text-anchor='end' font-size='11' fill='{ref.color}' stroke='#fff' "
        f"stroke-width='3' paint-order='stroke'>{label}</text></g>"
    )


def _vline(ref: RefLine, sx: _Scale, f: _Frame) -> str:
    dash = " stroke-dasharray='6 4'" if ref.dashed else ""
    label = escape(ref.label)
    if not sx.lo <= ref.value <= sx.hi:
        beyond = ref.value > sx.hi
        x, anchor = (f.left + f.w - 4, "end") if beyond else (f.left + 4, "start")
        return (f"<text class='ref' x='{x}' y='{f.top + f.h - 8}' text-anchor='{anchor}' font-size='11' "
                f"fill='{ref.color}' stroke='#fff' stroke-width='3' paint-order='stroke'>"
                f"{'→' if beyond else '←'} {label} (off the axis)</text>")
    px = float(sx(ref.value))
    near_right = px > f.left + f.w * 0.7
    tx, anchor = (px - 4, "end") if near_right else (px + 4, "start")
    return (
        f"<g class='ref'><line x1='{px:.1f}' y1='{f.top}' x2='{px:.1f}' y2='{f.top + f.h}' "
        f"stroke='{ref.color}' stroke-width='1.5'{dash}/>"
        f"<text x='{tx:.1f}' y='{f.top + f.h / 2:.1f}' text-anchor='{anchor}' font-size='11' "
        f"fill='{ref.color}' stroke='#fff' stroke-width='3' paint-order='stroke'>{label}</text></g>"
    )


def _series(s: Series, color: str, px: FloatArray, py: FloatArray, ok: npt.NDArray[np.bool_]) -> str:
    n = px.size
    parts = [f"<g class='series' data-n='{n}' data-name='{escape(s.name, quote=True)}'>"]
    if n and s.style in ("line", "step", "linepoints"):
        d = [f"M{px[0]:.1f},{py[0]:.1f}"]
        if s.style == "step":  # the value holds until the next point: horizontal, then vertical
            d += [f"H{px[k]:.1f}V{py[k]:.1f}" for k in range(1, n)]
        else:
            d += [f"L{a:.1f},{b:.1f}" for a, b in zip(px[1:], py[1:], strict=True)]
        dash = " stroke-dasharray='7 4'" if s.dashed else ""
        parts.append(f"<path class='line' d='{''.join(d)}' fill='none' stroke='{color}' stroke-width='2' "
                     f"stroke-linejoin='round'{dash}/>")
    if n and (s.style in ("scatter", "linepoints") or n == 1):
        ring = [h for h, keep in zip(s.highlight, ok, strict=True) if keep] if s.highlight else [False] * n
        r = 2.6 if s.style == "scatter" and n > 200 else 4.0
        for a, b, big in zip(px, py, ring, strict=True):
            parts.append(_marker(s.marker, float(a), float(b), r * (1.5 if big else 1.0), color, ring=big))
    parts.append("</g>")
    return "".join(parts)


def _point_label(px: float, py: float, text: str, f: _Frame,
                 placed: list[tuple[float, float, float, float]]) -> str | None:
    """A label beside a point, above it or else below it, where it overlaps no box in ``placed``
    (x0, y0, x1, y1; appended to). ``None`` when neither side is free."""
    width = 5.8 * len(text)
    anchor, dx = ("end", -7) if px > f.left + f.w * 0.75 else ("start", 7)
    x0 = px + dx - width if anchor == "end" else px + dx
    for dy in ((-7, 14) if py - f.top > 14 else (14, -7)):
        box = (x0, py + dy - 10, x0 + width, py + dy + 2)
        if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            placed.append(box)
            return (f"<text x='{px + dx:.1f}' y='{py + dy:.1f}' text-anchor='{anchor}' font-size='10' "
                    f"fill='#222' stroke='#fff' stroke-width='3' paint-order='stroke'>{escape(text)}</text>")
    return None


def _marker(kind: str, x: float, y: float, r: float, color: str, *, ring: bool = False) -> str:
    stroke = " stroke='#111' stroke-width='1.5'" if ring else " stroke='#fff' stroke-width='0.6'"
    if kind == "square":
        return (f"<rect class='mark' x='{x - r:.1f}' y='{y - r:.1f}' width='{2 * r:.1f}' "
                f"height='{2 * r:.1f}' fill='{color}'{stroke}/>")
    if kind == "diamond":
        return (f"<path class='mark' d='M{x:.1f},{y - r * 1.3:.1f}L{x + r * 1.3:.1f},{y:.1f}"
                f"L{x:.1f},{y + r * 1.3:.1f}L{x - r * 1.3:.1f},{y:.1f}Z' fill='{color}'{stroke}/>")
    return f"<circle class='mark' cx='{x:.1f}' cy='{y:.1f}' r='{r:.1f}' fill='{color}'{stroke}/>"


def _shorten(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

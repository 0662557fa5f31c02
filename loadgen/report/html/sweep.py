"""``sweep.html`` for a sweep: latency against load and throughput per server setting, goodput, the
Pareto frontier of throughput against TTFT p99, the knees, and a table of every point."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from loadgen.report.files import load_json, write_text
from loadgen.report.html.page import cell, esc, figure_html, is_num, log_if_wide, page_html, table_html
from loadgen.report.html.svgplot import PALETTE, Axis, Chart, RefLine, Series
from loadgen.specs import bounds_text

__all__ = ["SWEEP_FIGURES", "pareto_frontier", "render_sweep_html", "write_sweep_html"]

#: Figures of ``sweep.html``.
SWEEP_FIGURES = (
    "ttft_vs_load", "tpot_vs_load", "ttft_vs_throughput", "tpot_vs_throughput",
    "goodput_vs_load", "tokens_vs_param", "pareto",
)


_ROW_COLUMNS = (  # (header, row key, digits)
    ("offered QPS", "offered_qps", 2), ("concurrency", "concurrency", 0), ("req/s", "requests_per_s", 2),
    ("output tok/s", "output_tokens_per_s", 0), ("goodput req/s", "goodput_requests_per_s", 2),
    ("TTFT p50", "ttft_p50_ms", 1), ("TTFT p99", "ttft_p99_ms", 1), ("ITL p99", "itl_p99_ms", 1),
    ("TPOT p50", "tpot_p50_ms", 1), ("TPOT p99", "tpot_p99_ms", 1), ("E2E p99", "e2e_p99_ms", 0),
    ("error rate", "error_rate", 3), ("valid", "valid", 0), ("client-limited", "client_limited", 0),
    ("J/out token", "joules_per_output_token", 3),
)


def _point_label(point: dict[str, Any]) -> str:
    """``max_num_seqs=32`` / ``--max-num-seqs=32``: the swept values of one point."""
    values = point.get("values") or {}
    parts = []
    for k, v in values.items():
        text = " ".join(map(str, v)) if isinstance(v, list) else str(v)
        parts.append(text if text.startswith("--") else f"{k}={text}")
    return ", ".join(parts) or f"point {point.get('index')}"


class _SweepData:
    """The done points of a sweep, in index order, the x axis that best shows their load, and their
    groups: one per combination of the parameters other than the load parameter (one server setting
    each in a sweep over load and server arguments; a single unnamed group for one parameter)."""

    def __init__(self, sweep: dict[str, Any]) -> None:
        pts = [p for p in sweep.get("points") or [] if isinstance(p, dict)]
        self.all = sorted(pts, key=lambda p: p.get("index", 0))
        self.done = [p for p in self.all if p.get("status") == "done" and isinstance(p.get("row"), dict)]
        self.params: list[str] = list(sweep.get("parameters") or [])
        knees = sweep.get("knees")
        if not isinstance(knees, list):  # sweep.json before per-group knees
            knees = [sweep["knee"]] if isinstance(sweep.get("knee"), dict) else []
        self.knees: list[dict[str, Any]] = [k for k in knees if isinstance(k, dict)]
        self.load_param = next((n for n in self.params if not n.startswith("-")),
                               self.params[0] if self.params else None)
        self.groups: dict[str, list[int]] = {}  # label -> positions in self.done
        for i, p in enumerate(self.done):
            self.groups.setdefault(self.group_label(p), []).append(i)
        self.load_key, self.load_label, self.load_x, self.categories = self._load_axis()

    def group_label(self, point: dict[str, Any]) -> str:
        """``--max-seqs=2``: the point's values of the parameters other than the load parameter."""
        rest = {k: v for k, v in (point.get("values") or {}).items() if k != self.load_param}
        return _point_label({"values": rest}) if rest else ""

    def col(self, key: str) -> list[float]:
        return [float(p["row"][key]) if is_num(p["row"].get(key)) else math.nan for p in self.done]

    def _load_axis(self) -> tuple[str, str, list[float], list[str] | None]:
        for key, label in (("offered_qps", "offered load (requests/s)"),
                           ("concurrency", "concurrency (requests in flight)")):
            vals = self.col(key)
            if vals and all(math.isfinite(v) for v in vals) and len(set(vals)) > 1:
                return key, label, vals, None
        name = self.load_param or "point"
        raw: list[Any] = [(p.get("values") or {}).get(name, p.get("index")) for p in self.done]
        if raw and all(is_num(v) for v in raw):
            return name, name, [float(v) for v in raw if v is not None], None
        cats = list(dict.fromkeys(str(v) for v in raw))
        return name, name, [float(cats.index(str(v))) for v in raw], cats

    def knee_lines(self, x_of: dict[int, float]) -> list[RefLine]:
        """A grey vertical line at each knee's point (named after its group when there are several)."""
        lines = []
        for k in self.knees:
            x = x_of.get(k.get("index", -1), math.nan)
            if math.isfinite(x):
                group = _point_label({"values": k.get("group") or {}}) if k.get("group") else ""
                lines.append(RefLine(x, f"knee ({group})" if group else "knee", color="#444444"))
        return lines


_Marker = Literal["circle", "square", "diamond"]


def _group_style(k: int, group: str = "-") -> tuple[str | None, _Marker]:
    """Colour and marker of group ``k``: groups differ by both, so they read in greyscale too. The
    unnamed group of a one-parameter sweep keeps the chart's default colours."""
    if not group:
        return None, "circle"
    markers: tuple[_Marker, ...] = ("circle", "square", "diamond")
    return PALETTE[k % len(PALETTE)], markers[k % len(markers)]


def _latency_chart(d: _SweepData, title: str, *, xs: list[float], xlabel: str, metric: str,
                   slo_ms: float | None, categories: list[str] | None = None,
                   label_points: bool = False) -> Chart:
    """p50 (solid) and p99 (dashed) of ``metric`` against ``xs``, one pair of lines per group."""
    p50, p99 = d.col(f"{metric}_p50_ms"), d.col(f"{metric}_p99_ms")
    ylog = log_if_wide(p50 + p99)
    unit = metric.upper()
    chart = Chart(title, Axis(xlabel, zero=categories is None, categories=categories),
                  Axis(f"{unit} (ms)", log=ylog, zero=not ylog))
    for k, (group, idx) in enumerate(d.groups.items()):
        order = sorted(idx, key=lambda i: xs[i])
        color, marker = _group_style(k, group)
        suffix = f" ({group})" if group else ""
        labels = [_point_label(d.done[i]) for i in order] if label_points else None
        chart.add(Series(f"{unit} p50{suffix}", [xs[i] for i in order], [p50[i] for i in order],
                         style="linepoints", color=color, marker=marker))
        chart.add(Series(f"{unit} p99{suffix}", [xs[i] for i in order], [p99[i] for i in order],
                         style="linepoints", dashed=True, color=color,
                         marker="square" if not group else marker, labels=labels))
    if slo_ms is not None:
        chart.hlines.append(RefLine(slo_ms, f"SLO: {unit} p99 ≤ {slo_ms:g} ms"))
    chart.vlines.extend(d.knee_lines({p["index"]: x for p, x in zip(d.done, xs, strict=True)}))
    return chart


def pareto_frontier(throughput: Sequence[float], latency: Sequence[float]) -> list[bool]:
    """Points not dominated by another (one with at least the throughput and at most the latency, and
    strictly better in one of them); NaNs are never on the frontier."""
    pts = list(zip(throughput, latency, strict=True))
    out = []
    for i, (t, lat) in enumerate(pts):
        if not (math.isfinite(t) and math.isfinite(lat)):
            out.append(False)
            continue
        dominated = any(
            j != i and t2 >= t and l2 <= lat and (t2 > t or l2 < lat)
            for j, (t2, l2) in enumerate(pts)
            if math.isfinite(t2) and math.isfinite(l2)
        )
        out.append(not dominated)
    return out


def _goodput_chart(d: _SweepData) -> Chart:
    goodput = Chart("Goodput against load", Axis(d.load_label, zero=d.categories is None,
                                                 categories=d.categories),
                    Axis("requests/s", zero=True))
    achieved, good = d.col("requests_per_s"), d.col("goodput_requests_per_s")
    for k, (group, idx) in enumerate(d.groups.items()):
        order = sorted(idx, key=lambda i: d.load_x[i])
        color, marker = _group_style(k, group)
        suffix = f" ({group})" if group else ""
        lx = [d.load_x[i] for i in order]
        goodput.add(Series(f"achieved (completed req/s){suffix}", lx, [achieved[i] for i in order],
                           style="linepoints", color=color, marker=marker))
        goodput.add(Series(f"goodput (req/s meeting every SLO){suffix}", lx, [good[i] for i in order],
                           style="linepoints", dashed=True, color=color,
                           marker="square" if not group else marker))
    if d.load_key == "offered_qps":
        lx = sorted(set(d.load_x))
        goodput.add(Series("offered", lx, lx, style="line", color="#888888", dashed=True))
    goodput.vlines.extend(d.knee_lines({p["index"]: x for p, x in zip(d.done, d.load_x, strict=True)}))
    return goodput


def _pareto_chart(d: _SweepData, ttft_slo: float | None) -> Chart:
    """Every point, coloured by its group (server setting), and the frontier across all of them."""
    tput, ttft99 = d.col("output_tokens_per_s"), d.col("ttft_p99_ms")
    front = pareto_frontier(tput, ttft99)
    log = log_if_wide(ttft99)
    pareto = Chart("Pareto frontier: throughput against TTFT p99",
                   Axis("achieved output tokens/s", zero=True), Axis("TTFT p99 (ms)", log=log, zero=not log))
    several = len(d.groups) > 1
    for k, (group, idx) in enumerate(d.groups.items()):
        shown = idx if several else [i for i in idx if not front[i]]
        if not shown:
            continue
        color, marker = _group_style(k + 5) if not several else _group_style(k)
        pareto.add(Series(f"{group}: every point" if several else "dominated points",
                          [tput[i] for i in shown], [ttft99[i] for i in shown], style="scatter",
                          color=color, marker=marker,
                          labels=None if several else [_point_label(d.done[i]) for i in shown]))
    fr = sorted((i for i, f in enumerate(front) if f), key=lambda i: tput[i])
    name = "frontier" + (" across settings" if several else "") + ": no point beats these on both axes"
    pareto.add(Series(name, [tput[i] for i in fr], [ttft99[i] for i in fr], style="linepoints",
                      color="#000000" if several else PALETTE[1], highlight=[True] * len(fr),
                      labels=[_point_label(d.done[i]) for i in fr]))
    if ttft_slo is not None:
        pareto.hlines.append(RefLine(ttft_slo, f"SLO: TTFT p99 ≤ {ttft_slo:g} ms"))
    return pareto


def _sweep_figures(d: _SweepData, slo: dict[str, Any]) -> list[str]:
    ttft_slo = slo.get("ttft_ms") if is_num(slo.get("ttft_ms")) else None
    tpot_slo = slo.get("tpot_ms") if is_num(slo.get("tpot_ms")) else None
    per_group = " One line per setting of " + ", ".join(p for p in d.params if p != d.load_param) + "." \
        if len(d.groups) > 1 else ""
    figs = ["<h2>Latency against load</h2><div class='grid'>"]
    load: dict[str, Any] = {"xs": d.load_x, "xlabel": d.load_label, "categories": d.categories}
    figs.append(figure_html("ttft_vs_load", _latency_chart(
        d, "TTFT against load", **load, metric="ttft", slo_ms=ttft_slo),
        "p50 solid, p99 dashed; the dashed red line is the SLO, the grey one the knee." + per_group))
    figs.append(figure_html("tpot_vs_load", _latency_chart(
        d, "TPOT against load", **load, metric="tpot", slo_ms=tpot_slo)))
    achieved: dict[str, Any] = {"xs": d.col("output_tokens_per_s"), "xlabel": "achieved output tokens/s",
                                "label_points": True}
    figs.append(figure_html("ttft_vs_throughput", _latency_chart(
        d, "TTFT against achieved throughput", **achieved, metric="ttft", slo_ms=ttft_slo),
        "Each p99 point is labelled with its swept values."))
    figs.append(figure_html("tpot_vs_throughput", _latency_chart(
        d, "TPOT against achieved throughput", **achieved, metric="tpot", slo_ms=tpot_slo)))
    figs.append("</div><h2>Throughput</h2><div class='grid'>")
    figs.append(figure_html("goodput_vs_load", _goodput_chart(d),
                            "Goodput counts only requests within every SLO." + per_group))
    figs.append(figure_html("tokens_vs_param", _tokens_chart(d),
                            "Output tokens/s of each point." + per_group))
    figs.append(figure_html("pareto", _pareto_chart(d, ttft_slo),
                            "Frontier points (ringed): no other point, of any setting, beats them on both "
                            "throughput and TTFT p99."))
    figs.append("</div>")
    return figs


def _tokens_chart(d: _SweepData) -> Chart:
    """Output tokens/s against the load, one line per group."""
    chart = Chart(f"Output tokens/s against {d.load_param or 'point'}",
                  Axis(d.load_label, zero=d.categories is None, categories=d.categories),
                  Axis("output tokens/s", zero=True))
    tput = d.col("output_tokens_per_s")
    for k, (group, idx) in enumerate(d.groups.items()):
        order = sorted(idx, key=lambda i: d.load_x[i])
        color, marker = _group_style(k, group)
        chart.add(Series(group or "output tokens/s", [d.load_x[i] for i in order], [tput[i] for i in order],
                         style="linepoints", color=color, marker=marker,
                         dashed=k % 2 == 1))
    chart.vlines.extend(d.knee_lines({p["index"]: x for p, x in zip(d.done, d.load_x, strict=True)}))
    return chart


def _sweep_table(d: _SweepData, frontier_idx: set[int]) -> str:
    knee_idx = {k.get("index") for k in d.knees}
    rows, classes = [], []
    for p in d.all:
        row: dict[str, Any] = p["row"] if isinstance(p.get("row"), dict) else {}
        marks = []
        if p.get("index") in knee_idx:
            marks.append("knee")
        if p.get("index") in frontier_idx:
            marks.append("frontier")
        out_dir = p.get("out_dir")
        link = (f"<a href='{esc(str(out_dir).rstrip('/') + '/report.html')}'>report</a>"
                if out_dir and p.get("status") == "done" else "")
        status = esc(p.get("status"))
        if p.get("error"):
            status += f": {esc(p['error'])}"
        cells = [cell(p.get("index")), esc(_point_label(p)), status, esc(", ".join(marks))]
        cells += [cell(row.get(key), digits) for _, key, digits in _ROW_COLUMNS]
        args = row.get("server_args")
        cells.append(esc(" ".join(map(str, args)) if isinstance(args, list) else args or ""))
        cells.append(link)
        rows.append(cells)
        classes.append("knee" if p.get("index") in knee_idx else ("bad" if p.get("status") != "done" else ""))
    headers = ["#", "values", "status", "", *[h for h, _, _ in _ROW_COLUMNS], "server args", ""]
    table = table_html(headers, rows, left=4, row_classes=classes)
    return f"<h2>All points (latencies in ms)</h2><div class='scroll'>{table}</div>"


def render_sweep_html(sweep: dict[str, Any], reports: dict[int, dict[str, Any]]) -> str:
    """``sweep.html``: throughput–latency curves, goodput, Pareto frontier and a table of every point.

    ``sweep`` is ``sweep.json`` (see the module docstring of the sweep runner); ``reports`` maps a point's
    index to its ``report.json`` (used for the target and model in the header; may be empty)."""
    d = _SweepData(sweep)
    slo = sweep.get("slo") or {}
    first = next((reports[k] for k in sorted(reports) if isinstance(reports[k], dict)), {})
    server = first.get("server") or {}
    settings = first.get("settings") or {}
    model = server.get("model") or settings.get("model") or "?"
    url = server.get("url") or settings.get("url") or "?"
    params = ", ".join(d.params) or "–"
    slo_text = bounds_text(slo, "≤")
    head = [
        f"<header><h1>loadgen sweep: {esc(sweep.get('scenario', '?'))} scenario, swept over "
        f"{esc(params)}</h1>",
        f"<p class='meta'>target <code>{esc(url)}</code> · model <code>{esc(model)}</code> · "
        f"{len(d.all)} points, {len(d.done)} done · SLO: {esc(slo_text or 'none')}</p>",
    ]
    by_index = {p.get("index"): p for p in d.done}
    for knee in d.knees:
        kp = by_index.get(knee.get("index"))
        if kp is not None:
            head.append(f"<p class='meta knee'>knee at point {cell(kp.get('index'))} "
                        f"({esc(_point_label(kp))}): {esc(knee.get('reason'))}</p>")
    if not d.knees:
        head.append("<p class='meta'>no knee found in this sweep.</p>")
    failed = [p for p in d.all if p.get("status") != "done"]
    if failed:
        head.append(f"<div class='banner warn'>{len(failed)} point(s) did not finish; they are in the table "
                    "but not in the plots.</div>")
    limited = [p for p in d.done if p["row"].get("client_limited")]
    if limited:
        head.append("<div class='banner client-limited'>CLIENT-LIMITED at point(s) "
                    f"{esc(', '.join(str(p.get('index')) for p in limited))}: the client was the bottleneck "
                    "there, so those points understate the server.</div>")
    head.append("</header>")
    body = head
    if d.done:
        body += _sweep_figures(d, slo)
    else:
        body.append("<p class='note'>No point finished: nothing to plot.</p>")
    front = pareto_frontier(d.col("output_tokens_per_s"), d.col("ttft_p99_ms"))
    body.append(_sweep_table(d, {p["index"] for p, f in zip(d.done, front, strict=True) if f}))
    return page_html(f"loadgen sweep — {sweep.get('scenario', '?')} over {params}", "\n".join(body))


def write_sweep_html(sweep_dir: Path) -> Path:
    """Write ``sweep_dir/sweep.html`` from ``sweep.json`` and each done point's ``report.json``
    (under ``point["out_dir"]``, relative to ``sweep_dir``); a point whose report is missing is still
    drawn from its row. Raises :class:`loadgen.errors.ReportError` for a missing or bad ``sweep.json``."""
    sweep = load_json(sweep_dir / "sweep.json")
    reports: dict[int, dict[str, Any]] = {}
    for p in sweep.get("points") or []:
        if not isinstance(p, dict) or not p.get("out_dir"):
            continue
        path = sweep_dir / str(p["out_dir"]) / "report.json"
        if path.is_file():
            reports[int(p.get("index", len(reports)))] = load_json(path)
    out = sweep_dir / "sweep.html"
    write_text(out, render_sweep_html(sweep, reports))
    return out

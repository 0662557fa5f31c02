"""Self-contained HTML reports: ``report.html`` for a run, ``sweep.html`` for a sweep.

The pages open offline: CSS and a few lines of JavaScript are inline, every plot is an inline SVG drawn by
:mod:`loadgen.report.svgplot`, and nothing refers to a network resource (the target's URL appears as text
only).
Every string that came from a report (model names, URLs, error messages, server arguments) is escaped.

Each plot sits in ``<figure data-plot="NAME" data-points="N">`` where N is the number of data points
drawn. A small inline script measures every plot once the page is laid out and writes what the browser
actually drew into ``data-rendered`` (JSON: ``width``, ``height``, ``marks``, ``lines``, ``points``; the
reference lines as ``refs`` ``[{label, drawn}]``, the visible ``legend`` entries, ``xlabel`` and
``ylabel``), so a headless browser's ``--dump-dom`` shows whether each plot rendered with data.

Public API::

    render_run_html(report, records) -> str      write_run_html(out_dir) -> Path     (report.html)
    render_sweep_html(sweep, reports) -> str     write_sweep_html(sweep_dir) -> Path (sweep.html)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any, Literal

import numpy as np

from loadgen.metrics import latency as metrics
from loadgen.records import RequestRecord, iter_records, read_records
from loadgen.report.build import load_json
from loadgen.report.fleet import fleet_html
from loadgen.report.svgplot import PALETTE, Axis, Chart, RefLine, Series, Style, cdf

__all__ = [
    "RUN_FIGURES",
    "SWEEP_FIGURES",
    "render_run_html",
    "render_sweep_html",
    "write_run_html",
    "write_sweep_html",
]

#: Figures of ``report.html``: always drawn when the run has records / only with the data they need.
RUN_FIGURES = (
    "ttft_cdf", "e2e_cdf", "itl_cdf", "issue_delay_cdf",
    "inflight", "output_tokens_per_s", "completed_per_s", "ttft_vs_time",
)
RUN_OPTIONAL_FIGURES = ("server_queue", "server_kv_cache", "gpu_power")
#: Figures of ``sweep.html``.
SWEEP_FIGURES = (
    "ttft_vs_load", "tpot_vs_load", "ttft_vs_throughput", "tpot_vs_throughput",
    "goodput_vs_load", "tokens_vs_param", "pareto",
)

_NS_PER_S = 1e9
_NS_PER_MS = 1e6
_MAX_SCATTER = 5000
_WAITING = "vllm:num_requests_waiting"
_RUNNING = "vllm:num_requests_running"
_KV = "vllm:kv_cache_usage_perc"

_CSS = """
:root { color-scheme: light; }
body { margin: 0; padding: 24px 32px 48px; background: #f6f7f9; color: #111;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 6px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.meta { color: #333; margin: 2px 0; } code { background: #eceef2; padding: 1px 4px; border-radius: 3px; }
.verdict { display: inline-block; font-weight: 700; padding: 4px 12px; border-radius: 4px; margin: 10px 0 4px;
  color: #fff; letter-spacing: .04em; }
.valid { background: #1b7a3d; } .invalid { background: #b00020; }
.banner { border-left: 6px solid #b00020; background: #fde8ea; padding: 10px 14px; margin: 12px 0;
  font-weight: 600; }
.banner.warn { border-color: #b35c00; background: #fff1dc; }
ul.reasons { margin: 4px 0 0; padding-left: 22px; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d5d8de; padding: 4px 9px; text-align: right; }
th { background: #eef0f4; } td.l, th.l { text-align: left; }
tr.knee td { background: #fff4d6; } tr.bad td { color: #8a1020; }
.scroll { overflow-x: auto; max-width: 100%; }
.scroll table { font-size: 13px; } .scroll td { white-space: nowrap; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 16px; }
figure { margin: 0; background: #fff; border: 1px solid #d5d8de; border-radius: 6px; padding: 8px; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { color: #333; font-size: 12.5px; padding: 4px 6px 2px; }
.note { color: #555; font-style: italic; }
details { margin: 8px 0; } pre { background: #fff; border: 1px solid #d5d8de; padding: 8px; overflow: auto; }
"""

# Measures what the browser drew (see the module docstring); runs once, after layout, offline.
_MEASURE_JS = """
(function () {
  for (const fig of document.querySelectorAll('figure[data-plot]')) {
    const svg = fig.querySelector('svg');
    if (!svg) continue;
    const box = svg.getBoundingClientRect();
    let marks = 0, lines = 0, points = 0;
    for (const g of svg.querySelectorAll('g.series')) {
      let drawn = false;
      for (const m of g.querySelectorAll('.mark')) {
        const b = m.getBoundingClientRect();
        if (b.width > 0 && b.height > 0) { marks++; drawn = true; }
      }
      for (const p of g.querySelectorAll('path.line')) {
        if (p.getTotalLength() > 0) { lines++; drawn = true; }
      }
      if (drawn) points += Number(g.getAttribute('data-n') || 0);
    }
    // reference lines (SLOs, knees): drawn when their line has length; off-axis ones are arrows
    const refs = [];
    for (const r of svg.querySelectorAll('.ref')) {
      const line = r.querySelector('line');
      const text = r.tagName.toLowerCase() === 'text' ? r : r.querySelector('text');
      refs.push({label: text ? text.textContent : '', drawn: !!line && line.getTotalLength() > 0});
    }
    const label = (cls) => { const t = svg.querySelector('text.' + cls); return t ? t.textContent : null; };
    const legend = [];
    for (const t of svg.querySelectorAll('g.legend text')) {
      const b = t.getBoundingClientRect();
      if (b.width > 0 && b.height > 0) legend.push(t.textContent);
    }
    fig.setAttribute('data-rendered', JSON.stringify(
      {width: Math.round(box.width), height: Math.round(box.height), marks: marks, lines: lines,
       points: points, refs: refs, legend: legend, xlabel: label('xlabel'), ylabel: label('ylabel')}));
  }
  document.body.setAttribute('data-measured', 'true');
})();
"""


# ---- small HTML helpers ------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _num(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return _e(v)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, left: int = 1,
           row_classes: Sequence[str] | None = None) -> str:
    """``rows`` hold HTML already escaped; the first ``left`` columns are left-aligned."""
    head = "".join(f"<th class='{'l' if i < left else ''}'>{_e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for k, row in enumerate(rows):
        cls = f" class='{row_classes[k]}'" if row_classes and row_classes[k] else ""
        cells = "".join(f"<td class='{'l' if i < left else ''}'>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(name: str, chart: Chart, caption: str = "") -> str:
    chart.key = name
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure data-plot='{_e(name)}' data-points='{chart.points}'>{chart.svg()}{cap}</figure>"


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        f"<script>{_MEASURE_JS}</script>\n</body></html>\n"
    )


def _log_if_wide(values: Iterable[float], ratio: float = 10.0) -> bool:
    v = [x for x in values if x is not None and math.isfinite(x) and x > 0]
    return bool(v) and max(v) / min(v) > ratio


# ---- run report ---------------------------------------------------------------------------------------


def _slo(report: dict[str, Any]) -> dict[str, float]:
    """The SLO the run was judged by: the goodput's (effective, presets applied), else the settings'."""
    goodput = (report.get("results") or {}).get("goodput") or {}
    slo = goodput.get("slo") or (report.get("settings") or {}).get("slo") or {}
    return {k: float(v) for k, v in slo.items() if isinstance(v, int | float)}


def _header(report: dict[str, Any]) -> str:
    s = report.get("settings") or {}
    server = report.get("server") or {}
    scenario = s.get("scenario", "?")
    model = server.get("model") or s.get("model") or "?"
    url = server.get("url") or s.get("url") or "?"
    load = []
    if s.get("qps") and scenario in ("server", "constant"):
        load.append(f"{s['qps']:g} QPS")
    if scenario == "concurrency":
        load.append(f"concurrency {s.get('concurrency')}")
    if scenario == "multistream":
        load.append(f"{s.get('samples_per_query')} samples per query")
    title = f"loadgen {scenario}" + (f" @ {', '.join(load)}" if load else "")
    slo = _slo(report)
    slo_text = ", ".join(f"{k.removesuffix('_ms').upper()} ≤ {v:g} ms" for k, v in slo.items()) or "none"
    parts = [
        f"<header><h1>{_e(title)}</h1>",
        f"<p class='meta'>target <code>{_e(url)}</code> · model <code>{_e(model)}</code>"
        + (f" ({_e(server.get('version'))})" if server.get("version") else "") + "</p>",
        f"<p class='meta'>started {_e(report.get('started_at', '?'))} · finished "
        f"{_e(report.get('finished_at', '?'))} · run <code>{_e(report.get('run_id', '?'))}</code> · loadgen "
        f"{_e(report.get('loadgen_version', '?'))}</p>",
        f"<p class='meta'>duration ≥ {_num(s.get('duration_s'), 1)} s, ≥ {_num(s.get('num_requests'))} "
        f"requests, seed {_num(s.get('seed'))} · SLO: {_e(slo_text)}</p>",
    ]
    validity = report.get("validity") or {}
    valid = bool(validity.get("valid"))
    verdict = "VALID" if valid else "INVALID"
    parts.append(f"<div class='verdict {verdict.lower()}'>{verdict}</div>")
    reasons = validity.get("reasons") or []
    if reasons:
        parts.append("<ul class='reasons'>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
    client = report.get("client") or {}
    if client.get("client_limited"):
        why = "; ".join(client.get("reasons") or []) or "see the client health numbers"
        parts.append(
            "<div class='banner client-limited'>CLIENT-LIMITED: the load generator itself was the "
            f"bottleneck, so these numbers describe the client as much as the server ({_e(why)}).</div>"
        )
    if report.get("interrupted") or report.get("stopped_early"):
        parts.append(
            f"<div class='banner warn'>The run did not finish normally "
            f"({_e(report.get('stopped_early') or 'interrupted')}): results are partial.</div>"
        )
    parts.append("</header>")
    return "".join(parts)


def _metrics_tables(report: dict[str, Any]) -> str:
    r = report.get("results") or {}
    rows = []
    for label, key in (
        ("TTFT (from sent)", "ttft_ms"),
        ("TTFT (from scheduled)", "ttft_from_scheduled_ms"),
        ("ITL", "itl_ms"),
        ("TPOT", "tpot_ms"),
        ("E2E (from sent)", "e2e_ms"),
        ("E2E (from scheduled)", "e2e_from_scheduled_ms"),
        ("Issue delay", "issue_delay_ms"),
    ):
        d = r.get(key) or {}
        rows.append([_e(label)] + [_num(d.get(k), 3 if key == "issue_delay_ms" else 2)
                                   for k in ("mean", "p50", "p90", "p99", "p99_9", "max")]
                    + [_num(d.get("count"))])
    out = ["<h2>Latency (milliseconds)</h2>",
           _table(["metric", "mean", "p50", "p90", "p99", "p99.9", "max", "samples"], rows)]
    goodput = r.get("goodput") or {}
    thr = [
        ("requests issued / completed / failed",
         f"{_num(r.get('requests_issued'))} / {_num(r.get('requests_completed'))} / "
         f"{_num(r.get('requests_failed'))}"),
        ("duration (s)", _num(r.get("duration_s"))),
        ("completed requests/s", _num(r.get("requests_per_s"))),
        ("output tokens/s", _num(r.get("output_tokens_per_s"), 1)),
        ("input tokens/s", _num(r.get("input_tokens_per_s"), 1)),
        ("total tokens/s", _num(r.get("total_tokens_per_s"), 1)),
        ("output / input tokens in all", f"{_num(r.get('output_tokens_total'))} / "
                                          f"{_num(r.get('input_tokens_total'))}"),
        ("output tokens counted from",
         _e(", ".join(f"{k} ({v})" for k, v in (r.get("tokens_source") or {}).items())) or "–"),
    ]
    if goodput:
        frac = goodput.get("fraction")
        pct = _num(None if frac is None else 100 * frac, 1)
        rate = _num(goodput.get("requests_per_s"))
        thr.append(("goodput (requests/s meeting every SLO)", f"{rate} ({pct} %)"))
    out += ["<h2>Throughput</h2>", _table(["quantity", "value"], [[_e(k), v] for k, v in thr])]
    errors = r.get("errors_by_class") or {}
    statuses = r.get("errors_by_status") or {}
    out.append("<h2>Errors</h2>")
    if errors or statuses:
        rows = [[_e(f"class {k}"), _num(v)] for k, v in errors.items()]
        rows += [[_e(f"HTTP {k}"), _num(v)] for k, v in statuses.items()]
        out.append(_table(["error", "requests"], rows))
    else:
        out.append("<p>No request failed.</p>")
    client = report.get("client")
    if client:
        iss, lag = client.get("issue_delay_ms") or {}, client.get("loop_lag_ms") or {}
        out.append("<h2>Client health</h2>")
        out.append(_table(["quantity", "p50", "p99", "max"], [
            [_e(label)] + [_num(d.get(k), 3) for k in ("p50", "p99", "max")]
            for label, d in (("issue delay (ms)", iss), ("event-loop lag (ms)", lag))
        ]))
        out.append(f"<p class='meta'>client CPU: {_num(client.get('cpu_cores'))} cores</p>")
    return "".join(out)


def _cdf_chart(title: str, xlabel: str, data: Sequence[tuple[str, np.ndarray]],
               refs: Sequence[RefLine] = (), ylabel: str = "requests at or below (%)") -> Chart:
    chart = Chart(title, Axis(xlabel, log=True), Axis(ylabel, lo=0, hi=100))
    for k, (name, values) in enumerate(data):
        x, y = cdf(values)
        chart.add(Series(f"{name} (n={np.asarray(values).size:,})", x, y, dashed=k % 2 == 1))
    chart.vlines.extend(refs)
    chart.hlines.append(RefLine(99.0, "p99", color="#666666"))
    return chart


def _bins(times_s: np.ndarray, weights: np.ndarray | None, end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-second rates in 1 s bins from 0 to ``end_s``; the last, partial bin is divided by its width."""
    nbins = max(1, math.ceil(end_s))
    edges = np.arange(nbins + 1, dtype=np.float64)
    counts, _ = np.histogram(np.clip(times_s, 0, nbins - 1e-9), bins=edges, weights=weights)
    widths = np.ones(nbins)
    widths[-1] = max(end_s - (nbins - 1), 1e-3)
    return edges[:-1] + widths / 2, counts / widths


def _run_figures(  # noqa: PLR0915
    report: dict[str, Any], records: list[RequestRecord], weight: float = 1.0
) -> list[str]:
    """``weight``: how many requests each record stands for (a sampled long run) in the rate plots."""
    measured = [r for r in records if not r.warmup]
    arrays = metrics.RequestArrays.from_records(measured)
    slo = _slo(report)
    ttft_ref = [RefLine(slo["ttft_ms"], f"SLO {slo['ttft_ms']:g} ms")] if "ttft_ms" in slo else []
    tpot_ref = [RefLine(slo["tpot_ms"], f"TPOT SLO {slo['tpot_ms']:g} ms")] if "tpot_ms" in slo else []
    ms = _NS_PER_MS
    figs = ["<h2>Latency distributions</h2><div class='grid'>"]
    figs.append(_figure("ttft_cdf", _cdf_chart(
        "Time to first token, CDF", "TTFT (ms)",
        [("from sent", metrics.ttft_ns(arrays, "sent") / ms),
         ("from scheduled", metrics.ttft_ns(arrays, "scheduled") / ms)], ttft_ref),
        "Completed requests. 'From scheduled' includes the client's own lateness (coordinated omission)."))
    figs.append(_figure("e2e_cdf", _cdf_chart(
        "End-to-end latency, CDF", "E2E latency (ms)",
        [("from sent", metrics.e2e_ns(arrays, "sent") / ms),
         ("from scheduled", metrics.e2e_ns(arrays, "scheduled") / ms)]),
        "Request sent (or scheduled) to the end of its stream, completed requests."))
    figs.append(_figure("itl_cdf", _cdf_chart(
        "Inter-token latency and TPOT, CDF", "time per token (ms)",
        [("ITL, per token", metrics.itl_ns(measured) / ms),
         ("TPOT, per request", metrics.tpot_ns(arrays) / ms)],
        tpot_ref, ylabel="samples at or below (%)"),
        "ITL pools every gap between content chunks (a chunk of k tokens counts k gaps of 1/k); TPOT is "
        "(last token − first token) / (tokens − 1) per request."))
    delay = metrics.issue_delay_ns(arrays) / ms
    figs.append(_figure("issue_delay_cdf", _cdf_chart(
        "Issue delay (sent − scheduled), CDF", "issue delay (ms)",
        [("all issued requests", np.maximum(delay, 1e-3))]),
        "How late the client sent each request; values under 1 µs are drawn at 1 µs. A long tail here means "
        "the client, not the server, set the pace."))
    figs.append("</div><h2>Over the run</h2><div class='grid'>")

    end_s = float(arrays.end.max()) / _NS_PER_S if len(arrays) else 1.0
    # in flight: +1 at sent, −1 at end, as a step function
    t = np.concatenate([arrays.sent, arrays.end]) / _NS_PER_S
    step = np.concatenate([np.ones(len(arrays)), -np.ones(len(arrays))]) * weight
    order = np.lexsort((-step, t))  # at equal times count the arrival first (no dip below zero)
    tx, level = t[order], np.cumsum(step[order])
    if tx.size > 4000:  # sample the step function on a fixed grid: same shape, bounded size
        grid = np.linspace(tx[0], tx[-1], 2000)
        level = level[np.searchsorted(tx, grid, side="right") - 1]
        tx = grid
    inflight = Chart("Requests in flight", Axis("time since run start (s)", zero=True),
                     Axis("requests in flight", zero=True))
    inflight.add(Series("in flight (sent, not ended)", tx, level, style="step"))
    figs.append(_figure("inflight", inflight, "Reconstructed from each request's sent and end times."))

    tok_t, tok_w = [], []
    for r in measured:
        if r.chunk_ns:
            counts = np.ones(len(r.chunk_ns))
            given = r.chunk_tokens[: len(r.chunk_ns)]
            counts[: len(given)] = np.maximum(np.asarray(given, dtype=np.float64), 1)
            if r.output_tokens > 0:  # usage or tokenizer counts are better than chunk counts
                counts *= r.output_tokens / counts.sum()
            tok_t.append(np.asarray(r.chunk_ns, dtype=np.float64))
            tok_w.append(counts)
        elif r.ok and r.output_tokens > 0:
            tok_t.append(np.array([float(r.end_ns)]))
            tok_w.append(np.array([float(r.output_tokens)]))
    times = np.concatenate(tok_t) / _NS_PER_S if tok_t else np.empty(0)
    weights = np.concatenate(tok_w) * weight if tok_w else np.empty(0)
    bx, by = _bins(times, weights, end_s)
    tps = Chart("Output tokens per second", Axis("time since run start (s)", zero=True),
                Axis("output tokens/s", zero=True))
    tps.add(Series("output tokens/s (1 s bins)", bx, by, style="linepoints" if bx.size <= 120 else "line"))
    mean_tps = (report.get("results") or {}).get("output_tokens_per_s")
    if mean_tps:
        tps.hlines.append(RefLine(mean_tps, f"run mean {mean_tps:,.0f}", color="#666666"))
    figs.append(_figure("output_tokens_per_s", tps, "Tokens counted when their chunk arrived."))

    done = Chart("Requests completed per second", Axis("time since run start (s)", zero=True),
                 Axis("requests/s", zero=True))
    cx, cy = _bins(arrays.end[arrays.ok] / _NS_PER_S, None, end_s)
    cy = cy * weight
    style: Style = "linepoints" if cx.size <= 120 else "line"
    done.add(Series("completed (1 s bins)", cx, cy, style=style))
    if (~arrays.ok).any():
        fx, fy = _bins(arrays.end[~arrays.ok] / _NS_PER_S, None, end_s)
        fy = fy * weight
        done.add(Series("failed (1 s bins)", fx, fy, style=style, color=PALETTE[1], dashed=True))
    figs.append(_figure("completed_per_s", done, "By the time each request ended."))

    mask = arrays.ok & arrays.has_first_token
    sched_s = arrays.scheduled[mask] / _NS_PER_S
    ttft = (arrays.first_token[mask] - arrays.sent[mask]) / ms
    failed_x = arrays.scheduled[~arrays.ok] / _NS_PER_S
    failed_y = (arrays.end[~arrays.ok] - arrays.sent[~arrays.ok]) / ms
    stride = max(1, math.ceil(ttft.size / _MAX_SCATTER))
    scatter = Chart("TTFT of each request over the run",
                    Axis("scheduled time (s since run start)", zero=True),
                    Axis("TTFT (ms)", log=_log_if_wide(np.concatenate([ttft, failed_y]).tolist())))
    scatter.add(Series("completed: TTFT from sent", sched_s[::stride], ttft[::stride], style="scatter"))
    if failed_x.size:
        scatter.add(Series("failed: time to error", failed_x, failed_y, style="scatter", color=PALETTE[1],
                           marker="diamond"))
    scatter.hlines.extend(RefLine(r.value, r.label) for r in ttft_ref)
    figs.append(_figure("ttft_vs_time", scatter,
                        "One point per request at its scheduled time"
                        + (f" (every {stride}th request drawn)" if stride > 1 else "") + "."))
    figs.append("</div>")
    return figs


def _sample_series(samples: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for s in samples:
        v, t = s.get(key), s.get("t_s")
        if isinstance(v, int | float) and isinstance(t, int | float):
            xs.append(float(t))
            ys.append(float(v))
    return xs, ys


def _server_figures(report: dict[str, Any]) -> list[str]:
    section = report.get("server_metrics") or {}
    samples = [s for s in section.get("samples") or [] if isinstance(s, dict)]
    if not samples:
        note = section.get("note") if isinstance(section, dict) else None
        note = note or "No server /metrics samples in this report."
        return [f"<h2>Server metrics</h2><p class='note'>{_e(note)}</p>"]
    figs = ["<h2>Server metrics</h2><div class='grid'>"]
    queue = Chart("Server queue and running batch", Axis("time since run start (s)", zero=True),
                  Axis("requests", zero=True))
    for name, key, dashed in (("waiting (queue)", _WAITING, False), ("running", _RUNNING, True)):
        x, y = _sample_series(samples, key)
        if x:
            queue.add(Series(name, x, y, style="linepoints" if len(x) <= 120 else "line", dashed=dashed))
    if queue.series:
        figs.append(_figure("server_queue", queue, f"{_WAITING} and {_RUNNING}, scraped from /metrics."))
    x, y = _sample_series(samples, _KV)
    if x:
        frac = max(y) <= 1.0  # vLLM reports a fraction in 0..1 despite the name
        kv = Chart("KV-cache usage", Axis("time since run start (s)", zero=True),
                   Axis("KV-cache used (%)", lo=0, hi=100 if frac or max(y) <= 100 else None))
        kv.add(Series("KV cache", x, [v * 100 for v in y] if frac else y,
                      style="linepoints" if len(x) <= 120 else "line"))
        figs.append(_figure("server_kv_cache", kv, f"{_KV}."))
    figs.append("</div>")
    return figs


def _power_series(samples: list[Any]) -> dict[str, tuple[list[float], list[float]]]:
    """GPU power per GPU from telemetry samples; accepts ``{"t_s", "gpu", "power_w"}`` rows,
    ``{"t_s", "gpus": [{"index"|"gpu", "power_w"}...]}`` rows, or rows with ``*power*`` keys."""
    out: dict[str, tuple[list[float], list[float]]] = {}

    def add(name: str, t: Any, v: Any) -> None:
        if isinstance(t, int | float) and isinstance(v, int | float) and not isinstance(v, bool):
            xs, ys = out.setdefault(name, ([], []))
            xs.append(float(t))
            ys.append(float(v))

    def power_of(d: dict[str, Any]) -> Any:
        for k in ("power_w", "power_watts", "watts", "power"):
            if k in d:
                return d[k]
        return None

    for s in samples:
        if not isinstance(s, dict):
            continue
        t = s.get("t_s")
        if "gpu" in s:
            add(f"GPU {s['gpu']}", t, power_of(s))
        elif isinstance(s.get("gpus"), list):
            for g in s["gpus"]:
                if isinstance(g, dict):
                    add(f"GPU {g.get('index', g.get('gpu', '?'))}", t, power_of(g))
        else:
            for k, v in s.items():
                if "power" in k.lower():
                    add(k, t, v)
    return out


def _energy_section(report: dict[str, Any]) -> list[str]:
    """The GPU heading with energy over the measured window, J per output token, output tokens per J,
    mean and peak power (loadgen.observe.gpu's ``result()``), or why telemetry is unavailable."""
    tele = report.get("telemetry")
    if not isinstance(tele, dict) or not tele:
        return []
    if tele.get("available") is False:
        reason = tele.get("reason") or "unknown reason"
        return ["<h2>GPU</h2>", f"<p class='note'>GPU telemetry unavailable: {_e(reason)}</p>"]
    total = tele.get("total")
    if not isinstance(total, dict):
        return []
    power = total.get("power_w") or {}
    method = total.get("energy_method")
    rows = [
        ("energy over the measured window (J)",
         _num(total.get("energy_j"), 1) + (f" ({_e(method)})" if method else "")),
        ("joules per output token", _num(total.get("joules_per_output_token"), 4)),
        ("output tokens per joule", _num(total.get("output_tokens_per_joule"), 2)),
        ("mean power (W)", _num(power.get("mean"), 1)),
        ("peak power (W)", _num(power.get("peak"), 1)),
    ]
    out = ["<h2>GPU</h2>", _table(["quantity", "all GPUs"], [[_e(k), v] for k, v in rows])]
    gpus = [g for g in tele.get("gpus") or [] if isinstance(g, dict)]
    if len(gpus) > 1:
        out.append(_table(["GPU", "energy (J)", "mean power (W)", "peak power (W)"], [
            [_e(f"{g.get('index', '?')} {g.get('name') or ''}".strip()), _num(g.get("energy_j"), 1),
             _num((g.get("power_w") or {}).get("mean"), 1), _num((g.get("power_w") or {}).get("peak"), 1)]
            for g in gpus
        ]))
    covered, window = tele.get("covered_s"), tele.get("window_s")
    if isinstance(covered, int | float) and isinstance(window, int | float) and covered < 0.99 * window:
        out.append(f"<p class='note'>The samples cover {_num(float(covered), 1)} s of the "
                   f"{_num(float(window), 1)} s window; energy covers only that part.</p>")
    return out


def _gpu_figures(report: dict[str, Any]) -> list[str]:
    head = _energy_section(report)
    tele = report.get("telemetry")
    samples = tele.get("samples") if isinstance(tele, dict) else None
    series = _power_series(samples) if isinstance(samples, list) else {}
    # loadgen.observe.gpu's own shape: per GPU, columnar {"t_s": [...], "power_w": [...], ...}
    for gpu in (tele.get("gpus") or []) if isinstance(tele, dict) else []:
        cols = gpu.get("samples") if isinstance(gpu, dict) else None
        if isinstance(cols, dict) and all(isinstance(cols.get(k), list) for k in ("t_s", "power_w")):
            pts = [(t, v) for t, v in zip(cols["t_s"], cols["power_w"], strict=False)
                   if isinstance(t, int | float) and isinstance(v, int | float)]
            if pts:
                name = f"GPU {gpu.get('index', len(series))}"
                series[name] = ([float(t) for t, _ in pts], [float(v) for _, v in pts])
    if not series:
        return head
    chart = Chart("GPU board power", Axis("time since run start (s)", zero=True),
                  Axis("power (W)", zero=True))
    for k, (name, (x, y)) in enumerate(sorted(series.items())):
        chart.add(Series(name, x, y, style="line", dashed=k % 2 == 1))
    return [*(head or ["<h2>GPU</h2>"]), "<div class='grid'>",
            _figure("gpu_power", chart, "Sampled through NVML."), "</div>"]


def render_run_html(
    report: dict[str, Any], records: list[RequestRecord] | None, sample_step: int = 1
) -> str:
    """``report.html`` for one run. ``records`` (from ``requests.jsonl``) feed the distribution and
    time-series plots; without them the page has the header and tables only. ``sample_step`` = k when
    the records are every k-th request of a long run (rates are scaled by k; the page says so)."""
    s = report.get("settings") or {}
    server = report.get("server") or {}
    title = f"loadgen {s.get('scenario', '?')} — {server.get('model') or s.get('model') or '?'}"
    body = [_header(report), _metrics_tables(report)]
    if records:
        if sample_step > 1:
            body.append(f"<p class='note'>Plots are drawn from every {sample_step}th request "
                        f"({len(records):,} of the run's requests); rates are scaled by {sample_step}. "
                        "The tables above use every request.</p>")
        body += _run_figures(report, records, float(sample_step))
    else:
        body.append("<p class='note'>No request records (requests.jsonl) were available: plots omitted.</p>")
    body += _server_figures(report)
    body += _gpu_figures(report)
    body += fleet_html(report)
    body.append(
        "<details><summary>Settings</summary><pre>"
        + _e(json.dumps(s, indent=2, sort_keys=True, default=str)) + "</pre></details>"
    )
    return _page(title, "\n".join(body))


#: Plots of longer runs are drawn from an even sample of this many requests, so that the page (and
#: the memory to build it) stays bounded; the page says so.
MAX_PLOTTED_REQUESTS = 20_000


def _plot_records(jsonl: Path) -> tuple[list[RequestRecord], int]:
    """The records to plot and k: all of them (k = 1), or every k-th one above MAX_PLOTTED_REQUESTS."""
    with jsonl.open("rb") as f:
        total = sum(1 for _ in f)
    step = max(1, -(-total // MAX_PLOTTED_REQUESTS))
    if step == 1:
        return read_records(jsonl), 1
    return [rec for i, rec in enumerate(iter_records(jsonl)) if i % step == 0], step


def write_run_html(out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` from ``report.json`` and (when present) ``requests.jsonl``.

    Raises :class:`loadgen.errors.ReportError` when ``report.json`` is missing or unreadable.
    """
    report = load_json(out_dir / "report.json")
    jsonl = out_dir / "requests.jsonl"
    records, step = _plot_records(jsonl) if jsonl.is_file() else (None, 1)
    path = out_dir / "report.html"
    path.write_text(render_run_html(report, records, step), encoding="utf-8")
    return path


# ---- sweep report -------------------------------------------------------------------------------------


_ROW_COLUMNS = (  # (header, row key, digits)
    ("offered QPS", "offered_qps", 2), ("concurrency", "concurrency", 0), ("req/s", "requests_per_s", 2),
    ("output tok/s", "output_tokens_per_s", 0), ("goodput req/s", "goodput_requests_per_s", 2),
    ("TTFT p50", "ttft_p50_ms", 1), ("TTFT p99", "ttft_p99_ms", 1), ("ITL p99", "itl_p99_ms", 1),
    ("TPOT p50", "tpot_p50_ms", 1), ("TPOT p99", "tpot_p99_ms", 1), ("E2E p99", "e2e_p99_ms", 0),
    ("error rate", "error_rate", 3), ("valid", "valid", 0), ("client-limited", "client_limited", 0),
    ("J/out token", "joules_per_output_token", 3),
)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


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
        return [float(p["row"][key]) if _is_num(p["row"].get(key)) else math.nan for p in self.done]

    def _load_axis(self) -> tuple[str, str, list[float], list[str] | None]:
        for key, label in (("offered_qps", "offered load (requests/s)"),
                           ("concurrency", "concurrency (requests in flight)")):
            vals = self.col(key)
            if vals and all(math.isfinite(v) for v in vals) and len(set(vals)) > 1:
                return key, label, vals, None
        name = self.load_param or "point"
        raw: list[Any] = [(p.get("values") or {}).get(name, p.get("index")) for p in self.done]
        if raw and all(_is_num(v) for v in raw):
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
    ylog = _log_if_wide(p50 + p99)
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
    log = _log_if_wide(ttft99)
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
    ttft_slo = slo.get("ttft_ms") if _is_num(slo.get("ttft_ms")) else None
    tpot_slo = slo.get("tpot_ms") if _is_num(slo.get("tpot_ms")) else None
    per_group = " One line per setting of " + ", ".join(p for p in d.params if p != d.load_param) + "." \
        if len(d.groups) > 1 else ""
    figs = ["<h2>Latency against load</h2><div class='grid'>"]
    load: dict[str, Any] = {"xs": d.load_x, "xlabel": d.load_label, "categories": d.categories}
    figs.append(_figure("ttft_vs_load", _latency_chart(
        d, "TTFT against load", **load, metric="ttft", slo_ms=ttft_slo),
        "p50 solid, p99 dashed; the dashed red line is the SLO, the grey one the knee." + per_group))
    figs.append(_figure("tpot_vs_load", _latency_chart(
        d, "TPOT against load", **load, metric="tpot", slo_ms=tpot_slo)))
    achieved: dict[str, Any] = {"xs": d.col("output_tokens_per_s"), "xlabel": "achieved output tokens/s",
                                "label_points": True}
    figs.append(_figure("ttft_vs_throughput", _latency_chart(
        d, "TTFT against achieved throughput", **achieved, metric="ttft", slo_ms=ttft_slo),
        "Each p99 point is labelled with its swept values."))
    figs.append(_figure("tpot_vs_throughput", _latency_chart(
        d, "TPOT against achieved throughput", **achieved, metric="tpot", slo_ms=tpot_slo)))
    figs.append("</div><h2>Throughput</h2><div class='grid'>")
    figs.append(_figure("goodput_vs_load", _goodput_chart(d),
                        "Goodput counts only requests within every SLO." + per_group))
    figs.append(_figure("tokens_vs_param", _tokens_chart(d), "Output tokens/s of each point." + per_group))
    figs.append(_figure("pareto", _pareto_chart(d, ttft_slo),
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
        link = (f"<a href='{_e(str(out_dir).rstrip('/') + '/report.html')}'>report</a>"
                if out_dir and p.get("status") == "done" else "")
        status = _e(p.get("status"))
        if p.get("error"):
            status += f": {_e(p['error'])}"
        cells = [_num(p.get("index")), _e(_point_label(p)), status, _e(", ".join(marks))]
        cells += [_num(row.get(key), digits) for _, key, digits in _ROW_COLUMNS]
        args = row.get("server_args")
        cells.append(_e(" ".join(map(str, args)) if isinstance(args, list) else args or ""))
        cells.append(link)
        rows.append(cells)
        classes.append("knee" if p.get("index") in knee_idx else ("bad" if p.get("status") != "done" else ""))
    headers = ["#", "values", "status", "", *[h for h, _, _ in _ROW_COLUMNS], "server args", ""]
    table = _table(headers, rows, left=4, row_classes=classes)
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
    slo_text = ", ".join(
        f"{k.removesuffix('_ms').upper()} p99 ≤ {v:g} ms" for k, v in slo.items() if _is_num(v)
    )
    head = [
        f"<header><h1>loadgen sweep: {_e(sweep.get('scenario', '?'))} scenario, swept over {_e(params)}</h1>",
        f"<p class='meta'>target <code>{_e(url)}</code> · model <code>{_e(model)}</code> · "
        f"{len(d.all)} points, {len(d.done)} done · SLO: {_e(slo_text or 'none')}</p>",
    ]
    by_index = {p.get("index"): p for p in d.done}
    for knee in d.knees:
        kp = by_index.get(knee.get("index"))
        if kp is not None:
            head.append(f"<p class='meta knee'>knee at point {_num(kp.get('index'))} "
                        f"({_e(_point_label(kp))}): {_e(knee.get('reason'))}</p>")
    if not d.knees:
        head.append("<p class='meta'>no knee found in this sweep.</p>")
    failed = [p for p in d.all if p.get("status") != "done"]
    if failed:
        head.append(f"<div class='banner warn'>{len(failed)} point(s) did not finish; they are in the table "
                    "but not in the plots.</div>")
    limited = [p for p in d.done if p["row"].get("client_limited")]
    if limited:
        head.append("<div class='banner client-limited'>CLIENT-LIMITED at point(s) "
                    f"{_e(', '.join(str(p.get('index')) for p in limited))}: the client was the bottleneck "
                    "there, so those points understate the server.</div>")
    head.append("</header>")
    body = head
    if d.done:
        body += _sweep_figures(d, slo)
    else:
        body.append("<p class='note'>No point finished: nothing to plot.</p>")
    front = pareto_frontier(d.col("output_tokens_per_s"), d.col("ttft_p99_ms"))
    body.append(_sweep_table(d, {p["index"] for p, f in zip(d.done, front, strict=True) if f}))
    return _page(f"loadgen sweep — {sweep.get('scenario', '?')} over {params}", "\n".join(body))


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
    out.write_text(render_sweep_html(sweep, reports), encoding="utf-8")
    return out

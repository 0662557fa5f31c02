"""``report.html`` for one run: the header and verdict, the tables, the figures, server and GPU sections.

The record-based figures are in :mod:`loadgen.report.html.figures`; this module lays out the page and
draws the sections that come from ``report.json`` alone (server ``/metrics`` samples, GPU telemetry).
"""

from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Any

from loadgen.records import RequestRecord, iter_records, read_records
from loadgen.report.files import load_json, write_text
from loadgen.report.fleet import fleet_html
from loadgen.report.html.figures import RunData, run_figures
from loadgen.report.html.page import cell, esc, figure_html, page_html, table_html
from loadgen.report.html.svgplot import Axis, Chart, Series
from loadgen.specs import bounds_text

__all__ = ["MAX_PLOTTED_REQUESTS", "RUN_OPTIONAL_FIGURES", "render_run_html", "write_run_html"]

#: Figures of ``report.html`` drawn only with the data they need.
RUN_OPTIONAL_FIGURES = ("server_queue", "server_kv_cache", "gpu_power")

_WAITING = "vllm:num_requests_waiting"
_RUNNING = "vllm:num_requests_running"
_KV = "vllm:kv_cache_usage_perc"


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
        f"<header><h1>{esc(title)}</h1>",
        f"<p class='meta'>target <code>{esc(url)}</code> · model <code>{esc(model)}</code>"
        + (f" ({esc(server.get('version'))})" if server.get("version") else "") + "</p>",
        f"<p class='meta'>started {esc(report.get('started_at', '?'))} · finished "
        f"{esc(report.get('finished_at', '?'))} · run <code>{esc(report.get('run_id', '?'))}</code> · "
        "loadgen "
        f"{esc(report.get('loadgen_version', '?'))}</p>",
        f"<p class='meta'>duration ≥ {cell(s.get('duration_s'), 1)} s, ≥ {cell(s.get('num_requests'))} "
        f"requests, seed {cell(s.get('seed'))} · SLO: {esc(slo_text)}</p>",
    ]
    validity = report.get("validity") or {}
    valid = bool(validity.get("valid"))
    verdict = "VALID" if valid else "INVALID"
    parts.append(f"<div class='verdict {verdict.lower()}'>{verdict}</div>")
    reasons = validity.get("reasons") or []
    if reasons:
        parts.append("<ul class='reasons'>" + "".join(f"<li>{esc(r)}</li>" for r in reasons) + "</ul>")
    client = report.get("client") or {}
    if client.get("client_limited"):
        why = "; ".join(client.get("reasons") or []) or "see the client health numbers"
        parts.append(
            "<div class='banner client-limited'>CLIENT-LIMITED: the load generator itself was the "
            f"bottleneck, so these numbers describe the client as much as the server ({esc(why)}).</div>"
        )
    if report.get("interrupted") or report.get("stopped_early"):
        parts.append(
            f"<div class='banner warn'>The run did not finish normally "
            f"({esc(report.get('stopped_early') or 'interrupted')}): results are partial.</div>"
        )
    parts.append("</header>")
    return "".join(parts)


def _metrics_tables(report: dict[str, Any]) -> str:
    r = report.get("results") or {}
    rows = []
    for label, key in (
        ("TTFT (from sent)", "ttft_ms"),
        ("TTFT (from scheduled)", "ttft_from_scheduled_ms"),
        *([("First answer (from sent)", "time_to_first_answer_ms")] if r.get("reasoning_tokens") else []),
        ("ITL", "itl_ms"),
        ("TPOT", "tpot_ms"),
        ("E2E (from sent)", "e2e_ms"),
        ("E2E (from scheduled)", "e2e_from_scheduled_ms"),
        ("Issue delay", "issue_delay_ms"),
    ):
        d = r.get(key) or {}
        rows.append([esc(label)] + [cell(d.get(k), 3 if key == "issue_delay_ms" else 2)
                                   for k in ("mean", "p50", "p90", "p99", "p99_9", "max")]
                    + [cell(d.get("count"))])
    out = ["<h2>Latency (milliseconds)</h2>",
           table_html(["metric", "mean", "p50", "p90", "p99", "p99.9", "max", "samples"], rows)]
    goodput = r.get("goodput") or {}
    thr = [
        ("requests issued / completed / failed",
         f"{cell(r.get('requests_issued'))} / {cell(r.get('requests_completed'))} / "
         f"{cell(r.get('requests_failed'))}"),
        ("duration (s)", cell(r.get("duration_s"))),
        ("completed requests/s", cell(r.get("requests_per_s"))),
        ("output tokens/s", cell(r.get("output_tokens_per_s"), 1)),
        ("input tokens/s", cell(r.get("input_tokens_per_s"), 1)),
        ("total tokens/s", cell(r.get("total_tokens_per_s"), 1)),
        ("output / input tokens in all", f"{cell(r.get('output_tokens_total'))} / "
                                          f"{cell(r.get('input_tokens_total'))}"),
        ("output tokens counted from",
         esc(", ".join(f"{k} ({v})" for k, v in (r.get("tokens_source") or {}).items())) or "–"),
    ]
    if goodput:
        frac = goodput.get("fraction")
        pct = cell(None if frac is None else 100 * frac, 1)
        rate = cell(goodput.get("requests_per_s"))
        thr.append(("goodput (requests/s meeting every SLO)", f"{rate} ({pct} %)"))
    out += ["<h2>Throughput</h2>", table_html(["quantity", "value"], [[esc(k), v] for k, v in thr])]
    out += _classes_table(r.get("classes") or {})
    errors = r.get("errors_by_class") or {}
    statuses = r.get("errors_by_status") or {}
    out.append("<h2>Errors</h2>")
    if errors or statuses:
        rows = [[esc(f"class {k}"), cell(v)] for k, v in errors.items()]
        rows += [[esc(f"HTTP {k}"), cell(v)] for k, v in statuses.items()]
        out.append(table_html(["error", "requests"], rows))
    else:
        out.append("<p>No request failed.</p>")
    client = report.get("client")
    if client:
        iss, lag = client.get("issue_delay_ms") or {}, client.get("loop_lag_ms") or {}
        out.append("<h2>Client health</h2>")
        out.append(table_html(["quantity", "p50", "p99", "max"], [
            [esc(label)] + [cell(d.get(k), 3) for k in ("p50", "p99", "max")]
            for label, d in (("issue delay (ms)", iss), ("event-loop lag (ms)", lag))
        ]))
        out.append(f"<p class='meta'>client CPU: {cell(client.get('cpu_cores'))} cores</p>")
    return "".join(out)


def _classes_table(classes: dict[str, Any]) -> list[str]:
    """A traffic mix: one row per class, with its share, tails and its own SLO's verdict."""
    if not classes:
        return []
    rows = []
    for name, c in classes.items():
        def tail(key: str, q: str, c: dict[str, Any] = c) -> str:
            return cell((c.get(key) or {}).get(q))
        slo = bounds_text(c["slo"], "≤")
        met = {None: "–", True: "met", False: "MISSED"}[c["slo_met"]]
        share = None if c["share"] is None else 100 * c["share"]
        rows.append([esc(name), f"{cell(share, 1)} % (asked {cell(100 * c['share_asked'], 0)} %)",
                     cell(c["requests_completed"]), tail("ttft_ms", "p50"),
                     tail("ttft_from_scheduled_ms", "p99"), tail("tpot_ms", "p99"),
                     tail("e2e_from_scheduled_ms", "p99"),
                     esc(f"{met} ({slo})" if slo else met)])
    return ["<h2>Traffic classes</h2>", table_html(
        ["class", "share", "completed", "TTFT p50", "TTFT p99 (sched.)", "TPOT p99", "E2E p99 (sched.)",
         "SLO"], rows)]


# ---- server metrics and GPU ------------------------------------------------------------------------


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
        return [f"<h2>Server metrics</h2><p class='note'>{esc(note)}</p>"]
    figs = ["<h2>Server metrics</h2><div class='grid'>"]
    queue = Chart("Server queue and running batch", Axis("time since run start (s)", zero=True),
                  Axis("requests", zero=True))
    for name, key, dashed in (("waiting (queue)", _WAITING, False), ("running", _RUNNING, True)):
        x, y = _sample_series(samples, key)
        if x:
            queue.add(Series(name, x, y, style="linepoints" if len(x) <= 120 else "line", dashed=dashed))
    if queue.series:
        figs.append(figure_html("server_queue", queue, f"{_WAITING} and {_RUNNING}, scraped from /metrics."))
    x, y = _sample_series(samples, _KV)
    if x:
        frac = max(y) <= 1.0  # vLLM reports a fraction in 0..1 despite the name
        kv = Chart("KV-cache usage", Axis("time since run start (s)", zero=True),
                   Axis("KV-cache used (%)", lo=0, hi=100 if frac or max(y) <= 100 else None))
        kv.add(Series("KV cache", x, [v * 100 for v in y] if frac else y,
                      style="linepoints" if len(x) <= 120 else "line"))
        figs.append(figure_html("server_kv_cache", kv, f"{_KV}."))
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
        return ["<h2>GPU</h2>", f"<p class='note'>GPU telemetry unavailable: {esc(reason)}</p>"]
    total = tele.get("total")
    if not isinstance(total, dict):
        return []
    power = total.get("power_w") or {}
    method = total.get("energy_method")
    rows = [
        ("energy over the measured window (J)",
         cell(total.get("energy_j"), 1) + (f" ({esc(method)})" if method else "")),
        ("joules per output token", cell(total.get("joules_per_output_token"), 4)),
        ("output tokens per joule", cell(total.get("output_tokens_per_joule"), 2)),
        ("mean power (W)", cell(power.get("mean"), 1)),
        ("peak power (W)", cell(power.get("peak"), 1)),
    ]
    out = ["<h2>GPU</h2>", table_html(["quantity", "all GPUs"], [[esc(k), v] for k, v in rows])]
    gpus = [g for g in tele.get("gpus") or [] if isinstance(g, dict)]
    if len(gpus) > 1:
        out.append(table_html(["GPU", "energy (J)", "mean power (W)", "peak power (W)"], [
            [esc(f"{g.get('index', '?')} {g.get('name') or ''}".strip()), cell(g.get("energy_j"), 1),
             cell((g.get("power_w") or {}).get("mean"), 1), cell((g.get("power_w") or {}).get("peak"), 1)]
            for g in gpus
        ]))
    covered, window = tele.get("covered_s"), tele.get("window_s")
    if isinstance(covered, int | float) and isinstance(window, int | float) and covered < 0.99 * window:
        out.append(f"<p class='note'>The samples cover {cell(float(covered), 1)} s of the "
                   f"{cell(float(window), 1)} s window; energy covers only that part.</p>")
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
            figure_html("gpu_power", chart, "Sampled through NVML."), "</div>"]


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
        mean_tps = (report.get("results") or {}).get("output_tokens_per_s")
        body += run_figures(RunData.of(records, _slo(report), float(sample_step), mean_tps))
    else:
        body.append("<p class='note'>No request records (requests.jsonl) were available: plots omitted.</p>")
    body += _server_figures(report)
    body += _gpu_figures(report)
    body += fleet_html(report)
    body.append(
        "<details><summary>Settings</summary><pre>"
        + esc(json.dumps(s, indent=2, sort_keys=True, default=str)) + "</pre></details>"
    )
    return page_html(title, "\n".join(body))


#: Plots of longer runs are drawn from an even sample of this many requests, so that the page (and
#: the memory to build it) stays bounded; the page says so.
MAX_PLOTTED_REQUESTS = 20_000


def _plot_records(jsonl: Path) -> tuple[list[RequestRecord], int]:
    """The records to plot and k: all of them (k = 1), or every k-th one above MAX_PLOTTED_REQUESTS."""
    with jsonl.open("rb") as f:
        total = sum(1 for _ in f)
    step = max(1, -(-total // MAX_PLOTTED_REQUESTS))
    if step == 1:
        return [_lean(r) for r in read_records(jsonl)], 1
    return [_lean(rec) for i, rec in enumerate(iter_records(jsonl)) if i % step == 0], step


def _lean(rec: RequestRecord) -> RequestRecord:
    """The record with its chunk times and token counts as flat arrays (8 and 4 bytes a value instead of
    a Python int and a list slot each: 20,000 plotted records of 16 chunks take ~12 MB less). The
    figures only read them (len, slices, numpy)."""
    rec.chunk_ns = array("q", rec.chunk_ns)  # type: ignore[assignment]
    rec.chunk_tokens = array("i", rec.chunk_tokens)  # type: ignore[assignment]
    return rec


def write_run_html(out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` from ``report.json`` and (when present) ``requests.jsonl``.

    Raises :class:`loadgen.errors.ReportError` when ``report.json`` is missing or unreadable.
    """
    report = load_json(out_dir / "report.json")
    jsonl = out_dir / "requests.jsonl"
    records, step = _plot_records(jsonl) if jsonl.is_file() else (None, 1)
    path = out_dir / "report.html"
    write_text(path, render_run_html(report, records, step))
    return path


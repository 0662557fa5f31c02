"""HTML reports and the SVG plotting module, on hand-built records and sweeps (no server, no browser)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from loadgen.metrics import latency as metrics
from loadgen.records import RecordWriter, RequestRecord
from loadgen.report.html import (
    RUN_FIGURES,
    SWEEP_FIGURES,
    pareto_frontier,
    render_run_html,
    render_sweep_html,
    write_run_html,
    write_sweep_html,
)
from loadgen.report.html.svgplot import Axis, Chart, RefLine, Series, cdf, fmt_num, linear_ticks, log_ticks

MS = 1_000_000
URL = "http://127.0.0.1:8123"
EVIL = "<script>alert('x')</script>"


def _records(n: int = 40, failed: int = 3) -> list[RequestRecord]:
    """Requests every 100 ms; TTFT 50 ms + 1 ms per index, then 10 tokens 10 ms apart; the last
    ``failed`` end in an HTTP 500 after 5 ms."""
    out = []
    for i in range(n):
        sched = i * 100 * MS
        sent = sched + 200_000
        if i >= n - failed:
            out.append(RequestRecord(index=i, sample=i, query=i, scheduled_ns=sched, sent_ns=sent,
                                     end_ns=sent + 5 * MS, status=500, error_class="http",
                                     error=f"500 from {EVIL}"))
            continue
        first = sent + (50 + i) * MS
        chunks = [first + k * 10 * MS for k in range(10)]
        out.append(RequestRecord(index=i, sample=i, query=i, scheduled_ns=sched, sent_ns=sent,
                                 end_ns=chunks[-1] + MS, first_token_ns=first, chunk_ns=chunks,
                                 chunk_tokens=[1] * 10, input_tokens=16, output_tokens=10,
                                 tokens_source="usage", status=200))
    return out


def _report(records: list[RequestRecord], model: str = "tiny-model", **extra) -> dict:
    slo = metrics.Slo(ttft_ms=80.0, tpot_ms=50.0)
    return {
        "schema_version": 1, "run_id": "abc123", "loadgen_version": "0.1.0",
        "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:05+00:00",
        "settings": {"scenario": "server", "qps": 10.0, "model": model, "url": URL, "duration_s": 4.0,
                     "num_requests": 40, "seed": 0, "slo": {"ttft_ms": 80.0, "tpot_ms": 50.0}},
        "server": {"url": URL, "model": model},
        "results": metrics.summarize(records, slo=slo),
        "validity": {"valid": False, "reasons": [f"TTFT p99 too high for {EVIL}"]},
        "client": {"issue_delay_ms": {"p50": 0.2, "p99": 0.2, "max": 0.2},
                   "loop_lag_ms": {"p50": 0.01, "p99": 0.02, "max": 0.03}, "cpu_cores": 0.1,
                   "client_limited": False, "reasons": []},
        **extra,
    }


def _figures(html: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"<figure data-plot='([^']+)' data-points='(\d+)'", html)}


def _external_refs(html: str, allowed: str) -> list[str]:
    text = html.replace(allowed, "")
    return re.findall(r"https?://[^\s'\"<]*", text) + re.findall(r"(?:src|href)=['\"](?!#)[a-z]+:", text)


# ---- run page ------------------------------------------------------------------------------------------


def test_run_page_has_every_figure_with_data():
    records = _records()
    html = render_run_html(_report(records), records)
    figs = _figures(html)
    for name in RUN_FIGURES:
        assert figs.get(name, 0) > 0, (name, figs)
    completed, failed = 37, 3
    assert figs["ttft_cdf"] == 2 * completed  # from sent and from scheduled, one point per request
    assert figs["ttft_vs_time"] == completed + failed  # failures drawn at their time to error
    assert figs["itl_cdf"] == completed * 9 + completed  # 9 gaps per request + one TPOT per request
    # absent sections: no figure and no crash
    assert not {"server_queue", "server_kv_cache", "gpu_power"} & set(figs)
    assert "No server /metrics samples" in html


def test_run_page_header_verdict_and_tables():
    records = _records()
    report = _report(records)
    report["client"]["client_limited"] = True
    report["client"]["reasons"] = ["issue delay p99 4 ms > 1 ms"]
    html = render_run_html(report, records)
    assert "INVALID" in html and "CLIENT-LIMITED" in html and "issue delay p99 4 ms" in html
    assert "class &#x27;http&#x27;" not in html and "class http" in html  # errors by class
    assert "HTTP 500" in html
    # 37 completed requests with TTFT 50..86 ms: the table shows the numbers metrics computed
    assert f"{report['results']['ttft_ms']['p50']:,.2f}" in html


def test_optional_server_and_gpu_sections_are_drawn_when_present():
    records = _records()
    samples = [{"t_s": float(t), "vllm:num_requests_waiting": t % 3, "vllm:num_requests_running": 2,
                "vllm:kv_cache_usage_perc": 0.1 * t} for t in range(6)]
    samples.append({"t_s": 6.0, "vllm:num_requests_waiting": None})  # a failed gauge read
    report = _report(records, server_metrics={"samples": samples},
                     telemetry={"samples": [{"t_s": t, "gpus": [{"index": 0, "power_w": 250.0 + t},
                                                                 {"index": 1, "power_w": 200.0}]}
                                            for t in range(4)]})
    figs = _figures(render_run_html(report, records))
    assert figs["server_queue"] == 12 and figs["server_kv_cache"] == 6 and figs["gpu_power"] == 8


@pytest.mark.parametrize("section", [None, {}, {"samples": []}, {"samples": [{"t_s": 1}]}, {"note": "404"}])
def test_server_metrics_shapes_without_data_do_not_break_the_page(section):
    records = _records()
    html = render_run_html(_report(records, server_metrics=section, telemetry={"samples": "bad"}), records)
    assert set(RUN_FIGURES) <= set(_figures(html))
    assert "server_queue" not in _figures(html)


def test_without_records_the_page_has_tables_and_no_plots():
    html = render_run_html(_report(_records()), None)
    assert _figures(html) == {}
    assert "requests.jsonl" in html and "Latency (milliseconds)" in html


def test_strings_from_the_report_are_escaped_and_nothing_is_fetched():
    records = _records()
    html = render_run_html(_report(records, model=EVIL), records)
    assert EVIL not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # the page's own measuring script, inline
    assert "<script src" not in html and "<link" not in html and "@import" not in html
    assert _external_refs(html, URL) == []


def test_write_run_html_reads_the_run_folder(tmp_path):
    records = _records()
    (tmp_path / "report.json").write_text(json.dumps(_report(records)))
    with RecordWriter(tmp_path / "requests.jsonl") as w:
        w.write_many(records)
    path = write_run_html(tmp_path)
    assert path == tmp_path / "report.html"
    assert set(RUN_FIGURES) <= set(_figures(path.read_text()))


# ---- sweep page ----------------------------------------------------------------------------------------


def _sweep(server_args: bool = False) -> tuple[dict, dict[int, dict]]:
    """Five points: throughput saturates at 400 tok/s from point 2 while TTFT p99 climbs 10×."""
    tput = [100.0, 200.0, 400.0, 410.0, 405.0]
    ttft99 = [30.0, 35.0, 60.0, 300.0, 900.0]
    points = []
    for i, (t, l99) in enumerate(zip(tput, ttft99, strict=True)):
        values = {"server_args": f"--max-num-seqs={2 ** (i + 2)}"} if server_args else {"concurrency": 2 ** i}
        points.append({
            "index": i, "values": values, "seed": 0, "out_dir": f"points/{i:03d}", "status": "done",
            "error": None,
            "row": {"offered_qps": None if not server_args else 8.0, "concurrency": 2 ** i,
                    "requests_per_s": t / 100, "output_tokens_per_s": t,
                    "goodput_requests_per_s": t / 100 * (1 if l99 < 100 else 0.2),
                    "ttft_p50_ms": l99 / 2, "ttft_p99_ms": l99, "itl_p50_ms": 10.0, "itl_p99_ms": 12.0,
                    "tpot_p50_ms": 10.0 + i, "tpot_p99_ms": 12.0 + 3 * i,
                    "e2e_p50_ms": 500.0, "e2e_p99_ms": 900.0, "error_rate": 0.0, "valid": l99 < 100,
                    "client_limited": False, "joules_per_output_token": 0.5, "server_args": None},
        })
    points.append({"index": 5, "values": {"concurrency": 32}, "seed": 0, "out_dir": "points/005",
                   "status": "failed", "error": f"server died {EVIL}", "row": None})
    sweep = {"schema_version": 1, "kind": "sweep", "scenario": "concurrency",
             "parameters": ["server_args" if server_args else "concurrency"],
             "slo": {"ttft_ms": 100.0, "tpot_ms": 20.0}, "points": points,
             "knee": {"index": 2, "reason": "throughput gain < 5 % after this point"}}
    return sweep, {0: {"server": {"url": URL, "model": "tiny-model"}}}


@pytest.mark.parametrize("server_args", [False, True])
def test_sweep_page_has_every_figure_with_data(server_args):
    sweep, reports = _sweep(server_args)
    html = render_sweep_html(sweep, reports)
    figs = _figures(html)
    for name in SWEEP_FIGURES:
        assert figs.get(name, 0) > 0, (name, figs)
    assert figs["ttft_vs_load"] == 10  # p50 and p99 of the 5 done points; the failed one is left out
    assert figs["pareto"] == 5
    assert "(log scale)" in html  # TTFT p99 spans 30× across the points
    assert "knee" in html and "throughput gain &lt; 5 % after this point" in html
    assert f"server died {EVIL}" not in html and "server died &lt;script&gt;" in html
    assert _external_refs(html, URL) == []
    if server_args:
        assert "--max-num-seqs=16" in html  # points labelled by their server arguments


def test_pareto_frontier_keeps_only_undominated_points():
    # (throughput, latency): B dominates A; C and D trade off; E is worse than D on both
    frontier = pareto_frontier([100, 200, 300, 400, 350], [50, 40, 60, 90, 95])
    assert frontier == [False, True, True, True, False]
    assert pareto_frontier([1.0, float("nan")], [1.0, 1.0]) == [True, False]


def test_sweep_table_marks_knee_and_frontier_rows():
    sweep, reports = _sweep()
    html = render_sweep_html(sweep, reports)
    knee_row = re.search(r"<tr class='knee'>(.*?)</tr>", html)
    assert knee_row and "knee, frontier" in knee_row.group(1)
    assert html.count("<tr class='bad'>") == 1


def test_sweep_with_no_done_point_still_renders():
    sweep, _ = _sweep()
    for p in sweep["points"]:
        p["status"], p["row"] = "interrupted", None
    sweep["knee"] = None
    html = render_sweep_html(sweep, {})
    assert _figures(html) == {} and "No point finished" in html


def test_write_sweep_html_reads_sweep_json_and_point_reports(tmp_path):
    sweep, _ = _sweep()
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    (tmp_path / "points" / "000").mkdir(parents=True)
    report = {"server": {"model": "m-from-report"}}
    (tmp_path / "points" / "000" / "report.json").write_text(json.dumps(report))
    path = write_sweep_html(tmp_path)
    html = path.read_text()
    assert path.name == "sweep.html" and "m-from-report" in html
    assert set(SWEEP_FIGURES) <= set(_figures(html))


# ---- svgplot --------------------------------------------------------------------------------------------


def test_nice_ticks():
    assert linear_ticks(0, 97) == [0, 20, 40, 60, 80]
    assert linear_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert log_ticks(1, 1000) == [1, 10, 100, 1000]
    assert log_ticks(20, 900) == [20, 50, 100, 200, 500]
    assert log_ticks(50.1, 52.9) == [50.5, 51, 51.5, 52, 52.5]  # narrower than one mantissa step
    assert [fmt_num(v) for v in (0, 0.002, 2.5, 1500, 12000, 3_500_000)] == [
        "0", "0.002", "2.5", "1,500", "12k", "3.5M"]


def test_cdf_values_and_thinning():
    x, y = cdf([3.0, 1.0, 2.0, float("nan")])
    assert x.tolist() == [1.0, 2.0, 3.0]
    assert np.allclose(y, [100 / 3, 200 / 3, 100])
    values = np.arange(100_000, dtype=float)
    x, y = cdf(values, max_points=1000)
    assert x.size <= 1000 and x[-1] == 99_999 and y[-1] == 100
    assert (x >= 99_000).sum() >= 150  # the top 1 % keeps about a fifth of the points


def test_chart_counts_only_drawable_points_and_places_reference_lines():
    chart = Chart("t", Axis("x (ms)", log=True), Axis("y (%)", lo=0, hi=100))
    chart.add(Series("a", [0.0, 1.0, 10.0, float("nan")], [1, 2, 3, 4]))  # 0 and NaN cannot be drawn on log
    chart.vlines.append(RefLine(5.0, "SLO 5 ms"))
    chart.vlines.append(RefLine(1e6, "far away"))
    svg = chart.svg()
    assert chart.points == 2
    assert "data-n='2'" in svg and "SLO 5 ms" in svg and "far away (off the axis)" in svg
    assert "x (ms)  (log scale)" in svg


def test_empty_chart_says_no_data():
    chart = Chart("empty", Axis("x"), Axis("y"))
    chart.add(Series("nothing", [], []))
    assert chart.points == 0 and "no data" in chart.svg()


def test_outputs_do_not_depend_on_call_order(tmp_path: Path):
    records = _records()
    report = _report(records)
    assert render_run_html(report, records) == render_run_html(report, records)

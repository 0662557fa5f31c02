"""``mlperf_log_summary.txt`` in LoadGen's layout, rendered from a
:class:`loadgen.metrics.mlperf_result.MlperfResult`
(every data line splits on its first ``:``), with loadgen's own checks and notes beside LoadGen's."""

from __future__ import annotations

from collections.abc import Sequence

from loadgen.metrics.mlperf_result import LatencyStats, MlperfResult

_BANNER = "================================================"


def _f2(x: float | None) -> str:
    """LoadGen's DoubleToString: two decimals."""
    return "n/a" if x is None else f"{x:.2f}"


def _stat_lines(stats: LatencyStats | None, label: str) -> list[str]:
    """LoadGen's Min/Max/Mean/percentile lines; ``label`` is "" (latency), "First Token", ...."""
    if stats is None:
        return []
    lower = label.lower() + " " if label else ""
    pad = label + " " if label else ""
    lines = [
        f"Min {pad}latency (ns)                : {stats.min}",
        f"Max {pad}latency (ns)                : {stats.max}",
        f"Mean {pad}latency (ns)               : {stats.mean}",
    ]
    lines += [f"{p * 100:.2f} percentile {lower}latency (ns)   : {v}" for p, v in stats.percentiles.items()]
    return lines


def _tpot_lines(stats: LatencyStats | None) -> list[str]:
    if stats is None:
        return []
    lines = [
        f"Min Time to Output Token (ns)                : {stats.min}",
        f"Max Time to Output Token (ns)                : {stats.max}",
        f"Mean Time to Output Token (ns)               : {stats.mean}",
    ]
    lines += [
        f"{p * 100:.2f} percentile time to output token (ns)   : {v}" for p, v in stats.percentiles.items()
    ]
    return lines


def _headline(r: MlperfResult) -> list[str]:
    scen = r.params.scenario
    pct = f"{r.params.percentile * 100:.0f}th"
    lines: list[str] = []
    if scen in ("SingleStream", "MultiStream"):
        lines.append(f"{pct} percentile latency (ns) : {r.target_latency_ns}")
        if r.token_latencies:
            lines.append(f"{pct} first token percentile latency (ns) : {r.target_ttft_ns}")
    elif scen == "Server" and r.token_latencies:
        lines.append(f"Completed samples per second    : {_f2(r.samples_per_s)}")
        lines.append(f"Completed tokens per second: {_f2(r.tokens_per_s)}")
    elif scen == "Server":  # LoadGen's headline without token latencies is the scheduled rate
        lines.append(f"Scheduled samples per second : {_f2(r.scheduled_samples_per_s)}")
    else:
        lines.append(f"Samples per second: {_f2(r.samples_per_s)}")
        if r.token_latencies:
            lines.append(f"Tokens per second: {_f2(r.tokens_per_s)}")
    return lines


def _additional(r: MlperfResult) -> list[str]:
    scen = r.params.scenario
    lines: list[str] = []
    if scen == "SingleStream":
        lines += [
            f"QPS w/ loadgen overhead         : {_f2(r.samples_per_s)}",
            f"QPS w/o loadgen overhead        : {_f2(r.samples_per_s_without_overhead)}",
            "",
        ]
    elif scen == "Server" and r.token_latencies:
        lines += [f"Scheduled samples per second : {_f2(r.scheduled_samples_per_s)}", ""]
    elif scen == "Server":
        lines += [f"Completed samples per second    : {_f2(r.samples_per_s)}", ""]
    if scen == "MultiStream":
        lines.append("Per-query latency:  ")
        lines += _stat_lines(r.query_latency_ns, "")
    else:
        lines += _stat_lines(r.latency_ns, "")
    if r.token_latencies:
        lines.append("")
        if scen == "SingleStream":
            lines += [
                f"TPS w/ loadgen overhead         : {_f2(r.tokens_per_s)}",
                f"TPS w/o loadgen overhead        : {_f2(r.tokens_per_s_without_overhead)}",
            ]
        elif scen == "Server":
            lines.append(f"Completed tokens per second                 : {_f2(r.tokens_per_s)}")
        if scen != "Offline":
            lines += _stat_lines(r.ttft_ns, "First Token")
            lines.append("")
            lines += _tpot_lines(r.tpot_ns)
    return lines


def _parameters(r: MlperfResult) -> list[str]:
    p = r.params
    lines = [
        f"samples_per_query : {p.samples_per_query if p.scenario != 'Offline' else r.samples}",
        f"target_qps : {p.target_qps:g}" if p.target_qps is not None else "target_qps : n/a",
    ]
    if r.token_latencies:
        lines += [
            f"ttft_latency (ns): {p.ttft_bound_ns if p.ttft_bound_ns is not None else 'none'}",
            f"tpot_latency (ns): {p.tpot_bound_ns if p.tpot_bound_ns is not None else 'none'}",
        ]
    else:
        lines.append(f"target_latency (ns): {p.latency_bound_ns if p.latency_bound_ns is not None else 0}")
    lines += [
        f"target_latency_percentile : {p.percentile:g}",
        f"min_duration (ms): {p.min_duration_ns // 10**6}",
        f"min_query_count : {p.min_query_count}",
        f"early_stopping_confidence : {p.early_stopping_confidence:g}",
    ]
    return lines


def render_summary(r: MlperfResult, extra_stats: Sequence[str] = ()) -> str:
    """``mlperf_log_summary.txt`` in LoadGen's layout; every data line splits on its first ``:``."""
    yes = {True: "Yes", False: "NO"}
    lines = [_BANNER, "MLPerf Results Summary", _BANNER]
    lines += [
        f"SUT name : {r.params.sut_name}",
        f"Scenario : {r.params.scenario}",
        "Mode     : PerformanceOnly",
    ]
    lines += _headline(r)
    lines.append(f"Result is : {'VALID' if r.valid else 'INVALID'}")
    if r.params.scenario == "Server":
        lines.append(
            f"  Performance constraints satisfied : {yes[r.checks.get('performance_constraints', False)]}"
        )
    lines += [
        f"  Min duration satisfied : {yes[r.checks.get('min_duration', False)]}",
        f"  Min queries satisfied : {yes[r.checks.get('min_queries', False)]}",
        f"  Early stopping satisfied: {yes[r.checks.get('early_stopping', False)]}",
        # beyond LoadGen: failed requests and a saturated client also decide validity
        f"  All requests completed : {yes[r.checks.get('requests_ok', False)]}",
        f"  Client not the bottleneck : {yes[r.checks.get('client_not_limited', False)]}",
    ]
    if "class_slos" in r.checks:  # a traffic mix: each class against its own SLO
        lines.append(f"  Every class met its SLO : {yes[r.checks['class_slos']]}")
    if "sustained" in r.checks:
        lines.append(f"  Offered load sustained : {yes[r.checks['sustained']]}")
    for key, label in (("no_retries", "No request retried"), ("ran_to_completion", "Ran to completion")):
        if not r.checks.get(key, True):
            lines.append(f"  {label} : NO")
    if r.reasons:
        lines.append("Recommendations:")
        lines += [f" * {reason}" for reason in r.reasons]
    lines += [f"Note : {note}" for note in r.notes]
    for e in r.early_stopping:
        title = {"ttft": "TTFT ", "tpot": "TPOT "}.get(e.metric, "")
        lines.append(f"{title}Early Stopping Result:")
        lines += e.text.split("\n")
    lines += ["", _BANNER, "Additional Stats", _BANNER]
    lines += _additional(r)
    if extra_stats:
        lines += ["", *extra_stats]
    lines += ["", _BANNER, "Test Parameters Used", _BANNER]
    lines += _parameters(r)
    return "\n".join(lines) + "\n"

"""MLPerf LoadGen's result rules, applied to loadgen's request records (see MLPERF.md).

Everything here follows LoadGen (``loadgen/results.cc``, ``early_stopping.cc``) exactly, in integer
nanoseconds:

* percentile = ``sorted[int(n * p)]`` (0-based, no interpolation), grid 50/90/95/97/99/99.9; means are
  integer ns (floor of sum / n);
* latency of a sample = ``end − base``; base = the scheduled time (Server; SingleStream/MultiStream,
  where the scheduled time of a closed-loop record *is* its issue time), or the run start (Offline);
  TTFT = ``first_token − base``; TPOT = ``(latency − TTFT) // (n_tokens − 1)`` with ``n_tokens`` =
  ``output_tokens`` (usage or tokenizer; every token, the first included); ``n_tokens < 2`` is an error;
* validity = min duration ∧ min query count ∧ latency constraint ∧ early stopping.

Only LoadGen's own statistics (:func:`measure`) and checks (:func:`loadgen_checks`) are here. loadgen's
checks beyond LoadGen are in :mod:`loadgen.metrics.beyond`; :func:`loadgen.metrics.validity.evaluate`
runs both and decides the one verdict. The result types are in :mod:`loadgen.metrics.mlperf_result`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from loadgen.metrics.early_stopping import early_stopping_h, largest_t, percentile
from loadgen.metrics.mlperf_result import (
    SCENARIOS,
    EarlyStopping,
    LatencyStats,
    MlperfParams,
    MlperfResult,
    Samples,
    ScenarioName,
)
from loadgen.records import RequestRecord

__all__ = ["SCENARIOS", "LatencyStats", "MlperfParams", "MlperfResult", "ScenarioName", "loadgen_checks",
           "measure", "token_mode"]

_NS_PER_S = 1e9


# ---- evaluation -------------------------------------------------------------------------------------


def _seconds(ns: int | float) -> float:
    return ns / _NS_PER_S


def _early_stopping_server(
    name: str, values: npt.NDArray[np.int64], bound: int | None, queries: int, *, p: float, confidence: float
) -> EarlyStopping:
    t = int((values > bound).sum()) if bound is not None else 0
    h = early_stopping_h(t, p, confidence)
    if queries >= h + t:
        return EarlyStopping(name, True, queries, t, h + t, None, " * Run successful.")
    more = h + t - queries
    text = (
        f" * Run unsuccessful.\n * Processed {queries} queries.\n"
        f" * Would need to run at least {more} more queries,\n"
        " with the run being successful if every additional\n query were under latency."
    )
    return EarlyStopping(name, False, queries, t, h + t, None, text)


def _early_stopping_estimate(
    name: str, values: npt.NDArray[np.int64], p: float, confidence: float
) -> EarlyStopping:
    """SingleStream/MultiStream: ``sorted[n − t]`` for the largest t ≥ 1 with n ≥ h(t) + t."""
    n = int(values.size)
    need = early_stopping_h(1, p, confidence) + 1
    t = largest_t(n, p, confidence)
    if t == 0:
        text = (
            f" * Only processed {n} queries.\n * Need to process at least {need} queries for early stopping."
        )
        return EarlyStopping(name, False, n, None, need, None, text)
    estimate = int(np.sort(values)[n - t])
    text = (
        f" * Processed at least {need} queries ({n}).\n * Would discard {t - 1} highest latency queries.\n"
        f" * Early stopping {p * 100:.0f}th percentile estimate: {estimate}"
    )
    return EarlyStopping(name, True, n, None, need, estimate, text)


def _samples(done: list[RequestRecord], scenario: str, token_mode: bool) -> Samples:
    n = len(done)
    base = (np.zeros(n, dtype=np.int64) if scenario == "Offline"
            else np.fromiter((r.scheduled_ns for r in done), np.int64, n))
    end = np.fromiter((r.end_ns for r in done), np.int64, n)
    latency = end - base
    out = np.fromiter((r.output_tokens for r in done), np.int64, n)
    tokens = int(out.sum())
    if not token_mode:
        empty = np.empty(0, dtype=np.int64)
        return Samples(latency, empty, empty, tokens, 0)
    # columns, not per-record Python ints: a long run's records are many (see loadgen.metrics.rows)
    first = np.fromiter((-1 if r.first_token_ns is None else r.first_token_ns for r in done), np.int64, n)
    has = first >= 0
    # a pooling request in a mix (asked for no tokens: embeddings beside chat) has none to judge
    asked = np.fromiter((r.requested_output_tokens is not None for r in done), np.bool_, n)
    ttft = (first - base)[has]
    decoded = has & (out >= 2)
    errors = int((~has & asked).sum()) + int((has & (out < 2)).sum())
    tpot = (latency - (first - base))[decoded] // (out[decoded] - 1)
    return Samples(latency, ttft, tpot, tokens, errors)


def _query_latencies(records: list[RequestRecord]) -> npt.NDArray[np.int64]:
    """MultiStream: per query (records sharing ``query``) with every sample completed,
    ``max(end) − min(scheduled)``."""
    groups: dict[int, list[RequestRecord]] = {}
    for r in records:
        groups.setdefault(r.query, []).append(r)
    lat = [
        max(r.end_ns for r in rs) - min(r.scheduled_ns for r in rs)
        for rs in groups.values()
        if all(r.ok for r in rs)
    ]
    return np.array(lat, dtype=np.int64)


def _ended_early(result: MlperfResult) -> str | None:
    """The advice for a minimum missed because the run did not run to its end; None if it did."""
    if result.interrupted or result.stopped_early is not None:
        return "The run ended early; see why below"
    return None


def _min_duration(result: MlperfResult, measured: list[RequestRecord], done_latency_max: int) -> None:
    params = result.params
    scen = params.scenario
    if scen == "Server" and not params.closed_loop:
        checked = max(r.scheduled_ns for r in measured)
        what = "the last query was scheduled at"
    elif scen == "Offline":
        checked = done_latency_max
        what = "the slowest sample finished at"
    elif scen == "Server":  # a closed loop: a query's scheduled time is its issue time
        checked = max(r.scheduled_ns for r in measured)
        what = "the last query was issued at"
    else:
        checked = max(r.sent_ns for r in measured)
        what = "the last query was issued at"
    result.duration_checked_ns = checked
    ok = checked >= params.min_duration_ns
    result.checks["min_duration"] = ok
    if ok:
        return
    want = _seconds(params.min_duration_ns)
    fix = _ended_early(result)
    if fix is None and scen == "Offline":
        # Offline sends exactly min_query_count samples at once; the duration only checks the slowest.
        # Throughput grows with the sample count until the server is saturated, so the scaled count
        # is a floor when it was not.
        need = math.ceil(result.samples * params.min_duration_ns / max(checked, 1) * 1.1)
        fix = (
            f"Offline issues exactly --num-requests samples, all at once, and this many took "
            f"{_seconds(checked):.3f} s: raise --num-requests to at least {need} (the count scaled to "
            f"{want:g} s, +10%)"
        )
        ttft = result.ttft_ns
        if ttft is not None and ttft.max < 2 * ttft.min:
            # no sample waited for another's slot: more samples would have run alongside, so the
            # count that lasts the duration is higher than the scaled one by an unknown factor
            fix += (
                f"; but every sample's first token came within {_seconds(ttft.max):.3f} s, so all "
                f"{result.samples} ran at once and the server was not saturated: {need} is a floor, "
                "run it and follow this advice again"
            )
    elif fix is None:
        fix = "The records end before it, so the run was cut short (killed or crashed?); rerun it to its end"
    result.reasons.append(f"Min duration not met: {what} {_seconds(checked):.3f} s, below {want:g} s. {fix}.")


def _min_queries(result: MlperfResult) -> None:
    params = result.params
    counted = result.samples if params.scenario == "Offline" else result.queries
    result.checks["min_queries"] = counted >= params.min_query_count
    if result.checks["min_queries"]:
        return
    what = "samples" if params.scenario == "Offline" else "queries"
    fix = _ended_early(result) or "The run was cut short (killed or crashed?); rerun it to its end"
    result.reasons.append(
        f"Min queries not met: {counted} {what} of min_query_count {params.min_query_count} "
        f"(--num-requests). {fix}."
    )


def _throughput(result: MlperfResult, measured: list[RequestRecord], s: Samples) -> None:
    n = s.latency.size
    scen = result.params.scenario
    if n == 0:
        return
    if scen == "Server":
        last = max(measured, key=lambda r: (r.scheduled_ns, r.index))
        done_s = _seconds(last.end_ns)
        sched_s = _seconds(last.scheduled_ns)
        if done_s > 0:
            result.samples_per_s = (n - 1) / done_s
            result.tokens_per_s = s.tokens / done_s
        if sched_s > 0:
            result.scheduled_samples_per_s = (n - 1) / sched_s
    elif scen == "Offline":
        max_s = _seconds(int(s.latency.max()))
        if max_s > 0:
            result.samples_per_s = n / max_s
            result.tokens_per_s = s.tokens / max_s
    elif scen == "SingleStream":
        issued_s = _seconds(max(r.sent_ns for r in measured))
        mean_s = _seconds(int(s.latency.sum()) // n)
        if issued_s > 0:
            result.samples_per_s = (n - 1) / issued_s
            result.tokens_per_s = s.tokens / issued_s
        if mean_s > 0:
            result.samples_per_s_without_overhead = 1 / mean_s
            result.tokens_per_s_without_overhead = s.tokens / (mean_s * n)


def _constraints(result: MlperfResult, s: Samples) -> None:
    """Server: p-th percentile of each bounded metric ≤ its bound (equality passes)."""
    params = result.params
    ok = True
    if params.scenario == "Server":
        pct = f"p{params.percentile * 100:g}"
        checks: list[tuple[str, int | None, int | None]] = (
            [
                ("TTFT", result.target_ttft_ns, params.ttft_bound_ns),
                ("TPOT", result.target_tpot_ns, params.tpot_bound_ns),
            ]
            if result.token_latencies
            else [("Latency", result.target_latency_ns, params.latency_bound_ns)]
        )
        for name, value, bound in checks:
            if bound is None or value is None or value <= bound:
                continue
            ok = False
            result.reasons.append(
                f"{name} constraint not met: {pct} {name} {value} ns > bound {bound} ns. "
                f"{_reduce_load(params)} to improve latency."
            )
        if all(b is None for _, _, b in checks):
            result.notes.append("No latency bound was given, so the latency constraint was not checked.")
    elif any(b is not None for b in (params.ttft_bound_ns, params.tpot_bound_ns, params.latency_bound_ns)):
        result.notes.append(
            f"The latency bounds given are not part of {params.scenario}'s verdict: in MLPerf only Server "
            "has a latency constraint (goodput reports the share of requests within them)."
        )
    result.checks["performance_constraints"] = ok and s.latency.size > 0


def _early_stop(result: MlperfResult, s: Samples, query_lat: npt.NDArray[np.int64]) -> None:
    params = result.params
    p, conf = params.percentile, params.early_stopping_confidence
    scen = params.scenario
    es: list[EarlyStopping] = []
    has_bound = False
    if scen == "Server":
        queries = int(s.latency.size)
        bounded = (
            [("ttft", s.ttft, params.ttft_bound_ns), ("tpot", s.tpot, params.tpot_bound_ns)]
            if result.token_latencies
            else [("latency", s.latency, params.latency_bound_ns)]
        )
        bounded = [b for b in bounded if b[2] is not None]
        has_bound = bool(bounded)
        bounded = bounded or [("latency", s.latency, None)]
        es = [
            _early_stopping_server(name, v, bound, queries, p=p, confidence=conf)
            for name, v, bound in bounded
        ]
    elif scen == "MultiStream":
        es = [_early_stopping_estimate("query_latency", query_lat, p, conf)]
    elif scen == "SingleStream":
        if result.token_latencies:
            es = [
                _early_stopping_estimate("ttft", s.ttft, p, conf),
                _early_stopping_estimate("tpot", s.tpot, p, conf),
            ]
        else:
            es = [_early_stopping_estimate("latency", s.latency, p, conf)]
    result.early_stopping = es
    result.checks["early_stopping"] = all(e.passed for e in es) and s.latency.size > 0
    for e in es:
        if e.passed or e.queries_needed is None:
            continue
        label = e.metric.upper() if e.metric in ("ttft", "tpot") else e.metric.replace("_", " ")
        more = e.queries_needed - e.queries
        run_more = f"--num-requests {e.queries_needed} or more"
        if params.min_query_count >= e.queries_needed and (e.overlatency or 0) / max(e.queries, 1) <= 1 - p:
            # the run's own count would have been enough: it did not get there
            how = "ended early; see why below" if _ended_early(result) else "was cut short"
            result.reasons.append(
                f"{label} early stopping not met: only {e.queries} queries; at p{p * 100:g} early stopping "
                f"needs at least {e.queries_needed}, which --num-requests {params.min_query_count} would "
                f"have given, but the run {how}."
            )
        elif e.overlatency is not None and e.overlatency == 0:
            over = "none over the bound" if has_bound else "no latency bound was given"
            result.reasons.append(
                f"{label} early stopping not met: only {e.queries} queries ({over}); at p{p * 100:g} "
                f"early stopping needs at least {e.queries_needed}. Would need to run at least {more} more "
                f"queries ({run_more})."
            )
        elif e.overlatency is not None and e.overlatency / max(e.queries, 1) > 1 - p:
            # more queries cannot help: the share over the bound already exceeds what p allows
            result.reasons.append(
                f"{label} early stopping not met: {e.overlatency} of {e.queries} queries over the bound "
                f"({e.overlatency / e.queries:.1%}, more than the {(1 - p) * 100:g}% that p{p * 100:g} "
                f"allows). {_reduce_load(params)}."
            )
        elif e.overlatency is not None:
            result.reasons.append(
                f"{label} early stopping not met: {e.overlatency} of {e.queries} queries over the bound. "
                f"Would need to run at least {more} more queries ({run_more}), with the run being "
                "successful if every additional query were under latency."
            )
        else:
            result.reasons.append(
                f"{label} early stopping not met: only {e.queries} queries. "
                f"Would need to run at least {more} more queries ({run_more})."
            )


def _reduce_load(params: MlperfParams) -> str:
    """The advice that lowers the load of a Server-rules run."""
    if params.closed_loop:
        return "Reduce --concurrency"
    return "Reduce target QPS (--qps)"




def token_mode(params: MlperfParams, done: list[RequestRecord]) -> bool:
    """LoadGen's ``use_token_latencies``: as given, else yes when an LLM bound is given or any completed
    record carries a first-token time."""
    if params.use_token_latencies is not None:
        return params.use_token_latencies
    return (
        params.ttft_bound_ns is not None
        or params.tpot_bound_ns is not None
        or any(r.first_token_ns is not None for r in done)
    )


def measure(
    result: MlperfResult, measured: list[RequestRecord], done: list[RequestRecord]
) -> tuple[Samples, npt.NDArray[np.int64]]:
    """LoadGen's counts and latency statistics into ``result``; the per-sample arrays and (MultiStream)
    the per-query latencies, for the checks."""
    params = result.params
    scen = params.scenario
    result.samples = len(measured)
    result.samples_completed = len(done)
    result.samples_failed = len(measured) - len(done)
    if scen == "MultiStream":
        result.queries = len({r.query for r in measured})
    elif scen == "Offline":
        result.queries = 1 if measured else 0
    else:
        result.queries = len(measured)

    s = _samples(done, scen, result.token_latencies)
    result.token_errors = s.token_errors
    result.output_tokens_total = s.tokens
    query_lat = _query_latencies(measured) if scen == "MultiStream" else np.empty(0, dtype=np.int64)
    p = params.percentile
    result.latency_ns = LatencyStats.of(s.latency)
    result.query_latency_ns = LatencyStats.of(query_lat)
    result.ttft_ns = LatencyStats.of(s.ttft)
    result.tpot_ns = LatencyStats.of(s.tpot)
    headline = query_lat if scen == "MultiStream" else s.latency
    result.target_latency_ns = percentile(np.sort(headline), p) if headline.size else None
    result.target_ttft_ns = percentile(np.sort(s.ttft), p) if s.ttft.size else None
    result.target_tpot_ns = percentile(np.sort(s.tpot), p) if s.tpot.size else None
    return s, query_lat


def loadgen_checks(
    result: MlperfResult, measured: list[RequestRecord], s: Samples, query_lat: npt.NDArray[np.int64]
) -> None:
    """LoadGen's checks (latency constraint, min duration, min queries, early stopping) and its
    throughput, each failed check with its reason."""
    if not measured:
        result.checks = {
            k: False for k in ("performance_constraints", "min_duration", "min_queries", "early_stopping")
        }
        result.reasons.append("No request was issued.")
        return
    _constraints(result, s)
    _min_duration(result, measured, int(s.latency.max()) if s.latency.size else 0)
    _min_queries(result)
    _early_stop(result, s, query_lat)
    _throughput(result, measured, s)

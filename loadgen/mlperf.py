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

Beyond LoadGen (said so in the result's ``reasons``): any failed request makes the result INVALID
(LoadGen cannot lose a query; an HTTP client can), and so does a client that was the bottleneck
(``client_limited``), since then the offered load was not what the scenario asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from loadgen.metrics import percentile_key
from loadgen.records import RequestRecord

ScenarioName = Literal["SingleStream", "MultiStream", "Server", "Offline"]
SCENARIOS: tuple[str, ...] = ("SingleStream", "MultiStream", "Server", "Offline")

#: LoadGen's reported percentile grid (fractions).
MLPERF_PERCENTILES = (0.50, 0.90, 0.95, 0.97, 0.99, 0.999)
#: LoadGen's default ``min_duration`` (600 s), ns.
DEFAULT_MIN_DURATION_NS = 600 * 10**9
_NS_PER_S = 1e9
_BANNER = "================================================"


# ---- LoadGen's statistics ---------------------------------------------------------------------------


def percentile(sorted_values: Sequence[int] | npt.NDArray[Any], p: float) -> int:
    """LoadGen's percentile: ``sorted_values[int(n * p)]`` (p a fraction, 0-based, no interpolation),
    the index clamped to ``n − 1``. With n = 10, p = 0.9 gives the maximum. Raises ValueError when
    empty."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a fraction in [0, 1], not {p}")
    return int(sorted_values[min(int(n * p), n - 1)])


def _log_binom_cdf(t: int, n: int, q: float) -> float:
    """``log P[Binomial(n, q) ≤ t]``, in log space so n can be millions.

    ``log C(n, k)`` is the cumulative sum of ``log(n − j + 1) − log(j)`` (j = 1..k) anchored at
    ``math.lgamma``'s exact ``log C(n, t)``; the terms are combined with log-sum-exp.
    """
    if t >= n:
        return 0.0
    k = np.arange(1, t + 1, dtype=np.float64)
    log_c = np.concatenate(([0.0], np.cumsum(np.log(n - k + 1.0) - np.log(k))))
    # remove the cumulative rounding drift: the exact value at k = t comes from lgamma
    exact_t = math.lgamma(n + 1) - math.lgamma(t + 1) - math.lgamma(n - t + 1)
    if t > 0:
        log_c += (exact_t - log_c[-1]) * np.arange(t + 1, dtype=np.float64) / t
    ks = np.arange(t + 1, dtype=np.float64)
    terms = log_c + ks * math.log(q) + (n - ks) * math.log1p(-q)
    top = float(terms.max())
    return top + math.log(float(np.exp(terms - top).sum()))


def early_stopping_h(t: int, p: float, confidence: float = 0.99) -> int:
    """LoadGen's early-stopping bound: the smallest h ≥ 0 with
    ``P[Binomial(h + t, 1 − p) ≤ t] < 1 − confidence``.

    Read: after ``h + t`` queries of which ``t`` were over the latency bound, we are ``confidence``
    sure the true ``p``-quantile is within the bound. Check values: p = 0.99 → h(0) = 459,
    h(1) = 661; p = 0.90 → h(0) = 44, h(1) = 63. The CDF falls as h grows, so h is found by doubling
    then bisection.
    """
    if t < 0:
        raise ValueError(f"t must be ≥ 0, not {t}")
    if not 0.0 < p < 1.0 or not 0.0 < confidence < 1.0:
        raise ValueError("p and confidence must lie strictly between 0 and 1")
    q = 1.0 - p
    log_alpha = math.log1p(-confidence)

    def passes(h: int) -> bool:
        return _log_binom_cdf(t, h + t, q) < log_alpha

    # passes(0) is False (P[Bin(t, q) ≤ t] = 1). While the binomial's mean (h + t)·q is ≤ t its median is
    # ≤ t, so the CDF is ≥ 1/2 > 1 − confidence: h ≤ t·p/q cannot pass, and the search starts there.
    lo = max(0, math.floor(t * p / q) - 1) if confidence > 0.5 else 0
    step = max(1, lo // 8)
    hi = lo + step
    while not passes(hi):
        lo, step = hi, step * 2
        hi = lo + step
    while hi - lo > 1:  # invariant: not passes(lo), passes(hi)
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _largest_t(n: int, p: float, confidence: float) -> int:
    """The largest t ≥ 1 with ``n ≥ h(t) + t`` (0 if even t = 1 does not fit); h(t) + t grows with t."""
    if n < early_stopping_h(1, p, confidence) + 1:
        return 0
    # fits(lo), not fits(hi): h ≥ 1 so h(n + 1) + n + 1 > n; and h(t) + t > t / (1 − p) (see
    # early_stopping_h), so no t ≥ n·(1 − p) fits either.
    hi = min(n + 1, math.ceil(n * (1.0 - p)) + 1) if confidence > 0.5 else n + 1
    lo = 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if early_stopping_h(mid, p, confidence) + mid <= n:
            lo = mid
        else:
            hi = mid
    return lo


# ---- parameters and results -------------------------------------------------------------------------


@dataclass(frozen=True)
class MlperfParams:
    """What LoadGen's TestSettings would say for this run. Times are integer ns.

    ``ttft_bound_ns`` / ``tpot_bound_ns`` are the LLM latency constraint (p99 by default; None = no
    bound on that metric); ``latency_bound_ns`` is the plain latency constraint of a non-LLM Server run.
    ``target_latency_percentile`` None means LoadGen's default: 0.90 SingleStream, 0.99 otherwise.
    ``use_token_latencies`` None means: yes when an LLM bound is given or any completed record carries a
    first-token time.
    """

    scenario: ScenarioName
    target_qps: float | None = None
    ttft_bound_ns: int | None = None
    tpot_bound_ns: int | None = None
    latency_bound_ns: int | None = None
    min_duration_ns: int = DEFAULT_MIN_DURATION_NS
    min_query_count: int = 100
    target_latency_percentile: float | None = None
    samples_per_query: int = 1
    sut_name: str = "loadgen"
    check_sustained: bool = False  # open-loop Server runs: see _sustained (beyond LoadGen)
    closed_loop: bool = False  # a closed loop judged by Server's rules (concurrency): wording, advice
    early_stopping_confidence: float = 0.99
    use_token_latencies: bool | None = None

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, not {self.scenario!r}")
        if self.target_latency_percentile is not None and not 0 < self.target_latency_percentile < 1:
            raise ValueError("target_latency_percentile is a fraction, e.g. 0.99")

    @property
    def percentile(self) -> float:
        if self.target_latency_percentile is not None:
            return self.target_latency_percentile
        return 0.90 if self.scenario == "SingleStream" else 0.99


@dataclass(frozen=True)
class LatencyStats:
    """LoadGen's latency block, integer ns: min, max, mean (floor) and the percentile grid."""

    count: int
    min: int
    max: int
    mean: int
    percentiles: dict[float, int]

    @classmethod
    def of(cls, values: npt.NDArray[np.int64]) -> LatencyStats | None:
        if values.size == 0:
            return None
        s = np.sort(values)
        return cls(
            count=int(s.size),
            min=int(s[0]),
            max=int(s[-1]),
            mean=int(s.sum()) // int(s.size),
            percentiles={p: percentile(s, p) for p in MLPERF_PERCENTILES},
        )

    def to_dict(self) -> dict[str, int]:
        out = {"count": self.count, "min": self.min, "max": self.max, "mean": self.mean}
        out |= {percentile_key(p * 100): v for p, v in self.percentiles.items()}
        return out


@dataclass(frozen=True)
class EarlyStopping:
    """One early-stopping evaluation (LoadGen's "<metric> Early Stopping Result")."""

    metric: str  # "latency", "ttft", "tpot" or "query_latency"
    passed: bool
    queries: int
    overlatency: int | None  # Server: t, the queries over the bound
    queries_needed: int | None  # queries the run would need (h(t) + t, or h(1) + 1)
    estimate_ns: int | None  # SingleStream/MultiStream: sorted[n − t]
    text: str  # LoadGen's recommendation lines

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MlperfResult:
    """The outcome of :func:`evaluate`; :meth:`summary_text` renders ``mlperf_log_summary.txt``."""

    params: MlperfParams
    valid: bool
    reasons: list[str]
    checks: dict[str, bool]
    notes: list[str] = field(default_factory=list)
    token_latencies: bool = False
    queries: int = 0  # queries issued (Offline: 1 query of all samples, as in LoadGen)
    samples: int = 0  # samples issued
    samples_completed: int = 0
    samples_failed: int = 0
    token_errors: int = 0  # completed samples with n_tokens < 2 or no first token (token mode)
    latency_ns: LatencyStats | None = None  # per sample
    query_latency_ns: LatencyStats | None = None  # MultiStream: per query
    ttft_ns: LatencyStats | None = None
    tpot_ns: LatencyStats | None = None
    target_latency_ns: int | None = None  # latency at the target percentile (MS: query latency)
    target_ttft_ns: int | None = None
    target_tpot_ns: int | None = None
    samples_per_s: float | None = None  # Server: completed; Offline: n / max latency; SS: w/ overhead
    scheduled_samples_per_s: float | None = None  # Server
    tokens_per_s: float | None = None
    samples_per_s_without_overhead: float | None = None  # SingleStream: 1 / mean latency
    tokens_per_s_without_overhead: float | None = None  # SingleStream
    output_tokens_total: int = 0
    duration_checked_ns: int = 0  # the time compared with min_duration (see MLPERF.md)
    early_stopping: list[EarlyStopping] = field(default_factory=list)
    sustained: dict[str, float] | None = None  # Server: see _sustained
    retries_total: int = 0  # resends of --retries (beyond LoadGen, which never resends)
    stopped_early: str | None = None  # why issuing ended before the trace did (signal, hard stop, ...)
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: ints, finite floats or None, strings, lists and dicts with string keys."""

        def stats(s: LatencyStats | None) -> dict[str, int] | None:
            return None if s is None else s.to_dict()

        def num(x: float | None) -> float | None:
            return x if x is not None and math.isfinite(x) else None

        return {
            "scenario": self.params.scenario,
            "sut_name": self.params.sut_name,
            "valid": self.valid,
            "result": "VALID" if self.valid else "INVALID",
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "checks": dict(self.checks),
            "token_latencies": self.token_latencies,
            "queries": self.queries,
            "samples": self.samples,
            "samples_completed": self.samples_completed,
            "samples_failed": self.samples_failed,
            "token_errors": self.token_errors,
            "latency_ns": stats(self.latency_ns),
            "query_latency_ns": stats(self.query_latency_ns),
            "ttft_ns": stats(self.ttft_ns),
            "tpot_ns": stats(self.tpot_ns),
            "target_latency_percentile": self.params.percentile,
            "target_latency_ns": self.target_latency_ns,
            "target_ttft_ns": self.target_ttft_ns,
            "target_tpot_ns": self.target_tpot_ns,
            "samples_per_s": num(self.samples_per_s),
            "scheduled_samples_per_s": num(self.scheduled_samples_per_s),
            "tokens_per_s": num(self.tokens_per_s),
            "samples_per_s_without_overhead": num(self.samples_per_s_without_overhead),
            "tokens_per_s_without_overhead": num(self.tokens_per_s_without_overhead),
            "output_tokens_total": self.output_tokens_total,
            "duration_checked_ns": self.duration_checked_ns,
            "early_stopping": [e.to_dict() for e in self.early_stopping],
            "sustained": self.sustained,
            "retries_total": self.retries_total,
            "params": asdict(self.params),
        }

    def summary_text(self, extra_stats: Sequence[str] = ()) -> str:
        """``mlperf_log_summary.txt``; ``extra_stats`` (``key : value`` lines beyond LoadGen's, e.g.
        errors by class and GPU energy) go at the end of "Additional Stats"."""
        return _render_summary(self, extra_stats)


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
    t = _largest_t(n, p, confidence)
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


@dataclass
class _Samples:
    """Per-sample arrays of the completed measured records (ns)."""

    latency: npt.NDArray[np.int64]
    ttft: npt.NDArray[np.int64]
    tpot: npt.NDArray[np.int64]
    tokens: int
    token_errors: int


def _samples(done: list[RequestRecord], scenario: str, token_mode: bool) -> _Samples:
    base = np.array([0 if scenario == "Offline" else r.scheduled_ns for r in done], dtype=np.int64)
    end = np.array([r.end_ns for r in done], dtype=np.int64)
    latency = end - base
    tokens = sum(r.output_tokens for r in done)
    if not token_mode:
        empty = np.empty(0, dtype=np.int64)
        return _Samples(latency, empty, empty, tokens, 0)
    ttft, tpot, errors = [], [], 0
    for r, b, lat in zip(done, base.tolist(), latency.tolist(), strict=True):
        if r.first_token_ns is None:
            errors += 1
            continue
        first = r.first_token_ns - b
        ttft.append(first)
        if r.output_tokens < 2:
            errors += 1
            continue
        tpot.append((lat - first) // (r.output_tokens - 1))
    return _Samples(latency, np.array(ttft, dtype=np.int64), np.array(tpot, dtype=np.int64), tokens, errors)


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
            f"{want:g} s, +10%; more if the server was not saturated by {result.samples})"
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


def _throughput(result: MlperfResult, measured: list[RequestRecord], s: _Samples) -> None:
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


def _constraints(result: MlperfResult, s: _Samples) -> None:
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


def _early_stop(result: MlperfResult, s: _Samples, query_lat: npt.NDArray[np.int64]) -> None:
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


#: Server: completions over the second half of the schedule must reach this share of what fell due.
SUSTAINED_MIN_RATIO = 0.9
#: Server, runs shorter than twice the median latency: the second half's median latency over this
#: multiple of the first half's means a growing queue (a server that keeps up has a steady latency).
SUSTAINED_GROWTH = 1.5


def _sustained(result: MlperfResult, measured: list[RequestRecord]) -> None:
    """Did the server keep up with the offered rate? (beyond LoadGen, which relies on 600 s runs).

    A run shorter than MLPerf's default can end before an overloaded server's queue has grown enough
    to break the latency bounds: 662 queries at twice the capacity take only seconds. So, with ``T``
    the last scheduled time and ``L`` the median latency (scheduled → end): the requests that ended in
    ``[T/2, T]`` are compared with those scheduled in ``[T/2 − L, T − L]``, which a server that keeps
    up finishes in that window. Below ``SUSTAINED_MIN_RATIO`` the queue was growing. When ``L > T/2``
    that window does not exist: then a median latency of the queries scheduled in ``[T/2, T]`` over
    ``SUSTAINED_GROWTH`` × that of ``[0, T/2)`` shows the growing queue; otherwise the run is too short
    to tell, and is not VALID either.
    """
    sched = np.array([r.scheduled_ns for r in measured], dtype=np.int64)
    ends = np.array([r.end_ns for r in measured if r.end_ns], dtype=np.int64)
    done_lat = np.array([r.end_ns - r.scheduled_ns for r in measured if r.ok and r.end_ns], dtype=np.int64)
    span = int(sched.max()) if sched.size else 0
    if span <= 0 or not done_lat.size:
        return  # everything due at once, or nothing finished (judged elsewhere)
    lat = int(np.median(done_lat))
    half = span // 2
    info: dict[str, float] = {"span_s": span / 1e9, "median_latency_s": lat / 1e9}
    result.sustained = info
    if lat > half:
        result.checks["sustained"] = False
        done = [r for r in measured if r.ok and r.end_ns]
        early = [r.end_ns - r.scheduled_ns for r in done if r.scheduled_ns < half]
        late = [r.end_ns - r.scheduled_ns for r in done if r.scheduled_ns >= half]
        first = float(np.median(early)) if early else 0.0
        second = float(np.median(late)) if late else 0.0
        info.update(first_half_latency_s=first / 1e9, second_half_latency_s=second / 1e9)
        if first > 0 and second > SUSTAINED_GROWTH * first:
            # a queue that grows with time: running longer would only make the latency longer
            result.reasons.append(
                f"The server did not keep up with the offered rate: the median latency grew from "
                f"{first / 1e9:.2f} s (queries of the first half of the run) to {second / 1e9:.2f} s (the "
                "second half), so its queue was growing. Lower the QPS."
            )
            return
        result.reasons.append(
            f"Too short to show that the server keeps up: the median latency ({lat / 1e9:.2f} s) is over "
            f"half the time queries were issued over ({span / 1e9:.2f} s), so a growing queue would not "
            f"have shown yet. Run longer: --duration {math.ceil(2.5 * lat / 1e9)} or more."
        )
        return
    due = int(np.count_nonzero((sched >= half - lat) & (sched <= span - lat)))
    ended = int(np.count_nonzero((ends >= half) & (ends <= span)))
    ratio = ended / due if due else 1.0
    info.update(due=due, ended=ended, ratio=ratio)
    result.checks["sustained"] = ratio >= SUSTAINED_MIN_RATIO
    if ratio < SUSTAINED_MIN_RATIO:
        window = (span - half) / 1e9
        result.reasons.append(
            f"The server did not keep up with the offered rate: in the second half of the run it finished "
            f"{ended / window:.1f} queries/s while {due / window:.1f}/s fell due (ratio {ratio:.2f} < "
            f"{SUSTAINED_MIN_RATIO}); its queue was growing, and a longer run would show ever-growing "
            "latency. Lower the QPS."
        )


def _beyond_loadgen(
    result: MlperfResult, measured: list[RequestRecord], s: _Samples, client_limited: str | None
) -> None:
    """loadgen's own checks: failed or token-less requests, a saturated client, a short min duration."""
    params = result.params
    result.checks["requests_ok"] = (
        result.samples_failed == 0 and s.token_errors == 0 and result.samples_completed > 0
    )
    if measured and not result.samples_completed:
        result.reasons.append("No request completed.")
    if result.samples_failed:
        kinds: dict[str, int] = {}
        for r in measured:
            if r.error_class is not None:
                kinds[r.error_class] = kinds.get(r.error_class, 0) + 1
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
        result.reasons.append(
            f"{result.samples_failed} requests failed ({detail}); MLPerf needs every query to complete. "
            "Fix the errors (see errors_by_class) or reduce the load."
        )
    if s.token_errors:
        result.reasons.append(
            f"{s.token_errors} completed requests produced fewer than 2 output tokens (or none), so their "
            "TPOT is undefined; MLPerf counts them as errors. Raise max output tokens or check the server."
        )
    retried = [r for r in measured if r.retries]
    result.retries_total = sum(r.retries for r in retried)
    result.checks["no_retries"] = not retried
    if retried:
        result.reasons.append(
            f"{len(retried)} requests needed retries ({result.retries_total} resends, --retries): their "
            "first attempts failed (connect, HTTP 429 or 503), which without --retries are failed "
            "requests, and every resend is load the schedule did not offer. MLPerf has no retries: "
            "--retries keeps a run going but cannot make it VALID. Fix the cause or reduce the load."
        )
    result.checks["ran_to_completion"] = not result.interrupted and result.stopped_early is None
    if result.interrupted:
        result.reasons.append(
            f"The run was interrupted ({result.stopped_early or 'stopped early'}); results are partial. "
            "Rerun it to its end."
        )
    elif result.stopped_early is not None:
        result.reasons.append(f"The run stopped early: {result.stopped_early}.")
    result.checks["client_not_limited"] = client_limited is None
    if client_limited is not None:
        result.reasons.append(
            f"The client was the bottleneck: {client_limited}. Use more --workers, a bigger client host or "
            "a lower load."
        )
    if params.min_duration_ns < DEFAULT_MIN_DURATION_NS:
        result.notes.append(
            f"min_duration is {_seconds(params.min_duration_ns):g} s, shorter than MLPerf's default "
            f"{_seconds(DEFAULT_MIN_DURATION_NS):g} s: this run is not long enough for an MLPerf submission."
        )


def evaluate(
    records: Iterable[RequestRecord],
    params: MlperfParams,
    *,
    client_limited: str | None = None,
    stopped_early: str | None = None,
    interrupted: bool = False,
) -> MlperfResult:
    """Judge a run the way LoadGen would (plus loadgen's own checks); see the module docstring.

    Warm-up records are ignored. Latency statistics cover completed samples; any failed sample makes
    the result INVALID. ``client_limited`` is the runner's reason the client was the bottleneck, or
    None; ``stopped_early`` why issuing ended before the trace did (a hard stop, ``--max-error-rate``,
    a signal) and ``interrupted`` whether a signal did it: either makes the result INVALID.

    The verdict and its reasons never disagree: ``valid`` is True exactly when ``reasons`` is empty
    (see :func:`_verdict`).
    """
    measured = [r for r in records if not r.warmup]
    done = [r for r in measured if r.ok]
    scen = params.scenario
    token_mode = (
        params.use_token_latencies
        if params.use_token_latencies is not None
        else (
            params.ttft_bound_ns is not None
            or params.tpot_bound_ns is not None
            or any(r.first_token_ns is not None for r in done)
        )
    )
    result = MlperfResult(params=params, valid=False, reasons=[], checks={}, token_latencies=token_mode,
                          stopped_early=stopped_early, interrupted=interrupted)
    result.samples = len(measured)
    result.samples_completed = len(done)
    result.samples_failed = len(measured) - len(done)
    if scen == "MultiStream":
        result.queries = len({r.query for r in measured})
    elif scen == "Offline":
        result.queries = 1 if measured else 0
    else:
        result.queries = len(measured)

    s = _samples(done, scen, token_mode)
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

    if not measured:
        result.checks = {
            k: False for k in ("performance_constraints", "min_duration", "min_queries", "early_stopping")
        }
        result.reasons.append("No request was issued.")
    else:
        _constraints(result, s)
        _min_duration(result, measured, int(s.latency.max()) if s.latency.size else 0)
        _min_queries(result)
        _early_stop(result, s, query_lat)
        _throughput(result, measured, s)
        if scen == "Server" and params.check_sustained:
            _sustained(result, measured)

    _beyond_loadgen(result, measured, s, client_limited)
    _verdict(result)
    return result


def _verdict(result: MlperfResult) -> None:
    """The one place the verdict is decided: VALID exactly when every check passed and no reason was
    given. A failed check always comes with its own reason; should one ever come without (a bug), a
    reason naming the check is added, so that ``valid == (not reasons)`` holds whatever happens."""
    failed = [name for name, ok in result.checks.items() if not ok]
    if failed and not result.reasons:
        result.reasons.append(f"Check(s) failed: {', '.join(failed)} (loadgen gave no reason: a bug).")
    result.valid = not failed and not result.reasons


# ---- mlperf_log_summary.txt -------------------------------------------------------------------------


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


def _render_summary(r: MlperfResult, extra_stats: Sequence[str] = ()) -> str:
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

"""The result types of the MLPerf evaluation: LoadGen's TestSettings (:class:`MlperfParams`), its latency
and early-stopping blocks, and :class:`MlperfResult`, which ``report.json``'s ``mlperf`` section is
(:meth:`MlperfResult.to_dict`) and ``summary.txt`` renders (:mod:`loadgen.report.summary`).

Filled by :func:`loadgen.metrics.validity.evaluate`: LoadGen's statistics and checks
(:mod:`loadgen.metrics.mlperf`), loadgen's own (:mod:`loadgen.metrics.beyond`), then the verdict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from loadgen.metrics.early_stopping import DEFAULT_MIN_DURATION_NS, MLPERF_PERCENTILES, percentile
from loadgen.metrics.latency import percentile_key

__all__ = ["SCENARIOS", "EarlyStopping", "LatencyStats", "MlperfParams", "MlperfResult", "Samples",
           "ScenarioName"]

ScenarioName = Literal["SingleStream", "MultiStream", "Server", "Offline"]
SCENARIOS: tuple[str, ...] = ("SingleStream", "MultiStream", "Server", "Offline")


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
    """The outcome of :func:`loadgen.metrics.validity.evaluate`; ``mlperf_log_summary.txt`` is its
    rendering (:func:`loadgen.report.summary.render_summary`)."""

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


@dataclass
class Samples:
    """Per-sample arrays of the completed measured records (ns)."""

    latency: npt.NDArray[np.int64]
    ttft: npt.NDArray[np.int64]
    tpot: npt.NDArray[np.int64]
    tokens: int
    token_errors: int


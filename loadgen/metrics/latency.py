"""Latency and throughput metrics over request records: pure numpy, no I/O, no clocks.

Every time in a :class:`~loadgen.records.RequestRecord` is integer nanoseconds relative to the run's
start (see ``loadgen.records``). The per-request functions here return nanoseconds (numpy arrays);
:func:`distribution` turns them into **milliseconds** for reports. Warm-up records never count.

Percentiles in this module are numpy's default *linear interpolation* between closest ranks (the
"type 7" estimator, what ``vllm bench serve`` reports), so numbers compare with vLLM's benchmark.
MLPerf's own rule (``sorted[int(n * p)]``, no interpolation) lives in :mod:`loadgen.metrics.mlperf`.

Which requests count:

* latencies (TTFT, TPOT, ITL, E2E) come from *completed* requests only (``error_class is None``);
* ``issue_delay`` covers every issued request, failed or not (the client was late either way);
* throughputs divide completed requests (or their tokens) by ``duration_s``, the time from the run's
  start (0) to the last request's end.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from loadgen.metrics.rows import SENTINEL, Columns, columns_of
from loadgen.records import RequestRecord

#: Percentiles reported by :func:`distribution` (``p50``, ``p90``, ``p95``, ``p99``, ``p99_9``).
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Base = Literal["sent", "scheduled"]

_NS_PER_MS = 1e6
_NS_PER_S = 1e9


def percentile_key(p: float) -> str:
    """``50.0 -> "p50"``, ``99.9 -> "p99_9"``."""
    text = f"{p:g}".replace(".", "_")
    return f"p{text}"


@dataclass(frozen=True)
class Slo:
    """Per-request service-level objectives for goodput, milliseconds; ``None`` means "no bound".

    A completed request *meets* the SLO when every bound given holds for that request:

    * ``ttft_ms``: its TTFT from the sent time (:func:`ttft_ns`, ``base="sent"``) ≤ bound;
    * ``tpot_ms``: its TPOT (:func:`tpot_ns`) ≤ bound; requests with fewer than 2 output tokens have no
      TPOT and pass this bound;
    * ``e2e_ms``: its E2E from the sent time (:func:`e2e_ns`) ≤ bound;
    * ``ttfa_ms``: its time to first answer token from the sent time (:func:`ttfa_ns`) ≤ bound (a
      reasoning model's thinking counts against it; without thinking it equals TTFT);
    * ``itl_ms``: its **largest** inter-token gap (the maximum of its own :func:`itl_ns` samples) ≤
      bound, i.e. no token of the request waited longer than the bound; a request with one content
      chunk has no gap and passes.

    A request that has a bound on TTFT/TPOT/ITL but produced no token at all fails that bound.
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    itl_ms: float | None = None
    ttfa_ms: float | None = None

    @classmethod
    def of(cls, obj: Any) -> Slo:
        """Build from any object with some of these attributes (e.g. ``loadgen.specs.Slo``)."""
        return cls(**{name: getattr(obj, name, None)
                      for name in ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms", "ttfa_ms")})

    def any(self) -> bool:
        return any(v is not None for v in asdict(self).values())


@dataclass(frozen=True)
class RequestArrays:
    """Column view of the measured (non-warm-up) records, one row per request, int64 nanoseconds.

    ``first_token`` and ``last_chunk`` are −1 where the request produced no content chunk (a failure,
    or a non-streaming response); ``status`` is −1 where no response head arrived. ``ok`` is the
    success mask (``error_class is None``). ``first_answer`` is −1 where no answer chunk came (the
    first chunk that was not thinking; equal to ``first_token`` for a model that does not think);
    ``reasoning_tokens`` is 0 where the request had none.
    """

    scheduled: IntArray
    sent: IntArray
    first_token: IntArray
    last_chunk: IntArray
    end: IntArray
    input_tokens: IntArray
    output_tokens: IntArray
    status: IntArray
    ok: npt.NDArray[np.bool_]
    first_answer: IntArray
    reasoning_tokens: IntArray

    @classmethod
    def from_records(cls, records: Iterable[RequestRecord]) -> RequestArrays:
        """The measured (not warm-up) records' fields as arrays. Views on a run's record table
        (:mod:`loadgen.metrics.rows`) are read from its columns, without a Python object per value."""
        found = columns_of(records) if isinstance(records, list) else None
        if found is not None:
            return cls._from_columns(*found)
        rows = [r for r in records if not r.warmup]

        def col(values: Iterable[int]) -> IntArray:
            return np.fromiter(values, dtype=np.int64, count=len(rows))

        first = col(-1 if r.first_token_ns is None else r.first_token_ns for r in rows)
        return cls(
            scheduled=col(r.scheduled_ns for r in rows),
            sent=col(r.sent_ns for r in rows),
            first_token=first,
            last_chunk=col(_last_chunk(r) for r in rows),
            end=col(r.end_ns for r in rows),
            input_tokens=col(r.input_tokens for r in rows),
            output_tokens=col(r.output_tokens for r in rows),
            status=col(-1 if r.status is None else r.status for r in rows),
            ok=np.fromiter((r.ok for r in rows), dtype=np.bool_, count=len(rows)),
            first_answer=col(-1 if r.first_answer_ns is None else r.first_answer_ns for r in rows),
            reasoning_tokens=col(r.reasoning_tokens or 0 for r in rows),
        )

    @classmethod
    def _from_columns(cls, c: Columns, rows: np.ndarray | None) -> RequestArrays:
        warm = c.column("warmup", rows)
        if warm.any():
            rows = (np.arange(len(c)) if rows is None else rows)[warm == 0]
        first = c.column("first_token_ns", rows, none=-1)
        last = c.column("last_chunk_ns", rows)
        return cls(
            scheduled=c.column("scheduled_ns", rows),
            sent=c.column("sent_ns", rows),
            first_token=first,
            last_chunk=np.where(last == SENTINEL["last_chunk_ns"], first, last),  # as _last_chunk
            end=c.column("end_ns", rows),
            input_tokens=c.column("input_tokens", rows),
            output_tokens=c.column("output_tokens", rows),
            status=c.column("status", rows, none=-1),
            ok=c.column("error_class", rows) == 0,
            first_answer=c.column("first_answer_ns", rows, none=-1),
            reasoning_tokens=c.column("reasoning_tokens", rows, none=0),
        )

    def __len__(self) -> int:
        return int(self.ok.size)

    def base(self, base: Base) -> IntArray:
        if base == "sent":
            return self.sent
        if base == "scheduled":
            return self.scheduled
        raise ValueError(f"base must be 'sent' or 'scheduled', not {base!r}")

    @property
    def has_first_token(self) -> npt.NDArray[np.bool_]:
        return self.first_token >= 0


def _last_chunk(r: RequestRecord) -> int:
    if r.last_chunk_ns is not None:  # a compacted record (loadgen.metrics.gaps.compact)
        return r.last_chunk_ns
    if r.chunk_ns:
        return r.chunk_ns[-1]
    return -1 if r.first_token_ns is None else r.first_token_ns


# ---- per-request metrics (nanoseconds) -----------------------------------------------------------------


def ttft_ns(arrays: RequestArrays, base: Base = "sent") -> IntArray:
    """Time to first token, ns: ``first_token − sent`` (or ``− scheduled``), one value per completed
    request that produced a content chunk. From ``scheduled`` it includes the client's own lateness, so
    coordinated omission cannot hide in it."""
    mask = arrays.ok & arrays.has_first_token
    return arrays.first_token[mask] - arrays.base(base)[mask]


def ttfa_ns(arrays: RequestArrays, base: Base = "sent") -> IntArray:
    """Time to first answer token, ns: ``first_answer − sent`` (or ``− scheduled``) of each completed
    request whose answer began (reasoning models think first; for others it is the TTFT)."""
    mask = arrays.ok & (arrays.first_answer >= 0)
    return arrays.first_answer[mask] - arrays.base(base)[mask]


def e2e_ns(arrays: RequestArrays, base: Base = "sent") -> IntArray:
    """End-to-end latency, ns: ``end − sent`` (or ``− scheduled``) of each completed request."""
    return arrays.end[arrays.ok] - arrays.base(base)[arrays.ok]


def _tpot_mask(arrays: RequestArrays) -> npt.NDArray[np.bool_]:
    return arrays.ok & arrays.has_first_token & (arrays.output_tokens >= 2)


def tpot_ns(arrays: RequestArrays) -> FloatArray:
    """Time per output token, ns (float): ``(last content chunk − first token) / (output_tokens − 1)``
    for each completed request with ``output_tokens ≥ 2`` (DESIGN.md's definition: the first token's
    wait is TTFT, the remaining ``n − 1`` tokens share the decode time). ``output_tokens`` is the best
    count known (usage, tokenizer or chunks; see ``tokens_source``)."""
    mask = _tpot_mask(arrays)
    span = (arrays.last_chunk[mask] - arrays.first_token[mask]).astype(np.float64)
    return span / (arrays.output_tokens[mask] - 1).astype(np.float64)


def request_itl_ns(record: RequestRecord) -> FloatArray:
    """One request's inter-token samples, ns (see :func:`itl_ns`)."""
    times = np.asarray(record.chunk_ns, dtype=np.int64)
    if times.size < 2:
        return np.empty(0, dtype=np.float64)
    gaps = np.diff(times).astype(np.float64)
    counts = record.chunk_tokens[: times.size]
    if max(counts[1:], default=1) <= 1:  # one token per chunk (the usual stream): the gaps as they are
        return gaps
    tokens = np.ones(times.size, dtype=np.int64)
    tokens[: len(counts)] = np.maximum(np.asarray(counts, dtype=np.int64), 1)
    per_chunk = tokens[1:]  # the first chunk's gap is the TTFT, not an inter-token gap
    return np.repeat(gaps / per_chunk, per_chunk)


def itl_ns(records: Iterable[RequestRecord]) -> FloatArray:
    """Inter-token latency samples, ns (float), pooled over completed measured requests.

    For consecutive content chunks ``i−1, i`` of one request with gap ``g = t_i − t_{i−1}``, a chunk
    ``i`` carrying ``k ≥ 1`` tokens contributes **k samples of g / k** (its tokens are taken to have
    arrived evenly over the gap), so a server that batches tokens into chunks is compared per token
    with one that streams them singly. The first chunk contributes nothing (its wait is TTFT); a chunk
    recorded with 0 tokens counts as 1.
    """
    parts = [request_itl_ns(r) for r in records if r.ok and not r.warmup]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)


def issue_delay_ns(arrays: RequestArrays) -> IntArray:
    """Issue lateness, ns: ``sent − scheduled`` for every issued request (failed ones included)."""
    return arrays.sent - arrays.scheduled


# ---- summaries --------------------------------------------------------------------------------------


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def distribution(values_ns: Sequence[float] | npt.NDArray[Any]) -> dict[str, Any]:
    """Summary of nanosecond samples, in **milliseconds** (floats).

    Keys: ``count``, ``mean``, ``std`` (population, ddof = 0), ``min``, ``max`` and ``p50``, ``p90``,
    ``p95``, ``p99``, ``p99_9`` by numpy's default linear interpolation (what ``vllm bench serve``
    uses). Empty input gives ``count`` 0 and ``None`` for every other key (never NaN).
    """
    values = np.asarray(values_ns, dtype=np.float64) / _NS_PER_MS
    out: dict[str, Any] = {"count": int(values.size)}
    if values.size == 0:
        out |= {k: None for k in ("mean", "std", "min", "max")}
        out |= {percentile_key(p): None for p in PERCENTILES}
        return out
    out |= {
        "mean": _finite(float(values.mean())),
        "std": _finite(float(values.std())),
        "min": float(values.min()),
        "max": float(values.max()),
    }
    for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        out[percentile_key(p)] = float(v)
    return out


def _rate(amount: float, seconds: float) -> float | None:
    return amount / seconds if seconds > 0 else None


def _meets_slo(records: Sequence[RequestRecord], arrays: RequestArrays, slo: Slo) -> npt.NDArray[np.bool_]:
    """Mask over the rows of ``arrays``: completed and within every bound given (see :class:`Slo`)."""
    good = arrays.ok.copy()
    has_token = arrays.has_first_token
    if slo.ttft_ms is not None:
        ttft = arrays.first_token - arrays.sent
        good &= has_token & (ttft <= slo.ttft_ms * _NS_PER_MS)
    if slo.e2e_ms is not None:
        good &= (arrays.end - arrays.sent) <= slo.e2e_ms * _NS_PER_MS
    if slo.ttfa_ms is not None:
        good &= (arrays.first_answer >= 0) & (arrays.first_answer - arrays.sent <= slo.ttfa_ms * _NS_PER_MS)
    if slo.tpot_ms is not None:
        n = arrays.output_tokens
        span = (arrays.last_chunk - arrays.first_token).astype(np.float64)
        tpot = np.divide(span, np.maximum(n - 1, 1).astype(np.float64))
        good &= has_token & ((n < 2) | (tpot <= slo.tpot_ms * _NS_PER_MS))
    if slo.itl_ms is not None:
        bound = slo.itl_ms * _NS_PER_MS
        worst = np.fromiter(
            (float(gaps.max()) if (gaps := request_itl_ns(r)).size else 0.0 for r in records),
            dtype=np.float64,
            count=len(records),
        )
        good &= has_token & (worst <= bound)
    return good


def summarize(
    records: Iterable[RequestRecord], *, slo: Slo | None = None, itl: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``results`` object of ``report.json``: distributions in ms, counts, rates and goodput.

    Rates divide by ``duration_s`` = the last measured request's end (run start is 0), in seconds:
    ``requests_per_s`` = completed requests / duration_s; ``output_tokens_per_s`` /
    ``input_tokens_per_s`` = the completed requests' output / input tokens / duration_s;
    ``total_tokens_per_s`` is their sum. ``time_to_first_answer_ms`` is :func:`ttfa_ns`;
    ``reasoning_tokens`` / ``answer_tokens`` split the completed requests' output tokens into thinking
    (the server's ``reasoning_tokens``, else the thinking chunks counted) and the rest. ``goodput``
    (only with ``slo``) counts completed requests that
    met every bound given (see :class:`Slo`); its ``fraction`` is over completed requests. Numbers that
    cannot be computed (no request, zero duration) are ``None``, never NaN. ``itl`` is the ITL
    distribution when the caller pooled the gaps already (records compacted to bound memory, see
    :mod:`loadgen.metrics.gaps`); otherwise it is computed from the records' chunk times.
    """
    measured = [r for r in records if not r.warmup]
    arrays = RequestArrays.from_records(measured)
    ok = arrays.ok
    completed = int(ok.sum())
    failed = len(arrays) - completed
    duration_s = float(arrays.end.max()) / _NS_PER_S if len(arrays) else 0.0
    out_total = int(arrays.output_tokens[ok].sum())
    in_total = int(arrays.input_tokens[ok].sum())
    thought = int(np.minimum(arrays.reasoning_tokens, arrays.output_tokens)[ok].sum())

    errors_by_class = Counter(r.error_class for r in measured if r.error_class is not None)
    errors_by_status = Counter(
        str(r.status)
        for r in measured
        if r.error_class is not None and r.status is not None and not 200 <= r.status < 300
    )
    tokens_source = Counter(r.tokens_source for r in measured if r.ok)

    results: dict[str, Any] = {
        "ttft_ms": distribution(ttft_ns(arrays, "sent")),
        "ttft_from_scheduled_ms": distribution(ttft_ns(arrays, "scheduled")),
        "time_to_first_answer_ms": distribution(ttfa_ns(arrays, "sent")),
        "itl_ms": itl if itl is not None else distribution(itl_ns(measured)),
        "tpot_ms": distribution(tpot_ns(arrays)),
        "e2e_ms": distribution(e2e_ns(arrays, "sent")),
        "e2e_from_scheduled_ms": distribution(e2e_ns(arrays, "scheduled")),
        "issue_delay_ms": distribution(issue_delay_ns(arrays)),
        "requests_issued": len(arrays),
        "requests_completed": completed,
        "requests_failed": failed,
        "errors_by_class": dict(sorted(errors_by_class.items())),
        "errors_by_status": dict(sorted(errors_by_status.items())),
        "duration_s": duration_s,
        "requests_per_s": _rate(completed, duration_s),
        "output_tokens_per_s": _rate(out_total, duration_s),
        "input_tokens_per_s": _rate(in_total, duration_s),
        "total_tokens_per_s": _rate(out_total + in_total, duration_s),
        "output_tokens_total": out_total,
        "input_tokens_total": in_total,
        "reasoning_tokens": thought,
        "answer_tokens": out_total - thought,
        "tokens_source": dict(sorted(tokens_source.items())),
    }
    if slo is not None:
        good = int(_meets_slo(measured, arrays, slo).sum())
        results["goodput"] = {
            "slo": {k: v for k, v in asdict(slo).items() if v is not None},
            "requests": good,
            "requests_per_s": _rate(good, duration_s),
            "fraction": good / completed if completed else None,
        }
    return results

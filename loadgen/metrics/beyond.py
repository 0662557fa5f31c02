"""loadgen's checks beyond LoadGen's rules, for :func:`loadgen.metrics.validity.evaluate` (each one a failed
check *and* its reason, so the verdict and its reasons agree): failed or token-less requests, retries,
a run that ended early, a client that was the bottleneck, and — open-loop Server runs — whether the
server kept up with the offered rate."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from loadgen.metrics.early_stopping import DEFAULT_MIN_DURATION_NS
from loadgen.records import RequestRecord

if TYPE_CHECKING:
    from loadgen.metrics.mlperf_result import MlperfResult, Samples


def _s(ns: int | float) -> float:
    return ns / 1e9


#: Server: completions over the second half of the schedule must reach this share of what fell due.
SUSTAINED_MIN_RATIO = 0.9
#: Server, runs shorter than twice the median latency: the second half's median latency over this
#: multiple of the first half's means a growing queue (a server that keeps up has a steady latency).
SUSTAINED_GROWTH = 1.5


def sustained(result: MlperfResult, measured: list[RequestRecord]) -> None:
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


def beyond_loadgen(
    result: MlperfResult, measured: list[RequestRecord], s: Samples, client_limited: str | None
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
            f"min_duration is {_s(params.min_duration_ns):g} s, shorter than MLPerf's default "
            f"{_s(DEFAULT_MIN_DURATION_NS):g} s: this run is not long enough for an MLPerf submission."
        )

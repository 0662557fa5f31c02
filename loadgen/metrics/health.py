"""Is the client keeping up? Event-loop lag, CPU use and issue lateness, and the verdict.

A load generator that falls behind prints its own limits as if they were the server's. This module
measures the three ways that shows and says "client-limited" — which makes the run INVALID — instead of
letting distorted latencies pass as real.

- Issue delay: ``sent − scheduled`` per request (from the records). Under an in-flight cap
  (``--max-concurrency``) part of it is the wait for a slot, which the user asked for: the verdict
  counts only ``sent − admitted`` (:func:`admission_times`), the report shows both.
- Event-loop lag: every ``interval`` a callback is queued with ``call_soon``; the time until it runs is
  how long a chunk that arrived at that moment would have waited to be timestamped.
- CPU: process CPU time over wall time, in cores (1.0 = one core fully busy).

Pure: arrays in, a verdict out. The sampling of lag and CPU while a run goes is
:class:`loadgen.engine.loopmon.LoopLagMonitor`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Thresholds of the verdict (documented in the README).
ISSUE_DELAY_P99_LIMIT_MS = 1.0
#: Closed loops: a late issue only lowers the concurrency held (latencies count from the send), so the
#: issue delay p99 may also reach this fraction of the median request latency before it matters.
CLOSED_LOOP_DELAY_FRACTION = 0.01
LOOP_LAG_P99_LIMIT_MS = 2.0
CPU_LIMIT_CORES = 0.9


@dataclass(frozen=True)
class ClientHealth:
    issue_delay_ms: dict[str, float | None]
    loop_lag_ms: dict[str, float | None]
    cpu_cores: float | None  # the busiest worker's event-loop thread (judged)
    limited: bool
    reasons: list[str]
    cpu_per_worker: list[float | None] | None = None
    issue_delay_limit_ms: float = ISSUE_DELAY_P99_LIMIT_MS
    concurrency_held: float | None = None  # closed loops: share of slot time a request was out
    ttft_p99_shift_ms: float | None = None  # TTFT p99 from the scheduled time minus from the send
    max_concurrency: int | None = None  # open loops: the in-flight cap asked for (--max-concurrency)
    slot_wait_ms: dict[str, float | None] | None = None  # under that cap: admitted − scheduled
    engine: str = "local"  # "ray": the workers were Ray actors (loadgen.engine.cluster)
    nodes: list[dict[str, Any]] | None = None  # Ray: per node, its workers, clocks and verdict
    clock_reasons: tuple[str, ...] = ()  # Ray: clocks too uncertain for the latencies (makes INVALID)
    process_cpu_cores: float | None = None  # the busiest worker process's, helper threads included

    def to_dict(self) -> dict[str, Any]:
        return {
            "issue_delay_ms": self.issue_delay_ms,
            "loop_lag_ms": self.loop_lag_ms,
            "cpu_cores": self.cpu_cores,
            "cpu_cores_per_worker": self.cpu_per_worker,
            "process_cpu_cores": self.process_cpu_cores,
            "workers": len(self.cpu_per_worker) if self.cpu_per_worker else 1,
            "concurrency_held": self.concurrency_held,
            "ttft_p99_shift_ms": self.ttft_p99_shift_ms,
            "max_concurrency": self.max_concurrency,
            "slot_wait_ms": self.slot_wait_ms,
            "client_limited": self.limited,
            "reasons": self.reasons,
            "engine": self.engine,
            "nodes": self.nodes,
            "clock_reasons": list(self.clock_reasons),
            "thresholds": {
                "issue_delay_p99_ms": self.issue_delay_limit_ms,
                "loop_lag_p99_ms": LOOP_LAG_P99_LIMIT_MS,
                "cpu_cores": CPU_LIMIT_CORES,
            },
        }


def _pcts(values_ns: np.ndarray) -> dict[str, float | None]:
    if len(values_ns) == 0:
        return {"p50": None, "p99": None, "max": None}
    ms = values_ns / 1e6
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
    }


def assess(
    issue_delays_ns: np.ndarray,
    lags_ns: np.ndarray,
    cpu_cores: float | None,
    *,
    check_issue_delay: bool,
    cpu_per_worker: list[float | None] | None = None,
    issue_delay_limit_ms: float | None = None,
    closed_loop_latencies_ns: np.ndarray | None = None,
    ttft_from_scheduled_ns: np.ndarray | None = None,
    ttft_from_sent_ns: np.ndarray | None = None,
    slot_wait_ns: np.ndarray | None = None,
    max_concurrency: int | None = None,
) -> ClientHealth:
    """The verdict. ``check_issue_delay`` is off for Offline, where everything is due at once.

    ``closed_loop_latencies_ns`` (send to end of each request) marks a closed loop. There the next
    request of a stream is due the instant the previous one ends, and a wave of requests ending
    together is handled one after another, so some issue delay is unavoidable; it distorts no latency
    (they count from the send) but idles the slot. The limit becomes
    ``max(limit, CLOSED_LOOP_DELAY_FRACTION × median latency)``, and ``concurrency_held`` =
    Σ latency / Σ (latency + issue delay) says how much of the asked concurrency was really held.

    Open loops with ``ttft_from_scheduled_ns``/``ttft_from_sent_ns`` (the same successful requests):
    an issue-delay p99 over the limit makes the run client-limited only when it moved the reported
    tail, i.e. when TTFT p99 from the scheduled time exceeds TTFT p99 from the send by more than
    ``max(limit, 1% of TTFT p99)``. A few requests a millisecond or two late (a burst of chunks being
    handled when they fell due) leave the p99 where it was; a client that is late across the board
    shifts it by its lateness and is caught. ``ttft_p99_shift_ms`` reports the shift either way.

    Under an open loop's in-flight cap (``max_concurrency``), ``slot_wait_ns`` (admitted − scheduled,
    the same requests as ``issue_delays_ns``) is the wait for a slot the user asked for: the reported
    issue delay keeps it, the verdict judges ``issue delay − slot wait`` (the client's own lateness),
    and ``ttft_from_scheduled_ns`` should then count from the admission.
    """
    issue = _pcts(issue_delays_ns)
    waits = None
    if slot_wait_ns is not None and len(slot_wait_ns) == len(issue_delays_ns):
        waits = _pcts(slot_wait_ns)
        issue_delays_ns = issue_delays_ns - slot_wait_ns
    own = _pcts(issue_delays_ns) if waits is not None else issue
    lag = _pcts(lags_ns)
    reasons = []
    limit = ISSUE_DELAY_P99_LIMIT_MS if issue_delay_limit_ms is None else issue_delay_limit_ms
    held = None
    if closed_loop_latencies_ns is not None and len(closed_loop_latencies_ns):
        busy = float(np.sum(closed_loop_latencies_ns))
        idle = float(np.sum(np.clip(issue_delays_ns, 0, None))) if len(issue_delays_ns) else 0.0
        held = busy / (busy + idle) if busy + idle > 0 else None
        limit = max(limit, CLOSED_LOOP_DELAY_FRACTION * float(np.median(closed_loop_latencies_ns)) / 1e6)
    shift = _p99_shift_ms(ttft_from_scheduled_ns, ttft_from_sent_ns)
    tail_moved = True
    if shift is not None and closed_loop_latencies_ns is None and ttft_from_sent_ns is not None:
        tail_moved = shift > max(limit, 0.01 * float(np.percentile(ttft_from_sent_ns, 99)) / 1e6)
    if check_issue_delay and own["p99"] is not None and own["p99"] > limit and tail_moved:
        past = " past their --max-concurrency slot" if waits is not None else ""
        reasons.append(
            f"requests went out late{past}: issue delay p99 {own['p99']:.2f} ms > {limit:g} ms "
            "(the client could not keep to the schedule; use more --workers or a lower rate)"
            + (f"; concurrency held {held:.1%}" if held is not None else "")
            + (f"; it moved TTFT p99 by {shift:.2f} ms" if shift is not None and held is None else "")
        )
    if lag["p99"] is not None and lag["p99"] > LOOP_LAG_P99_LIMIT_MS:
        reasons.append(
            f"event-loop lag p99 {lag['p99']:.2f} ms > {LOOP_LAG_P99_LIMIT_MS} ms (arriving chunks waited "
            "that long to be timestamped, inflating TTFT and ITL)"
        )
    if cpu_cores is not None and cpu_cores > CPU_LIMIT_CORES:
        reasons.append(f"client CPU {cpu_cores:.2f} cores > {CPU_LIMIT_CORES} (a worker's event loop is "
                       "saturated; use more --workers)")
    return ClientHealth(issue, lag, cpu_cores, bool(reasons), reasons, cpu_per_worker, limit, held, shift,
                        max_concurrency, waits)


def admission_times(
    index: np.ndarray, scheduled_ns: np.ndarray, end_ns: np.ndarray, caps: list[int]
) -> np.ndarray:
    """When each request of an open loop under an in-flight cap got its slot (ns from t0).

    Reconstructed from the records, for the issuer's rule (:class:`loadgen.engine.issuer.InFlightCap`): each
    worker process ``w`` (records ``index % len(caps) == w``, issued in index order) holds at most
    ``caps[w]`` requests; a request is admitted at its scheduled time, or when the earliest of the
    ``caps[w]`` requests ahead of it ends, and never before the request issued before it. The send
    then follows at once unless the client is late, so ``sent − admitted`` is the client's own issue
    delay and ``admitted − scheduled`` the wait for a slot.
    """
    out = np.empty(len(index), dtype=np.int64)
    workers = len(caps)
    for w, cap in enumerate(caps):
        mine = np.nonzero(index % workers == w)[0]
        mine = mine[np.argsort(index[mine], kind="stable")]
        ends: list[int] = []  # end times of the requests in flight (a heap)
        prev = -(2**63)
        for i in mine.tolist():
            t = max(int(scheduled_ns[i]), prev)
            while ends and ends[0] <= t:
                heapq.heappop(ends)
            if len(ends) >= cap:
                t = heapq.heappop(ends)
            out[i] = t
            heapq.heappush(ends, int(end_ns[i]))
            prev = t
    return out


def _p99_shift_ms(from_scheduled_ns: np.ndarray | None, from_sent_ns: np.ndarray | None) -> float | None:
    if from_scheduled_ns is None or from_sent_ns is None or not len(from_sent_ns):
        return None
    return float(np.percentile(from_scheduled_ns, 99) - np.percentile(from_sent_ns, 99)) / 1e6

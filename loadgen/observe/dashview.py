"""What the live dashboard shows, computed without a terminal (:mod:`loadgen.observe.dashboard` draws it).

:class:`LiveModel` is fed from two sides. On the per-request path :meth:`LiveModel.add` only appends
the finished record to a list (the hot path's whole cost); at the frame rate (≤ 4 Hz, outside that
path) :meth:`LiveModel.tick` takes the pending records in one batch, adds them to the so-far
distributions and to the last window, and returns a frozen :class:`View`: plain numbers and strings,
testable without a terminal.

Definitions follow the report's (:mod:`loadgen.metrics.latency`): TTFT from the send, ITL per token (a
chunk of k tokens gives k samples of gap/k), TPOT = (last chunk − first token) / (tokens − 1), issue
delay = sent − scheduled. "So far" distributions are log histograms with bins 0.2 % wide (a percentile
is within 0.1 % of the exact one), "window" ones are exact over the last ``window_s`` seconds. The
client-limited verdict "as it forms" is :func:`loadgen.metrics.health.assess` over the last window; the
report's verdict, over the whole run, is the one that counts.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Protocol

import numpy as np

from loadgen.metrics.health import assess
from loadgen.metrics.latency import request_itl_ns
from loadgen.records import RequestRecord

WINDOW_S = 10.0
HISTORY_POINTS = 120  # sparkline points, one per second
_BASE = 1.002  # histogram bin ratio: ±0.1 %
_LOG_BASE = math.log(_BASE)
_BINS = int(math.log(1e12) / _LOG_BASE) + 1  # 1 ns .. 1000 s
_MIN_FOR_VERDICT = 20  # requests in the window before the verdict says more than "forming"


class LogHist:
    """Counts of positive values (ns) in bins ``_BASE`` apart; percentiles from the bins' centres."""

    def __init__(self) -> None:
        self.counts = np.zeros(_BINS, dtype=np.int64)
        self.n = 0

    def add(self, values_ns: np.ndarray, sign: int = 1) -> None:
        """Count ``values_ns`` in (``sign`` -1: take them out again, for a sliding window)."""
        if values_ns.size == 0:
            return
        v = np.maximum(np.asarray(values_ns, dtype=np.float64), 1.0)
        idx = np.minimum(np.floor(np.log(v) / _LOG_BASE), _BINS - 1).astype(np.int64)
        self.counts += sign * np.bincount(idx, minlength=_BINS)
        self.n += sign * int(values_ns.size)

    def percentile_ms(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) in ms, None when empty."""
        if self.n == 0:
            return None
        rank = q / 100 * (self.n - 1)  # np.percentile's linear rank, between two order statistics
        lo, hi = math.floor(rank), math.ceil(rank)
        i, j = np.searchsorted(np.cumsum(self.counts), [lo + 1, hi + 1])
        a, b = _BASE ** (int(i) + 0.5), _BASE ** (int(j) + 0.5)
        return (a + (b - a) * (rank - lo)) / 1e6


@dataclass(frozen=True)
class Pcts:
    """p50/p99 in ms (None: no sample yet) and how many samples they are over."""

    p50: float | None = None
    p99: float | None = None
    n: int = 0


def _exact(values_ns: np.ndarray) -> Pcts:
    if values_ns.size == 0:
        return Pcts()
    p50, p99 = np.percentile(values_ns, [50, 99]) / 1e6
    return Pcts(float(p50), float(p99), int(values_ns.size))


def _hist(h: LogHist) -> Pcts:
    return Pcts(h.percentile_ms(50), h.percentile_ms(99), h.n)


class RunCounters(Protocol):
    """The run's live counters (``loadgen.engine.issuer.IssueStats`` has them)."""

    issued: int
    completed: int
    failed: int
    in_flight: int
    output_tokens: int


@dataclass(frozen=True)
class Counts:
    """The run's counters at a tick (an :class:`loadgen.engine.issuer.IssueStats` has them all)."""

    issued: int
    completed: int
    failed: int
    in_flight: int
    output_tokens: int


@dataclass(frozen=True)
class ServerView:
    """The server's /metrics, latest scrape: requests running and waiting, KV-cache use (0-1) and
    preemptions since the run's baseline scrape; None where the server exports no such series."""

    running: float | None
    waiting: float | None
    kv_usage: float | None
    preemptions: float | None


@dataclass(frozen=True)
class SloView:
    name: str  # "TTFT p99"
    bound_ms: float
    value_ms: float | None  # so far
    ok: bool | None  # None: no sample yet


@dataclass(frozen=True)
class View:
    elapsed_s: float
    time_left_s: float | None
    bound: str  # what sets the run's length, e.g. "--duration 60 s"
    state: str  # "measuring", or what an interrupt did ("stopping: ...")
    target_rps: float | None
    offered_rps: float  # issued per second over the window
    achieved_rps: float  # completed per second over the window
    output_tok_s: float
    counts: Counts
    planned: int | None
    errors: tuple[tuple[str, int], ...]
    ttft: tuple[Pcts, Pcts]  # (so far, window)
    itl: tuple[Pcts, Pcts]
    tpot: tuple[Pcts, Pcts]
    issue_delay: Pcts  # window
    loop_lag: Pcts  # window
    cpu_cores: tuple[float | None, ...]  # per worker process, over the window
    limited: bool | None  # None while forming
    verdict: str
    server: ServerView | None
    gpu_power_w: float | None
    slos: tuple[SloView, ...]
    history: Mapping[str, tuple[float, ...]]  # per-second series for sparklines
    window_s: float = WINDOW_S


@dataclass
class _Batch:
    t_ns: int
    counts: Counts
    ttft: np.ndarray
    ttft_sched: np.ndarray
    itl: np.ndarray
    tpot: np.ndarray
    delay: np.ndarray
    e2e: np.ndarray
    lags: np.ndarray
    cpu_s: tuple[float, ...] | None


@dataclass
class RunShape:
    """What the model knows of the run before it starts (from the settings and the expectation)."""

    planned: int | None = None
    expected_s: float | None = None  # the run's expected length (loadgen.schedule.length)
    bound: str = ""
    max_duration_s: float | None = None
    target_rps: float | None = None
    slo_ms: Mapping[str, float] = field(default_factory=dict)  # "ttft", "tpot", "e2e" p99 bounds
    issue_delay_limit_ms: float | None = None
    open_loop: bool = True
    check_issue_delay: bool = True


def _ok_arrays(recs: Sequence[RequestRecord]) -> dict[str, np.ndarray]:
    ok = [r for r in recs if r.ok and not r.warmup]
    first = [r for r in ok if r.first_token_ns is not None]
    ttft = np.array([r.first_token_ns - r.sent_ns for r in first], dtype=np.int64)  # type: ignore[operator]
    sched = np.array([r.first_token_ns - r.scheduled_ns for r in first], dtype=np.int64)  # type: ignore[operator]
    tp = []
    for r in first:
        last = r.chunk_ns[-1] if r.chunk_ns else r.last_chunk_ns
        if r.output_tokens >= 2 and last is not None:
            tp.append((last - r.first_token_ns) / (r.output_tokens - 1))  # type: ignore[operator]
    itl = batch_itl_ns(ok)
    e2e = np.array([r.end_ns - r.sent_ns for r in ok], dtype=np.int64)
    sent = [r for r in recs if r.sent_ns and not r.warmup]
    delay = np.array([r.sent_ns - r.scheduled_ns for r in sent], dtype=np.int64)
    return {"ttft": ttft, "ttft_sched": sched, "tpot": np.array(tp, dtype=np.float64), "itl": itl,
            "e2e": e2e, "delay": delay}


def batch_itl_ns(recs: Sequence[RequestRecord]) -> np.ndarray:
    """:func:`loadgen.metrics.latency.request_itl_ns` of many records at once (a few numpy calls
    instead of a few per record: this runs on the event loop at the frame rate)."""
    recs = [r for r in recs if len(r.chunk_ns) >= 2]
    if not recs:
        return np.zeros(0)
    if any(len(r.chunk_tokens) != len(r.chunk_ns) for r in recs):
        return np.concatenate([request_itl_ns(r) for r in recs])
    lengths = np.array([len(r.chunk_ns) for r in recs], dtype=np.int64)
    total = int(lengths.sum())
    times = np.fromiter(chain.from_iterable(r.chunk_ns for r in recs), dtype=np.int64, count=total)
    tokens = np.fromiter(chain.from_iterable(r.chunk_tokens for r in recs), dtype=np.int64, count=total)
    gaps = np.diff(times).astype(np.float64)
    per_chunk = np.maximum(tokens[1:], 1)
    keep = np.ones(gaps.size, dtype=bool)
    keep[np.cumsum(lengths)[:-1] - 1] = False  # the step from one request's last chunk to the next's first
    gaps, per_chunk = gaps[keep], per_chunk[keep]
    return np.repeat(gaps / per_chunk, per_chunk)


class LiveModel:
    """The dashboard's numbers. Not thread-safe: call everything from the run's event loop."""

    def __init__(self, shape: RunShape, *, window_s: float = WINDOW_S) -> None:
        self.shape = shape
        self.window_s = window_s
        self._pending: list[RequestRecord] = []
        self._lags: list[int] = []
        self._hist = {k: LogHist() for k in ("ttft", "itl", "tpot")}
        self._window: deque[_Batch] = deque()
        self._window_itl = LogHist()  # the window's ITL samples (too many to keep sorting at 4 Hz)
        self._errors: dict[str, int] = {}
        self._t0_ns: int | None = None
        self._history: dict[str, deque[float]] = {
            k: deque(maxlen=HISTORY_POINTS)
            for k in ("achieved_rps", "ttft_p50_ms", "in_flight", "itl_p50_ms")
        }
        self._second: int = 0
        self._last_counts = Counts(0, 0, 0, 0, 0)
        self.state = "measuring"

    def start(self, t0_ns: int, cpu_s: tuple[float, ...] | None = None, counts: Counts | None = None
              ) -> None:
        """The clock starts (``cpu_s``: the client processes' CPU seconds now, as in :meth:`tick`;
        ``counts``: the counters now, the base of the rates, when some requests went out before)."""
        self._t0_ns = t0_ns
        base = counts or Counts(0, 0, 0, 0, 0)
        self._window.append(_Batch(t0_ns, base, *(np.zeros(0),) * 7, cpu_s))

    def add(self, record: RequestRecord) -> None:
        """A finished request (the per-request path: one append)."""
        self._pending.append(record)

    def add_lag(self, lag_ns: int) -> None:
        self._lags.append(lag_ns)

    def tick(self, now_ns: int, counts: Counts, *, cpu_s: tuple[float, ...] | None = None,
             server: ServerView | None = None, gpu_power_w: float | None = None) -> View:
        """Take the pending records, roll the window, return what to show. ``cpu_s``: each worker
        process's CPU seconds so far (None: unknown)."""
        if self._t0_ns is None:
            self.start(now_ns)
        assert self._t0_ns is not None
        recs, self._pending = self._pending, []
        lags, self._lags = np.array(self._lags, dtype=np.int64), []
        for r in recs:
            if r.error_class is not None:
                self._errors[r.error_class] = self._errors.get(r.error_class, 0) + 1
        arr = _ok_arrays(recs)
        for k in ("ttft", "itl", "tpot"):
            self._hist[k].add(arr[k])
        batch = _Batch(now_ns, counts, arr["ttft"], arr["ttft_sched"], arr["itl"], arr["tpot"],
                       arr["delay"], arr["e2e"], lags, cpu_s)
        self._window.append(batch)
        self._window_itl.add(batch.itl)
        while len(self._window) > 2 and now_ns - self._window[1].t_ns >= self.window_s * 1e9:
            self._window.popleft()
            self._window_itl.add(self._window[0].itl, -1)  # the new first batch only marks the start
        self._last_counts = counts
        return self._view(now_ns, counts, server, gpu_power_w)

    def _view(self, now_ns: int, counts: Counts, server: ServerView | None, gpu_w: float | None) -> View:
        assert self._t0_ns is not None
        first, rest = self._window[0], list(self._window)[1:]
        span = max((now_ns - first.t_ns) / 1e9, 1e-9)
        cat = {k: np.concatenate([getattr(b, k) for b in rest]) if rest else np.zeros(0)
               for k in ("ttft", "ttft_sched", "tpot", "delay", "e2e", "lags")}
        cpu = _cpu(first.cpu_s, self._window[-1].cpu_s, span)
        win = {k: _exact(cat[k]) for k in ("ttft", "tpot")}
        win["itl"] = _hist(self._window_itl)
        limited, verdict = self._verdict(cat, cpu)
        elapsed = (now_ns - self._t0_ns) / 1e9
        left, bound = self._time_left(elapsed, counts)
        achieved = (counts.completed - first.counts.completed) / span
        self._record_history(elapsed, achieved, counts.in_flight, win)
        return View(
            elapsed_s=elapsed, time_left_s=left, bound=bound, state=self.state,
            target_rps=self.shape.target_rps,
            offered_rps=(counts.issued - first.counts.issued) / span, achieved_rps=achieved,
            output_tok_s=(counts.output_tokens - first.counts.output_tokens) / span,
            counts=counts, planned=self.shape.planned,
            errors=tuple(sorted(self._errors.items(), key=lambda kv: -kv[1])),
            ttft=(_hist(self._hist["ttft"]), win["ttft"]), itl=(_hist(self._hist["itl"]), win["itl"]),
            tpot=(_hist(self._hist["tpot"]), win["tpot"]),
            issue_delay=_exact(cat["delay"]), loop_lag=_exact(cat["lags"]), cpu_cores=cpu,
            limited=limited, verdict=verdict, server=server, gpu_power_w=gpu_w,
            slos=self._slos(), history={k: tuple(v) for k, v in self._history.items()},
            window_s=self.window_s,
        )

    def _verdict(self, cat: Mapping[str, np.ndarray], cpu: tuple[float | None, ...]
                 ) -> tuple[bool | None, str]:
        if cat["delay"].size < _MIN_FOR_VERDICT:
            return None, f"forming ({cat['delay'].size} requests in the window)"
        known = [c for c in cpu if c is not None]
        shape = self.shape
        health = assess(
            cat["delay"], cat["lags"], max(known) if known else None,
            check_issue_delay=shape.check_issue_delay, issue_delay_limit_ms=shape.issue_delay_limit_ms,
            closed_loop_latencies_ns=None if shape.open_loop else cat["e2e"],
            ttft_from_scheduled_ns=cat["ttft_sched"] if shape.open_loop else None,
            ttft_from_sent_ns=cat["ttft"] if shape.open_loop else None,
        )
        if health.limited:
            return True, "client-limited: " + "; ".join(health.reasons)
        return False, "keeping up"

    def _time_left(self, elapsed: float, counts: Counts) -> tuple[float | None, str]:
        s = self.shape
        if self.state != "measuring":
            return None, self.state
        left = None if s.expected_s is None else max(s.expected_s - elapsed, 0.0)
        bound = s.bound
        if s.max_duration_s is not None:
            hard = max(s.max_duration_s - elapsed, 0.0)
            if left is None or hard < left:
                left, bound = hard, f"hard stop --max-duration {s.max_duration_s:g} s"
        if left == 0.0 and counts.in_flight:
            bound += f"; draining {counts.in_flight} in flight"
        return left, bound

    def _slos(self) -> tuple[SloView, ...]:
        out = []
        for key, name in (("ttft", "TTFT p99"), ("tpot", "TPOT p99")):
            bound = self.shape.slo_ms.get(key)
            if bound:
                v = self._hist[key].percentile_ms(99)
                out.append(SloView(name, bound, v, None if v is None else v <= bound))
        return tuple(out)

    def _record_history(self, elapsed: float, achieved: float, in_flight: int, win: Mapping[str, Pcts]
                        ) -> None:
        second = int(elapsed)
        if second <= self._second:  # one point a second, the first after a whole second
            return
        self._second = second
        self._history["achieved_rps"].append(achieved)
        self._history["in_flight"].append(float(in_flight))
        self._history["ttft_p50_ms"].append(win["ttft"].p50 or 0.0)
        self._history["itl_p50_ms"].append(win["itl"].p50 or 0.0)


def _cpu(first: tuple[float, ...] | None, last: tuple[float, ...] | None, span_s: float
         ) -> tuple[float | None, ...]:
    if first is None or last is None or len(first) != len(last):
        return () if last is None else tuple(None for _ in last)
    return tuple((b - a) / span_s for a, b in zip(first, last, strict=True))


def server_view(before: Mapping[str, float] | None, after: Mapping[str, float] | None) -> ServerView | None:
    """From the scraper's baseline and latest scalars (vLLM's series names); None before any scrape."""
    if not after:
        return None
    pre = after.get("vllm:num_preemptions_total")
    base = (before or {}).get("vllm:num_preemptions_total")
    return ServerView(after.get("vllm:num_requests_running"), after.get("vllm:num_requests_waiting"),
                      after.get("vllm:kv_cache_usage_perc"),
                      None if pre is None else pre - (base or 0.0))


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int) -> str:
    """The last ``width`` values as block characters scaled from 0 to their maximum."""
    vals = list(values)[-width:] if width > 0 else []
    if not vals:
        return ""
    top = max(vals)
    if top <= 0:
        return SPARKS[0] * len(vals)
    return "".join(SPARKS[min(int(v / top * (len(SPARKS) - 1) + 0.5), len(SPARKS) - 1)] for v in vals)

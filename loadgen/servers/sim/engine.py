"""The continuous-batching model of the simulated server and its on-time token scheduler.

Formulas are in :mod:`loadgen.servers.sim.config`. Here: one heap of ``(due_ns, seq_no, Seq)`` per server and
one emission pass that sends every token that is due, so the cost is per token, not per stream task.

Why a timer thread: asyncio's and libuv's timers have 1 ms resolution (``epoll_wait`` takes ms and
libuv rounds its clock to ms), which puts the median emission lateness near 0.5–1 ms. A dedicated thread
sleeps on a condition variable (ns-resolution ``pthread_cond_timedwait``) until ``SPIN_NS`` before the
next due time, spins the rest, then ``call_soon_threadsafe``s the emission pass onto the event loop.
Every chunk's lateness (send time − due time) is recorded so that a benchmark can see when the
simulator itself, not the client, was late.

Clock: ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux), integer nanoseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from loadgen.servers.sim.config import SimConfig, step_ms

# Timed waits overshoot by 120–250 µs on a busy VM, so the timer thread wakes SPIN_NS early and spins
# (yielding the CPU and the GIL each turn) until the due time.
SPIN_NS = 400_000

#: Token-count buckets of the per-request length histograms (TGI's flavour).
TOKEN_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
                 16384.0)
# vLLM's bucket boundaries (vllm/v1/metrics/loggers.py), seconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)
LATENESS_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
                    0.25, 1.0)


class Histogram:
    """Cumulative-on-render Prometheus histogram (seconds)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, cumulative count)`` pairs, ending with ``(inf, count)``."""
        out, acc = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += n
            out.append((bound, acc))
        return out


class LatenessRecorder:
    """Emission lateness (send − due) in µs buckets: 1 µs resolution below 4 ms, 1 ms above."""

    FINE = 4000

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.fine = [0] * self.FINE
        self.coarse: dict[int, int] = {}
        self.count = 0
        self.sum_ns = 0
        self.max_ns = 0

    def add(self, late_ns: int) -> None:
        late_ns = max(late_ns, 0)
        self.count += 1
        self.sum_ns += late_ns
        self.max_ns = max(self.max_ns, late_ns)
        us = late_ns // 1000
        if us < self.FINE:
            self.fine[us] += 1
        else:
            ms = us // 1000
            self.coarse[ms] = self.coarse.get(ms, 0) + 1

    def percentile_ms(self, q: float) -> float:
        """Upper edge of the bucket holding the q-quantile (0 < q ≤ 1), in ms; 0.0 when empty."""
        if not self.count:
            return 0.0
        rank, acc = q * self.count, 0
        for us, n in enumerate(self.fine):
            acc += n
            if acc >= rank:
                return min((us + 1) / 1000.0, self.max_ns / 1e6)
        for ms in sorted(self.coarse):
            acc += self.coarse[ms]
            if acc >= rank:
                return min(float(ms + 1), self.max_ns / 1e6)
        return self.max_ns / 1e6

    def histogram(self) -> Histogram:
        hist = Histogram(LATENESS_BUCKETS)
        for us, n in enumerate(self.fine):
            if n:
                hist.counts[bisect_left(hist.bounds, (us + 0.5) / 1e6)] += n
        for ms, n in self.coarse.items():
            hist.counts[bisect_left(hist.bounds, (ms + 0.5) / 1e3)] += n
        hist.count, hist.sum = self.count, self.sum_ns / 1e9
        return hist


class Sink(Protocol):
    def on_chunk(self, seq: Seq, lo: int, hi: int, final: bool) -> bool:
        """Send tokens ``lo..hi`` (1-based, inclusive); return False to end the sequence now."""
        ...


class Seq:
    """One generating request inside the engine."""

    __slots__ = (
        "admitted_ns",
        "arrival_ns",
        "cached_tokens",
        "chunks",
        "done",
        "extra_ns",
        "last_emit_ns",
        "max_tokens",
        "prompt_tokens",
        "sink",
        "stall_after",
        "stall_ns",
        "tokens",
    )

    def __init__(self, sink: Sink, arrival_ns: int, prompt_tokens: int, max_tokens: int, *,
                 stall_after: int = -1, stall_ns: int = 0, cached_tokens: int = 0, extra_ns: int = 0
                 ) -> None:
        self.sink = sink
        self.extra_ns = extra_ns  # prefill time beyond the per-token cost (images)
        self.cached_tokens = cached_tokens  # prompt tokens found in the prefix cache: no prefill
        self.arrival_ns = arrival_ns
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.stall_after = stall_after  # chunks sent before the stall; -1 = no stall
        self.stall_ns = stall_ns
        self.admitted_ns = -1
        self.tokens = 0  # tokens generated so far
        self.chunks = 0  # chunks sent so far
        self.last_emit_ns = 0
        self.done = False


class Engine:
    """Slots, FIFO waiting queue, token heap and the metrics they produce. Loop-thread only, except the
    timer thread, which only calls :meth:`_arm`'s counterpart ``call_soon_threadsafe``."""

    def __init__(self, cfg: SimConfig, loop: asyncio.AbstractEventLoop,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.cfg = cfg
        self.loop = loop
        self.clock = clock
        self.running = 0
        self.waiting: deque[Seq] = deque()
        self._heap: list[tuple[int, int, Seq]] = []
        self._n = 0
        self._ttft_ns = round(cfg.ttft_ms * 1e6)
        self._prefill_ns = cfg.prefill_ms_per_token * 1e6
        self._step_ns = [round(step_ms(cfg, b) * 1e6) for b in range(cfg.max_seqs + 1)]
        self._k = cfg.tokens_per_chunk
        self.lateness = LatenessRecorder()
        self.first_lateness = LatenessRecorder()  # first tokens only: what a client's TTFT error holds
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.prompt_tokens_total = 0
        self.prefix_queries_total = 0  # prompt tokens looked up in the prefix cache (when it is on)
        self.prefix_hits_total = 0
        self.generation_tokens_total = 0
        self.chunks_total = 0
        self.success_total = 0
        # Per-request token counts (TGI's only token totals: the sums of these histograms).
        self.input_lengths = Histogram(TOKEN_BUCKETS)
        self.generated_lengths = Histogram(TOKEN_BUCKETS)
        self._armed = 1 << 62
        self._timer = _TimerThread(loop, self.run_due)
        self._timer.start()

    def close(self) -> None:
        self._timer.stop()

    # -- admission ----------------------------------------------------------------------------------

    def submit(self, seq: Seq) -> None:
        """Start ``seq`` now if a slot is free, else queue it FIFO."""
        if self.running < self.cfg.max_seqs:
            self._admit(seq, seq.arrival_ns)
        else:
            self.waiting.append(seq)

    def _admit(self, seq: Seq, at_ns: int) -> None:
        self.running += 1
        seq.admitted_ns = at_ns
        self.prompt_tokens_total += seq.prompt_tokens
        self.input_lengths.observe(seq.prompt_tokens)
        if self.cfg.prefix_cache_blocks:
            self.prefix_queries_total += seq.prompt_tokens
            self.prefix_hits_total += seq.cached_tokens
        due = (at_ns + self._ttft_ns + round(self._prefill_ns * (seq.prompt_tokens - seq.cached_tokens))
               + seq.extra_ns)
        self._push(due + (seq.stall_ns if seq.stall_after == 0 else 0), seq)

    def _release(self, at_ns: int) -> None:
        self.running -= 1
        while self.waiting and self.running < self.cfg.max_seqs:
            seq = self.waiting.popleft()
            if not seq.done:
                self._admit(seq, max(at_ns, seq.arrival_ns))

    def cancel(self, seq: Seq) -> None:
        """The client went away: free the slot now (or leave the queue). Idempotent."""
        if seq.done:
            return
        seq.done = True
        if seq.admitted_ns >= 0:
            self._release(self.clock())

    # -- the emission pass --------------------------------------------------------------------------

    def _push(self, due_ns: int, seq: Seq) -> None:
        self._n += 1
        heapq.heappush(self._heap, (due_ns, self._n, seq))
        if due_ns < self._armed:
            self._armed = due_ns
            self._timer.arm(due_ns)

    def run_due(self) -> None:
        """Emit every token whose due time has passed, then re-arm the timer for the next one."""
        heap, clock, k = self._heap, self.clock, self._k
        self._armed = 1 << 62
        now = clock()
        while heap and heap[0][0] <= now:
            due, _, seq = heapq.heappop(heap)
            if seq.done:
                continue
            seq.tokens += 1
            i, n = seq.tokens, seq.max_tokens
            final = i >= n
            if final or i == 1 or (i - 1) % k == 0:
                now = clock()
                self.lateness.add(now - due)
                lo = 1 if i == 1 else 2 + (i - 2) // k * k
                if i == 1:
                    self.first_lateness.add(now - due)
                    self.ttft.observe((now - seq.arrival_ns) / 1e9)
                else:
                    self.itl.observe((now - seq.last_emit_ns) / 1e9 / (i - lo + 1))
                seq.last_emit_ns = now
                seq.chunks += 1
                self.chunks_total += 1
                self.generation_tokens_total += i - lo + 1
                if not seq.sink.on_chunk(seq, lo, i, final):
                    seq.done = True
                    self._release(due)
                    continue
                if final:
                    seq.done = True
                    self.success_total += 1
                    self.e2e.observe((now - seq.arrival_ns) / 1e9)
                    self.generated_lengths.observe(seq.max_tokens)
                    self._release(due)
                    continue
                if seq.chunks == seq.stall_after:
                    due += seq.stall_ns
            self._push(due + self._step_ns[self.running], seq)
        if heap:
            self._armed = heap[0][0]
            self._timer.arm(self._armed)


class _TimerThread(threading.Thread):
    """Wakes the event loop at (not ~1 ms after) the next due time. See the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        super().__init__(name="sim-timer", daemon=True)
        self._loop = loop
        self._callback = callback
        self._cond = threading.Condition()
        self._next: int | None = None
        self._stopped = False

    def arm(self, due_ns: int) -> None:
        with self._cond:
            if self._next is None or due_ns < self._next:
                self._next = due_ns
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2.0)

    def run(self) -> None:
        clock = time.perf_counter_ns
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    if self._next is None:
                        self._cond.wait()
                        continue
                    left = self._next - clock() - SPIN_NS
                    if left <= 0:
                        break
                    self._cond.wait(left / 1e9)
                due, self._next = self._next, None
            while clock() < due:  # sched_yield releases the GIL and lets a thread on this CPU run
                os.sched_yield()
            try:
                self._loop.call_soon_threadsafe(self._callback)
            except RuntimeError:  # loop closed under us: the server is shutting down
                return

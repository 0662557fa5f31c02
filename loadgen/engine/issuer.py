"""The issuer: follows a :class:`~loadgen.schedule.trace.Trace` and sends each query through the client.

Open loop (Server, Offline, constant): query *i* goes out at ``t0 + offsets_ns[i]`` — absolute target
times, never a chain of sleeps — and issuing never waits for completions or for a connection. When the
client falls behind, late queries go out at once and keep their scheduled times, so the lateness shows
in ``issue_delay`` and in the latency from the scheduled time instead of disappearing. The one
exception is asked for: with ``trace.max_in_flight`` (``--max-concurrency``) a query due while that
many requests are in flight waits for one to end (:class:`InFlightCap`), in order, and keeps its
scheduled time too, so the wait shows the same way (:func:`loadgen.metrics.health.admission_times` tells it
apart from the client's own lateness).

Closed loop (SingleStream, MultiStream, concurrency): each stream sends its next query when its last
one completes. As in MLPerf LoadGen, a stream checks *after* issuing: it stops once the query count is
met and the query it just issued went out at or after the minimum duration, so the last issue is never
earlier than the duration. The hard stop (checked before each issue) ends it regardless.

Waiting and time: the issuer takes a :class:`~loadgen.engine.clock.Clock` (default the real one,
which sleeps until 1 ms before a target and then yields to the loop until it; reads keep being served
while it waits). Tests pass a :class:`~loadgen.engine.clock.VirtualClock` for exact timings.

Stopping: :meth:`Issuer.stop` ends issuing (in-flight requests finish); :meth:`Issuer.abort` also
cancels the requests in flight, which are recorded as ``cancelled``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from loadgen.engine.clock import REAL_CLOCK, Clock
from loadgen.records import RequestRecord
from loadgen.schedule.trace import Trace
from loadgen.workload.samples import Dataset, Sample


class Sender(Protocol):
    """What the issuer sends through (:class:`loadgen.client.client.Client`; a fake in unit tests):
    ``fill`` sends one sample and fills the record, times relative to ``t0_ns``, the run's origin."""

    t0_ns: int

    async def fill(self, rec: RequestRecord, sample: Sample) -> object: ...


@dataclass
class IssueStats:
    issued: int = 0
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    output_tokens: int = 0
    stopped_early: str | None = None  # why issuing ended before the trace did
    last_issue_ns: int = 0  # relative to t0
    issue_ended_ns: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class InFlightCap:
    """At most ``limit`` requests in flight (an open loop's ``--max-concurrency``).

    One coroutine (the open-loop issuer) waits in :meth:`admit`, so slots go in schedule order
    without a queue of waiters; :meth:`release` (a request ended) and :meth:`wake` (issuing is
    stopping) wake it. ``peak`` is the most in flight at once, for tests and the report.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"an in-flight cap needs at least one slot (got {limit})")
        self.limit = limit
        self.in_flight = 0
        self.peak = 0
        self._changed = asyncio.Event()

    async def admit(self, stop: asyncio.Event) -> bool:
        """Take a slot, waiting for one if all are busy; False when ``stop`` was set meanwhile."""
        while self.in_flight >= self.limit:
            if stop.is_set():
                return False
            self._changed.clear()
            await self._changed.wait()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return True

    def release(self) -> None:
        self.in_flight -= 1
        self._changed.set()

    def wake(self) -> None:
        self._changed.set()


class ErrorRateGuard:
    """Says when to stop issuing because too many requests fail (``--max-error-rate``).

    The error rate is the failed fraction of the last ``window`` (100) finished requests, judged once
    ``min_count`` (20) have finished, so a broken endpoint stops a run within seconds and a single early
    failure cannot. Cancelled requests do not count (the run was being stopped anyway).
    """

    def __init__(self, max_rate: float, window: int = 100, min_count: int = 20) -> None:
        self.max_rate = max_rate
        self.min_count = min(min_count, window)
        self._window: deque[bool] = deque(maxlen=window)
        self._failed = 0
        self.tripped: str | None = None

    def add(self, rec: RequestRecord) -> str | None:
        """Account one finished request; returns the reason to stop, once, when the rate is exceeded."""
        if rec.warmup or rec.error_class == "cancelled" or self.tripped is not None:
            return None
        win = self._window
        if len(win) == win.maxlen:
            self._failed -= win[0]
        failed = rec.error_class is not None
        win.append(failed)
        self._failed += failed
        rate = self._failed / len(win)
        if len(win) >= self.min_count and rate > self.max_rate:
            self.tripped = (
                f"error rate {rate:.0%} over the last {len(win)} finished requests exceeded "
                f"--max-error-rate {self.max_rate:g}; issuing stopped early"
            )
            return self.tripped
        return None


class Issuer:
    """Runs a trace; every finished record goes to ``on_record`` (writer, exporter, progress)."""

    def __init__(
        self,
        client: Sender,
        dataset: Dataset,
        trace: Trace,
        on_record: Callable[[RequestRecord], None],
        on_start: Callable[[], None] | None = None,
        *,
        warmup: bool = False,
        query_ids: list[int] | None = None,
        id_offset: int = 0,
        id_stride: int = 1,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        """``query_ids`` maps a (split) trace's query positions to the original trace's query ids;
        record indices and closed-loop query ids are ``id_offset + id_stride * k``, so several worker
        processes that share one trace never reuse an id. ``clock`` times issuance (``client.t0_ns``
        is on it)."""
        self._client = client
        self._clock = clock
        self._dataset = dataset
        self._trace = trace
        self._on_record = on_record
        self._on_start = on_start
        self._warmup = warmup
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._query_ids = query_ids
        self._id_offset = id_offset
        self._id_stride = id_stride
        self._next_index = 0
        self._queries_started = 0
        self._slowest_query_ns = 0  # closed loop: the longest issue-to-completion of a query so far
        self.stats = IssueStats()
        self.cap = InFlightCap(trace.max_in_flight) if trace.open_loop and trace.max_in_flight else None

    # ---- control ---------------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Stop issuing; requests in flight run to completion."""
        if not self._stop.is_set():
            self.stats.stopped_early = reason
            self._stop.set()
            if self.cap is not None:
                self.cap.wake()

    def abort(self, reason: str) -> None:
        """Stop issuing and cancel the requests in flight (they are recorded as cancelled)."""
        self.stop(reason)
        for task in list(self._tasks):
            task.cancel()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ---- one request -----------------------------------------------------------------------------
    async def _request(
        self, query: int, sample: int, scheduled_ns: int, cap: InFlightCap | None = None
    ) -> None:
        rec = RequestRecord(
            index=self._id_offset + self._id_stride * self._next_index, sample=sample, query=query,
            scheduled_ns=scheduled_ns, sent_ns=0, end_ns=0, warmup=self._warmup,
        )
        self._next_index += 1
        st = self.stats
        st.issued += 1
        st.in_flight += 1
        if self._on_start is not None:
            self._on_start()
        try:
            await self._client.fill(rec, self._dataset.samples[sample])
        finally:
            if cap is not None:
                cap.release()  # first: the next query may go while this record is handled
            st.in_flight -= 1
            if rec.error_class is None:
                st.completed += 1
                st.output_tokens += rec.output_tokens
            else:
                st.failed += 1
                st.errors[rec.error_class] = st.errors.get(rec.error_class, 0) + 1
            self._on_record(rec)

    def _spawn(
        self, tg: asyncio.TaskGroup, query: int, sample: int, scheduled_ns: int,
        cap: InFlightCap | None = None,
    ) -> asyncio.Task[None]:
        task = tg.create_task(self._request(query, sample, scheduled_ns, cap))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- scenarios -------------------------------------------------------------------------------
    async def run(self) -> IssueStats:
        """Issue the whole trace (``client.t0_ns`` must be set) and wait for every request."""
        try:
            async with asyncio.TaskGroup() as tg:
                if self._trace.open_loop:
                    await self._open_loop(tg)
                else:
                    streams = [
                        tg.create_task(self._closed_stream(tg)) for _ in range(self._trace.streams)
                    ]
                    await asyncio.gather(*streams)
                self.stats.issue_ended_ns = self._clock.now_ns() - self._client.t0_ns
        except BaseExceptionGroup as group:
            # Cancelled requests are expected after abort(); anything else is a bug and propagates.
            rest = group.subgroup(lambda e: not isinstance(e, asyncio.CancelledError))
            if rest is not None:
                raise rest from None
        return self.stats

    async def _open_loop(self, tg: asyncio.TaskGroup) -> None:
        t0 = self._client.t0_ns
        trace = self._trace
        offsets = trace.offsets_ns.tolist()
        ids = self._query_ids
        cap = self.cap
        sleep_until = self._clock.sleep_until
        for pos, offset in enumerate(offsets):
            if self._stop.is_set():
                return
            await sleep_until(t0 + offset)
            if self._stop.is_set():
                return
            query = ids[pos] if ids is not None else pos
            for sample in trace.samples_of(pos).tolist():
                if cap is not None and not await cap.admit(self._stop):
                    return
                self._spawn(tg, query, sample, offset, cap)
            self.stats.last_issue_ns = offset

    async def _closed_stream(self, tg: asyncio.TaskGroup) -> None:
        """One stream of a closed loop, with MLPerf LoadGen's stop rule (``IssueQueriesInternal``):
        issue a query, wait for it, and stop once the queries issued reach ``min_queries`` and *that*
        query was issued at or after ``min_duration``. So the last query of every stream is issued at
        or after the minimum duration (LoadGen's MinDurationMet compares exactly that issue time),
        and a count-bound run issues exactly ``min_queries`` (at least one per stream). The hard stop
        is checked before each issue."""
        t0 = self._client.t0_ns
        trace = self._trace
        await self._clock.sleep_until(t0)  # worker processes are told a common start a little ahead
        while not self._stop.is_set():
            now = self._clock.now_ns() - t0
            if now >= trace.hard_stop_ns:
                reason = self._hard_stop_reason()
                if reason is not None:  # else both minimums are met overall: this stream just ends
                    self.stop(reason)
                return
            pos = self._queries_started
            self._queries_started += 1
            query = self._id_offset + self._id_stride * pos
            self.stats.last_issue_ns = max(self.stats.last_issue_ns, now)
            tasks = [self._spawn(tg, query, s, now) for s in trace.samples_of(query).tolist()]
            await asyncio.wait(tasks)
            self._slowest_query_ns = max(self._slowest_query_ns, self._clock.now_ns() - t0 - now)
            if self._queries_started >= trace.min_queries and now >= trace.min_duration_ns:
                return

    def _hard_stop_reason(self) -> str | None:
        """Why the hard stop ended the run early and the hard stop that would do, or None when both
        minimums are met already. The count needs about ``hard stop × min_queries / issued`` at the
        rate seen (+10%); the duration needs the minimum plus two of the slowest queries seen (the
        last issue at or after it, and its completion)."""
        trace = self._trace
        started = self._queries_started
        missing, need_s = [], 0.0
        if started < trace.min_queries:
            missing.append(f"the query count ({started} of {trace.min_queries})")
            need_s = trace.hard_stop_ns / 1e9 * trace.min_queries / max(started, 1) * 1.1
        if self.stats.last_issue_ns < trace.min_duration_ns:
            missing.append(f"the minimum duration ({trace.min_duration_ns / 1e9:g} s)")
            need_s = max(need_s, (trace.min_duration_ns + 2 * self._slowest_query_ns) / 1e9)
        if not missing:
            return None
        verb = "were" if len(missing) > 1 else "was"
        return (
            f"hard stop at {trace.hard_stop_ns / 1e9:g} s before {' and '.join(missing)} {verb} met; "
            f"raise the hard stop (max_duration_s) to at least {math.ceil(need_s * 100) / 100:g} s"
        )

"""The issuer under virtual time (loadgen.engine.clock.VirtualClock): exact timings, no sleeping.

A fake sender with a known service time stands in for the client (the seam the issuer sends through);
the expected send times are computed here from the schedule and the service time alone.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest

from loadgen.engine.clock import VirtualClock
from loadgen.engine.issuer import Issuer
from loadgen.metrics.health import admission_times
from loadgen.records import RequestRecord
from loadgen.schedule.arrivals import constant_offsets, poisson_offsets
from loadgen.schedule.trace import Trace
from loadgen.settings import Scenario
from loadgen.workload.samples import Dataset, Sample

MS = 1_000_000
S = 1_000_000_000
START = 7 * 3600 * S  # virtual time need not start at 0


class FakeSender:
    """Answers every request: first token after ``ttft_ns``, end after ``service_ns`` (virtual)."""

    def __init__(self, clock: VirtualClock, service_ns: int, ttft_ns: int = 0) -> None:
        self.clock = clock
        self.service_ns = service_ns
        self.ttft_ns = ttft_ns
        self.t0_ns = 0
        self.in_flight = 0
        self.peak = 0

    async def fill(self, rec: RequestRecord, sample: Sample) -> None:
        clock = self.clock
        start = clock.now_ns()
        rec.sent_ns = start - self.t0_ns
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await clock.sleep_until(start + self.ttft_ns)
            rec.first_token_ns = clock.now_ns() - self.t0_ns
            await clock.sleep_until(start + self.service_ns)
            rec.end_ns = clock.now_ns() - self.t0_ns
            rec.output_tokens = sample.output_tokens
        finally:
            self.in_flight -= 1


def _dataset(n: int) -> Dataset:
    return Dataset([Sample(f"prompt {i}", None, 2, 4) for i in range(n)], "word", True)


def _open(offsets: np.ndarray, max_in_flight: int | None = None) -> Trace:
    n = len(offsets)
    return Trace(scenario=Scenario.SERVER, open_loop=True, offsets_ns=offsets,
                 order=np.arange(n, dtype=np.int64).reshape(-1, 1), streams=1, min_queries=n,
                 min_duration_ns=0, hard_stop_ns=2**62, max_in_flight=max_in_flight)


def _closed(streams: int, min_queries: int, min_duration_ns: int, hard_stop_ns: int) -> Trace:
    return Trace(scenario=Scenario.CONCURRENCY, open_loop=False, offsets_ns=np.zeros(0, np.int64),
                 order=np.arange(64, dtype=np.int64).reshape(-1, 1), streams=streams,
                 min_queries=min_queries, min_duration_ns=min_duration_ns, hard_stop_ns=hard_stop_ns)


def _run(clock: VirtualClock, main: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=clock.new_event_loop) as runner:
        return runner.run(main)


def _issue(clock: VirtualClock, sender: FakeSender, trace: Trace, n_samples: int,
           stop_at_ns: int | None = None) -> tuple[Issuer, list[RequestRecord]]:
    records: list[RequestRecord] = []
    issuer = Issuer(sender, _dataset(n_samples), trace, records.append, clock=clock)

    async def main() -> None:
        sender.t0_ns = clock.now_ns() + 5 * MS
        if stop_at_ns is not None:
            asyncio.get_running_loop().call_at((sender.t0_ns + stop_at_ns) / 1e9, issuer.stop, "asked")
        await issuer.run()

    _run(clock, main())
    return issuer, sorted(records, key=lambda r: r.index)


def test_a_poisson_trace_is_issued_at_exactly_its_offsets() -> None:
    offsets = poisson_offsets(40.0, 300, 5.0, np.random.default_rng(3))
    clock = VirtualClock(START)
    service = 250 * MS
    sender = FakeSender(clock, service, ttft_ns=30 * MS)
    wall = time.perf_counter()
    issuer, recs = _issue(clock, sender, _open(offsets), len(offsets))
    assert time.perf_counter() - wall < 60  # seconds of virtual load, not of sleeping
    assert [r.index for r in recs] == list(range(len(offsets)))
    assert [r.sent_ns for r in recs] == offsets.tolist()  # to the nanosecond: no issue delay at all
    assert [r.scheduled_ns for r in recs] == offsets.tolist()
    assert [r.first_token_ns for r in recs] == (offsets + 30 * MS).tolist()
    assert [r.end_ns for r in recs] == (offsets + service).tolist()
    st = issuer.stats
    assert (st.issued, st.completed, st.failed, st.in_flight) == (len(offsets), len(offsets), 0, 0)
    assert st.last_issue_ns == offsets[-1]
    assert st.issue_ended_ns == offsets[-1]  # issuing ends with the last send, not its reply
    assert clock.now_ns() == sender.t0_ns + offsets[-1] + service
    # the most in flight at once, counted here from the schedule: arrivals within one service time
    expect_peak = max(int(np.searchsorted(offsets, o + service, side="left")) - i
                      for i, o in enumerate(offsets.tolist()))
    assert sender.peak == expect_peak


def test_a_constant_rate_under_an_in_flight_cap_waits_for_slots_in_order() -> None:
    # 10 queries/s, each served in 1 s, at most 2 in flight: query i goes when query i-2 ends.
    offsets = constant_offsets(10.0, 30, 0.0)
    assert offsets[:3].tolist() == [100 * MS, 200 * MS, 300 * MS]
    clock = VirtualClock(START)
    service = S
    sender = FakeSender(clock, service)
    issuer, recs = _issue(clock, sender, _open(offsets, max_in_flight=2), len(offsets))
    expect: list[int] = []
    for i, due in enumerate(offsets.tolist()):
        expect.append(due if i < 2 else max(due, expect[i - 2] + service))
    assert [r.sent_ns for r in recs] == expect
    assert [r.scheduled_ns for r in recs] == offsets.tolist()  # the wait shows from the scheduled time
    assert sender.peak == 2 and issuer.cap is not None and issuer.cap.peak == 2
    assert expect[-1] == 14 * S + 200 * MS  # 30 queries, two per second after the first pair
    # the verdict's reconstruction of the admissions from the records agrees exactly
    idx = np.array([r.index for r in recs])
    got = admission_times(idx, np.array([r.scheduled_ns for r in recs]), np.array([r.end_ns for r in recs]),
                          [2])
    assert got.tolist() == expect


@pytest.mark.parametrize(("streams", "service_ms", "duration_s"), [(1, 300, 10), (3, 300, 10), (4, 70, 2)])
def test_a_closed_loop_by_duration_issues_exactly_the_expected_queries(
    streams: int, service_ms: int, duration_s: int
) -> None:
    # Each stream sends back to back; it stops after the first query issued at or after the duration,
    # so it issues at k * service for k = 0 .. ceil(duration / service).
    clock = VirtualClock(START)
    service = service_ms * MS
    per_stream = math.ceil(duration_s * 1000 / service_ms) + 1
    sender = FakeSender(clock, service)
    issuer, recs = _issue(clock, sender, _closed(streams, 1, duration_s * S, 2**62), 64)
    assert len(recs) == streams * per_stream
    assert sorted(r.sent_ns for r in recs) == sorted(k * service for k in range(per_stream)
                                                     for _ in range(streams))
    assert all(r.scheduled_ns == r.sent_ns for r in recs)  # closed loop: due when issued
    assert issuer.stats.completed == streams * per_stream and issuer.stats.stopped_early is None
    assert clock.now_ns() - sender.t0_ns == per_stream * service
    assert sender.peak == streams


def test_a_closed_loop_by_count_issues_exactly_the_count() -> None:
    clock = VirtualClock(START)
    sender = FakeSender(clock, 40 * MS)
    issuer, recs = _issue(clock, sender, _closed(1, 25, 0, 2**62), 64)
    assert [r.sent_ns for r in recs] == [k * 40 * MS for k in range(25)]
    assert clock.now_ns() - sender.t0_ns == 25 * 40 * MS
    assert issuer.stats.last_issue_ns == 24 * 40 * MS and issuer.stats.stopped_early is None


def test_the_hard_stop_ends_a_closed_loop_exactly_and_says_what_was_missing() -> None:
    # 2 streams, 0.4 s each, hard stop at 5 s: issues at k * 0.4 s while before 5 s, k = 0..12.
    clock = VirtualClock(START)
    sender = FakeSender(clock, 400 * MS)
    issuer, recs = _issue(clock, sender, _closed(2, 10**6, 0, 5 * S), 64)
    assert len(recs) == 2 * math.ceil(5 / 0.4) == 26
    assert max(r.sent_ns for r in recs) == 12 * 400 * MS
    reason = issuer.stats.stopped_early
    assert reason is not None and reason.startswith("hard stop at 5 s before the query count (26 of 1000000)")


def test_stop_at_a_virtual_instant_ends_issuing_there() -> None:
    offsets = constant_offsets(10.0, 100, 0.0)  # one query every 100 ms
    clock = VirtualClock(START)
    sender = FakeSender(clock, 50 * MS)
    issuer, recs = _issue(clock, sender, _open(offsets), len(offsets), stop_at_ns=2050 * MS)
    assert [r.sent_ns for r in recs] == offsets[:20].tolist()  # due at 0.1 .. 2.0 s
    assert issuer.stats.stopped_early == "asked"


def test_virtual_time_stands_still_while_tasks_run_and_jumps_when_all_wait() -> None:
    clock = VirtualClock(0)

    async def main() -> list[int]:
        seen = [clock.now_ns()]
        for _ in range(1000):
            await asyncio.sleep(0)  # runnable all along: no time passes
        seen.append(clock.now_ns())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(clock.sleep_until(3 * S))
            tg.create_task(asyncio.sleep(2.5))  # asyncio's own timers are on the same clock
        seen.append(clock.now_ns())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3600):
                await clock.sleep_until(10**6 * S)
        seen.append(clock.now_ns())
        await clock.sleep_until(0)  # already past: returns at once
        return seen

    seen = _run(clock, main())
    assert seen[:3] == [0, 0, 3 * S]
    assert abs(seen[3] - 3603 * S) <= 1000  # asyncio.timeout is float seconds: within a microsecond

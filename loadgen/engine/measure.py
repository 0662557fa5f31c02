"""The measured part of a run: :func:`measure` issues the load (an issuer in this process, worker
processes, or multi-turn sessions), every record into one :class:`~loadgen.engine.sink.RecordSink`,
with the event loop's lag sampled and the live progress line; and :func:`warm_up`, before it.

The clock origin ``client.t0_ns`` is set here, just before the first measured request (worker
processes agree on theirs: :class:`~loadgen.engine.workers.WorkerPool`). Garbage collection is frozen
while measuring (:func:`~loadgen.engine.gcpause.gc_frozen`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.client.client import Client
from loadgen.engine.clock import REAL_CLOCK
from loadgen.engine.control import RunControl, SessionLanes
from loadgen.engine.gcpause import gc_frozen
from loadgen.engine.issuer import Issuer, IssueStats
from loadgen.engine.loopmon import LoopLagMonitor
from loadgen.engine.progress import live_view
from loadgen.engine.sink import RecordSink, RunObserver
from loadgen.engine.warmup import run_warmup
from loadgen.engine.workers import (
    WorkerJob,
    WorkerPool,
    WorkerResult,
    auto_workers,
    preconnect_count,
    split_trace,
)
from loadgen.errors import ConfigError
from loadgen.metrics.gaps import GapStore
from loadgen.metrics.health import ClientHealth, admission_times, assess
from loadgen.metrics.rows import Columns, FieldReader
from loadgen.records import RequestRecord
from loadgen.schedule.trace import Trace, cap_shares, seeded_rngs
from loadgen.settings import Scenario, Settings
from loadgen.workload.samples import Dataset
from loadgen.workload.tokens import TokenCounter

#: What a measurement gives: the finished records (a call, so that the caller can let the prompts go
#: before the report's views on the record table exist: a long run's peak of memory), the issue stats,
#: the client's health and the per-turn summary of multi-turn sessions.
Records = Callable[[], list[RequestRecord]]
Measured = tuple[Records, IssueStats, ClientHealth, dict[str, Any]]


async def warm_up(
    settings: Settings, *, client: Client, warm: Dataset, trace: Trace, out_dir: Path,
    say: Callable[[str], None],
) -> None:
    """Send the warm-up prompts (not measured) into ``warmup.jsonl``."""
    say(f"warm-up: {len(warm)} requests (not measured; prompts apart from the measured ones)")
    await run_warmup(settings, client, warm, trace, out_dir)


def choose_workers(settings: Settings, trace: Trace) -> int:
    """``settings.workers``, or enough processes for the expected chunk rate and streams."""
    if settings.workers is not None:
        return settings.workers
    if trace.open_loop and len(trace.offsets_ns) > 1 and trace.offsets_ns[-1] > 0:
        rate = len(trace.offsets_ns) / (trace.offsets_ns[-1] / 1e9)
        return auto_workers(rate * settings.output_len.mean, 0)
    if trace.open_loop:  # Offline: everything at once
        return auto_workers(0, len(trace.offsets_ns))
    return auto_workers(0, trace.streams * trace.samples_per_query)


async def measure(
    settings: Settings,
    *,
    client: Client,
    counter: TokenCounter,
    dataset: Dataset,
    trace: Trace,
    out_dir: Path,
    control: RunControl,
    observers: tuple[RunObserver, ...],
    gaps: GapStore,
    workers: int = 1,
    max_connections: int = 0,
) -> Measured:
    """Issue the measured load; returns the records (call it for the list), the issue stats, the
    client's health and the per-turn summary of multi-turn sessions (empty otherwise).
    ``requests.jsonl`` holds every record when this returns, also when it raises."""
    path = out_dir / "requests.jsonl"
    if settings.sessions is not None and settings.ray is not None:
        raise ConfigError("--ray runs open- and closed-loop scenarios; multi-turn and agentic sessions run "
                          "in one process here: drop --ray (or the sessions: block)")
    if settings.sessions is not None and settings.sessions.agentic:
        return await _agents(settings, client=client, counter=counter, path=path, observers=observers,
                             gaps=gaps, control=control)
    if settings.sessions is not None:
        return await _sessions(settings, client=client, counter=counter, path=path, observers=observers,
                               gaps=gaps, control=control)
    pooled = workers > 1 or settings.ray is not None
    sink = RecordSink(None if pooled else path, observers=observers, gaps=gaps,
                      max_error_rate=settings.max_error_rate, stop=control.stop)
    if pooled:
        records, stats, health = await _workers(
            settings, client=client, dataset=dataset, trace=trace, path=path, control=control,
            workers=workers, max_connections=max_connections, sink=sink,
        )
    else:
        records, stats, health = await _issuer(settings, client=client, dataset=dataset, trace=trace,
                                               control=control, sink=sink, path=path)
    return records, stats, health, {}


async def _issuer(
    settings: Settings, *, client: Client, dataset: Dataset, trace: Trace, control: RunControl,
    sink: RecordSink, path: Path | None = None,
) -> tuple[Records, IssueStats, ClientHealth]:
    """One issuer on this event loop."""
    issuer = Issuer(client, dataset, trace, sink.record, sink.on_start)
    await client.preconnect(preconnect_count(trace))
    control.measuring(issuer)  # from here an interrupt drains instead of cancelling the run
    monitor = LoopLagMonitor()
    progress = live_view(settings, issuer.stats, trace.planned_queries, sink.observers, path)
    try:
        async with gc_frozen(), asyncio.TaskGroup() as tg:
            client.t0_ns = time.perf_counter_ns()
            monitor.start(tg)
            progress_task = tg.create_task(progress) if progress else None
            try:
                await issuer.run()
            finally:
                monitor.stop()
                if progress_task is not None:
                    progress_task.cancel()
    finally:
        control.measuring(None)
        sink.close()
    health = _health(settings, sink.columns(), monitor.lags_ns, [monitor.cpu_cores],
                     [monitor.process_cpu_cores])
    return sink.records, issuer.stats, health


async def _workers(
    settings: Settings, *, client: Client, dataset: Dataset, trace: Trace, path: Path, control: RunControl,
    workers: int, max_connections: int, sink: RecordSink,
) -> tuple[Records, IssueStats, ClientHealth]:
    """Worker processes; each appends its records to ``path``, which the pool tails into the sink."""
    parts = split_trace(trace, workers)
    # The starts happen in the workers, which report their in-flight counts every tick: observers that
    # can take a count get it (the exporter's loadgen_in_flight); request_started is never called here.
    counted = sink.in_flight_setters()

    def on_in_flight(n: int) -> None:
        for set_in_flight in counted:
            set_in_flight(n)

    per_worker_conns = max_connections // len(parts) + 8 if max_connections else 0
    jobs = [
        WorkerJob(worker=w, workers=len(parts), trace=sub, query_ids=ids, dataset=dataset,
                  opts=client.options, max_connections=per_worker_conns, records_path=path,
                  tokenizer=client.tokenizer, preconnect=preconnect_count(sub))
        for w, (sub, ids) in enumerate(parts)
    ]
    async def run_pool(pool: WorkerPool) -> list[WorkerResult]:
        control.measuring(pool)  # an interrupt before its t0 cancels the run (pool.measuring)
        progress = live_view(settings, pool.stats, trace.planned_queries, sink.observers, path)
        try:
            async with asyncio.TaskGroup() as tg:
                progress_task = tg.create_task(progress) if progress else None
                try:
                    return await pool.run(sink.keep, on_in_flight if counted else None)
                finally:
                    if progress_task is not None:
                        progress_task.cancel()
        finally:
            control.measuring(None)
            client.t0_ns = pool.t0_ns

    if settings.ray is None:
        pool = WorkerPool(jobs)
        results = await run_pool(pool)
    else:
        from loadgen.engine.cluster.pool import on_ray

        pool, results = await on_ray(settings.ray, jobs, path.parent, run_pool, quiet=not settings.progress)
    lags = np.concatenate([r.lags_ns for r in results]) if results else np.zeros(0, np.int64)
    health = _health(settings, sink.columns(), lags, [r.cpu_cores for r in results],
                     [r.process_cpu_cores for r in results])
    if settings.ray is not None:
        from loadgen.engine.cluster.certify import certify
        from loadgen.engine.cluster.pool import RayPool

        assert isinstance(pool, RayPool)
        done = sink.records()
        health = certify(health, done, results, pool.nodes,
                         lambda recs, lags, cpus: _health(settings, recs, lags, cpus))
        return lambda: done, pool.stats, health
    return sink.records, pool.stats, health


class _ThroughLanes:
    """The client, its requests sent through the session lanes (so an interrupt can cancel them)."""

    def __init__(self, client: Client, lanes: SessionLanes) -> None:
        self._client, self._lanes = client, lanes

    @property
    def t0_ns(self) -> int:
        return self._client.t0_ns

    async def fill(self, rec: RequestRecord, sample: Any, *, keep_text: bool = False) -> str | None:
        text: str | None = await self._lanes.send(self._client.fill(rec, sample, keep_text=keep_text))
        return text


async def _sessions(
    settings: Settings, *, client: Client, counter: TokenCounter, path: Path,
    observers: tuple[RunObserver, ...], gaps: GapStore, control: RunControl,
) -> Measured:
    """Multi-turn chat sessions (loadgen.workload.conversations): each user's history grows with the real
    replies."""
    from loadgen.workload.conversations import client_sender, plan_sessions, run_sessions, turn_summary

    assert settings.sessions is not None
    plan = plan_sessions(settings.sessions, settings, counter, seeded_rngs(settings.seed))
    stats = IssueStats()
    sink = RecordSink(path, observers=observers, gaps=gaps, count=stats)
    lanes = SessionLanes(stats)
    inner = client_sender(_ThroughLanes(client, lanes), counter, sink.record)

    async def send(messages: Any, output_len: int) -> tuple[RequestRecord, str]:
        sink.started()
        return await inner(messages, output_len)

    monitor = LoopLagMonitor()
    try:
        async with gc_frozen(), asyncio.TaskGroup() as tg:
            client.t0_ns = time.perf_counter_ns()
            monitor.start(tg)
            control.measuring(lanes)  # from here an interrupt ends the sessions instead of the run
            try:
                results = await run_sessions(plan, send, counter, stopping=lanes.stopping)
            finally:
                control.measuring(None)
                monitor.stop()
    finally:
        sink.close()
    summary = {"sessions_by_turn": {str(k): v for k, v in turn_summary(results).items()}}
    health = _health(settings, sink.columns(), monitor.lags_ns, [monitor.cpu_cores],
                     [monitor.process_cpu_cores])
    return sink.records, stats, health, summary


async def _agents(
    settings: Settings, *, client: Client, counter: TokenCounter, path: Path,
    observers: tuple[RunObserver, ...], gaps: GapStore, control: RunControl,
) -> Measured:
    """Agentic sessions (loadgen.workload.agentic): recorded or generated turns, each issued at the end
    of its session's previous turn plus its wait (that instant is the record's scheduled time, so a late
    issue shows as issue delay), with the session's id in the affinity header."""
    from loadgen.workload.agentic import read_agent_file, run_agents, session_summary, synthetic_agents
    from loadgen.workload.conversations import turn_summary

    spec = settings.sessions
    assert spec is not None
    sessions = (read_agent_file(spec.path, counter, spec) if spec.path is not None
                else synthetic_agents(spec, settings, counter, seeded_rngs(settings.seed)))
    stats = IssueStats()
    sink = RecordSink(path, observers=observers, gaps=gaps, count=stats)
    lanes = SessionLanes(stats)
    index = 0

    async def send(session: Any, turn: int, due: int) -> RequestRecord:
        nonlocal index
        rec = RequestRecord(index=index, sample=turn, query=index, scheduled_ns=due, sent_ns=0, end_ns=0)
        index += 1
        sink.started()
        headers = {spec.affinity_header: session.id} if spec.affinity_header else None
        try:
            await lanes.send(client.fill(rec, session.turns[turn].sample, headers=headers))
        finally:
            sink.record(rec)  # also a turn an interrupt cancelled: what it measured is kept
        return rec

    await client.preconnect(min(spec.users, len(sessions)))  # one connection per lane, before t0
    monitor = LoopLagMonitor()
    try:
        async with gc_frozen(), asyncio.TaskGroup() as tg:
            client.t0_ns = t0 = time.perf_counter_ns()
            monitor.start(tg)
            control.measuring(lanes)  # from here an interrupt ends the sessions instead of the run
            try:
                results = await run_agents(
                    sessions, send, parallel=spec.users, now_ns=lambda: time.perf_counter_ns() - t0,
                    sleep_until=lambda rel: REAL_CLOCK.sleep_until(rel + t0), stopping=lanes.stopping)
            finally:
                control.measuring(None)
                monitor.stop()
    finally:
        sink.close()
    summary = {"sessions_by_turn": {str(k): v for k, v in turn_summary(results).items()},  # type: ignore[arg-type]
               "sessions": session_summary(results, sessions, spec.users)}
    health = _health(settings, sink.columns(), monitor.lags_ns, [monitor.cpu_cores],
                     [monitor.process_cpu_cores])
    return sink.records, stats, health, summary


def _health(
    settings: Settings, records: Sequence[RequestRecord] | Columns, lags_ns: np.ndarray,
    cpus: list[float | None], process_cpus: list[float | None] | None = None,
) -> ClientHealth:
    """The verdict on the client; ``cpus`` are the loops' threads' (judged), ``process_cpus`` the
    processes' (reported as ``process_cpu_cores``, the busiest)."""
    f = FieldReader(records)  # numpy columns, not a Python int per value (a long run's peak memory)
    sent_ns = f.get("sent_ns")
    keep = sent_ns != 0  # requests that went out
    sent, scheduled, end = sent_ns[keep], f.get("scheduled_ns")[keep], f.get("end_ns")[keep]
    delays = sent - scheduled
    known = [c for c in cpus if c is not None]
    closed = None
    if not settings.scenario.open_loop:
        closed = (end - sent)[end != 0]
    # under --max-concurrency a request is due when it got its slot (the wait was asked for)
    cap = settings.max_concurrency if settings.scenario.open_loop else None
    due = scheduled
    if cap is not None:
        due = admission_times(f.get("index")[keep], scheduled, np.maximum(end, sent),
                              cap_shares(cap, len(cpus)))
    first = f.get("first_token_ns", none=-1)[keep]
    ok = (first != -1) & f.no_error()[keep]
    from_due = (first - due)[ok]
    from_sent = (first - sent)[ok]
    waits = due - scheduled if cap is not None else None
    procs = [c for c in process_cpus or [] if c is not None]
    health = assess(delays, lags_ns, max(known) if known else None,
                  check_issue_delay=settings.scenario != Scenario.OFFLINE, cpu_per_worker=cpus,
                  issue_delay_limit_ms=settings.issue_delay_limit_ms, closed_loop_latencies_ns=closed,
                  ttft_from_scheduled_ns=from_due, ttft_from_sent_ns=from_sent, slot_wait_ns=waits,
                  max_concurrency=cap)
    return dataclasses.replace(health, process_cpu_cores=max(procs) if procs else None)

"""Worker processes: one trace, split across N processes, each with its own event loop.

Why: one Python event loop reads a few tens of thousands of chunks per second before its own lateness
shows up in TTFT and ITL. More load needs more cores, and more cores need more processes.

How, so that N workers measure exactly what one would:

- The trace is generated once, from the seed, in the parent (a Poisson process stays Poisson; workers
  that each drew their own schedule would multiply the rate). :func:`split_trace` deals open-loop
  queries round-robin (query ids kept) and closed-loop streams as evenly as possible.
- Every worker measures against the same clock origin ``t0``: ``time.perf_counter_ns()`` is
  CLOCK_MONOTONIC, one clock for every process on the host. The parent picks ``t0`` a little in the
  future once all workers are ready, so they start together.
- Each worker appends its records to the same ``requests.jsonl`` (``O_APPEND``; one ``write()`` per
  line, so lines never interleave), which is also how the parent sees them live (it tails the file)
  and what the final report is computed from: merged exactly as if one process had written them.

The worker boundary is a picklable :class:`WorkerJob` in, records in a JSONL file plus one
:class:`WorkerResult` out, and "stop"/"abort" messages in between — the same shape a Ray actor or a
remote host would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.client.client import Client, ClientOptions, make_session
from loadgen.engine.gcpause import gc_frozen
from loadgen.engine.issuer import Issuer, IssueStats
from loadgen.engine.loopmon import LoopLagMonitor
from loadgen.records import RecordWriter, RequestRecord
from loadgen.schedule.trace import Trace, cap_shares
from loadgen.workload.samples import Dataset
from loadgen.workload.tokens import TokenCounter

READY_TIMEOUT_S = 120.0
START_MARGIN_NS = 300_000_000  # t0 this far after the last worker said ready
TICK_S = 0.5


@dataclass(frozen=True)
class WorkerJob:
    """Everything one worker needs; picklable."""

    worker: int
    workers: int
    trace: Trace
    query_ids: list[int] | None  # open loop: original ids of this worker's queries
    dataset: Dataset
    opts: ClientOptions
    max_connections: int
    records_path: Path
    tokenizer: TokenCounter | None = None
    preconnect: int = 0  # connections to open before the start


@dataclass
class WorkerResult:
    worker: int
    stats: IssueStats
    lags_ns: np.ndarray
    cpu_cores: float | None  # the job loop's thread (see loopmon)
    error: str | None = None
    process_cpu_cores: float | None = None


def split_trace(trace: Trace, n: int) -> list[tuple[Trace, list[int] | None]]:
    """``n`` sub-traces whose union is ``trace``: open-loop queries round-robin (with their original
    ids) and an in-flight cap split with them (at most ``cap`` parts), closed-loop streams and query
    counts divided as evenly as possible."""
    if n <= 1:
        return [(trace, None)]
    parts: list[tuple[Trace, list[int] | None]] = []
    if trace.open_loop:
        ids = np.arange(len(trace.offsets_ns))
        cap = trace.max_in_flight
        n = min(n, cap) if cap else n  # an in-flight cap is split: every worker needs a slot
        if n <= 1:
            return [(trace, None)]
        shares = cap_shares(cap, n) if cap else [None] * n
        for w in range(n):
            mine = ids[w::n]
            sub = dataclasses.replace(
                trace, offsets_ns=trace.offsets_ns[mine], order=trace.order[mine],
                min_queries=len(mine), max_in_flight=shares[w],
            )
            parts.append((sub, mine.tolist()))
        return parts
    # Closed loop: each worker runs the issuer's stop rule on its streams with its share of the count
    # (every stream stops after a query issued at or after min_duration, once its worker's share is
    # met). The shares sum to min_queries exactly (largest remainder), so a count-bound run issues
    # min_queries in all, as one process would, and a duration-bound one has every stream's last issue
    # at or after min_duration, as one process would.
    n = min(n, trace.streams)
    streams = [trace.streams // n + (1 if w < trace.streams % n else 0) for w in range(n)]
    exact = [trace.min_queries * s / trace.streams for s in streams]
    shares = [math.floor(x) for x in exact]
    by_remainder = sorted(range(n), key=lambda w: (shares[w] - exact[w], w))
    for w in by_remainder[: trace.min_queries - sum(shares)]:
        shares[w] += 1
    for s, share in zip(streams, shares, strict=True):
        parts.append((dataclasses.replace(trace, streams=s, min_queries=share), None))
    return parts


def preconnect_count(trace: Trace) -> int:
    """Connections worth opening before t0: the streams of a closed loop; for an open loop about a
    quarter second of arrivals (at least 8, at most 256)."""
    if not trace.open_loop:
        return min(trace.streams * trace.samples_per_query, 1024)
    n = len(trace.offsets_ns)
    span_s = float(trace.offsets_ns[-1]) / 1e9 if n else 0.0
    if span_s <= 0:
        return min(n, 256)
    return int(min(n, max(8, n / span_s / 4), 256))


def auto_workers(expected_chunks_per_s: float, streams: float, cores: int | None = None) -> int:
    """Workers for a load: one per ~20,000 chunks/s or per 512 concurrent streams, at most the cores
    left after one for the rest of the machine (the server may be local), at least one."""
    cores = cores or len(os.sched_getaffinity(0))
    need = max(math.ceil(expected_chunks_per_s / 20_000), math.ceil(streams / 512), 1)
    return max(1, min(need, cores - 1))


# ---- worker side -----------------------------------------------------------------------------------


def worker_main(conn: Connection) -> None:
    """Entry point of a worker process (spawned); its job is the first message on ``conn``.

    The parent decides what a Ctrl-C means and sends "stop"/"abort": a worker ignores SIGINT. The
    terminal sends it to the whole foreground process group, workers included, also while they start:
    the parent starts them with SIGINT blocked (a blocked signal stays pending across ``exec``), so one
    that comes before this line is discarded here instead of killing the interpreter mid-import.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        kind, job = conn.recv()
    except (EOFError, OSError):  # the parent gave up before sending the job
        return
    assert kind == "job", kind
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            result = runner.run(_worker(conn, job))
        except Exception as exc:  # report the bug to the parent, which fails the run loudly
            result = WorkerResult(job.worker, IssueStats(), np.zeros(0, np.int64), None,
                                  f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError):  # the parent went away: nobody to tell
        conn.send(("done", result))
    conn.close()


class JobControl:
    """What reaches a running job from its parent, on the job's event loop: ``start`` (the clock origin
    ``t0``, in this host's ``perf_counter_ns``), ``stop``/``abort`` (passed to the issuer), and
    :meth:`lost` (the parent went away)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.start: asyncio.Future[int | None] = loop.create_future()
        self.issuer: Issuer | None = None

    def handle(self, kind: str, arg: Any) -> None:
        if kind == "start" and not self.start.done():
            self.start.set_result(arg)
        elif kind == "stop" and self.issuer is not None:
            self.issuer.stop(arg)
        elif kind == "abort" and self.issuer is not None:
            self.issuer.abort(arg)

    def lost(self, why: str) -> None:
        if self.issuer is not None:
            self.issuer.abort(why)
        if not self.start.done():  # before the start: there is nothing to run
            self.start.set_result(None)


async def run_job(job: WorkerJob, send: Callable[[str, Any], None], control: JobControl) -> WorkerResult:
    """One worker's share of the run, on this event loop: connect, say ``ready``, wait for ``start``,
    issue (a ``tick`` of (issued, in flight) every :data:`TICK_S`), and return the result. Records go to
    ``job.records_path`` as they complete. A process worker and a Ray actor both run this."""
    writer = RecordWriter(job.records_path)
    async with make_session(job.opts, job.max_connections) as session:
        client = Client(session if job.opts.transport == "aiohttp" else None, job.opts,
                        tokenizer=job.tokenizer)
        issuer = control.issuer = Issuer(
            client, job.dataset, job.trace, writer.write, query_ids=job.query_ids,
            id_offset=job.worker, id_stride=job.workers,
        )
        await client.preconnect(job.preconnect)
        send("ready", job.worker)
        t0_ns = await control.start
        monitor = LoopLagMonitor()
        try:
            if t0_ns is None:
                return WorkerResult(job.worker, issuer.stats, np.zeros(0, np.int64), None)
            client.t0_ns = t0_ns
            async with gc_frozen(), asyncio.TaskGroup() as tg:
                monitor.start(tg)
                ticker = tg.create_task(_tick(send, issuer))
                try:
                    await issuer.run()
                finally:
                    monitor.stop()
                    ticker.cancel()
        finally:
            writer.close()
            await client.close()
    return WorkerResult(job.worker, issuer.stats, monitor.lags_ns, monitor.cpu_cores,
                        process_cpu_cores=monitor.process_cpu_cores)


async def _worker(conn: Connection, job: WorkerJob) -> WorkerResult:
    loop = asyncio.get_running_loop()
    control = JobControl(loop)

    def on_message() -> None:
        try:
            kind, arg = conn.recv()
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            control.lost("the parent process went away")
            return
        control.handle(kind, arg)

    def send(kind: str, arg: Any) -> None:
        with contextlib.suppress(OSError):
            conn.send((kind, arg))

    loop.add_reader(conn.fileno(), on_message)
    try:
        return await run_job(job, send, control)
    finally:
        loop.remove_reader(conn.fileno())


async def _tick(send: Callable[[str, Any], None], issuer: Issuer) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        st = issuer.stats
        send("tick", (st.issued, st.in_flight))


# ---- parent side -----------------------------------------------------------------------------------


@dataclass
class WorkerPool:
    """Runs jobs in spawned processes; ``stop``/``abort`` reach every worker (RunControl calls them)."""

    jobs: list[WorkerJob]
    stats: IssueStats = field(default_factory=IssueStats)
    _conns: list[Connection] = field(default_factory=list)
    _procs: list[Any] = field(default_factory=list)
    _issued: dict[int, tuple[int, int]] = field(default_factory=dict)
    _on_in_flight: Callable[[int], None] | None = None
    t0_ns: int = 0

    @property
    def measuring(self) -> bool:
        """The workers' clock has started (before ``t0`` nothing can have been issued)."""
        return self.t0_ns != 0 and time.perf_counter_ns() >= self.t0_ns

    def _send_all(self, kind: str, arg: Any) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send((kind, arg))

    def stop(self, reason: str) -> None:
        if self.stats.stopped_early is None:
            self.stats.stopped_early = reason
        self._send_all("stop", reason)

    def abort(self, reason: str) -> None:
        if self.stats.stopped_early is None:
            self.stats.stopped_early = reason
        self._send_all("abort", reason)

    async def run(
        self, on_record: Callable[[RequestRecord], None], on_in_flight: Callable[[int], None] | None = None
    ) -> list[WorkerResult]:
        """Start the workers, release them together at a common ``t0``, tail their records into
        ``on_record`` and return each worker's result (raises if a worker failed).

        ``on_in_flight(n)``: the requests in flight in all workers, each worker's own count as of its
        last tick (at most :data:`TICK_S` old), after every batch of records; 0 once all are done."""
        self._on_in_flight = on_in_flight
        loop = asyncio.get_running_loop()
        self._results: dict[int, WorkerResult] = {}
        self._ready: set[int] = set()
        self._all_ready: asyncio.Future[None] = loop.create_future()
        self._all_done: asyncio.Future[None] = loop.create_future()
        tail = JsonlTail(self.jobs[0].records_path)
        try:
            self._start_processes()
            for conn in self._conns:
                loop.add_reader(conn.fileno(), self._on_message, conn)
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self._all_ready
            self.t0_ns = time.perf_counter_ns() + START_MARGIN_NS
            self._send_all("start", self.t0_ns)
            while not self._all_done.done():
                await asyncio.wait([self._all_done], timeout=TICK_S)
                self._absorb(tail, on_record)
            self._all_done.result()
        finally:
            for conn in self._conns:
                with contextlib.suppress(OSError, ValueError):
                    loop.remove_reader(conn.fileno())
                conn.close()  # a worker still running sees end-of-file and aborts (the parent went away)
            for proc in self._procs:
                await asyncio.to_thread(proc.join, 10)
                if proc.is_alive():
                    proc.kill()
        self._absorb(tail, on_record)
        results = self._merge()
        if on_in_flight is not None:
            on_in_flight(0)
        return results

    def _start_processes(self) -> None:
        """Spawn every worker, then hand each its job over its pipe.

        The job (trace and prompts: megabytes) is not an argument of the process: ``Process.start()``
        writes its arguments into a pipe whose read end the parent keeps open until the write is done, so
        a worker that died before reading them all would hang the parent for ever. Over the
        ``Connection``, whose other end only the worker holds, a dead worker is a ``BrokenPipeError``.
        Sent from the loop's thread, like every other message (one writer per pipe): it blocks until
        the worker reads it, while the workers start in parallel.
        """
        from multiprocessing import resource_tracker

        ctx = mp.get_context("spawn")
        for job in self.jobs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child,), daemon=True,
                               name=f"loadgen-worker-{job.worker}")
            self._conns.append(parent)
            # Started here, not inside proc.start(): starting the tracker unblocks SIGINT afterwards
            # (CPython protects the tracker the same way), which would undo the block for this worker.
            resource_tracker.ensure_running()
            with _sigint_blocked():  # see worker_main; the mask is inherited through fork and exec
                proc.start()
            self._procs.append(proc)
            child.close()
        for conn, job, proc in zip(self._conns, self.jobs, self._procs, strict=True):
            try:
                conn.send(("job", job))
            except OSError as exc:  # BrokenPipeError, ConnectionResetError
                proc.join(5)
                raise RuntimeError(f"worker process {job.worker} exited during its start-up "
                                   f"(exit code {proc.exitcode})") from exc

    def _on_message(self, conn: Connection) -> None:
        try:
            kind, arg = conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            if not self._all_done.done() and len(self._results) < len(self.jobs):
                self._all_done.set_exception(RuntimeError("a worker process exited without a result"))
            return
        if kind == "ready":
            self._ready.add(arg)
            if len(self._ready) == len(self.jobs) and not self._all_ready.done():
                self._all_ready.set_result(None)
        elif kind == "tick":
            self._issued[id(conn)] = arg
        elif kind == "done":
            self._results[arg.worker] = arg
            self._issued[id(conn)] = (arg.stats.issued, 0)  # nothing of this worker's is in flight now
            asyncio.get_running_loop().remove_reader(conn.fileno())
            if len(self._results) == len(self.jobs) and not self._all_done.done():
                self._all_done.set_result(None)

    def _merge(self) -> list[WorkerResult]:
        results = [self._results[k] for k in sorted(self._results)]
        failed = [r.error for r in results if r.error]
        if failed:
            raise RuntimeError(f"worker process failed: {failed[0]}")
        merged = self.stats
        for r in results:
            merged.last_issue_ns = max(merged.last_issue_ns, r.stats.last_issue_ns)
            merged.issue_ended_ns = max(merged.issue_ended_ns, r.stats.issue_ended_ns)
            if r.stats.stopped_early and merged.stopped_early is None:
                merged.stopped_early = r.stats.stopped_early
        merged.issued = sum(r.stats.issued for r in results)
        merged.in_flight = 0
        return results

    def _absorb(self, tail: JsonlTail, on_record: Callable[[RequestRecord], None]) -> None:
        self._count(tail.read_new(), on_record)

    def _count(self, records: list[RequestRecord], on_record: Callable[[RequestRecord], None]) -> None:
        st = self.stats
        for rec in records:
            if rec.error_class is None:
                st.completed += 1
                st.output_tokens += rec.output_tokens
            else:
                st.failed += 1
                st.errors[rec.error_class] = st.errors.get(rec.error_class, 0) + 1
            on_record(rec)
        issued = sum(i for i, _ in self._issued.values())
        st.issued = max(issued, st.completed + st.failed)
        st.in_flight = sum(f for _, f in self._issued.values())
        if self._on_in_flight is not None:
            self._on_in_flight(st.in_flight)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread (a SIGINT meanwhile stays pending and is handled at the end)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class JsonlTail:
    """Reads the complete lines appended to a JSONL file since the last call."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pos = 0
        self._partial = b""

    def read_lines(self) -> bytes:
        """The complete lines appended since the last call, as bytes (b"" if none)."""
        try:
            with self._path.open("rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return b""
        self._pos += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return data[:cut]

    def read_new(self) -> list[RequestRecord]:
        return parse_lines(self.read_lines())


def parse_lines(data: bytes) -> list[RequestRecord]:
    import orjson

    return [RequestRecord.from_dict(orjson.loads(line)) for line in data.split(b"\n") if line.strip()]

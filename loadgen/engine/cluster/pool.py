"""The driver's side of a Ray run: :class:`RayPool`, a :class:`~loadgen.engine.workers.WorkerPool`
whose workers are Ray actors.

1. One actor per job, one CPU each, ``SPREAD`` over the nodes (Ray never gives two actors one CPU).
2. Each prepares its job (connects, preconnects) and says ready; then the driver measures each
   actor's clock offset (:mod:`.clock`) and starts every actor at the same instant ``t0`` of the
   driver's clock, told in the actor's own clock.
3. Every :data:`~loadgen.engine.workers.TICK_S` the driver polls each actor for the record lines
   written since the last poll and appends them to the run's one ``requests.jsonl``; tails are exact
   because every record comes back, not a histogram.
4. An actor that dies (its process or its node) is **lost**: the driver stops the others (they drain),
   reads what the lost one had written after its last poll from its node's record file (a Ray task
   pinned to that node; impossible if the node itself is gone, which the reason then says), and the
   run ends early with a reason naming the node: a partial, INVALID report that keeps every record
   that reached a file.
5. At the end the offsets are measured again, for each node's drift.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.engine.cluster.actor import LoadActor, read_records_from
from loadgen.engine.cluster.clock import ClockOffset, drift_ppm, measure_offset
from loadgen.engine.workers import (
    READY_TIMEOUT_S,
    START_MARGIN_NS,
    TICK_S,
    WorkerJob,
    WorkerPool,
    WorkerResult,
    parse_lines,
)
from loadgen.errors import ConfigError
from loadgen.records import RequestRecord

POLL_TIMEOUT_S = 30.0
PRECONNECT_FACTOR = 4
#: Test seam: "WORKER=NS,..." gives those workers' actors a clock skewed by NS (see :mod:`.clock`).
SKEW_ENV = "LOADGEN_TEST_CLOCK_SKEW_NS"


async def on_ray(address: str, jobs: list[WorkerJob], out_dir: Path,
                 run_pool: Callable[[WorkerPool], Awaitable[list[WorkerResult]]], *, quiet: bool = False
                 ) -> tuple[RayPool, list[WorkerResult]]:
    """Connect to (or start) Ray, check it has a CPU per job, and run the jobs there with ``run_pool``."""
    from loadgen.engine.cluster.local import free_cpus, ray_cluster

    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    with ray_cluster(address, out_dir, say) as where:
        free = free_cpus()
        if free < len(jobs):
            raise ConfigError(f"--ray {address}: the cluster has {free} free CPUs and {len(jobs)} workers "
                              f"need one each; give --workers {max(free, 1)} or add nodes")
        say(f"ray: {len(jobs)} actors on the cluster at {where}")
        pool = RayPool(jobs, skews_ns=_skews(os.environ.get(SKEW_ENV, "")))
        return pool, await run_pool(pool)


def _skews(text: str) -> dict[int, int]:
    pairs = (item.split("=") for item in text.split(",") if item.strip())
    return {int(w): int(ns) for w, ns in pairs}


@dataclass
class RayPool(WorkerPool):
    """``skews_ns``: worker → a clock skew its actor pretends to have (the test seam of :mod:`.clock`)."""

    skews_ns: dict[int, int] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)  # per actor: node, ip, offsets, lost
    lost: list[str] = field(default_factory=list)
    _actors: list[Any] = field(default_factory=list)
    _gone: set[int] = field(default_factory=set)
    _done: set[int] = field(default_factory=set)
    _infos: list[dict[str, Any]] = field(default_factory=list)
    _paths: list[str] = field(default_factory=list)
    _received: list[int] = field(default_factory=list)  # bytes of each actor's file taken so far
    _out: int = -1

    def _send_all(self, kind: str, arg: Any) -> None:
        for i, actor in enumerate(self._actors):
            if i not in self._gone:
                getattr(actor, kind).remote(arg)  # fire and forget: a dead actor is found by its poll

    async def run(
        self, on_record: Callable[[RequestRecord], None], on_in_flight: Callable[[int], None] | None = None
    ) -> list[WorkerResult]:
        import ray

        self._on_in_flight = on_in_flight
        self._results = {}
        run = uuid.uuid4().hex[:12]
        actor_cls = ray.remote(LoadActor)
        self._actors = [actor_cls.options(num_cpus=1, scheduling_strategy="SPREAD", max_concurrency=8)
                        .remote(run, self.skews_ns.get(job.worker, 0)) for job in self.jobs]
        self._out = os.open(self.jobs[0].records_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._received = [0] * len(self._actors)
        try:
            asked = asyncio.gather(*(a.info.remote() for a in self._actors))
            self._infos = infos = await asyncio.wait_for(asked, READY_TIMEOUT_S)
            # A connect in a young Ray worker process now and then waits 5-15 ms (seen on a 2-core host,
            # never in a plain process): actors open more connections ahead than a process would.
            jobs = [dataclasses.replace(job, preconnect=min(job.preconnect * PRECONNECT_FACTOR, 1024))
                    for job in self.jobs]
            self._paths = await asyncio.wait_for(asyncio.gather(
                *(a.prepare.remote(job) for a, job in zip(self._actors, jobs, strict=True))),
                READY_TIMEOUT_S)
            nices = await asyncio.gather(*(a.niceness.remote() for a in self._actors))
            for info, nice in zip(infos, nices, strict=True):
                info["niceness"] = nice
            start = [await asyncio.to_thread(measure_offset, tuple(i["echo"])) for i in infos]
            self.t0_ns = time.perf_counter_ns() + START_MARGIN_NS
            for actor, off in zip(self._actors, start, strict=True):
                actor.start.remote(self.t0_ns + off.offset_ns)
            while len(self._done | self._gone) < len(self._actors):
                await asyncio.sleep(TICK_S)
                await self._poll_all(on_record)
            for i in sorted(self._done):
                res: WorkerResult = await asyncio.wait_for(self._actors[i].result.remote(), POLL_TIMEOUT_S)
                self._results[res.worker] = res
            end = {i: await asyncio.to_thread(_offset_or_none, tuple(infos[i]["echo"]))
                   for i in sorted(self._done)}
            self.nodes = [_node_row(i, info, start[i], end.get(i), i in self._gone)
                          for i, info in enumerate(infos)]
        finally:
            os.close(self._out)
            for actor in self._actors:
                ray.kill(actor)
        results = self._merge()
        lost_issued = sum(self._issued.get(i, (0, 0))[0] for i in self._gone)
        self.stats.issued = max(self.stats.issued + lost_issued, self.stats.completed + self.stats.failed)
        if on_in_flight is not None:
            on_in_flight(0)
        return results

    async def _poll_all(self, on_record: Callable[[RequestRecord], None]) -> None:
        live = [i for i in range(len(self._actors)) if i not in self._done | self._gone]
        replies = await asyncio.gather(
            *(asyncio.wait_for(self._actors[i].poll.remote(), POLL_TIMEOUT_S) for i in live),
            return_exceptions=True)
        for i, reply in zip(live, replies, strict=True):
            if isinstance(reply, BaseException):
                await self._lose(i, reply, on_record)
                continue
            data, issued, in_flight, done = reply
            self._take(i, data, on_record)
            self._issued[i] = (issued, in_flight)
            if done:
                self._done.add(i)
        self._count([], on_record)  # the in-flight total after this round

    def _take(self, i: int, data: bytes, on_record: Callable[[RequestRecord], None]) -> None:
        if data:
            os.write(self._out, data)
            self._received[i] += len(data)
            self._count(parse_lines(data), on_record)

    async def _lose(self, i: int, exc: BaseException, on_record: Callable[[RequestRecord], None]) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._gone.add(i)
        issued = self._issued.get(i, (0, 0))[0]
        self._issued[i] = (issued, 0)
        info = self._infos[i]
        where = (f"worker {self.jobs[i].worker} on node {info['ip']} ({info['hostname']}, "
                 f"id {info['node'][:12]})")
        why = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:160]
        try:  # what it wrote after its last poll is still in its node's file, if the node lives
            reader = ray.remote(num_cpus=0)(read_records_from).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(info["node"], soft=False))
            rest = await asyncio.wait_for(reader.remote(self._paths[i], self._received[i]), POLL_TIMEOUT_S)
            self._take(i, rest, on_record)
            kept = "every record it had written was recovered from its node"
        except Exception:  # the node is gone too
            kept = "records it wrote after its last poll (at most 0.5 s of them) were lost with its node"
        reason = f"{where} was lost ({why}); {kept}"
        self.lost.append(reason)
        self.stop(reason)


def _offset_or_none(address: tuple[str, int]) -> ClockOffset | None:
    try:
        return measure_offset(address)
    except OSError:
        return None


def _node_row(i: int, info: dict[str, Any], start: ClockOffset, end: ClockOffset | None, lost: bool
              ) -> dict[str, Any]:
    return {"worker": i, "node": info["node"][:12], "ip": info["ip"], "hostname": info["hostname"],
            "pid": info["pid"], "clock_offset_ms": start.offset_ns / 1e6,
            "clock_uncertainty_ms": max(start.uncertainty_ns, end.uncertainty_ns if end else 0) / 1e6,
            "clock_drift_ppm": drift_ppm(start, end) if end else None, "lost": lost,
            "niceness": info.get("niceness")}

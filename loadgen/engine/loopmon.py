"""Samples the client's own load while measuring: event-loop lag and the process's CPU use.

The numbers feed the client-limited verdict (:func:`loadgen.metrics.health.assess`):

- event-loop lag: every ``interval_s`` a callback is queued with ``call_soon``; the time until it runs
  is how long a chunk that arrived at that moment would have waited to be timestamped;
- CPU: the event loop's thread's CPU time over wall time between :meth:`LoopLagMonitor.start` and
  :meth:`stop`, in cores (1.0 = the loop's thread never idle). The loop's thread, not the process: the
  helper threads beside it (GPU telemetry, the exporter's HTTP server, a Ray actor's gRPC threads) run
  on other cores, and what they take from the loop through the GIL shows as loop lag and issue delay,
  which the verdict checks too. Both calls must come from the loop's thread (they do: ``start`` and
  ``stop`` are called from the measurement's coroutine). The process's CPU is kept too
  (``process_cpu_cores``, reported, not judged): it is what an overhead benchmark compares.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np


class LoopLagMonitor:
    """Samples event-loop lag every ``interval_s`` until :meth:`stop`; bounded to ``max_samples``."""

    def __init__(self, interval_s: float = 0.02, max_samples: int = 200_000) -> None:
        self._interval = interval_s
        self._lags: list[int] = []
        self._max = max_samples
        self._task: asyncio.Task[None] | None = None
        self._cpu0 = 0.0
        self._wall0 = 0
        self.cpu_cores: float | None = None  # the loop's thread
        self.process_cpu_cores: float | None = None  # the whole process, helper threads included
        self._proc0 = 0.0

    def start(self, tg: asyncio.TaskGroup) -> None:
        self._cpu0 = time.thread_time()
        self._proc0 = time.process_time()
        self._wall0 = time.perf_counter_ns()
        self._task = tg.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        lags = self._lags
        while len(lags) < self._max:
            await asyncio.sleep(self._interval)
            fut: asyncio.Future[int] = loop.create_future()
            loop.call_soon(_resolve_lag, fut, time.perf_counter_ns())
            lags.append(await fut)

    def stop(self) -> None:
        wall = (time.perf_counter_ns() - self._wall0) / 1e9
        if wall > 0:
            self.cpu_cores = (time.thread_time() - self._cpu0) / wall
            self.process_cpu_cores = (time.process_time() - self._proc0) / wall
        if self._task is not None:
            self._task.cancel()

    @property
    def lags_ns(self) -> np.ndarray:
        return np.asarray(self._lags, dtype=np.int64)


def _resolve_lag(fut: asyncio.Future[int], queued_ns: int) -> None:
    if not fut.done():
        fut.set_result(time.perf_counter_ns() - queued_ns)

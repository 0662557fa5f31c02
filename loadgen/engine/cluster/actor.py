"""The Ray actor: one worker's job (:func:`loadgen.engine.workers.run_job`) on its own event loop.

Ray calls the actor's methods on a small thread pool (``max_concurrency``); the job runs on an event
loop of its own, in a thread the actor starts, so a ``poll`` never waits behind a request and the
measurement never waits behind a call. Messages cross with ``call_soon_threadsafe``. Records go to a
file on the actor's node (``<tmp>/loadgen-ray/<run>/worker-N.jsonl``, one ``write()`` per line, as a
process worker's), which :meth:`LoadActor.poll` returns piece by piece: what an actor had written
before it died is still there for :func:`read_records_from`, run on its node.

The class is plain Python; :mod:`.pool` wraps it with ``ray.remote`` (Ray is imported only there and
inside the methods, so this module imports without Ray).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.engine.cluster.clock import TimeEcho, unnice
from loadgen.engine.issuer import IssueStats
from loadgen.engine.workers import READY_TIMEOUT_S, JobControl, JsonlTail, WorkerJob, WorkerResult, run_job


def records_path(run: str, worker: int) -> Path:
    return Path(tempfile.gettempdir()) / "loadgen-ray" / run / f"worker-{worker}.jsonl"


def read_records_from(path: str, offset: int) -> bytes:
    """The complete lines of a worker's record file from byte ``offset`` on (run on its node)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return b""
    return data[: data.rfind(b"\n") + 1]


class LoadActor:
    """One worker on a cluster node; ``skew_ns`` is the clock test seam (see :mod:`.clock`)."""

    def __init__(self, run: str, skew_ns: int = 0) -> None:
        import ray

        self._run = run
        self._ip = ray.util.get_node_ip_address()
        self._node = ray.get_runtime_context().get_node_id()
        self._echo = TimeEcho(self._ip, skew_ns)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._control: JobControl | None = None
        self._tail: JsonlTail | None = None
        self._tick = (0, 0)
        self._result: WorkerResult | None = None
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._nice: int | None = None

    def info(self) -> dict[str, Any]:
        return {"node": self._node, "ip": self._ip, "hostname": socket.gethostname(), "pid": os.getpid(),
                "echo": list(self._echo.address)}

    def prepare(self, job: WorkerJob) -> str:
        """Start the job's loop; return once it is connected and ready (the record file's path)."""
        path = records_path(self._run, job.worker)
        path.parent.mkdir(parents=True, exist_ok=True)
        job = dataclasses.replace(job, records_path=path)
        self._tail = JsonlTail(path)
        self._thread = threading.Thread(target=self._main, args=(job,), name="loadgen-job", daemon=True)
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT_S) and not self._finished.is_set():
            raise TimeoutError(f"worker {job.worker} did not get ready in {READY_TIMEOUT_S:.0f} s")
        if self._result is not None and self._result.error:
            raise RuntimeError(self._result.error)
        return str(path)

    def _main(self, job: WorkerJob) -> None:
        self._nice = unnice()
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        self._loop = loop
        self._control = JobControl(loop)
        try:
            self._result = loop.run_until_complete(run_job(job, self._send, self._control))
        except Exception as exc:  # reported to the driver with the result
            self._result = WorkerResult(job.worker, IssueStats(), np.zeros(0, np.int64), None,
                                        f"{type(exc).__name__}: {exc}")
        finally:
            loop.close()
            self._finished.set()
            self._ready.set()

    def _send(self, kind: str, arg: Any) -> None:
        if kind == "ready":
            self._ready.set()
        elif kind == "tick":
            self._tick = arg

    def _post(self, kind: str, arg: Any) -> None:
        if self._loop is not None and self._control is not None and not self._finished.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the job is over
                self._loop.call_soon_threadsafe(self._control.handle, kind, arg)

    def start(self, t0_ns: int) -> None:
        """Start at ``t0_ns`` of this actor's clock (the driver's ``t0`` plus the measured offset)."""
        self._post("start", t0_ns - self._echo.skew_ns)

    def stop(self, reason: str) -> None:
        self._post("stop", reason)

    def abort(self, reason: str) -> None:
        self._post("abort", reason)

    def niceness(self) -> int | None:
        """The job thread's niceness (0 unless Ray's 15 could not be lowered: no CAP_SYS_NICE)."""
        return self._nice

    def poll(self) -> tuple[bytes, int, int, bool]:
        """(complete record lines since the last poll, issued, in flight, finished). Once finished is
        True the lines returned are the file's last."""
        done = self._finished.is_set()
        data = self._tail.read_lines() if self._tail is not None else b""
        issued, in_flight = self._tick
        if done and self._result is not None:
            issued, in_flight = self._result.stats.issued, 0
        return data, issued, in_flight, done

    def result(self) -> WorkerResult:
        self._finished.wait()
        assert self._result is not None
        return self._result

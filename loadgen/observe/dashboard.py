"""The live terminal dashboard: what a person watches to decide whether to stop a run.

Two processes, so that drawing costs the measurement nothing: :class:`Dashboard` lives in the
measuring process and does almost nothing there; the drawing process
(:mod:`loadgen.observe.dashdraw`, stdout the terminal) tails ``requests.jsonl`` for the records, keeps
the numbers (:mod:`loadgen.observe.dashview`) and draws them with rich.

In the measuring process: as a run observer its per-request methods are empty; its :meth:`Dashboard.live`
coroutine replaces the progress line for the measured window (``loadgen.engine.progress.live_view``)
and every ``1/fps`` s (at most 4 Hz) sends the run's counters, one event-loop lag sample, the CPU
seconds of the client's processes, the latest server scrape and GPU power: one non-blocking write of
a few hundred bytes (a frame is dropped, never waited for, when the drawing process lags). While it
runs, this process's stderr goes to the drawing process, which prints it above the frame.

Keys (when stdin is a terminal, read without Enter; Ctrl-C keeps working): ``q`` stops issuing and
lets the requests in flight finish, as a first Ctrl-C does (a partial report, exit 130); ``x`` also
cancels the requests in flight, as a second Ctrl-C does. The terminal's modes are restored on every
way out (end, interrupt, error); the drawing process restores the cursor, also when this process
dies (it sees the end of its pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing
import os
import subprocess
import sys
import termios
import time
import tty
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

from loadgen.observe.dashdraw import pack
from loadgen.observe.dashview import Counts, RunCounters, RunShape, server_view
from loadgen.records import RequestRecord
from loadgen.schedule.length import Expectation
from loadgen.settings import Scenario, Settings

MAX_FPS = 4.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_ATOMIC = 4096  # PIPE_BUF: a write this small to a pipe is all or nothing


def shape_from(settings: Settings, expectation: Expectation | None = None) -> RunShape:
    """The run's shape for the model: its expected length and the bound that sets it, SLOs."""
    slo = settings.effective_slo
    bounds = {"num_requests": f"--num-requests {settings.num_requests}",
              "duration_s": f"--duration {settings.duration_s:g} s"}
    bound = "" if expectation is None else bounds.get(expectation.bound, expectation.bound)
    return RunShape(
        expected_s=None if expectation is None else expectation.seconds, bound=bound,
        max_duration_s=None if settings.scenario.open_loop else settings.hard_stop_s,
        target_rps=settings.qps, issue_delay_limit_ms=settings.issue_delay_limit_ms,
        slo_ms={k: v for k, v in (("ttft", slo.ttft_ms), ("tpot", slo.tpot_ms)) if v},
        open_loop=settings.scenario.open_loop, check_issue_delay=settings.scenario != Scenario.OFFLINE,
    )


class _PipeText(io.TextIOBase):
    """This process's stderr while the dashboard runs: text goes to the drawing process."""

    def __init__(self, send: Any, fallback: Any) -> None:
        self._send = send
        self._fallback = fallback

    def write(self, s: str | bytes) -> int:
        if isinstance(s, bytes):  # click.echo writes bytes to a stream it finds no encoding for
            s = s.decode(errors="replace")
        for i in range(0, len(s), 1000):  # ≤ 4 KiB a message: each write is whole or refused
            if not self._send(("text", s[i:i + 1000])):  # never wait for the drawing process
                self._fallback.write(s[i:i + 1000])
        return len(s)

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class Dashboard:
    """Observer + live view. ``control`` (a ``loadgen.engine.runner.RunControl``) receives the keys."""

    def __init__(self, shape: RunShape, *, control: Any = None, fps: float = MAX_FPS, keys: bool = True,
                 command: tuple[str, ...] = (sys.executable, "-m", "loadgen.observe.dashdraw")) -> None:
        self.shape = shape
        self.control = control
        self.period_s = 1.0 / min(max(fps, 0.1), MAX_FPS)
        self.keys = keys
        self.command = command
        self.frames = 0
        self.dropped = 0
        self.send_ns = 0  # time this process spent on the dashboard per frame, summed
        self._scraper: Any = None
        self._sampler: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lags: list[int] = []
        self._worker_cpu: dict[int, float] = {}

    def spawn(self) -> None:
        """Start the drawing process now (its imports take a few hundred ms of CPU: the CLI calls this
        before the run, so that cost falls outside the measured window). It waits for the first frame."""
        if self._proc is None:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, close_fds=True)
            assert self._proc.stdin is not None
            os.set_blocking(self._proc.stdin.fileno(), False)

    # ---- RunObserver: nothing on the per-request path ---------------------------------------------

    def request_started(self) -> None:
        return None

    def request_finished(self, record: RequestRecord) -> None:
        return None

    def set_in_flight(self, n: int) -> None:
        return None  # the counts come in the pool's stats

    def attach(self, *, scraper: Any = None, sampler: Any = None) -> None:
        """The run's server scraper and GPU sampler, when it has them (read at each frame)."""
        self._scraper, self._sampler = scraper, sampler

    # ---- the live view ------------------------------------------------------------------------------

    def live(self, stats: RunCounters, planned: int | None, records: Path | None = None
             ) -> Coroutine[Any, Any, None]:
        if planned and not self.shape.planned:
            self.shape.planned = planned
        return self._run(stats, records)

    def _send(self, message: tuple[Any, ...], *, wait: bool = False) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return False
        data = pack(message)
        fd = proc.stdin.fileno()
        try:
            if wait or len(data) > _ATOMIC:
                os.set_blocking(fd, True)
                try:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                finally:
                    os.set_blocking(fd, False)
            else:
                os.write(fd, data)
        except BlockingIOError:
            self.dropped += 1  # the drawing process is behind: drop this frame, never wait
            return False
        except (BrokenPipeError, OSError):
            return False
        return True

    async def _run(self, stats: RunCounters, records: Path | None) -> None:
        loop = asyncio.get_running_loop()
        self.spawn()
        self._send(("start", self.shape, str(records or "")), wait=True)
        try:
            with self._key_reader(loop), contextlib.redirect_stderr(_PipeText(self._send, sys.stderr)):
                try:
                    # Worker processes take a while to start: the clock starts with the first issue.
                    started = time.perf_counter_ns()
                    while not stats.issued and time.perf_counter_ns() - started < 30e9:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)  # (IssueStats is a plain counter: no event to wait on)
                    self._send(("t0", time.perf_counter_ns(), self._cpu_seconds(), _counts(stats)), wait=True)
                    while True:
                        await asyncio.sleep(self.period_s)
                        self._lags.append(await _loop_lag(loop))
                        self._tick(stats)
                finally:  # cancelled when the run ends: the final numbers stay on the screen
                    self._tick(stats, wait=True)
        finally:
            self._finish()

    def _tick(self, stats: RunCounters, *, wait: bool = False) -> None:
        t = time.perf_counter_ns()
        if self._send(("tick", t, _counts(stats), self._lags, self._cpu_seconds(), self._server(),
                       self._gpu(), self._state()), wait=wait):
            self._lags = []
            self.frames += 1
        self.send_ns += time.perf_counter_ns() - t

    def _finish(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            os.set_blocking(proc.stdin.fileno(), True)  # type: ignore[union-attr]
            proc.stdin.write(pack(("end",)))  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=5)  # its last frame is on the screen before the report is printed
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            sys.stdout.write("\x1b[?25h\n")  # it hid the cursor and had no time to show it again
            sys.stdout.flush()

    def _state(self) -> str:
        interrupts = getattr(self.control, "interrupts", 0)
        if interrupts == 1:
            return "stopping: no more issues; the requests in flight finish (x: cancel them)"
        if interrupts >= 2:
            return "aborting: cancelling the requests in flight"
        return "measuring"

    def _server(self) -> Any:
        scr = self._scraper
        if scr is None or getattr(scr, "after", None) is None:
            return None
        before = scr.before.scalars if getattr(scr, "before", None) is not None else None
        return server_view(before, scr.after.scalars)

    def _gpu(self) -> float | None:
        return self._sampler.latest_power_w() if self._sampler is not None else None

    def _cpu_seconds(self) -> tuple[float, ...] | None:
        """CPU seconds of each client process: this one, or each worker process (spawned by the pool;
        a worker that has exited keeps its last reading, so a window's difference stays per worker)."""
        for proc in multiprocessing.active_children():
            if proc.pid is None:
                continue
            try:
                with open(f"/proc/{proc.pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            self._worker_cpu[proc.pid] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        if not self._worker_cpu:
            return (time.process_time(),)
        return tuple(self._worker_cpu.values())

    # ---- keys ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _key_reader(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        if not self.keys or self.control is None or not sys.stdin.isatty():
            yield
            return
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)  # one key at a time, not echoed; Ctrl-C still raises SIGINT
        loop.add_reader(fd, self._on_keys, fd)
        try:
            yield
        finally:
            loop.remove_reader(fd)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def _on_keys(self, fd: int) -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        for ch in data.decode(errors="ignore").lower():
            self.key(ch)

    def key(self, ch: str) -> None:
        """``q``: as a first Ctrl-C (drain); ``x``: as a second (cancel the requests in flight)."""
        control = self.control
        if control is None:
            return
        if ch == "q":
            control.interrupt("key q")
        elif ch == "x":
            while control.interrupts < 2:
                control.interrupt("key x")


def _counts(stats: RunCounters) -> Counts:
    return Counts(stats.issued, stats.completed, stats.failed, stats.in_flight, stats.output_tokens)


async def _loop_lag(loop: asyncio.AbstractEventLoop) -> int:
    """How long a callback queued now waits to run, ns (as loadgen.metrics.health.LoopLagMonitor)."""
    fut: asyncio.Future[int] = loop.create_future()
    loop.call_soon(_resolve, fut, time.perf_counter_ns())
    return await fut


def _resolve(fut: asyncio.Future[int], queued_ns: int) -> None:
    if not fut.done():
        fut.set_result(time.perf_counter_ns() - queued_ns)

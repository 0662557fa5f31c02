"""The live terminal dashboard (rich): what a person watches to decide whether to stop a run.

:class:`Dashboard` is a run observer (``loadgen.engine.runner.RunObserver``): on the per-request path
it only appends each finished record to a list. Its :meth:`Dashboard.live` coroutine replaces the
progress line for the measured window (``loadgen.engine.progress.live_view``): every ``1/fps`` s
(at most 4 Hz) it takes the pending records in one batch (:class:`loadgen.observe.dashview.LiveModel`),
samples the event loop's lag and the CPU of the client's processes, reads the latest server scrape and
GPU sweep, and redraws. Cancelled at the run's end, it draws a last frame with the final counts and
leaves it on the screen above the report.

Keys (when stdin is a terminal, read without Enter; Ctrl-C keeps working): ``q`` stops issuing and
lets the requests in flight finish, as a first Ctrl-C does (a partial report, exit 130); ``x`` also
cancels the requests in flight, as a second Ctrl-C does. The terminal's modes are restored on every
way out (end, interrupt, error); rich restores the cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sys
import termios
import time
import tty
from collections.abc import Coroutine, Iterator
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadgen.engine.issuer import IssueStats
from loadgen.observe.dashview import Counts, LiveModel, Pcts, RunShape, View, server_view, sparkline
from loadgen.records import RequestRecord
from loadgen.schedule.length import Expectation
from loadgen.settings import Scenario, Settings

MAX_FPS = 4.0


def shape_from(settings: Settings, expectation: Expectation | None = None) -> RunShape:
    """The run's shape for the model: its planned count, expected length and bound, SLOs."""
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


class Dashboard:
    """Observer + live view. ``control`` (a ``loadgen.engine.runner.RunControl``) receives the keys."""

    def __init__(self, shape: RunShape, *, control: Any = None, console: Console | None = None,
                 fps: float = MAX_FPS, keys: bool = True) -> None:
        self.model = LiveModel(shape)
        self.control = control
        self.console = console or Console()
        self.period_s = 1.0 / min(max(fps, 0.1), MAX_FPS)
        self.keys = keys
        self.frames = 0
        self.frame_ns = 0  # time spent building and drawing frames (the dashboard's own cost)
        self._scraper: Any = None
        self._sampler: Any = None
        self._workers = False

    # ---- RunObserver --------------------------------------------------------------------------------

    def request_started(self) -> None:
        return None

    def request_finished(self, record: RequestRecord) -> None:
        self.model.add(record)

    def set_in_flight(self, n: int) -> None:
        self._workers = True  # called only when worker processes issue (the counts come in stats)

    def attach(self, *, scraper: Any = None, sampler: Any = None) -> None:
        """The run's server scraper and GPU sampler, when it has them (read at each frame)."""
        self._scraper, self._sampler = scraper, sampler

    # ---- the live view ------------------------------------------------------------------------------

    def live(self, stats: IssueStats, planned: int | None) -> Coroutine[Any, Any, None]:
        if planned and not self.model.shape.planned:
            self.model.shape.planned = planned
        return self._run(stats)

    async def _run(self, stats: IssueStats) -> None:
        loop = asyncio.get_running_loop()
        with self._key_reader(loop), Live(console=self.console, auto_refresh=False, transient=False,
                                          redirect_stdout=True, redirect_stderr=True) as live:
            try:
                # Worker processes take a while to start: the clock starts with the first issue.
                started = time.perf_counter_ns()
                while not stats.issued and time.perf_counter_ns() - started < 30e9:
                    live.update(Text("loadgen live: waiting for the first request ...", style="dim"),
                                refresh=True)
                    await asyncio.sleep(0.01)
                self.model.start(time.perf_counter_ns())
                while True:
                    await asyncio.sleep(self.period_s)
                    self.model.add_lag(await _loop_lag(loop))
                    self._draw(live, stats)
            finally:  # cancelled when the run ends: the final numbers stay on the screen
                self._draw(live, stats)

    def _draw(self, live: Live, stats: IssueStats) -> None:
        t = time.perf_counter_ns()
        live.update(render(self.view(stats), self.console.width), refresh=True)
        self.frames += 1
        self.frame_ns += time.perf_counter_ns() - t

    def view(self, stats: IssueStats) -> View:
        """One tick of the model from the run's counters and the sidecars (also used by tests)."""
        interrupts = getattr(self.control, "interrupts", 0)
        if interrupts == 1:
            self.model.state = "stopping: no more issues; the requests in flight finish (x: cancel them)"
        elif interrupts >= 2:
            self.model.state = "aborting: cancelling the requests in flight"
        counts = Counts(stats.issued, stats.completed, stats.failed, stats.in_flight, stats.output_tokens)
        scr = self._scraper
        server = None
        if scr is not None and getattr(scr, "after", None) is not None:
            before = scr.before.scalars if getattr(scr, "before", None) is not None else None
            server = server_view(before, scr.after.scalars)
        gpu = self._sampler.latest_power_w() if self._sampler is not None else None
        return self.model.tick(time.perf_counter_ns(), counts, cpu_s=self._cpu_seconds(), server=server,
                               gpu_power_w=gpu)

    def _cpu_seconds(self) -> tuple[float, ...] | None:
        if not self._workers:
            return (time.process_time(),)
        out = []
        for proc in multiprocessing.active_children():  # the worker processes (spawned by the pool)
            try:
                with open(f"/proc/{proc.pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                return None
            out.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        return tuple(out) or None

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


async def _loop_lag(loop: asyncio.AbstractEventLoop) -> int:
    """How long a callback queued now waits to run, ns (as loadgen.metrics.health.LoopLagMonitor)."""
    fut: asyncio.Future[int] = loop.create_future()
    queued = time.perf_counter_ns()
    loop.call_soon(_resolve, fut, queued)
    return await fut


def _resolve(fut: asyncio.Future[int], queued_ns: int) -> None:
    if not fut.done():
        fut.set_result(time.perf_counter_ns() - queued_ns)


# ---- drawing (pure: a View in, a rich renderable out) -----------------------------------------------

def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f} s" if v >= 10 else f"{v:.1f} s"


def _lat_row(name: str, pair: tuple[Pcts, Pcts]) -> list[str]:
    so_far, win = pair
    return [name, _ms(so_far.p50), _ms(so_far.p99), _ms(win.p50), _ms(win.p99)]


def render(view: View, width: int = 100) -> RenderableType:
    """The dashboard's frame. Labels are stable (tests read them from a captured pane)."""
    c = view.counts
    head = Text(overflow="fold")
    head.append("loadgen live ", style="bold")
    head.append(f"{view.elapsed_s:.1f} s elapsed · ")
    if view.time_left_s is not None:
        head.append(f"time left ~{_secs(view.time_left_s)} ({view.bound})")
    else:
        head.append(view.bound or view.state, style="yellow" if view.state != "measuring" else "")
    head.append("  [q stop · x abort]", style="dim")
    target = f" (target {view.target_rps:g}/s)" if view.target_rps else ""
    rate = Text(f"rate: offered {view.offered_rps:.3g}/s{target} · achieved {view.achieved_rps:.3g}/s · "
                f"output {view.output_tok_s:,.0f} tok/s (last {view.window_s:g} s)", overflow="fold")
    planned = f"/{view.planned}" if view.planned else ""
    reqs = Text(f"requests: completed {c.completed}{planned} · failed {c.failed} · in flight {c.in_flight}"
                f" · issued {c.issued}", overflow="fold")
    lines: list[RenderableType] = [head, rate, reqs]
    if view.errors:
        lines.append(Text("errors: " + ", ".join(f"{k} {n}" for k, n in view.errors), style="red",
                          overflow="fold"))
    table = Table(box=None, pad_edge=False, padding=(0, 1), show_edge=False)
    table.add_column("latency ms", no_wrap=True)
    for name in ("p50 all", "p99 all", f"p50 {view.window_s:g}s", f"p99 {view.window_s:g}s"):
        table.add_column(name, justify="right", no_wrap=True)
    for name, pair in (("TTFT", view.ttft), ("ITL", view.itl), ("TPOT", view.tpot)):
        table.add_row(*_lat_row(name, pair))
    lines.append(table)
    spark_w = max(min(width - 24, 60), 8)
    for label, key in (("achieved/s", "achieved_rps"), ("in flight", "in_flight"),
                       ("TTFT p50", "ttft_p50_ms")):
        series = view.history.get(key, ())
        top = max(series) if series else 0.0
        lines.append(Text(f"{label:>10} {sparkline(series, spark_w)} {top:.3g} max", overflow="crop",
                          no_wrap=True))
    cpu = ", ".join("-" if v is None else f"{v:.2f}" for v in view.cpu_cores) or "-"
    verdict_style = {True: "bold red", False: "green", None: "dim"}[view.limited]
    client = Text(f"client: issue delay p99 {_ms(view.issue_delay.p99)} ms · loop lag p99 "
                  f"{_ms(view.loop_lag.p99)} ms · CPU {cpu} cores · ", overflow="fold")
    client.append(view.verdict, style=verdict_style)
    lines.append(client)
    srv = view.server
    if srv is not None:
        kv = "-" if srv.kv_usage is None else f"{srv.kv_usage * 100:.1f}%"
        lines.append(Text(f"server: running {_num(srv.running)} · waiting {_num(srv.waiting)} · KV {kv} · "
                          f"preemptions {_num(srv.preemptions)}", overflow="fold"))
    else:
        lines.append(Text("server: not scraped", style="dim"))
    gpu = "not sampled" if view.gpu_power_w is None else f"{view.gpu_power_w:,.0f} W"
    lines.append(Text(f"GPU power: {gpu}", style="" if view.gpu_power_w is not None else "dim"))
    if view.slos:
        slo = Text("SLO: ", overflow="fold")
        for i, s in enumerate(view.slos):
            mark, style = {True: ("ok", "green"), False: ("OVER", "bold red"), None: ("-", "dim")}[s.ok]
            slo.append(("" if i == 0 else " · ") + f"{s.name} {_ms(s.value_ms)} / {s.bound_ms:g} ms ")
            slo.append(mark, style=style)
        lines.append(slo)
    else:
        lines.append(Text("SLO: none set", style="dim"))
    if view.state != "measuring":
        lines.append(Text(view.state, style="bold yellow", overflow="fold"))
    return Group(*lines)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"

"""The dashboard's drawing process: ``python -m loadgen.observe.dashdraw``, started by
:class:`loadgen.observe.dashboard.Dashboard` with its stdin a pipe and its stdout the terminal.

Everything that costs CPU runs here, not in the process that measures: it tails the run's
``requests.jsonl`` (each record is appended whole as it completes, :class:`loadgen.records.RecordWriter`),
keeps the numbers (:class:`loadgen.observe.dashview.LiveModel`) and draws them with rich. The measuring
process only sends, at most 4 times a second, its counters, loop-lag samples, CPU seconds, the latest
server scrape and GPU power (messages: :func:`read_messages`). It runs at the lowest priority
(:func:`idle_priority`), so it draws with CPU time the measuring process does not want. SIGINT is
ignored here: Ctrl-C belongs to the measuring process, which decides what it means. At ``end`` (or
end of file, should the measuring process die) the last frame is drawn and left on the screen.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadgen.observe.dashview import LiveModel, Pcts, View, sparkline
from loadgen.records import RequestRecord

_HEADER = struct.Struct("<I")


def pack(message: tuple[Any, ...]) -> bytes:
    """One framed message (length, pickle)."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def read_messages(stream: BinaryIO) -> Iterator[tuple[Any, ...]]:
    """The framed messages on ``stream`` until end of file. Kinds: ``("start", RunShape, records_path)``,
    ``("t0", now_ns, cpu_s, Counts)``,
    ``("tick", now_ns, Counts, lags_ns, cpu_s, ServerView|None, gpu_w, state)``, ``("text", str)``
    (the measuring process's stderr, printed above the frame), ``("end",)``."""
    while True:
        head = stream.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return
        (n,) = _HEADER.unpack(head)
        body = stream.read(n)
        if len(body) < n:
            return
        yield pickle.loads(body)


class Tail:
    """The complete lines appended to a file since the last call (a torn last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._rest = b""

    def records(self) -> list[RequestRecord]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self._pos += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        return [RequestRecord.from_dict(orjson.loads(line)) for line in lines if line.strip()]


def serve(stream: BinaryIO, console: Console) -> None:
    """Draw what ``stream`` says until ``end`` or end of file."""
    messages = read_messages(stream)
    first = next(messages, None)
    if first is None or first[0] != "start":
        return
    model, tail = LiveModel(first[1]), Tail(Path(first[2]))
    view: View | None = None
    with Live(console=console, auto_refresh=False, transient=False, redirect_stdout=False,
              redirect_stderr=False) as live:
        live.update(Text("loadgen live: waiting for the first request ...", style="dim"), refresh=True)
        for msg in messages:
            kind = msg[0]
            if kind == "t0":
                model.start(*msg[1:])
            elif kind == "tick":
                _, now_ns, counts, lags, cpu_s, server, gpu_w, state = msg
                for rec in tail.records():
                    model.add(rec)
                for lag in lags:
                    model.add_lag(lag)
                model.state = state
                view = model.tick(now_ns, counts, cpu_s=cpu_s, server=server, gpu_power_w=gpu_w)
                live.update(render(view, console.width), refresh=True)
            elif kind == "text":
                live.console.print(msg[1], end="", markup=False, highlight=False)
            elif kind == "end":
                break


def idle_priority() -> None:
    """The lowest priority (nice 19): drawing must not take the core from the measuring process, which
    may share it (pinned with taskset, or a busy machine); a woken nice-0 process preempts it at once.
    (Not SCHED_IDLE: on a saturated machine that could starve the last frame.)"""
    with contextlib.suppress(OSError):
        os.nice(19 - os.nice(0))


def main() -> None:
    idle_priority()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the measuring process's to handle
    serve(sys.stdin.buffer, Console())


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


if __name__ == "__main__":
    main()

"""The progress display: plain lines (completed / in flight / errors / output tokens/s) when the output
is not a terminal, an in-place redraw when it is."""

from __future__ import annotations

import asyncio
import io
import re

from loadgen.engine.issuer import IssueStats
from loadgen.engine.progress import Progress
from tests.conftest import run_cli

LINE = re.compile(
    r"^\[\s*\d+\.\ds\] completed \d+(/\d+)? \| in flight \d+ \| errors \d+ \| [\d,]+ output tok/s$"
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_counts_and_token_rate_over_the_interval():
    stats, clock = IssueStats(completed=3, failed=1, in_flight=2), FakeClock()
    progress = Progress(stats, 10, 60.0, io.StringIO(), clock=clock)
    clock.t += 2.0
    stats.output_tokens = 500
    assert progress.line() == "[   2.0s] completed 3/10 | in flight 2 | errors 1 | 250 output tok/s"
    clock.t += 0.5
    stats.output_tokens, stats.completed = 800, 4
    assert progress.line() == "[   2.5s] completed 4/10 | in flight 2 | errors 1 | 600 output tok/s"
    closed_loop = Progress(IssueStats(completed=7), None, 60.0, io.StringIO(), clock=clock)
    clock.t += 1.0
    assert closed_loop.line().startswith("[   1.0s] completed 7 | in flight 0")  # no planned total


def _run_for(progress: Progress, seconds: float) -> None:
    async def main() -> None:
        task = asyncio.create_task(progress.run())
        await asyncio.sleep(seconds)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_not_a_terminal_prints_plain_lines():
    out = io.StringIO()
    stats = IssueStats(completed=5, failed=2, in_flight=1, output_tokens=40)
    _run_for(Progress(stats, 20, 60.0, out, plain_every_s=0.05), 0.33)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) >= 3 and text.endswith("\n")
    assert all(LINE.match(line) for line in lines), lines
    assert all("completed 5/20 | in flight 1 | errors 2" in line for line in lines)


def test_a_terminal_redraws_one_line_in_place():
    out = Tty()
    _run_for(Progress(IssueStats(completed=1), 4, 60.0, out), 1.2)  # redrawn once a second
    text = out.getvalue()
    assert text.startswith("\r\x1b[2K[") and text.endswith("\n") and text.count("\n") == 1


def test_the_cli_prints_plain_progress_lines_into_a_pipe(tmp_path):
    """stderr is a pipe here, so the run's progress comes as plain lines every 5 s."""
    res = run_cli("run", "server", "--qps", "10", "--duration", "5.5", "--num-requests", "10",
                  "--output-len", "4", "--out", str(tmp_path / "run"))
    assert res.code == 0, res.output
    progress = [line.strip() for line in res.stderr.splitlines() if "in flight" in line]
    assert progress, res.stderr
    assert all(LINE.match(line) for line in progress), progress
    assert "\r" not in res.stderr and "\x1b" not in res.stderr
    first = re.search(r"completed (\d+)/(\d+)", progress[0])
    assert first is not None and 30 <= int(first.group(1)) <= int(first.group(2))  # ~5 s at 10 req/s

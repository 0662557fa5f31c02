"""The live dashboard: its model against known numbers, its frame at any width, its keys; and the real
CLI in a real terminal (tmux): the pane's numbers against the run's report.json, a narrow terminal,
--workers 2, ``q`` (drain, partial report, exit 130 as Ctrl-C) and ``x`` (abort), the terminal restored."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from loadgen.engine.runner import RunControl
from loadgen.metrics.latency import request_itl_ns
from loadgen.observe.dashboard import Dashboard
from loadgen.observe.dashdraw import Tail, render
from loadgen.observe.dashview import Counts, LiveModel, RunShape, batch_itl_ns, sparkline
from loadgen.records import RequestRecord

ROOT = Path(__file__).resolve().parent.parent
MS = 1_000_000


def _rec(i: int, t0: int, ttft_ms: float, itl_ms: float, chunks: int, *, tokens: int = 1,
         late_ms: float = 0.0, error: str | None = None) -> RequestRecord:
    sched = t0 + i * MS
    sent = sched + int(late_ms * MS)
    first = sent + int(ttft_ms * MS)
    times = [first + int(k * itl_ms * MS) for k in range(chunks)]
    ok = error is None
    return RequestRecord(index=i, sample=i, query=i, scheduled_ns=sched, sent_ns=sent, end_ns=times[-1],
                         first_token_ns=first if ok else None, chunk_ns=times if ok else [],
                         chunk_tokens=[tokens] * chunks if ok else [],
                         output_tokens=chunks * tokens if ok else 0, error_class=error)


def test_model_numbers_match_known_latencies():
    """TTFT 40 ms, chunks of 2 tokens every 10 ms: ITL 5 ms per token, TPOT (9*10)/(20-1) ms."""
    m = LiveModel(RunShape(planned=200, expected_s=20.0, bound="--duration 20 s", slo_ms={"ttft": 45.0}))
    m.start(0)
    for i in range(100):
        m.add(_rec(i, 0, 40.0, 10.0, chunks=10, tokens=2))
    m.add(_rec(100, 0, 40.0, 10.0, chunks=10, error="http_500"))
    v = m.tick(2_000 * MS, Counts(issued=101, completed=100, failed=1, in_flight=0, output_tokens=2000))
    assert v.ttft[0].p50 == pytest.approx(40.0, rel=2e-3) and v.ttft[1].p50 == pytest.approx(40.0, rel=1e-6)
    assert v.itl[0].p50 == pytest.approx(5.0, rel=2e-3) and v.itl[0].n == 100 * 9 * 2
    assert v.tpot[1].p99 == pytest.approx(90 / 19, rel=1e-6)
    assert v.errors == (("http_500", 1),)
    assert v.achieved_rps == pytest.approx(50.0) and v.offered_rps == pytest.approx(50.5)
    assert v.time_left_s == pytest.approx(18.0) and v.bound == "--duration 20 s"
    assert v.slos[0].ok is True
    assert v.limited is False and v.verdict == "keeping up"


def test_verdict_forms_from_the_window_only():
    """Requests 5 ms late in one window: client-limited; once that window has passed, keeping up."""
    m = LiveModel(RunShape(), window_s=1.0)
    m.start(0)
    for i in range(50):
        m.add(_rec(i, 0, 40.0, 10.0, chunks=4, late_ms=5.0))
    late = m.tick(500 * MS, Counts(50, 50, 0, 0, 0))
    assert late.limited is True and "issue delay p99 5.00 ms" in late.verdict
    for i in range(50, 100):
        m.add(_rec(i, 0, 40.0, 10.0, chunks=4))
    m.tick(1_600 * MS, Counts(100, 100, 0, 0, 0))
    for i in range(100, 150):
        m.add(_rec(i, 0, 40.0, 10.0, chunks=4))
    later = m.tick(2_700 * MS, Counts(150, 150, 0, 0, 0))
    assert later.limited is False
    assert later.issue_delay.p99 == pytest.approx(0.0)
    assert later.ttft[0].n == 150  # so far keeps everything


def test_batch_itl_is_request_itl_of_each_record():
    rng = np.random.default_rng(1)
    recs = []
    for i in range(30):
        n = int(rng.integers(1, 20))
        times = np.cumsum(rng.integers(1, 10**7, n)).tolist()
        recs.append(RequestRecord(i, i, i, 0, 0, times[-1], times[0], times, rng.integers(0, 4, n).tolist()))
    expected = np.concatenate([request_itl_ns(r) for r in recs])
    np.testing.assert_allclose(batch_itl_ns(recs), expected)


def test_tail_returns_complete_lines_only(tmp_path):
    path = tmp_path / "requests.jsonl"
    tail = Tail(path)
    assert tail.records() == []  # not written yet
    a, b = _rec(0, 0, 1, 1, 2), _rec(1, 0, 1, 1, 2)
    with path.open("wb") as f:
        f.write(a.to_json() + b"\n" + b.to_json()[:10])
    assert [r.index for r in tail.records()] == [0]
    with path.open("ab") as f:
        f.write(b.to_json()[10:] + b"\n")
    assert [r.index for r in tail.records()] == [1]


def test_sparkline_scales_to_its_maximum():
    assert sparkline([0, 1, 2, 4], 10) == "▁▃▅█"
    assert sparkline([5, 5, 5], 2) == "██"
    assert sparkline([], 5) == ""


@pytest.mark.parametrize("width", [40, 60, 120])
def test_frame_fits_any_width(width):
    m = LiveModel(RunShape(planned=10_000, expected_s=600.0, bound="--num-requests 10000", target_rps=500.0,
                           slo_ms={"ttft": 2000.0, "tpot": 100.0}))
    m.start(0)
    for i in range(300):
        m.add(_rec(i, 0, 55.0, 10.0, chunks=8, error="timeout" if i % 50 == 0 else None))
    view = m.tick(3_000 * MS, Counts(310, 294, 6, 10, 2352))
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(render(view, width))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= width for line in lines)
    text = out.getvalue()
    assert "completed 294/10000" in text.replace("\n", " ") and "TTFT" in text


def test_keys_drive_the_run_control_like_ctrl_c():
    control = RunControl()
    dash = Dashboard(RunShape(), control=control)
    dash.key("q")
    assert control.interrupts == 1 and control.signal_name == "key q"
    dash.key("x")
    assert control.interrupts == 2
    other = RunControl()
    Dashboard(RunShape(), control=other).key("x")  # x alone: straight to the abort, as Ctrl-C twice
    assert other.interrupts == 2


# ---- a real terminal ---------------------------------------------------------------------------------

# Skipped without tmux, unless LOADGEN_REQUIRE_TMUX=1 (make test): then a missing tmux fails the suite.
needs_tmux = pytest.mark.skipif(
    shutil.which("tmux") is None and os.environ.get("LOADGEN_REQUIRE_TMUX") != "1",
    reason="tmux not installed (make setup-system installs it)")


class Pane:
    """A tmux pane on its own server socket running one command; killed (only ours) at the end."""

    def __init__(self, command: str, *, width: int = 120, height: int = 45) -> None:
        self.sock = f"loadgen-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        env = f"env -u COLUMNS -u LINES PYTHONPATH={ROOT} PYTHONUNBUFFERED=1"  # the pane sets the size
        modes = "stty -a | tr -s ' ;' '\\n\\n' | grep -E '^-?(icanon|echo)$' | tr '\\n' ' '"
        # MODES-READ comes after the modes: EXIT= alone can be captured before stty has printed them
        shell = f"cd {ROOT} && {env} {command}; echo EXIT=$?; {modes}; echo; echo MODES-READ; sleep 300"
        subprocess.run(["tmux", "-L", self.sock, "new-session", "-d", "-s", "t", "-x", str(width), "-y",
                        str(height), shell], check=True)
        subprocess.run(["tmux", "-L", self.sock, "set-option", "-g", "history-limit", "5000"], check=True)

    def text(self) -> str:
        return subprocess.run(["tmux", "-L", self.sock, "capture-pane", "-p", "-J", "-S", "-3000", "-t", "t"],
                              capture_output=True, text=True, check=True).stdout

    def wait_for(self, pattern: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.text()
            if re.search(pattern, text):
                return text
            time.sleep(0.3)
        raise AssertionError(f"{pattern!r} did not appear within {timeout} s; the pane:\n{self.text()}")

    def send(self, key: str) -> None:
        subprocess.run(["tmux", "-L", self.sock, "send-keys", "-t", "t", key], check=True)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], check=False, capture_output=True)


@pytest.fixture
def pane_factory():
    panes: list[Pane] = []

    def make(command: str, **kw) -> Pane:
        panes.append(Pane(command, **kw))
        return panes[-1]

    yield make
    for p in panes:
        p.close()


def _cli(out: Path, *args: str) -> str:
    return " ".join([sys.executable, "-m", "loadgen", "run", "server", "--input-len", "16",
                     "--output-len", "32", "--seed", "3", "--out", str(out), *args])


def _last_frame(text: str) -> str:
    start = text.rindex("loadgen live ")
    end = text.find("loadgen server @", start)
    return text[start:end if end > 0 else None]


def _close(shown: str, exact: float) -> bool:
    """``shown`` (3 significant digits) is ``exact`` within its rounding plus the histogram's 0.2 %."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown.replace(",", "")) - exact) <= 0.5 * 10**-decimals + 0.002 * exact


def _assert_frame_matches_report(frame: str, report: dict) -> None:
    res = report["results"]
    m = re.search(r"completed (\d+)(?:/\d+)? · failed (\d+)", frame)
    assert m, frame
    assert int(m.group(1)) == res["requests_completed"] and int(m.group(2)) == res["requests_failed"]
    for row, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms")):
        cells = re.search(rf"^{row}\s+(\S+)\s+(\S+)", frame, re.M)
        assert cells, frame
        assert _close(cells.group(1), res[key]["p50"]), (row, cells.group(1), res[key]["p50"])


@pytest.mark.slow
@needs_tmux
def test_dashboard_in_a_terminal_shows_the_reports_numbers(pane_factory, tmp_path):
    out = tmp_path / "run"
    pane = pane_factory(_cli(out, "--qps", "20", "--duration", "6", "--num-requests", "1",
                             "--ttft-ms", "500"))
    pane.wait_for(r"loadgen live \d+\.\d s elapsed .*\[q stop · x abort\]", 60)
    text = pane.wait_for(r"EXIT=\d+", 120)
    assert "EXIT=0" in text
    report = json.loads((out / "report.json").read_text())
    frame = _last_frame(text)
    _assert_frame_matches_report(frame, report)
    assert "SLO: TTFT p99" in frame and "server: running" in frame and "GPU power:" in frame
    assert re.search(r"client: issue delay p99 \S+ ms · loop lag p99", frame)
    text = pane.wait_for(r"MODES-READ", 30)
    assert "icanon echo" in text  # the terminal's modes are back


@pytest.mark.slow
@needs_tmux
def test_dashboard_in_a_narrow_terminal_with_two_workers(pane_factory, tmp_path):
    out = tmp_path / "run"
    pane = pane_factory(_cli(out, "--qps", "20", "--duration", "5", "--num-requests", "1", "--workers", "2"),
                        width=60)
    text = pane.wait_for(r"EXIT=\d+", 120)
    assert "EXIT=0" in text
    report = json.loads((out / "report.json").read_text())
    assert report["client_workers"] == 2
    frame = _last_frame(text)
    _assert_frame_matches_report(frame, report)
    raw = subprocess.run(["tmux", "-L", pane.sock, "capture-pane", "-p", "-S", "-3000", "-t", "t"],
                         capture_output=True, text=True, check=True).stdout
    assert max(len(line) for line in raw.splitlines()) <= 60
    assert re.search(r"CPU \d\.\d\d, \d\.\d\d cores", frame.replace("\n", " "))  # one figure per worker


@pytest.mark.slow
@needs_tmux
@pytest.mark.parametrize(("key", "cancelled"), [("q", False), ("x", True)])
def test_keys_stop_the_run_with_a_partial_report(pane_factory, tmp_path, key, cancelled):
    """q as a first Ctrl-C (the requests in flight finish), x as a second (they are cancelled); both
    exit 130 with a partial report, and the terminal's modes are restored."""
    out = tmp_path / "run"
    # at 10 req/s of ~0.36 s each (TTFT 50 ms + 31 x 10 ms) a few are in flight when the key comes
    pane = pane_factory(_cli(out, "--qps", "10", "--duration", "60", "--num-requests", "1"))
    pane.wait_for(r"loadgen live \d+\.\d s elapsed", 60)
    time.sleep(2.0)
    pane.send(key)
    text = pane.wait_for(r"EXIT=\d+", 90)
    assert "EXIT=130" in text, text
    assert f"key {key}: stopped issuing" in text  # the run's messages show above the frame
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True
    assert f"key {key}" in report["stopped_early"]
    assert ("cancelled" in report["stopped_early"]) is cancelled
    assert report["results"]["requests_issued"] < 600
    text = pane.wait_for(r"MODES-READ", 30)
    assert "icanon echo" in text

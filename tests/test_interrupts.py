"""Signals and crashes mid-run, on a real ``loadgen run`` subprocess: nothing measured is ever lost.

The simulated server runs in its own process started here (``--url``), so a signal or ``kill -9``
reaches only loadgen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers.sim import SimConfig, SimProcess
from tests.conftest import ROOT, load_report, run_cli


@pytest.fixture(scope="module")
def server() -> Iterator[SimProcess]:
    with SimProcess(SimConfig(ttft_ms=20, itl_ms=10)) as proc:
        yield proc


def start_run(url: str, out: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "loadgen", "run", "server", "--url", url, "--out", str(out), "--quiet",
           "--qps", "20", "--duration", "30", "--num-requests", "600", "--input-len", "16", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_measuring(proc: subprocess.Popen[str], out: Path, seconds: float = 3.0) -> None:
    """Until requests have been completing for ``seconds`` (bounded: 60 s)."""
    deadline = time.monotonic() + 60
    first = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        path = out / "requests.jsonl"
        if first is None and path.exists() and path.stat().st_size > 0:
            first = time.monotonic()
        if first is not None and time.monotonic() - first >= seconds:
            return
        time.sleep(0.05)
    raise AssertionError("the run never started completing requests")


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"loadgen did not exit within {timeout} s:\n{output}") from None
    return proc.returncode, output


def lines_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("sig", "code", "workers"), [
    (signal.SIGINT, 130, "1"), (signal.SIGTERM, 143, "1"), (signal.SIGINT, 130, "2"),
])
def test_one_signal_drains_and_writes_a_partial_report(tmp_path, server, sig, code, workers):
    out = tmp_path / "run"
    proc = start_run(server.url, out, "--output-len", "40", "--workers", workers)
    wait_measuring(proc, out)
    t = time.monotonic()
    proc.send_signal(sig)
    rc, output = finish(proc)
    assert rc == code, output
    assert time.monotonic() - t < 15  # in-flight requests (~0.4 s each) drained, not the 30 s run
    report = load_report(out)
    assert report["interrupted"] is True and report["validity"]["valid"] is False
    assert any("interrupted" in reason for reason in report["validity"]["reasons"])
    recs = lines_of(out)  # every line parses
    r = report["results"]
    assert r["requests_issued"] == len(recs) == r["requests_completed"] + r["requests_failed"]
    assert 20 <= len(recs) < 600
    assert len({x["index"] for x in recs}) == len(recs)
    assert r["requests_failed"] == 0  # draining let every request in flight finish
    assert "Result is : INVALID" in output


def test_second_sigint_cancels_in_flight_requests_and_still_reports(tmp_path, server):
    out = tmp_path / "run"
    proc = start_run(server.url, out, "--output-len", "3000")  # 30 s per request: always in flight
    deadline = time.monotonic() + 60
    while not (out / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc, output = finish(proc)
    assert rc == 130, output
    assert time.monotonic() - t < 5
    report = load_report(out)
    recs = lines_of(out)
    assert report["interrupted"] is True
    assert report["results"]["requests_issued"] == len(recs) >= 40  # ~3 s at 20 req/s
    assert {x["error_class"] for x in recs} == {"cancelled"}
    assert report["results"]["errors_by_class"] == {"cancelled": len(recs)}
    assert all(x["chunk_ns"] for x in recs[:-5])  # tokens received before the abort are kept


def test_kill_9_mid_run_then_report_rebuilds_everything(tmp_path, server):
    out = tmp_path / "run"
    proc = start_run(server.url, out, "--output-len", "20")
    wait_measuring(proc, out, seconds=2)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "report.json").exists()
    recs = lines_of(out)
    assert len(recs) >= 20
    res = run_cli("report", str(out / "requests.jsonl"))
    assert res.code == 0, res.output
    report = load_report(out)
    r = report["results"]
    assert r["requests_issued"] == len(recs) == r["requests_completed"]
    assert r["ttft_ms"]["p50"] is not None and 15 < r["ttft_ms"]["p50"] < 200
    assert report["settings"]["qps"] == 20 and report["rebuilt_from"] == "requests.jsonl"
    assert (out / "summary.txt").exists() and "Result is :" in res.stdout

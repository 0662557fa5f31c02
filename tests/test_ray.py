"""Load generation through Ray (issue 17) on a real two-node Ray cluster on 127.0.0.1.

The cluster (``tests/ray_cluster.py``: Ray's own cluster utility, one CPU per node) runs for the
module; every run goes through the real CLI with ``--ray ADDRESS``, beside the same run with
``--workers`` processes, and the records are compared query by query.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from loadgen.engine.cluster.clock import TimeEcho, drift_ppm, measure_offset
from loadgen.records import read_records
from tests.conftest import ROOT, load_report, run_cli, write_scenario

pytestmark = pytest.mark.slow
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    proc = subprocess.Popen([sys.executable, "-m", "tests.ray_cluster", "2"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **RAY_ENV})
    try:
        address = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert address.startswith("127.0.0.1:"), address
        yield address, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]


def _ray(address: str, *args: str, env: dict[str, str] | None = None, timeout: float = 180):
    return run_cli(*args, "--ray", address, env={**RAY_ENV, **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("scenario", ["server", "concurrency"])
def test_ray_actors_measure_what_worker_processes_do(cluster, tmp_path, scenario):
    address, _ = cluster
    fields = {"qps": 40, "num_requests": 160} if scenario == "server" else {"concurrency": 4,
                                                                           "num_requests": 80}
    f = write_scenario(tmp_path / "s.yaml", scenario=scenario, duration_s=0, input_len=32, output_len=12,
                       seed=5, sim={"ttft_ms": 30, "itl_ms": 5}, **fields)
    runs = {}
    for engine in ("workers", "ray"):
        out = tmp_path / engine
        args = ("run", str(f), "--out", str(out), "--quiet", "--workers", "2")
        res = _ray(address, *args) if engine == "ray" else run_cli(*args)
        assert res.code == 0, res.output
        runs[engine] = (load_report(out), read_records(out / "requests.jsonl"))
    (local, lrecs), (ray, rrecs) = runs["workers"], runs["ray"]
    assert ray["client"]["engine"] == "ray" and local["client"]["engine"] == "local"
    nodes = ray["client"]["nodes"]
    assert len({n["node"] for n in nodes}) == 2 and sorted(w for n in nodes for w in n["workers"]) == [0, 1]
    assert all(n["requests"] == fields["num_requests"] / 2 for n in nodes), nodes
    assert ray["results"]["requests_failed"] == 0 and len(rrecs) == fields["num_requests"]
    assert sorted(r.index for r in rrecs) == list(range(len(rrecs)))  # every query once
    if scenario == "server":  # the same schedule, query for query
        assert sorted((r.query, r.scheduled_ns, r.sample) for r in rrecs) == sorted(
            (r.query, r.scheduled_ns, r.sample) for r in lrecs)
    for metric in ("ttft_ms", "itl_ms", "e2e_ms"):
        assert abs(ray["results"][metric]["p50"] - local["results"][metric]["p50"]) < 1.0, metric
    for n in nodes:
        (clock,) = n["clocks"]
        assert abs(clock["clock_offset_ms"]) < 0.2 and 0 < clock["clock_uncertainty_ms"] < 0.2, clock
        assert clock["niceness"] == 0


def test_an_injected_clock_offset_is_measured_within_a_fifth_of_a_millisecond(cluster, tmp_path):
    address, _ = cluster
    out = tmp_path / "skew"
    res = _ray(address, "run", "server", "--qps", "20", "--num-requests", "40", "--duration", "0",
               "--workers", "2", "--out", str(out), "--quiet",
               env={"LOADGEN_TEST_CLOCK_SKEW_NS": "1=7500000"})
    assert res.code == 0, res.output
    clocks = {c["worker"]: c for n in load_report(out)["client"]["nodes"] for c in n["clocks"]}
    assert abs(clocks[1]["clock_offset_ms"] - 7.5) < 0.2, clocks
    assert abs(clocks[0]["clock_offset_ms"]) < 0.2, clocks
    assert all(0 < c["clock_uncertainty_ms"] < 0.2 for c in clocks.values())
    # started at the driver's instant in its own clock: issued on time, as the other worker
    recs = read_records(out / "requests.jsonl")
    late = np.array([r.sent_ns - r.scheduled_ns for r in recs if r.index % 2 == 1]) / 1e6
    assert len(late) == 20 and np.median(late) < 1.0, late


def test_killing_a_workers_process_gives_a_partial_invalid_report_that_keeps_every_record(cluster, tmp_path):
    address, pgid = cluster
    out = tmp_path / "kill"
    before = set(glob.glob("/tmp/loadgen-ray/*"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen", "run", "server", "--qps", "30", "--duration", "8", "--num-requests",
         "60", "--workers", "2", "--ray", address, "--out", str(out), "--quiet"],
        cwd=ROOT, env={**os.environ, **RAY_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.2)
        path = out / "requests.jsonl"
        if path.exists() and path.read_bytes().count(b"\n") >= 20:
            victim = _actor_pids(pgid)[0]
    assert victim is not None, "no records within 60 s"
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout + stderr
    report = load_report(out)
    assert report["validity"]["valid"] is False
    lost = [r for r in report["validity"]["reasons"] if "was lost" in r]
    assert lost and "node 127.0.0.1" in lost[0] and "recovered" in lost[0], report["validity"]["reasons"]
    assert any(n["lost"] for n in report["client"]["nodes"])
    # every record either actor wrote on its node is in the run's one requests.jsonl
    (run_dir,) = set(glob.glob("/tmp/loadgen-ray/*")) - before
    files = glob.glob(f"{run_dir}/worker-*.jsonl")
    on_nodes = {line for f in files for line in Path(f).read_bytes().splitlines()}
    merged = set((out / "requests.jsonl").read_bytes().splitlines())
    assert on_nodes and on_nodes <= merged, len(on_nodes - merged)
    assert report["results"]["requests_completed"] == len(read_records(out / "requests.jsonl"))


def _actor_pids(session: int) -> list[int]:
    """The cluster's LoadActor processes: only those of the cluster this module started (its session;
    Ray gives each worker a process group of its own)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            if cmd.startswith(b"ray::LoadActor") and os.getsid(int(entry)) == session:
                found.append(int(entry))
        except (OSError, ProcessLookupError):
            continue
    return found


def test_bad_ray_input_exits_2_naming_what_to_do(cluster, tmp_path):
    address, _ = cluster
    res = _ray("127.0.0.1:9", "run", "server", "--num-requests", "5", "--duration", "0",
               "--out", str(tmp_path / "a"))
    assert res.code == 2 and "--ray 127.0.0.1:9: nothing answers there" in res.stderr, res.output
    assert "Traceback" not in res.stderr
    res = _ray(address, "run", "server", "--num-requests", "5", "--duration", "0", "--workers", "3",
               "--out", str(tmp_path / "b"))
    assert res.code == 2 and "free CPUs" in res.stderr and "--workers 2" in res.stderr, res.output
    res = _ray(address, "run", "server", "--num-requests", "10", "--duration", "0", "--workers", "2",
               "--out", str(tmp_path / "c"), "--quiet")  # the advice, followed, runs
    assert res.code == 0, res.output


def test_clock_echo_offsets_without_ray():
    """The estimator alone: an echo 3 ms ahead, measured twice; no drift on one host."""
    echo = TimeEcho("127.0.0.1", skew_ns=3_000_000)
    try:
        a = measure_offset(echo.address)
        time.sleep(0.05)
        b = measure_offset(echo.address)
    finally:
        echo.close()
    assert abs(a.offset_ns - 3_000_000) <= a.uncertainty_ns + 50_000 and a.uncertainty_ns < 200_000
    drift = drift_ppm(a, b)
    assert drift is not None and abs(drift) < 2_000  # ±0.1 ms over 50 ms at worst
    assert json.dumps(a.to_dict())


def test_ray_local_survives_a_terminals_ctrl_c_and_the_run_drains(tmp_path):
    """``--ray local`` starts its own head; a terminal's Ctrl-C goes to loadgen's whole process group,
    which must reach loadgen (drain, partial report, exit 130) and not Ray, which loadgen then stops."""
    pytest.importorskip("ray")
    out = tmp_path / "local"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen", "run", "server", "--ray", "local", "--workers", "1", "--qps", "10",
         "--duration", "60", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    deadline = time.monotonic() + 90
    path = out / "requests.jsonl"
    while time.monotonic() < deadline and not (path.exists() and path.read_bytes().count(b"\n") >= 10):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the foreground process group
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stdout + stderr
    assert "ray: starting a local head at 127.0.0.1:" in stderr
    report = load_report(out)
    assert report["interrupted"] is True and report["client"]["engine"] == "ray"
    assert report["results"]["requests_completed"] >= 10 and report["results"]["requests_failed"] == 0
    head = re.search(r"local head at (127\.0\.0\.1:\d+)", stderr)
    assert head is not None
    host, port = head.group(1).split(":")
    with pytest.raises(OSError):  # the head loadgen started is gone
        socket.create_connection((host, int(port)), timeout=2).close()


def test_the_live_exporter_counts_what_ray_actors_do(cluster, tmp_path):
    """--ray: the actors issue, the driver exports. In flight is seen above zero while the run goes,
    never above the concurrency, and the final scrape counts every request and token of the report."""
    from tests.test_exporter import _free_port, scrape_while_running

    address, _ = cluster
    port, out, concurrency = _free_port(), tmp_path / "run", 4
    cmd = [sys.executable, "-m", "loadgen", "run", "concurrency", "--concurrency", str(concurrency),
           "--workers", "2", "--ray", address, "--num-requests", "60", "--duration", "3",
           "--input-len", "16", "--output-len", "8", "--no-gpu-telemetry", "--server-metrics-url", "none",
           "--metrics-port", str(port), "--metrics-linger-s", "1.5", "--out", str(out)]
    scrapes = scrape_while_running(cmd, port, RAY_ENV, 150)
    report = json.loads((out / "report.json").read_text())
    res = report["results"]
    assert report["client"]["engine"] == "ray"
    assert res["requests_failed"] == 0 and res["requests_completed"] >= 60
    in_flight = [s[("loadgen_in_flight", "")] for s in scrapes]
    assert min(in_flight) >= 0 and max(in_flight) <= concurrency, in_flight
    assert max(in_flight) > 0, in_flight
    final = scrapes[-1]
    assert final[("loadgen_in_flight", "")] == 0
    assert final[("loadgen_requests_total", "ok")] == res["requests_completed"]
    assert final[("loadgen_output_tokens_total", "")] == res["output_tokens_total"]

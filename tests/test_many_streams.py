"""2,000 concurrent streams through the real CLI with no client-side failure, and a clear refusal when
the descriptor limit cannot hold the run."""

from __future__ import annotations

import json
import resource

import pytest

from tests.conftest import load_report, run_cli, write_scenario

STREAMS = 2000


def test_2000_concurrent_streams_without_a_failure(tmp_path):
    f = write_scenario(
        tmp_path / "s.yaml", scenario="concurrency", concurrency=STREAMS, num_requests=STREAMS,
        duration_s=0, input_len=8, output_len=4,
        sim={"ttft_ms": 200, "itl_ms": 20, "max_seqs": 4096},
    )
    out = tmp_path / "run"
    res = run_cli("run", str(f), "--out", str(out), "--quiet", "--workers", "1", timeout=150)
    assert res.code == 0, res.output
    r = load_report(out)["results"]
    recs = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert r["requests_failed"] == 0, r["errors_by_class"]
    assert r["requests_issued"] == len(recs) >= STREAMS
    # All 2,000 were in flight together: the server holds each for 200 + 3 x 20 ms = 260 ms, so the
    # first 2,000 sends fall within a fraction of a second of each other and overlap in time.
    first = sorted(recs, key=lambda x: x["sent_ns"])[:STREAMS]
    latest_send = max(x["sent_ns"] for x in first)
    earliest_end = min(x["end_ns"] for x in first)
    overlapping = sum(1 for x in first if x["sent_ns"] <= earliest_end <= x["end_ns"])
    assert overlapping > STREAMS * 0.5 or latest_send < earliest_end, (latest_send, earliest_end)


def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))


def test_a_too_low_descriptor_limit_is_refused_with_the_numbers(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run(
        [sys.executable, "-m", "loadgen", "run", "concurrency", "--concurrency", str(STREAMS),
         "--out", str(tmp_path / "run"), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, preexec_fn=_low_limit, check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "2064 file descriptors" in proc.stderr and "only 512 are available" in proc.stderr
    assert "ulimit -n" in proc.stderr


def _soft_1024() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


LOW_LIMIT_STREAMS = 1500


def test_a_low_soft_limit_is_raised_for_the_client_and_the_built_in_simulator(tmp_path):
    """Started with a soft limit of 1,024 (hard limit higher): 1,500 streams need more descriptors in
    the client *and* in the simulated server loadgen starts, so both must raise it, the server before
    it starts (it inherits the limit), or connections beyond ~1,000 fail."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < LOW_LIMIT_STREAMS + 200:
        pytest.skip(f"the hard descriptor limit ({hard}) is too low to test raising the soft one")
    f = write_scenario(
        tmp_path / "s.yaml", scenario="concurrency", concurrency=LOW_LIMIT_STREAMS,
        num_requests=LOW_LIMIT_STREAMS, duration_s=0, input_len=8, output_len=4,
        # each request held >= 1 s, so the 1,500 sends overlap even when the shared cores are slow
        sim={"ttft_ms": 1000, "itl_ms": 20, "max_seqs": 4096},
    )
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen", "run", str(f), "--out", str(out), "--quiet", "--workers", "1",
         "--no-gpu-telemetry"],
        cwd=ROOT, capture_output=True, text=True, timeout=150, preexec_fn=_soft_1024, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = load_report(out)["results"]
    assert r["requests_failed"] == 0, r["errors_by_class"]
    assert r["requests_completed"] >= LOW_LIMIT_STREAMS
    recs = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    first = sorted(recs, key=lambda x: x["sent_ns"])[:LOW_LIMIT_STREAMS]
    earliest_end = min(x["end_ns"] for x in first)
    # more than the 1,024 the limit started at were open at once
    overlapping = sum(1 for x in first if x["sent_ns"] <= earliest_end <= x["end_ns"])
    send_span_ns = max(x["sent_ns"] for x in first) - min(x["sent_ns"] for x in first)
    assert overlapping > 1100, (overlapping, send_span_ns)

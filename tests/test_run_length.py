"""The first line of a run says how long it will take, which bound sets that, and how to change it;
checked against real runs on the built-in simulator (whose latency is known from its settings)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from loadgen.errors import ConfigError
from loadgen.schedule.length import expected_length
from loadgen.schedule.trace import build_trace, seeded_rngs
from loadgen.settings import Settings, load_settings
from tests.conftest import load_report, run_cli, write_scenario

# A fast simulator: a request of 4 output tokens takes 20 + 3 x 5 = 35 ms at light load.
SIM = {"ttft_ms": 20, "itl_ms": 5}
LATENCY_S = 0.035
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port: the run stops at the probe


def _expected_s(stderr: str) -> float:
    first = stderr.splitlines()[0]
    m = re.match(r"loadgen: expect ~([\d.,]+) (m?s)", first)
    assert m, first
    return float(m.group(1).replace(",", "")) / (1000 if m.group(2) == "ms" else 1)


def test_the_issue_example_says_150_s_set_by_the_scenarios_600_queries():
    """`server --qps 4 --duration 8`: both are minimums, so the built-in scenario's 600 queries decide."""
    res = run_cli("run", "server", "--qps", "4", "--duration", "8", "--url", UNREACHABLE, timeout=60)
    assert res.code == 2  # nothing listens there; the line came first all the same
    first = res.stderr.splitlines()[0]
    assert first == (
        "loadgen: expect ~150 s + the last responses: 600 queries at 4 qps, set by --num-requests 600 "
        "(the scenario's minimum); --duration 8 is the smaller bound. Lower --num-requests to shorten."
    )
    # following the advice shortens the run to what --duration asks for
    res = run_cli("run", "server", "--qps", "4", "--duration", "8", "--num-requests", "10", "--url",
                  UNREACHABLE, timeout=60)
    assert res.stderr.splitlines()[0].startswith("loadgen: expect ~8.0 s + the last responses: --duration 8")


def test_closed_loops_against_an_unknown_server_name_the_bounds_and_the_hard_stop():
    res = run_cli("run", "concurrency", "--concurrency", "4", "--duration", "10", "--num-requests", "100",
                  "--url", UNREACHABLE, timeout=60)
    first = res.stderr.splitlines()[0]
    assert first.startswith("loadgen: expect at least 10 s: a closed loop runs until both --num-requests 100")
    assert "25 queries in a row per user take depends on the server's latency" in first
    assert "hard stop at --max-duration 610 s (the default)" in first
    s = load_settings("offline", {"url": UNREACHABLE})
    assert "500 samples sent at once" in expected_length(s).line


def _run(tmp_path, **fields):
    f = write_scenario(tmp_path / "s.yaml", **{"input_len": 8, "output_len": 4, "sim": SIM, **fields})
    out = tmp_path / "out"
    res = run_cli("run", str(f), "--out", str(out), "--quiet", timeout=120)
    assert res.code == 0, res.output
    return _expected_s(res.stderr), load_report(out)


@pytest.mark.parametrize(("fields", "tolerance_s"), [
    # open loop, exact schedule: the last of 40 queries is due at 2.0 s, then 35 ms to answer
    ({"scenario": "constant", "qps": 20, "num_requests": 40, "duration_s": 0.5}, 0.1),
    ({"scenario": "constant", "qps": 20, "num_requests": 5, "duration_s": 1.5}, 0.1),
    # Poisson: the expectation of the last arrival; the seed's schedule is within 4 sd (sqrt(n)/qps)
    ({"scenario": "server", "qps": 100, "num_requests": 200, "duration_s": 0.5}, 4 * np.sqrt(200) / 100),
    # closed loops: back-to-back 35 ms queries until both minimums are met
    ({"scenario": "singlestream", "num_requests": 30, "duration_s": 0.2}, 0.15),
    ({"scenario": "concurrency", "concurrency": 4, "num_requests": 8, "duration_s": 1.2}, 0.15),
    # Offline: 40 samples on 16 slots are 3 waves
    ({"scenario": "offline", "num_requests": 40, "duration_s": 0, "sim": {**SIM, "max_seqs": 16}}, 0.1),
], ids=["constant-count", "constant-duration", "server-count", "singlestream-count",
        "concurrency-duration", "offline-waves"])
def test_the_printed_length_matches_the_run(tmp_path, fields, tolerance_s):
    expected, report = _run(tmp_path, **fields)
    real = report["results"]["duration_s"]
    assert abs(real - expected) <= tolerance_s + 0.05, (expected, real)  # + the printed rounding


def test_the_max_duration_hard_stop_ends_a_closed_loop_where_the_line_said(tmp_path):
    """1,000 queries of 35 ms would take 35 s; --max-duration 1 stops the loop at 1 s (INVALID)."""
    f = write_scenario(tmp_path / "s.yaml", scenario="singlestream", num_requests=1000, duration_s=0.3,
                       input_len=8, output_len=4, sim=SIM)
    out = tmp_path / "out"
    res = run_cli("run", str(f), "--max-duration", "1", "--out", str(out), "--quiet", timeout=60)
    assert res.code == 0, res.output
    first = res.stderr.splitlines()[0]
    assert "but the hard stop at --max-duration 1 s comes first" in first
    report = load_report(out)
    assert abs(report["results"]["duration_s"] - _expected_s(res.stderr)) < 0.1
    assert report["validity"]["valid"] is False
    assert report["results"]["requests_completed"] < 1000


def test_an_open_loop_schedule_past_max_duration_is_refused_before_the_start():
    res = run_cli("run", "constant", "--qps", "10", "--num-requests", "50", "--duration", "1",
                  "--max-duration", "3", timeout=60)
    assert res.code == 2, res.output
    assert "expected at 5.0 s, past max_duration_s (--max-duration) 3 s" in res.stderr
    assert "Traceback" not in res.output and "target http" not in res.stderr


def test_the_exact_poisson_schedule_is_checked_against_max_duration():
    """Up front the expectation is checked; the drawn schedule is checked exactly in build_trace."""
    outcomes = set()
    for seed in range(12):
        base = {"scenario": "server", "qps": 10.0, "num_requests": 100, "duration_s": 1, "seed": seed}
        free = build_trace(Settings(**base), 100, seeded_rngs(seed))
        last_s = free.offsets_ns[-1] / 1e9
        try:
            build_trace(Settings(**base, max_duration_s=10.0), 100, seeded_rngs(seed))
        except ConfigError as exc:
            assert last_s > 10.0 and "is due at" in str(exc)
            outcomes.add("refused")
        else:
            assert last_s <= 10.0
            outcomes.add("ran")
    assert outcomes == {"refused", "ran"}  # E[last] = 10 s: some seeds fall on each side

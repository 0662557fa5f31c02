"""``--max-concurrency``: a real cap on an open loop's requests in flight, checked against the built-in
simulator's known service time; queries keep their scheduled times, and the client is not blamed for
the wait the user asked for."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.metrics.health import admission_times, assess
from loadgen.records import read_records
from tests.conftest import load_report, run_cli, write_scenario

# A request of 2 output tokens on this simulator takes 20 + 1 x 1 = 21 ms (light load, one step each).
SIM = {"ttft_ms": 20, "itl_ms": 1}
SERVICE_S = 0.021


def _in_flight_peak(recs, key=lambda r: 0) -> dict[int, int]:
    """Most requests in flight at once, from the records' [sent, end] intervals (per ``key``)."""
    events: dict[int, list[tuple[int, int]]] = {}
    for r in recs:
        events.setdefault(key(r), []).extend([(r.sent_ns, 1), (r.end_ns, -1)])
    peaks = {}
    for k, ev in events.items():
        now = peak = 0
        for _, step in sorted(ev, key=lambda e: (e[0], e[1])):  # an end before a start at the same ns
            now += step
            peak = max(peak, now)
        peaks[k] = peak
    return peaks


def _run(tmp_path, name, *args, **fields):
    f = write_scenario(tmp_path / f"{name}.yaml", **{"input_len": 8, "output_len": 2, "sim": SIM, **fields})
    out = tmp_path / name
    res = run_cli("run", str(f), *args, "--out", str(out), "--quiet", timeout=120)
    assert res.code == 0, res.output
    return res, load_report(out), read_records(out / "requests.jsonl")


def test_offline_under_a_cap_of_4_holds_4_in_flight_at_cap_over_service_time(tmp_path):
    """vllm bench serve's `--request-rate inf --max-concurrency 4`: 200 samples, never more than 4 out,
    so ~4 / 21 ms = 190 req/s; without the cap all 200 go out together."""
    res, report, recs = _run(tmp_path, "capped", "--max-concurrency", "4", scenario="offline",
                             num_requests=200, duration_s=0)
    assert len(recs) == 200 and all(r.ok for r in recs)
    assert _in_flight_peak(recs) == {0: 4}
    rate = report["results"]["requests_per_s"]
    assert 0.8 * 4 / SERVICE_S <= rate <= 1.02 * 4 / SERVICE_S, rate
    assert all(r.scheduled_ns == 0 for r in recs)  # every query keeps its scheduled time...
    client = report["client"]
    assert client["max_concurrency"] == 4 and client["client_limited"] is False
    # ...so the wait shows in the issue delay and in TTFT from the scheduled time: the last of 50
    # waves of 4 waits ~49 x 21 ms
    assert client["issue_delay_ms"]["max"] > 0.8 * 49 * SERVICE_S * 1000
    assert client["slot_wait_ms"]["p99"] > 0.8 * 48 * SERVICE_S * 1000
    assert report["results"]["ttft_from_scheduled_ms"]["max"] > 0.8 * 49 * SERVICE_S * 1000
    assert "waiting for one of --max-concurrency 4 slots" in res.stdout
    assert report["settings"]["max_concurrency"] == 4
    _, _, free = _run(tmp_path, "free", scenario="offline", num_requests=200, duration_s=0)
    assert _in_flight_peak(free)[0] > 100  # the same run without the cap: the measurement can fail


@pytest.mark.parametrize("workers", ["1", "2"])
def test_server_under_a_cap_holds_it_across_workers_and_the_client_is_not_blamed(tmp_path, workers):
    """1,000 QPS at 21 ms needs ~21 in flight; a cap of 4 (2 + 2 with two workers) holds 4 and lets
    ~190 req/s through. The wait is not client lateness: not client-limited, and the validity reason
    names the cap, not the server."""
    _, report, recs = _run(tmp_path, f"w{workers}", "--max-concurrency", "4", "--workers", workers,
                           scenario="server", qps=1000, num_requests=300, duration_s=0.3)
    assert len(recs) >= 300 and all(r.ok for r in recs)
    assert max(_in_flight_peak(recs).values()) == 4
    if workers == "2":
        per_worker = _in_flight_peak(recs, key=lambda r: r.index % 2)
        assert per_worker == {0: 2, 1: 2}
        assert report["client"]["workers"] == 2
    rate = report["results"]["requests_per_s"]
    assert 0.7 * 4 / SERVICE_S <= rate <= 1.02 * 4 / SERVICE_S, rate
    client = report["client"]
    assert client["client_limited"] is False, client["reasons"]
    assert client["slot_wait_ms"]["p99"] > 200
    reasons = " ".join(report["validity"]["reasons"])
    assert "held back by --max-concurrency 4" in reasons and "raise --max-concurrency" in reasons
    assert "went out late" not in reasons


def test_admission_times_follow_the_cap_rule():
    """Cap 2: requests due at 0, 0, 0, 5 that each take 10 (ends 10, 12, 20, 25 as sent): the third
    waits for the first end (10), the fourth for the second (12)."""
    index = np.arange(4)
    sched = np.array([0, 0, 0, 5])
    end = np.array([10, 12, 20, 25])
    assert admission_times(index, sched, end, [2]).tolist() == [0, 0, 10, 12]
    # two workers with a cap of 1 each: records 0, 2 in worker 0 and 1, 3 in worker 1
    assert admission_times(index, sched, end, [1, 1]).tolist() == [0, 0, 10, 12]
    assert admission_times(index, np.array([0, 0, 30, 31]), end, [1, 1]).tolist() == [0, 0, 30, 31]


def test_the_verdict_judges_lateness_past_the_slot_only():
    """200 ms waits for a slot are not the client's; 5 ms of lateness after the slot still is."""
    waits = np.full(500, 200_000_000, dtype=np.int64)
    ttft = np.full(500, 20_000_000, dtype=np.int64)
    lags = np.zeros(10, dtype=np.int64)
    ok = assess(waits + 50_000, lags, 0.1, check_issue_delay=True, ttft_from_scheduled_ns=ttft + 50_000,
                ttft_from_sent_ns=ttft, slot_wait_ns=waits, max_concurrency=4)
    assert not ok.limited and ok.issue_delay_ms["p50"] == pytest.approx(200.05)
    late = assess(waits + 5_000_000, lags, 0.1, check_issue_delay=True,
                  ttft_from_scheduled_ns=ttft + 5_000_000, ttft_from_sent_ns=ttft, slot_wait_ns=waits,
                  max_concurrency=4)
    assert late.limited and "past their --max-concurrency slot" in late.reasons[0]
    blamed = assess(waits, lags, 0.1, check_issue_delay=True, ttft_from_scheduled_ns=ttft + waits,
                    ttft_from_sent_ns=ttft)
    assert blamed.limited  # without the cap's accounting the same waits would read as lateness


def test_max_concurrency_is_refused_for_closed_loops():
    res = run_cli("run", "singlestream", "--max-concurrency", "2", "--quiet", timeout=60)
    assert res.code == 2 and "max_concurrency (--max-concurrency) caps an open loop" in res.stderr
    assert "Traceback" not in res.output

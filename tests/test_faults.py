"""Every injected fault of the simulated server, through the real CLI: the run completes, every request
is accounted for, and each failure lands in its documented error class (loadgen.client.client.ERROR_CLASSES).

Each run is a closed loop of 12 requests over 4 streams; the fault fires on every 3rd generation
request the server sees, so exactly 4 requests meet it (the probe sends no generation request).
"""

from __future__ import annotations

import json

import pytest

from loadgen.client.client import ERROR_CLASSES
from tests.conftest import load_report, run_cli, write_scenario

N, EVERY = 12, 3
FAULTED = N // EVERY


def run_with_fault(tmp_path, fault: dict, *args: str, name: str = "run", **scenario):
    fields = {
        "scenario": "concurrency", "concurrency": 4, "num_requests": N, "duration_s": 0,
        "input_len": 16, "output_len": 6, "sim": {"ttft_ms": 20, "itl_ms": 5, "faults": [fault]},
        **scenario,
    }
    f = write_scenario(tmp_path / f"{name}.yaml", **fields)
    out = tmp_path / name
    res = run_cli("run", str(f), "--out", str(out), "--quiet", *args, timeout=90)
    assert res.code == 0, res.output
    report = load_report(out)
    lines = (out / "requests.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    r = report["results"]
    assert r["requests_issued"] == len(recs) == N
    assert r["requests_completed"] + r["requests_failed"] == N
    return res, report, recs


# kind -> (error class, HTTP status of the failed records or None)
CLASSIFIED = {
    "http_429": ("http_status", 429),
    "http_500": ("http_status", 500),
    "http_503": ("http_status", 503),
    "reset_before_headers": ("connect", None),
    "disconnect_mid_stream": ("disconnect", 200),
    # the server sends half of the last HTTP chunk and closes: the chunked framing is broken, so the
    # transport sees the connection break mid-response (not a cleanly ended stream: "incomplete")
    "truncated_final_chunk": ("disconnect", 200),
    "malformed_sse": ("malformed", 200),
    "error_event": ("server_error", 200),
    "wrong_content_type": ("content_type", 200),
}


@pytest.mark.parametrize("kind", sorted(CLASSIFIED))
def test_fault_lands_in_its_error_class(tmp_path, kind):
    cls, status = CLASSIFIED[kind]
    assert cls in ERROR_CLASSES
    res, report, recs = run_with_fault(tmp_path, {"kind": kind, "every": EVERY, "after_tokens": 2})
    r = report["results"]
    assert r["errors_by_class"] == {cls: FAULTED}, r["errors_by_class"]
    assert r["requests_completed"] == N - FAULTED
    failed = [x for x in recs if x["error_class"] is not None]
    assert len(failed) == FAULTED and all(x["error"] for x in failed)
    assert all(x["status"] == status for x in failed), [x["status"] for x in failed]
    if cls == "http_status":
        assert r["errors_by_status"] == {str(status): FAULTED}
    assert f"errors by class: {cls}: {FAULTED}" in res.stdout
    assert report["validity"]["valid"] is False
    assert any("requests failed" in reason for reason in report["validity"]["reasons"])
    assert "Result is : INVALID" in res.stdout


@pytest.mark.parametrize("kind", ["http_503", "reset_before_headers", "disconnect_mid_stream",
                                  "malformed_sse", "error_event", "wrong_content_type",
                                  "truncated_final_chunk"])
def test_fault_classes_are_the_same_with_aiohttp(tmp_path, kind):
    cls, _ = CLASSIFIED[kind]
    _, report, _ = run_with_fault(tmp_path, {"kind": kind, "every": EVERY, "after_tokens": 2},
                                  "--http-client", "aiohttp")
    assert report["results"]["errors_by_class"] == {cls: FAULTED}


@pytest.mark.parametrize("transport", ["fast", "aiohttp"])
def test_stall_beyond_the_idle_timeout_is_idle_timeout(tmp_path, transport):
    _, report, recs = run_with_fault(
        tmp_path, {"kind": "stall", "every": EVERY, "after_tokens": 2, "seconds": 3},
        "--idle-timeout", "0.4", "--http-client", transport,
    )
    assert report["results"]["errors_by_class"] == {"idle_timeout": FAULTED}
    stalled = [x for x in recs if x["error_class"]]
    for x in stalled:  # ended about one idle timeout after its last chunk, not after the 3 s stall
        gap_ms = (x["end_ns"] - x["chunk_ns"][-1]) / 1e6
        assert 350 < gap_ms < 1500, gap_ms
        assert len(x["chunk_ns"]) == 2  # what arrived before the stall is kept
    assert report["validity"]["valid"] is False


def test_stall_within_the_idle_timeout_succeeds(tmp_path):
    _, report, _ = run_with_fault(
        tmp_path, {"kind": "stall", "every": EVERY, "after_tokens": 2, "seconds": 0.3},
        "--idle-timeout", "2",
    )
    r = report["results"]
    assert r["requests_failed"] == 0 and r["errors_by_class"] == {}
    assert r["itl_ms"]["max"] > 280  # the stall shows as one long inter-token gap


def test_slow_headers_within_the_timeout_succeed_with_a_later_ttft(tmp_path):
    _, report, recs = run_with_fault(
        tmp_path, {"kind": "slow_headers", "every": EVERY, "seconds": 0.5}, "--request-timeout", "5",
    )
    assert report["results"]["requests_failed"] == 0
    ttfts = sorted((x["first_token_ns"] - x["sent_ns"]) / 1e6 for x in recs)
    assert all(t < 200 for t in ttfts[: N - FAULTED]), ttfts  # 20 ms TTFT plus scheduling noise
    assert all(t > 500 for t in ttfts[N - FAULTED:]), ttfts  # held back half a second


@pytest.mark.parametrize("transport", ["fast", "aiohttp"])
def test_slow_headers_beyond_the_request_timeout_is_timeout(tmp_path, transport):
    _, report, _ = run_with_fault(
        tmp_path, {"kind": "slow_headers", "every": EVERY, "seconds": 3},
        "--request-timeout", "0.8", "--http-client", transport,
    )
    assert report["results"]["errors_by_class"] == {"timeout": FAULTED}
    assert report["validity"]["valid"] is False


# ---- retries and the error-rate stop -----------------------------------------------------------------


def test_no_retries_by_default(tmp_path):
    _, report, recs = run_with_fault(tmp_path, {"kind": "http_503", "every": EVERY})
    assert report["results"]["retries_total"] == 0 and all(x["retries"] == 0 for x in recs)
    assert report["results"]["errors_by_status"] == {"503": FAULTED}


def test_retries_resend_429_and_503_and_are_counted(tmp_path):
    """One stream: every 3rd arrival gets a 503 and its retry (the next arrival) succeeds, so the 12
    requests take 17 arrivals: 5 retries."""
    res, report, recs = run_with_fault(tmp_path, {"kind": "http_503", "every": EVERY}, "--retries", "2",
                                       concurrency=1)
    r = report["results"]
    assert r["requests_failed"] == 0 and r["retries_total"] == 5
    assert sorted(x["retries"] for x in recs) == [0] * 7 + [1] * 5
    retried = [x for x in recs if x["retries"]]
    for x in retried:  # latency counts from the first attempt: the failed try and the 50 ms backoff
        assert (x["first_token_ns"] - x["sent_ns"]) / 1e6 > 50
    # a retried request's first attempt failed: without --retries it is a failed request (INVALID),
    # so a retry cannot make the run VALID; the verdict and its reasons agree
    assert report["validity"]["valid"] is False and report["mlperf"]["checks"]["no_retries"] is False
    assert any("5 requests needed retries (5 resends" in reason for reason in report["validity"]["reasons"])
    assert "needed retries" in res.stdout and "Result is : INVALID" in res.stdout


def test_retries_never_resend_a_500(tmp_path):
    _, report, _ = run_with_fault(tmp_path, {"kind": "http_500", "every": EVERY}, "--retries", "3")
    assert report["results"]["errors_by_class"] == {"http_status": FAULTED}
    assert report["results"]["retries_total"] == 0


def test_retries_resend_connect_failures(tmp_path):
    _, report, _ = run_with_fault(tmp_path, {"kind": "reset_before_headers", "every": EVERY},
                                  "--retries", "1", concurrency=1)
    assert report["results"]["requests_failed"] == 0 and report["results"]["retries_total"] == 5


def test_max_error_rate_stops_a_failing_run_early(tmp_path):
    f = write_scenario(tmp_path / "s.yaml", scenario="server", qps=50, duration_s=20, num_requests=1000,
                       input_len=16, output_len=6, sim={"faults": [{"kind": "http_500", "every": 1}]})
    out = tmp_path / "run"
    res = run_cli("run", str(f), "--out", str(out), "--quiet", "--max-error-rate", "0.5", timeout=60)
    assert res.code == 0, res.output
    report = load_report(out)
    r = report["results"]
    lines = (out / "requests.jsonl").read_text().splitlines()
    assert r["requests_issued"] == len(lines) < 100  # stopped after ~20 of the planned 1000
    assert r["requests_failed"] == r["requests_issued"]
    assert r["duration_s"] < 5
    assert report["interrupted"] is False and "max-error-rate" in report["stopped_early"]
    assert report["validity"]["valid"] is False
    assert any("max-error-rate" in reason for reason in report["validity"]["reasons"])
    assert "max-error-rate" in res.stdout

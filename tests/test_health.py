"""The client-health verdict (loadgen.health.assess) on hand-made delays, lags and latencies."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.health import assess

MS = 1_000_000


def _ns(values_ms: list[float]) -> np.ndarray:
    return (np.asarray(values_ms, dtype=float) * MS).astype(np.int64)


def test_open_loop_issue_delay_over_1ms_is_client_limited():
    delays = _ns([0.1] * 95 + [3.0] * 5)  # p99 = 3 ms
    h = assess(delays, _ns([0.05] * 10), 0.3, check_issue_delay=True)
    assert h.limited
    assert "issue delay p99 3.00 ms > 1 ms" in h.reasons[0]
    assert h.concurrency_held is None


def test_open_loop_on_time_is_clean():
    h = assess(_ns([0.1] * 100), _ns([0.05] * 10), 0.3, check_issue_delay=True)
    assert not h.limited and h.reasons == []


def test_offline_does_not_judge_issue_delay():
    h = assess(_ns([40.0] * 100), _ns([0.05] * 10), 0.3, check_issue_delay=False)
    assert not h.limited


def test_closed_loop_delay_small_against_latency_passes_and_reports_concurrency_held():
    # 100 requests of 2 s each; a completion wave delays re-issue by up to 5 ms.
    latencies = _ns([2000.0] * 100)
    delays = _ns([0.2] * 90 + [5.0] * 10)
    h = assess(delays, _ns([0.05] * 10), 0.2, check_issue_delay=True, closed_loop_latencies_ns=latencies)
    # limit = max(1 ms, 1% of 2000 ms) = 20 ms; p99 5 ms passes
    assert h.issue_delay_limit_ms == pytest.approx(20.0)
    assert not h.limited
    busy = 100 * 2000.0
    idle = 90 * 0.2 + 10 * 5.0
    assert h.concurrency_held == pytest.approx(busy / (busy + idle))
    assert h.to_dict()["concurrency_held"] == pytest.approx(busy / (busy + idle))


def test_closed_loop_delay_large_against_latency_is_client_limited():
    latencies = _ns([100.0] * 100)  # limit = max(1, 1% of 100 ms) = 1 ms
    delays = _ns([0.2] * 90 + [5.0] * 10)
    h = assess(delays, _ns([0.05] * 10), 0.2, check_issue_delay=True, closed_loop_latencies_ns=latencies)
    assert h.limited
    assert "concurrency held" in h.reasons[0]


def test_loop_lag_and_cpu_each_make_the_run_client_limited():
    lag = assess(_ns([0.1] * 100), _ns([0.1] * 95 + [9.0] * 5), 0.3, check_issue_delay=True)
    assert lag.limited and "event-loop lag" in lag.reasons[0]
    cpu = assess(_ns([0.1] * 100), _ns([0.05] * 10), 0.97, check_issue_delay=True)
    assert cpu.limited and "client CPU 0.97" in cpu.reasons[0]

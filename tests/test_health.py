"""The client-health verdict (loadgen.metrics.health.assess) on hand-made delays, lags and latencies."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.metrics.health import assess

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


def test_open_loop_few_late_requests_that_leave_the_ttft_tail_alone_pass():
    # 2% of requests went out 2 ms late, but the TTFT tail belongs to slow responses: p99 unmoved.
    n = 1000
    sent_ttft = np.full(n, 100.0)
    sent_ttft[:20] = 300.0  # the server's slow tail
    delay = np.full(n, 0.1)
    delay[500:520] = 2.0  # late requests among the fast ones
    h = assess(_ns(list(delay)), _ns([0.05] * 10), 0.3, check_issue_delay=True,
               ttft_from_scheduled_ns=_ns(list(sent_ttft + delay)), ttft_from_sent_ns=_ns(list(sent_ttft)))
    assert h.issue_delay_ms["p99"] == pytest.approx(2.0)
    assert h.ttft_p99_shift_ms == pytest.approx(0.1, abs=1e-6)
    assert not h.limited, h.reasons


def test_open_loop_lateness_across_the_board_moves_the_tail_and_is_client_limited():
    n = 1000
    sent_ttft = np.linspace(50.0, 150.0, n)
    delay = np.full(n, 5.0)  # every request 5 ms late
    h = assess(_ns(list(delay)), _ns([0.05] * 10), 0.3, check_issue_delay=True,
               ttft_from_scheduled_ns=_ns(list(sent_ttft + delay)), ttft_from_sent_ns=_ns(list(sent_ttft)))
    # shift 5 ms > max(1 ms, 1% of ~149 ms)
    assert h.ttft_p99_shift_ms == pytest.approx(5.0, abs=1e-6)
    assert h.limited and "moved TTFT p99 by 5.00 ms" in h.reasons[0]


def test_cpu_is_the_loops_thread_not_the_helper_threads_beside_it():
    """A helper thread that keeps a core busy outside the GIL (hashing releases it) does not make the
    loop look saturated; a loop that spins does. The process's CPU counts both."""
    import asyncio
    import hashlib
    import threading
    import time

    from loadgen.engine.loopmon import LoopLagMonitor

    async def measure(spin_s: float, helper: bool) -> LoopLagMonitor:
        mon = LoopLagMonitor(interval_s=0.05)
        stop = threading.Event()
        blob = b"x" * (8 << 20)

        def busy() -> None:
            while not stop.is_set():
                hashlib.sha256(blob).digest()

        side = threading.Thread(target=busy, daemon=True)
        async with asyncio.TaskGroup() as tg:
            mon.start(tg)
            if helper:
                side.start()
            end = time.perf_counter() + 0.6
            while time.perf_counter() < end:
                t = time.perf_counter()
                while time.perf_counter() - t < spin_s:
                    pass
                await asyncio.sleep(0.01)
            mon.stop()
        stop.set()
        if helper:
            side.join()
        return mon

    idle_loop = asyncio.run(measure(0.0, helper=True))
    assert idle_loop.cpu_cores is not None and idle_loop.process_cpu_cores is not None
    assert idle_loop.cpu_cores < 0.3
    assert idle_loop.process_cpu_cores > idle_loop.cpu_cores + 0.4  # the hashing thread's core
    busy_loop = asyncio.run(measure(0.04, helper=False))  # 40 ms of every ~50 ms on the loop
    assert busy_loop.cpu_cores is not None and 0.6 < busy_loop.cpu_cores <= 1.05

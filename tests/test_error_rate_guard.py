"""``--max-error-rate``'s guard: the failed fraction of the last 100 finished requests, judged from the
20th on, tripping once when it is strictly above the limit."""

from __future__ import annotations

from loadgen.engine.issuer import ErrorRateGuard
from loadgen.records import RequestRecord


def rec(failed: bool, **kw) -> RequestRecord:
    return RequestRecord(index=0, sample=0, query=0, scheduled_ns=0, sent_ns=0, end_ns=1,
                         error_class="http_status" if failed else None, **kw)


def feed(guard: ErrorRateGuard, pattern: list[bool]) -> list[int]:
    """Positions (0-based) at which ``add`` returned a reason."""
    return [i for i, failed in enumerate(pattern) if guard.add(rec(failed)) is not None]


def test_nothing_is_judged_before_20_requests() -> None:
    guard = ErrorRateGuard(0.5)
    assert feed(guard, [True] * 19) == []  # 100% failed, but only 19 finished
    reason = guard.add(rec(True))  # the 20th
    assert reason == guard.tripped
    assert reason is not None and "100%" in reason and "last 20 finished requests" in reason
    assert "--max-error-rate 0.5" in reason


def test_at_the_limit_does_not_trip_above_it_does() -> None:
    guard = ErrorRateGuard(0.1)
    # one failure in every 10: 10% at every multiple of 10, below it in between
    pattern = [i % 10 == 9 for i in range(100)]
    assert feed(guard, pattern) == []
    # window full (100, 10 failed): one more failure pushes out an ok -> 11/100
    assert guard.add(rec(True)) is not None
    assert guard.tripped is not None and "11%" in guard.tripped and "last 100" in guard.tripped


def test_trips_once_then_stays_quiet() -> None:
    guard = ErrorRateGuard(0.2)
    assert feed(guard, [True] * 30) == [19]
    assert guard.add(rec(True)) is None and guard.tripped is not None


def test_the_window_slides_over_the_last_100() -> None:
    """Early failures leave the window: after 100 good requests the same failures count afresh."""
    guard = ErrorRateGuard(0.1)
    early = [i % 10 == 9 for i in range(100)]  # 10% failed (at the limit, not over): no trip
    assert feed(guard, early) == []
    assert feed(guard, [False] * 100) == []  # every early failure has left the window
    # 10 failures in a row now make 10/100 = 10%: still no trip. Had the 10 early failures stayed
    # counted (a cumulative or longer window), this would be 20% and trip.
    assert feed(guard, [True] * 10) == []
    assert guard.add(rec(True)) is not None  # the 11th: 11/100
    assert "11%" in (guard.tripped or "")


def test_below_the_limit_for_a_long_run_never_trips() -> None:
    guard = ErrorRateGuard(0.05)
    pattern = [i % 25 == 24 for i in range(5000)]  # 4% failed, evenly: 4 in any 100 in a row
    assert feed(guard, pattern) == []
    assert guard.tripped is None


def test_warmup_and_cancelled_requests_do_not_count() -> None:
    guard = ErrorRateGuard(0.1)
    for _ in range(50):
        assert guard.add(rec(True, warmup=True)) is None
        assert guard.add(RequestRecord(index=0, sample=0, query=0, scheduled_ns=0, sent_ns=0, end_ns=1,
                                       error_class="cancelled")) is None
    assert feed(guard, [False] * 20) == []  # the window holds only these 20
    assert feed(guard, [True] * 2) == []  # 2/22 = 9.1%
    assert guard.add(rec(True)) is not None  # 3/23 = 13%


def test_a_smaller_window_than_the_minimum_judges_from_the_window_size() -> None:
    guard = ErrorRateGuard(0.5, window=10, min_count=20)
    assert feed(guard, [True] * 9) == []
    assert guard.add(rec(True)) is not None  # min_count is capped at the window: judged at 10

"""The clock that times issuance: :class:`RealClock` in every run, :class:`VirtualClock` in tests.

A clock gives ``now_ns()`` (integer nanoseconds, the clock of every ``*_ns`` field of a record) and
``sleep_until(target_ns)`` (return once ``now_ns() >= target_ns``). The issuer schedules against
absolute targets (``t0 + offset``), so the only thing a clock decides is how precisely it wakes up.

Real time: asyncio timers wake up to ~1 ms late (epoll rounds timeouts to milliseconds), so on Linux
:class:`RealClock` waits on a timerfd armed 0.4 ms before the target (nanosecond resolution, timer
slack set to 1 µs for the loop's thread), then yields (``sleep(0)``) until the target; elsewhere it
sleeps until 1 ms before the target and then yields until it. Reads keep being served while it waits.

Virtual time (after trio's ``MockClock(autojump_threshold=0)``): time stands still while any task can
run, and jumps to the next deadline — the earliest ``sleep_until`` target or asyncio timer
(``asyncio.sleep``, ``asyncio.timeout``, ``call_later``) — only when every task waits. So a schedule
is followed to the nanosecond and a test of minutes of load takes milliseconds. Run the code on
:meth:`VirtualClock.new_event_loop` (e.g. ``asyncio.Runner(loop_factory=clock.new_event_loop)``): that
loop's ``time()`` is the virtual clock. Waiting on real I/O (a socket, a thread) does not advance it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import os
import selectors
import time
from typing import Any, Protocol

from loadgen.engine.timerfd import arm_timerfd

SPIN_NS = 1_000_000  # the last stretch before a target is waited out with sleep(0), not a timer
# with a timerfd: woken this much early, the rest with sleep(0) (0.2 ms early left the issue delay p99 at
# 0.54-0.75 ms on this project's 2-core VM, 0.4 ms at 0.41-0.49 ms as the 1 ms spin; spinning 0.4 ms a
# request is 4% of a core at 100/s by arithmetic, not measured)
TIMERFD_EARLY_NS = 400_000


class Clock(Protocol):
    """What times issuance; see the module docstring."""

    def now_ns(self) -> int:
        """Integer nanoseconds on a monotonic clock."""
        ...

    async def sleep_until(self, target_ns: int) -> None:
        """Return once ``now_ns() >= target_ns`` (at once, without yielding, when it is already)."""
        ...


class RealClock:
    """``time.perf_counter_ns()`` (CLOCK_MONOTONIC: one clock for every process on the host)."""

    @staticmethod
    def now_ns() -> int:
        return time.perf_counter_ns()

    @staticmethod
    async def sleep_until(target_ns: int) -> None:
        """Return at ``perf_counter_ns() >= target_ns``, typically within tens of microseconds.

        On Linux a timerfd armed at the target's absolute CLOCK_MONOTONIC time less 0.4 ms wakes the
        loop (see :mod:`loadgen.engine.timerfd`), and ``sleep(0)`` waits out the rest: the millisecond
        of spinning before every request cost a third of the client's CPU at 100 requests/s.
        Elsewhere: a timer to 1 ms before, then ``sleep(0)`` until the target."""
        if target_ns <= time.perf_counter_ns():
            return
        early = target_ns - TIMERFD_EARLY_NS
        fd = arm_timerfd(early) if early > time.perf_counter_ns() else None
        if fd is not None:
            loop = asyncio.get_running_loop()
            fired: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _fire, fired)
            try:
                await fired
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        while True:
            left = target_ns - time.perf_counter_ns()
            if left <= 0:
                return
            if left > SPIN_NS:
                await asyncio.sleep((left - SPIN_NS) / 1e9)
            else:
                await asyncio.sleep(0)


def _fire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


REAL_CLOCK = RealClock()


class VirtualClock:
    """Time that advances only when every task on its loop sleeps; see the module docstring.

    ``now_ns()`` starts at ``start_ns``. Sleepers wake in order of their targets (ties in the order
    they went to sleep), each at exactly its target.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now_ns(self) -> int:
        return self._now

    async def sleep_until(self, target_ns: int) -> None:
        if target_ns <= self._now:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (target_ns, next(self._seq), fut))
        await fut

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """An event loop on this clock (a selector loop whose ``time()`` is virtual)."""
        return _VirtualLoop(self)

    def _next_sleeper(self) -> int | None:
        heap = self._sleepers
        while heap and heap[0][2].done():  # cancelled meanwhile
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _advance(self, timeout_s: float | None) -> bool:
        """Every task waits: jump to the next deadline (a sleeper's target, or the loop's next timer
        ``timeout_s`` from now) and wake the sleepers due then. False when there is none."""
        candidates = [t for t in (self._next_sleeper(),) if t is not None]
        if timeout_s is not None:
            candidates.append(self._now + max(1, math.ceil(timeout_s * 1e9)))
        if not candidates:
            return False
        self._now = max(self._now, min(candidates))
        heap = self._sleepers
        while heap and heap[0][0] <= self._now:
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(None)
        return True


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real I/O without blocking; when nothing is ready, moves the virtual clock instead."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        events: list[tuple[Any, int]] = super().select(0)
        if events or timeout == 0:
            return events
        if self._clock._advance(timeout):
            return []
        return super().select(timeout)  # nothing scheduled at all: only real I/O can wake the loop


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(_VirtualSelector(clock))
        self._virtual = clock

    def time(self) -> float:
        return self._virtual.now_ns() / 1e9

"""Scraping a server's Prometheus ``/metrics`` during a run, and the report section it makes::

    scraper = ServerMetricsScraper(base_url, run_start_ns=perf_counter_ns(), interval_s=1.0)
    await scraper.baseline(session)                    # the scrape the deltas count from: before any request
    async with asyncio.TaskGroup() as tg:
        tg.create_task(scraper.run(session, stop))     # every interval_s; after stop, until settled
        ...                                            # the run; then stop.set()
    report["server_metrics"] = scraper.result(client_ttft_ms={"p50_ms": 123.0})

The parsing and arithmetic are :mod:`loadgen.observe.promtext` (pure).

Window. The deltas are ``final − baseline``. The baseline is taken before the first request is sent: a
scrape sent beside the first requests (offline sends everything at t0) can be answered after the engine
has already counted some of their prompt and generated tokens (vLLM renders ``/metrics`` in a worker
thread while its event loop goes on processing outputs), and the deltas come out short. The final
scrape is repeated every ``settle_poll_s`` until the counters have stood still for ``settle_s`` with no
request running or waiting on the server, for at most ``settle_timeout_s``; ``final_scrape.settled``
says whether they did, and a note says the deltas may be incomplete when they did not (a server that
counts late, another client's load, requests the client cancelled that the server is still finishing).
vLLM (one API server) increments its counters in the same event-loop step that queues a request's last
output, before its stream can send it, so against vLLM the first final scrape already holds every token
the client received and settling costs ``settle_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from loadgen.observe.promtext import (
    DEFAULT_COUNTERS,
    DEFAULT_GAUGES,
    DEFAULT_HISTOGRAMS,
    NO_METRICS_NOTE,
    Histogram,
    Snapshot,
    counter_deltas,
    cross_check,
    histogram_delta,
    histogram_summary,
    parse_selected,
    prefix_cache_hit_rate,
)

__all__ = ["ServerMetricsScraper"]


def _busy(snap: Snapshot) -> float:
    """Requests the server reports running or waiting (0 when it exports neither gauge)."""
    return sum(snap.scalars.get(g) or 0.0 for g in ("vllm:num_requests_running", "vllm:num_requests_waiting"))


class ServerMetricsScraper:
    """Scrapes ``base_url + path``: once in :meth:`baseline` (await it before the first request), every
    ``interval_s`` while ``stop`` is unset (absolute schedule: ticks missed because a scrape was slow are
    skipped, not bunched), and after ``stop`` is set, every ``settle_poll_s`` until the counters have not
    moved for ``settle_s`` and the server reports no request running or waiting, for at most
    ``settle_timeout_s`` (:meth:`run` takes the baseline itself when it was not taken).

    Never raises into the run for a failed scrape (HTTP error, timeout, unparsable text): it is counted
    in ``failed_scrapes`` and its first few reasons noted. A 404 or a refused connection on the *first*
    scrape means the server has no metrics endpoint: the scraper stops and notes :data:`NO_METRICS_NOTE`.
    Cancellation propagates (the caller's TaskGroup owns this task).

    ``t_s`` of a sample is (perf_counter_ns when its request was sent − ``run_start_ns``) / 1e9.
    """

    def __init__(
        self,
        base_url: str,
        *,
        run_start_ns: int | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
        path: str = "/metrics",
        gauges: Sequence[str] = DEFAULT_GAUGES,
        counters: Sequence[str] = DEFAULT_COUNTERS,
        histograms: Mapping[str, str] | None = None,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
        max_samples: int = 100_000,
        settle_s: float = 0.25,
        settle_poll_s: float = 0.05,
        settle_timeout_s: float = 5.0,
        parse: Callable[[str], Snapshot] | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + path
        self.parse = parse  # another server kind's names → canonical ones (observe/flavours.py)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.gauges = tuple(gauges)
        self.counters = tuple(counters)
        self.histograms = dict(DEFAULT_HISTOGRAMS if histograms is None else histograms)
        self._clock_ns = clock_ns
        self.run_start_ns = clock_ns() if run_start_ns is None else run_start_ns
        self.max_samples = max_samples
        self.settle_s = settle_s
        self.settle_poll_s = settle_poll_s
        self.settle_timeout_s = settle_timeout_s
        self.samples: list[dict[str, float | None]] = []
        self.before: Snapshot | None = None
        self.after: Snapshot | None = None
        self.scrapes = 0
        self.failed_scrapes = 0
        self.errors: list[str] = []
        self.skipped = False
        self._final_failed = False
        self._baseline_taken = False
        self._baseline_ok = False
        self.final_scrape: dict[str, Any] | None = None

    async def baseline(self, session: aiohttp.ClientSession) -> None:
        """The first scrape, which the deltas count from. Await it before the first request is sent (a
        scrape sent beside the first requests may be answered after the server counted some of them).
        Idempotent."""
        if self._baseline_taken:
            return
        self._baseline_taken = True
        first = await self._scrape(session, first=True)
        if first is not None:
            self.before = self.after = first
            self._baseline_ok = True

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        await self.baseline(session)
        if self.skipped:
            return
        loop_start = self._clock_ns()
        interval_ns = int(self.interval_s * 1e9)
        tick = 1
        while not stop.is_set():
            now = self._clock_ns()
            due = loop_start + tick * interval_ns
            if due <= now:  # a slow scrape: skip the ticks already past
                tick += (now - due) // interval_ns + 1
                due = loop_start + tick * interval_ns
            try:
                async with asyncio.timeout((due - now) / 1e9):
                    await stop.wait()
            except TimeoutError:
                pass
            if stop.is_set():
                break
            tick += 1
            await self._take(session)
        await self._settle(session)

    async def _settle(self, session: aiohttp.ClientSession) -> None:
        """The final scrape, repeated until the counters stand still for ``settle_s`` with nothing
        running or waiting on the server (settled), or ``settle_timeout_s`` has passed (not settled)."""
        start = self._clock_ns()
        deadline = start + int(self.settle_timeout_s * 1e9)
        quiet_ns = int(self.settle_s * 1e9)
        last_key: tuple[float | None, ...] | None = None
        quiet_since = start
        settled = False
        succeeded = scrapes = 0
        while True:
            snap = await self._take_snapshot(session)
            scrapes += 1
            now = self._clock_ns()
            if snap is not None:
                succeeded += 1
                key = self._movement_key(snap)
                if key != last_key:
                    last_key, quiet_since = key, now
                elif now - quiet_since >= quiet_ns and _busy(snap) == 0:
                    settled = True
                    break
            if now >= deadline:
                break
            await asyncio.sleep(min(self.settle_poll_s, (deadline - now) / 1e9))
        self._final_failed = succeeded == 0
        busy = _busy(self.after) if self.after is not None else None
        self.final_scrape = {
            "settled": settled,
            "waited_s": round((self._clock_ns() - start) / 1e9, 3),
            "scrapes": scrapes,
            "quiet_s": self.settle_s,
            "timeout_s": self.settle_timeout_s,
            "requests_running_or_waiting": busy,
        }

    def _movement_key(self, snap: Snapshot) -> tuple[float | None, ...]:
        """What must stop changing for the final scrape to count as settled: the counters and the
        histograms' observation counts."""
        hists = tuple(h.count if (h := snap.histograms.get(f)) else None for f in self.histograms.values())
        return (*(snap.scalars.get(c) for c in self.counters), *hists)

    async def _take(self, session: aiohttp.ClientSession) -> bool:
        return await self._take_snapshot(session) is not None

    async def _take_snapshot(self, session: aiohttp.ClientSession) -> Snapshot | None:
        snap = await self._scrape(session)
        if snap is None:
            return None
        if self.before is None:
            self.before = snap
        self.after = snap
        return snap

    async def _scrape(self, session: aiohttp.ClientSession, *, first: bool = False) -> Snapshot | None:
        sent_ns = self._clock_ns()
        try:
            async with asyncio.timeout(self.timeout_s), session.get(self.url) as resp:
                if first and resp.status == 404:
                    self.skipped = True
                    return None
                if resp.status != 200:
                    self._failed(f"HTTP {resp.status}")
                    return None
                text = await resp.text()
            snap = (self.parse(text) if self.parse is not None
                    else parse_selected(text, (*self.gauges, *self.counters), self.histograms.values()))
        except aiohttp.ClientConnectorError as e:
            if first:
                self.skipped = True
                self.errors.append(f"{type(e).__name__}: {e}")
            else:
                self._failed(f"{type(e).__name__}: {e}")
            return None
        except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeDecodeError) as e:
            self._failed(f"{type(e).__name__}: {e}")
            return None
        self.scrapes += 1
        if len(self.samples) < self.max_samples:
            sample: dict[str, float | None] = {"t_s": (sent_ns - self.run_start_ns) / 1e9}
            sample.update({g: snap.scalars.get(g) for g in self.gauges})
            self.samples.append(sample)
        return snap

    def _failed(self, reason: str) -> None:
        self.failed_scrapes += 1
        if len(self.errors) < 5:
            self.errors.append(reason)

    def result(self, client_ttft_ms: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The report section (JSON-ready); see the module docstring for what the numbers mean."""
        notes: list[str] = []
        out: dict[str, Any] = {
            "url": self.url,
            "interval_s": self.interval_s,
            "scrapes": self.scrapes,
            "failed_scrapes": self.failed_scrapes,
            "errors": list(self.errors),
            "samples": list(self.samples),
            "deltas": {},
            "histograms": {},
            "cross_check": None,
            "final_scrape": self.final_scrape,
            "note": None,
        }
        if self.skipped:
            out["note"] = NO_METRICS_NOTE
            return out
        if self.before is None or self.after is None:
            out["note"] = "no scrape of /metrics succeeded; server metrics unavailable"
            return out
        if self.before is self.after:
            notes.append("only one scrape succeeded; deltas are zero")
        if self._final_failed:
            notes.append("the scrape after the run failed; deltas end at the last successful scrape")
        elif self.final_scrape is not None and not self.final_scrape["settled"]:
            notes.append(
                f"the server's counters had not settled {self.final_scrape['waited_s']:.1f} s after the run "
                f"(still moving, or {self.final_scrape['requests_running_or_waiting'] or 0:g} requests "
                "running or waiting): the deltas may be incomplete, or include another client's requests"
            )
        if not self._baseline_ok:
            notes.append(
                "the first scrape failed; the deltas start at the first successful one, during the run, "
                "and miss what the server counted before it"
            )
        elif (busy := _busy(self.before)) > 0:
            notes.append(
                f"the server had {busy:g} requests running or waiting at the first scrape (another client, "
                "or requests from before the run): the deltas include their tokens"
            )
        out["deltas"] = counter_deltas(self.before, self.after, self.counters)
        out["prefix_cache_hit_rate"] = prefix_cache_hit_rate(out["deltas"])
        server_ttft: Histogram | None = None
        for short, family in self.histograms.items():
            after = self.after.histograms.get(family)
            if after is None:
                continue
            try:
                delta = histogram_delta(self.before.histograms.get(family), after)
            except ValueError as e:
                notes.append(f"{family}: {e}")
                continue
            out["histograms"][short] = {"metric": family, **histogram_summary(delta)}
            if short == "time_to_first_token":
                server_ttft = delta
        if out["histograms"]:
            out["histograms_resolution"] = (
                "quantiles are interpolated linearly inside one histogram bucket; each is exact only to "
                "within its bucket (pNN_bucket_ms)"
            )
        out["cross_check"] = cross_check(client_ttft_ms, server_ttft)
        out["note"] = "; ".join(notes) or None
        return out

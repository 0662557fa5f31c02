"""A Prometheus that already scrapes the fleet as the source (``--prometheus-url``): PromQL over the
run's window → the ``server_metrics`` and ``fleet_energy`` sections.

After the run, the source waits ``settle_s`` (the scrapes after the last request must have landed),
then asks ``/api/v1/query`` once per series for its raw samples over the window: a range vector
``selector[R]`` (``R`` spans the run plus a margin before it), or ``(expr)[R:1s]`` for a scenario's
PromQL expression that is not a plain selector. Per series:

* counters (token, request, prefix-cache, preemption counters; histogram buckets): the value of the
  last sample at or before the run's start, and of the last sample of all (after settling); their
  difference is the window's delta. A series whose first sample is inside the window (no sample before
  the start) counts from that sample, and a note says so.
* DCGM series: every sample, as :mod:`loadgen.observe.dcgm` integrates them (the energy counter
  interpolated at the window's edges; power trapezoid where there is no counter).

Replicas are Prometheus's ``instance`` label: the per-replica sections are the deltas summed over the
series of one instance; the fleet's are their sums, so the replicas add up to the fleet exactly.

Default selectors come from the server kind's table (:mod:`loadgen.observe.flavours`); ``promql`` in
a scenario overrides any of them by canonical name (``vllm:generation_tokens_total: 'my_tokens{job="llm"}'``).
Unavailability is data: a Prometheus that does not answer, or a series it does not have, is a note.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from loadgen.observe.dcgm import FIELDS as DCGM_FIELDS
from loadgen.observe.dcgm import GpuSeries, fleet_energy, gpu_key
from loadgen.observe.flavours import FLAVOURS, Flavour, Source
from loadgen.observe.promtext import (
    DEFAULT_COUNTERS,
    DEFAULT_HISTOGRAMS,
    Histogram,
    cross_check,
    histogram_summary,
    prefix_cache_hit_rate,
)

__all__ = ["PrometheusSource", "check_url", "selector"]

_SELECTOR = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*(\{[^{}]*\})?$")
Samples = list[tuple[float, float]]


def check_url(url: str) -> str:
    """The base URL (no trailing slash); ValueError naming the flag for anything not http(s)://host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--prometheus-url {url!r} is not an http(s) URL; give e.g. http://prometheus:9090")
    return url.strip().rstrip("/")


def selector(src: Source) -> str:
    """``name{k="v",...}`` for a table entry."""
    if not src.labels:
        return src.name
    return src.name + "{" + ",".join(f'{k}="{v}"' for k, v in src.labels) + "}"


def _range(expr: str, seconds: int) -> str:
    return f"{expr}[{seconds}s]" if _SELECTOR.match(expr) else f"({expr})[{seconds}s:1s]"


def _window_delta(samples: Samples, start: float) -> tuple[float | None, bool]:
    """(last − value at start, whether a sample at or before ``start`` existed). None: no samples or a
    reset (the value went down)."""
    if not samples:
        return None, False
    before = [v for t, v in samples if t <= start]
    base, had = (before[-1], True) if before else (samples[0][1], False)
    after = [v for t, v in samples if t >= start] or [base]
    if any(b < a for a, b in pairwise(after)) or after[-1] < base:
        return None, had
    return samples[-1][1] - base, had


class PrometheusSource:
    """Queries one Prometheus after the run; see the module docstring. ``clock_ns``/``wall_ns`` map the
    run's monotonic window to Prometheus's wall-clock timestamps."""

    def __init__(self, url: str, *, server_kind: str | None = None,
                 overrides: Mapping[str, str] | None = None,
                 settle_s: float = 3.0, timeout_s: float = 10.0) -> None:
        self.url = check_url(url)
        self.kind = server_kind
        self.overrides = dict(overrides or {})
        self.settle_s, self.timeout_s = settle_s, timeout_s
        self.notes: list[str] = []
        self.queries: dict[str, str] = {}
        # The run's perf_counter_ns → Prometheus's wall-clock seconds.
        self._offset_ns = time.time_ns() - time.perf_counter_ns()

    def wall(self, perf_ns: int) -> float:
        return (perf_ns + self._offset_ns) / 1e9

    async def _query(self, session: aiohttp.ClientSession, promql: str, at: float) -> list[dict[str, Any]]:
        async with asyncio.timeout(self.timeout_s), session.get(
                self.url + "/api/v1/query", params={"query": promql, "time": f"{at:.3f}"}) as resp:
            body = await resp.json(content_type=None)
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        result = body["data"]["result"]
        return result if isinstance(result, list) else []

    async def _series(self, session: aiohttp.ClientSession, name: str, expr: str, at: float, span: int
                      ) -> list[tuple[dict[str, str], Samples]]:
        promql = _range(expr, span)
        self.queries[name] = promql
        rows = await self._query(session, promql, at)
        return [(r["metric"], [(float(t), float(v)) for t, v in r.get("values", [])
                               if not math.isnan(float(v))]) for r in rows]

    async def _detect(self, session: aiohttp.ClientSession, at: float) -> str:
        for kind in ("vllm", "sglang", "trtllm", "tgi"):
            name = FLAVOURS[kind].scalars["vllm:generation_tokens_total"].name
            if await self._query(session, f"count({name})", at):
                if kind == "vllm" and not await self._query(session, "count(vllm:kv_cache_usage_perc)", at) \
                        and await self._query(session, "count(vllm:gpu_cache_usage_perc)", at):
                    return "vllm-v0"
                return kind
        self.notes.append("no known server series in Prometheus; assumed vLLM's names")
        return "vllm"

    async def collect(self, session: aiohttp.ClientSession, start_ns: int, end_ns: int, *,
                      output_tokens: float | None, client_ttft_ms: Mapping[str, Any] | None,
                      energy: bool = True) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``(server_metrics section, fleet_energy section or None)``. Waits until ``settle_s`` after the
        window's end first. Never raises for Prometheus's answers (they become notes); cancellation
        propagates."""
        start, end = self.wall(start_ns), self.wall(end_ns)
        wait = end + self.settle_s - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        at = time.time()
        span = math.ceil(at - start) + 60  # a margin before the start: the baseline sample
        try:
            kind = self.kind or await self._detect(session, at)
            server = await self._server(session, FLAVOURS[kind], start, at, span)
            server["server_kind"] = kind
            server["cross_check"] = cross_check(client_ttft_ms, server.pop("_ttft", None))
            gpus = await self._dcgm(session, at, span) if energy else None
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as e:
            note = f"Prometheus at {self.url} did not answer as expected: {type(e).__name__}: {e}"
            return {"source": "prometheus", "url": self.url, "deltas": {}, "histograms": {},
                    "cross_check": None, "replicas": [], "note": note}, None
        server["note"] = "; ".join(self.notes) or None
        fleet = None
        if gpus is not None:
            fleet = fleet_energy(gpus, start, end, output_tokens=output_tokens, source="prometheus") if gpus \
                else None
            if fleet is not None:
                fleet["url"] = self.url
                fleet["queries"] = {k: v for k, v in self.queries.items() if k in DCGM_FIELDS}
        return server, fleet

    async def _counters(self, session: aiohttp.ClientSession, fl: Flavour, start: float, at: float, span: int
                        ) -> dict[str, dict[str, float | None]]:
        """Per instance, per canonical counter: the window's delta (None: a reset)."""
        per: dict[str, dict[str, float | None]] = {}
        missing_before: set[str] = set()
        for canon in DEFAULT_COUNTERS:
            src = fl.scalars.get(canon)
            if canon == "vllm:prefix_cache_queries_total" and fl.queries_are_prompt_tokens:
                src = fl.scalars.get("vllm:prompt_tokens_total")
            expr = self.overrides.get(canon) or (selector(src) if src else None)
            if expr is None:
                continue
            for labels, samples in await self._series(session, canon, expr, at, span):
                inst = labels.get("instance", "")
                delta, had = _window_delta(samples, start)
                if not had:
                    missing_before.add(inst)
                row = per.setdefault(inst, {})
                prev = row.get(canon, 0.0)
                row[canon] = None if delta is None or prev is None else prev + delta
        if missing_before:
            self.notes.append(
                f"no sample before the run's start for {', '.join(sorted(missing_before))}: their deltas "
                "count from their first sample inside the window")
        return per

    async def _histograms(self, session: aiohttp.ClientSession, fl: Flavour, start: float, at: float,
                          span: int) -> tuple[dict[str, Any], Histogram | None]:
        """The fleet's window histograms (bucket deltas summed over instances) and its TTFT one."""
        histograms: dict[str, Any] = {}
        ttft: Histogram | None = None
        for short, canon in DEFAULT_HISTOGRAMS.items():
            family = self.overrides.get(canon) or fl.histograms.get(canon)
            if family is None:
                continue
            by_le: dict[float, float] = {}
            instances = set()
            for labels, samples in await self._series(session, canon, f"{family}_bucket", at, span):
                le = labels.get("le")
                delta, _ = _window_delta(samples, start)
                if le is None or delta is None:
                    continue
                instances.add(labels.get("instance", ""))
                by_le[float(le)] = by_le.get(float(le), 0.0) + delta
            if not by_le:
                continue
            buckets = tuple(sorted(by_le.items()))
            hist = Histogram(buckets=buckets, count=buckets[-1][1], sum=math.nan)
            histograms[short] = {"metric": family, "replicas": len(instances), **histogram_summary(hist)}
            if short == "time_to_first_token":
                ttft = hist
        return histograms, ttft

    async def _server(self, session: aiohttp.ClientSession, fl: Flavour, start: float, at: float, span: int
                      ) -> dict[str, Any]:
        per = await self._counters(session, fl, start, at, span)
        histograms, ttft = await self._histograms(session, fl, start, at, span)
        replicas = [{"instance": inst, "deltas": dict(per[inst]), "prefix_cache_hit_rate":
                     prefix_cache_hit_rate(per[inst])} for inst in sorted(per)]
        deltas: dict[str, float | None] = {}
        for c in DEFAULT_COUNTERS:
            vals = [per[i].get(c) for i in per if c in per[i]]
            if vals:
                known = [v for v in vals if v is not None]
                deltas[c] = sum(known) if len(known) == len(vals) else None
        return {"source": "prometheus", "url": self.url, "window_start_unix_s": start,
                "replica_count": len(replicas), "deltas": deltas,
                "prefix_cache_hit_rate": prefix_cache_hit_rate(deltas), "histograms": histograms,
                "replicas": replicas, "queries": dict(self.queries), "_ttft": ttft}

    async def _dcgm(self, session: aiohttp.ClientSession, at: float, span: int) -> dict[str, GpuSeries]:
        gpus: dict[str, GpuSeries] = {}
        for name in DCGM_FIELDS:
            expr = self.overrides.get(name, name)
            for labels, samples in await self._series(session, name, expr, at, span):
                gpus.setdefault(gpu_key(labels), {})[name] = samples
        return gpus

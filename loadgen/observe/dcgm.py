"""Remote GPU energy from DCGM exporter series: per-GPU samples → energy over the run's window.

Series (NVIDIA dcgm-exporter ``etc/default-counters.csv``): ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``
(counter, mJ since boot), ``DCGM_FI_DEV_POWER_USAGE`` (gauge, W), ``DCGM_FI_DEV_GPU_UTIL`` (%),
``DCGM_FI_DEV_FB_USED`` (MiB). A GPU is one label set (``Hostname``/``instance`` + ``gpu``/``UUID``).

Energy of one GPU over ``[start, end]`` (``energy_method``):

* ``"counter"``: the energy counter linearly interpolated at both edges between the samples that
  bracket them (the driver integrates power far faster than anyone scrapes), end − start, mJ → J.
* ``"power_integral"``: the trapezoidal integral of the power samples over the window (each edge
  interpolated), where the counter is missing or went down (a reset).

The fleet's energy is the sum over GPUs; J per output token = energy / the client's output tokens,
output tokens per J its inverse. Two sources feed this: :class:`DcgmScraper` (``--dcgm-url``: the
exporter scraped directly, every ``interval_s``, timestamps from the client's monotonic clock at the
midpoint of each request) and :mod:`loadgen.observe.promql` (the Prometheus that already scrapes it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any

import aiohttp

from loadgen.observe.flavours import iter_samples

__all__ = [
    "DCGM_ENERGY",
    "DCGM_FB_USED",
    "DCGM_POWER",
    "DCGM_UTIL",
    "DcgmScraper",
    "GpuSeries",
    "fleet_energy",
    "gpu_energy",
    "interpolate",
]

DCGM_POWER = "DCGM_FI_DEV_POWER_USAGE"
DCGM_ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
DCGM_UTIL = "DCGM_FI_DEV_GPU_UTIL"
DCGM_FB_USED = "DCGM_FI_DEV_FB_USED"
FIELDS = (DCGM_POWER, DCGM_ENERGY, DCGM_UTIL, DCGM_FB_USED)

#: One GPU's samples per field: ``[(t_s, value), ...]`` in time order (any one clock, seconds).
GpuSeries = dict[str, list[tuple[float, float]]]


def gpu_key(labels: Mapping[str, str], source: str = "") -> str:
    """A GPU's identity in a fleet: host (``Hostname``, else Prometheus's ``instance``, else the
    scraped URL) and ``gpu`` index (else ``UUID``)."""
    host = labels.get("Hostname") or labels.get("instance") or source
    return f"{host}/gpu{labels.get('gpu', labels.get('UUID', '?'))}"


def interpolate(points: Sequence[tuple[float, float]], t: float) -> float | None:
    """The value at ``t`` by linear interpolation between the samples around it; None when ``t`` lies
    outside the samples (no extrapolation: an edge not bracketed is not known)."""
    if not points or t < points[0][0] or t > points[-1][0]:
        return None
    for (t0, v0), (t1, v1) in pairwise(points):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return points[-1][1]


def _power_integral(points: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    a, b = interpolate(points, start), interpolate(points, end)
    if a is None or b is None:
        return None
    inner = [(t, v) for t, v in points if start < t < end]
    curve = [(start, a), *inner, (end, b)]
    return sum((t1 - t0) * (v0 + v1) / 2 for (t0, v0), (t1, v1) in pairwise(curve))


def _mean_in(points: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    inside = [v for t, v in points if start <= t <= end]
    return sum(inside) / len(inside) if inside else None


def gpu_energy(series: GpuSeries, start: float, end: float) -> dict[str, Any]:
    """One GPU over ``[start, end]``: ``energy_j``, ``energy_method``, ``power_mean_w`` (energy / window),
    ``util_mean_pct`` and ``fb_used_max_mib`` of the samples inside, ``samples``."""
    energy = series.get(DCGM_ENERGY, [])
    e0, e1 = interpolate(energy, start), interpolate(energy, end)
    out: dict[str, Any] = {"energy_j": None, "energy_method": None}
    if e0 is not None and e1 is not None and e1 >= e0 and all(
            b[1] >= a[1] for a, b in pairwise(energy)):
        out["energy_j"], out["energy_method"] = (e1 - e0) / 1000.0, "counter"
    else:
        integral = _power_integral(series.get(DCGM_POWER, []), start, end)
        if integral is not None:
            out["energy_j"], out["energy_method"] = integral, "power_integral"
    span = end - start
    out["power_mean_w"] = out["energy_j"] / span if out["energy_j"] is not None and span > 0 else None
    out["util_mean_pct"] = _mean_in(series.get(DCGM_UTIL, []), start, end)
    fb = [v for t, v in series.get(DCGM_FB_USED, []) if start <= t <= end]
    out["fb_used_max_mib"] = max(fb) if fb else None
    out["samples"] = len(series.get(DCGM_POWER, series.get(DCGM_ENERGY, [])))
    return out


def fleet_energy(gpus: Mapping[str, GpuSeries], start: float, end: float, *, output_tokens: float | None,
                 source: str, note: str | None = None) -> dict[str, Any]:
    """The report section ``fleet_energy``: per GPU, the sum, J per output token, output tokens per J.
    ``energy_j`` is None when any GPU's energy is unknown (a partial sum would flatter J/token)."""
    per = {key: gpu_energy(s, start, end) for key, s in sorted(gpus.items())}
    known = [g["energy_j"] for g in per.values()]
    total = sum(known) if known and all(e is not None for e in known) else None
    notes = [note] if note else []
    if not per:
        notes.append("no DCGM GPU series found")
    elif total is None:
        missing = ", ".join(k for k, g in per.items() if g["energy_j"] is None)
        notes.append(f"energy unknown for {missing}: their samples do not cover the run's window")
    window = end - start
    tokens = output_tokens or 0
    return {
        "source": source,
        "gpus": per,
        "gpu_count": len(per),
        "window_s": window,
        "energy_j": total,
        "energy_method": ",".join(sorted({g["energy_method"] for g in per.values() if g["energy_method"]}))
        or None,
        "power_mean_w": total / window if total is not None and window > 0 else None,
        "output_tokens": output_tokens,
        "joules_per_output_token": total / tokens if total is not None and tokens > 0 else None,
        "output_tokens_per_joule": tokens / total if total and tokens > 0 else None,
        "note": "; ".join(notes) or None,
    }


def parse_dcgm(text: str, source: str = "") -> dict[str, dict[str, float]]:
    """``{gpu key: {field: value}}`` from one exporter scrape."""
    out: dict[str, dict[str, float]] = {}
    for name, labels, value in iter_samples(text, FIELDS):
        out.setdefault(gpu_key(labels, source), {})[name] = value
    return out


class DcgmScraper:
    """Scrapes DCGM exporters (``urls``, each ``http://host:port[/path]``, default path ``/metrics``)
    before the run (:meth:`baseline`), every ``interval_s`` during it and once after (:meth:`run` until
    ``stop``, then a final scrape), keeping every GPU's samples in the ``clock_ns`` clock (seconds).
    A failed scrape is counted and noted, never raised; cancellation propagates."""

    def __init__(self, urls: Iterable[str], *, interval_s: float = 1.0, timeout_s: float = 5.0,
                 clock_ns: Callable[[], int] = time.perf_counter_ns) -> None:
        self.urls = [u if "/" in u.split("://", 1)[-1] else u.rstrip("/") + "/metrics" for u in urls]
        self.interval_s, self.timeout_s, self._clock_ns = interval_s, timeout_s, clock_ns
        self.gpus: dict[str, GpuSeries] = {}
        self.scrapes = 0
        self.failed = 0
        self.errors: list[str] = []

    async def _scrape_one(self, session: aiohttp.ClientSession, url: str) -> None:
        sent = self._clock_ns()
        try:
            async with asyncio.timeout(self.timeout_s), session.get(url) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                text = await resp.text()
            t = (sent + self._clock_ns()) / 2e9
            readings = parse_dcgm(text, url)
        except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeDecodeError) as e:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(f"{url}: {type(e).__name__}: {e}")
            return
        self.scrapes += 1
        for key, fields in readings.items():
            series = self.gpus.setdefault(key, {})
            for name, value in fields.items():
                series.setdefault(name, []).append((t, value))

    async def scrape(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._scrape_one(session, u) for u in self.urls))

    async def baseline(self, session: aiohttp.ClientSession) -> None:
        await self.scrape(session)

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(self.interval_s):
                    await stop.wait()
            except TimeoutError:
                await self.scrape(session)
        await self.scrape(session)  # the edge after the window

    def result(self, start_ns: int, end_ns: int, output_tokens: float | None) -> dict[str, Any]:
        note = f"{self.failed} failed scrapes: {'; '.join(self.errors)}" if self.failed else None
        out = fleet_energy(self.gpus, start_ns / 1e9, end_ns / 1e9, output_tokens=output_tokens,
                           source="dcgm", note=note)
        out["urls"] = list(self.urls)
        out["scrapes"] = self.scrapes
        return out

"""Several replicas' ``/metrics`` (``--metrics-url``, one per replica): fleet series and per-replica
sections of ``report.json``'s ``server_metrics``.

Each replica is scraped by its own :class:`~loadgen.observe.scrape.ServerMetricsScraper` (baseline
before the first request, every second, settled final scrape), its names translated by
:class:`~loadgen.observe.flavours.FlavourParser` (``--server-kind`` or detected per replica). The fleet
section has the keys of a single server's section::

    deltas[c]       = Σ_replicas deltas[c]        None when any replica's is None (reset, absent)
    histograms[h]   = bucket-wise Σ of the replicas' window histograms (same bounds required)
    cross_check     = client TTFT p50 beside the fleet histogram's
    replicas        = [each replica's own section, with its url and server_kind]

Counts are integers carried as floats, so the replicas' token deltas sum to the fleet's exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from loadgen.observe.flavours import FlavourParser
from loadgen.observe.promtext import (
    Histogram,
    cross_check,
    histogram_delta,
    histogram_summary,
    metrics_endpoint,
    prefix_cache_hit_rate,
)
from loadgen.observe.scrape import ServerMetricsScraper

__all__ = ["FleetScraper", "sum_histograms"]


def sum_histograms(hists: Sequence[Histogram]) -> Histogram:
    """Bucket-wise sum. Raises ValueError when the bucket bounds differ."""
    first = hists[0]
    bounds = [le for le, _ in first.buckets]
    for h in hists[1:]:
        if [le for le, _ in h.buckets] != bounds:
            raise ValueError("replicas' histogram bucket bounds differ; no fleet histogram")
    buckets = tuple((le, sum(h.buckets[i][1] for h in hists)) for i, le in enumerate(bounds))
    return Histogram(buckets=buckets, count=sum(h.count for h in hists), sum=sum(h.sum for h in hists))


class FleetScraper:
    """One scraper per replica URL, run together; :meth:`result` is the fleet section."""

    def __init__(self, urls: Sequence[str], server_kind: str | None = None) -> None:
        self.parsers = [FlavourParser(server_kind) for _ in urls]
        self.scrapers = []
        for url, parser in zip(urls, self.parsers, strict=True):
            base, path = metrics_endpoint(url, url)
            self.scrapers.append(ServerMetricsScraper(base, path=path, parse=parser))

    async def baseline(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(s.baseline(session) for s in self.scrapers))

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            for s in self.scrapers:
                tg.create_task(s.run(session, stop))

    def result(self, client_ttft_ms: Mapping[str, Any] | None = None) -> dict[str, Any]:
        replicas = []
        for s, p in zip(self.scrapers, self.parsers, strict=True):
            r = s.result(None)
            r.pop("cross_check", None)  # the client's TTFT is the fleet's, not one replica's
            replicas.append({"server_kind": p.kind, **r})
        notes = [f"{r['url']}: {r['note']}" for r in replicas if r.get("note")]
        counters = self.scrapers[0].counters
        deltas: dict[str, float | None] = {}
        for c in counters:
            values = [r["deltas"].get(c) for r in replicas]
            deltas[c] = None if any(v is None for v in values) else sum(values)
        histograms: dict[str, Any] = {}
        server_ttft: Histogram | None = None
        for short, family in self.scrapers[0].histograms.items():
            parts = []
            for s in self.scrapers:
                if s.after is None or (after := s.after.histograms.get(family)) is None:
                    continue
                try:
                    before = s.before.histograms.get(family) if s.before else None
                    parts.append(histogram_delta(before, after))
                except ValueError:
                    continue
            if not parts:
                continue
            try:
                fleet = sum_histograms(parts)
            except ValueError as e:
                notes.append(f"{family}: {e}")
                continue
            histograms[short] = {"metric": family, "replicas": len(parts), **histogram_summary(fleet)}
            if short == "time_to_first_token":
                server_ttft = fleet
        settled = [r["final_scrape"]["settled"] for r in replicas if r.get("final_scrape")]
        return {
            "url": [s.url for s in self.scrapers],
            "server_kind": sorted({str(p.kind) for p in self.parsers}),
            "replica_count": len(replicas),
            "scrapes": sum(r["scrapes"] for r in replicas),
            "failed_scrapes": sum(r["failed_scrapes"] for r in replicas),
            "errors": [e for r in replicas for e in r["errors"]][:5],
            "samples": [],
            "deltas": deltas,
            "prefix_cache_hit_rate": prefix_cache_hit_rate(deltas),
            "histograms": histograms,
            "cross_check": cross_check(client_ttft_ms, server_ttft),
            "final_scrape": {"settled": bool(settled) and all(settled)},
            "replicas": replicas,
            "note": "; ".join(notes) or None,
        }

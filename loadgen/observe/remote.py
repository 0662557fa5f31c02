"""The remote-fleet observers of one run, behind the runner's sidecars: replica scrapers
(``--metrics-url``), direct DCGM exporters (``--dcgm-url``), a Prometheus (``--prometheus-url``).

``Remote.start(settings)`` checks every URL first (a bad one is a :class:`ConfigError` naming its
flag, before anything starts); :meth:`baseline` is awaited before the first request;
:meth:`during` adds the scraping tasks to the run's TaskGroup; :meth:`results` (after the report is
built: it needs the window and the client's output tokens) returns the report sections:

* ``server_metrics`` from the replicas (:mod:`loadgen.observe.fleet`), or from Prometheus when no
  replica is scraped directly (else Prometheus's goes to ``server_metrics.prometheus``);
* ``fleet_energy`` from the DCGM exporters (:mod:`loadgen.observe.dcgm`), or from Prometheus's DCGM
  series when none is scraped directly (else under ``fleet_energy.prometheus``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp

from loadgen.errors import ConfigError
from loadgen.observe.dcgm import DcgmScraper
from loadgen.observe.fleet import FleetScraper
from loadgen.observe.promql import PrometheusSource
from loadgen.observe.promtext import metrics_endpoint

if TYPE_CHECKING:
    from loadgen.settings import Settings

__all__ = ["Remote", "replaces_default_scrape"]


def replaces_default_scrape(settings: Settings) -> bool:
    """Whether the default scrape of ``<url>/metrics`` gives way: replicas are named, or a
    Prometheus is the source and no ``--server-metrics-url`` was given."""
    return bool(settings.metrics_urls) or (settings.prometheus_url is not None
                                           and settings.server_metrics_url is None)


class Remote:
    def __init__(self, fleet: FleetScraper | None, dcgm: DcgmScraper | None,
                 prom: PrometheusSource | None, *, direct_server: bool) -> None:
        self.fleet, self.dcgm, self.prom = fleet, dcgm, prom
        self.direct_server = direct_server  # some scraper already fills server_metrics

    @classmethod
    def start(cls, settings: Settings, *, default_scrape: bool) -> Remote:
        fleet = dcgm = prom = None
        for flag, urls in (("--metrics-url", settings.metrics_urls), ("--dcgm-url", settings.dcgm_urls)):
            for u in urls:
                try:
                    metrics_endpoint(u, u)
                except ValueError:
                    raise ConfigError(
                        f"{flag} {u!r} is not an http(s) URL; give e.g. http://host:9400 (scrapes /metrics "
                        "there) or http://host:9400/path/to/metrics") from None
        try:
            if settings.metrics_urls:
                fleet = FleetScraper(settings.metrics_urls, settings.server_kind)
            if settings.dcgm_urls:
                dcgm = DcgmScraper(settings.dcgm_urls)
            if settings.prometheus_url:
                prom = PrometheusSource(settings.prometheus_url, server_kind=settings.server_kind,
                                        overrides=settings.promql, settle_s=settings.prometheus_settle_s)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(fleet, dcgm, prom, direct_server=default_scrape or fleet is not None)

    @property
    def active(self) -> bool:
        return any(x is not None for x in (self.fleet, self.dcgm, self.prom))

    async def baseline(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(x.baseline(session) for x in (self.fleet, self.dcgm) if x is not None))

    def during(self, tg: asyncio.TaskGroup, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        for x in (self.fleet, self.dcgm):
            if x is not None:
                tg.create_task(x.run(session, stop))

    async def results(self, data: dict[str, Any], t0_ns: int) -> dict[str, Any]:
        """The report sections (see the module docstring); ``data`` is the built report."""
        res = data.get("results") or {}
        end_ns = t0_ns + int((res.get("duration_s") or 0) * 1e9)
        tokens = res.get("output_tokens_total")
        ttft = res.get("ttft_ms")
        out: dict[str, Any] = {}
        if self.fleet is not None:
            out["server_metrics"] = self.fleet.result(ttft)
        if self.dcgm is not None:
            out["fleet_energy"] = self.dcgm.result(t0_ns, end_ns, tokens)
        if self.prom is not None:
            async with aiohttp.ClientSession() as session:
                server, energy = await self.prom.collect(session, t0_ns, end_ns, output_tokens=tokens,
                                                         client_ttft_ms=ttft)
            if self.direct_server:
                base = out.get("server_metrics") or data.get("server_metrics")
                if isinstance(base, dict):
                    out["server_metrics"] = {**base, "prometheus": server}
            else:
                out["server_metrics"] = server
            if energy is not None:
                if "fleet_energy" in out:
                    out["fleet_energy"]["prometheus"] = energy
                else:
                    out["fleet_energy"] = energy
        return out

"""What runs beside the load: the live Prometheus exporter, the GPU sampler, the scraper of the
server's ``/metrics`` and the remote fleet's observers (replicas, DCGM exporters, Prometheus:
:mod:`loadgen.observe.remote`); started before the measured load, their results merged into the report
after it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from loadgen.engine.sink import RunObserver
from loadgen.errors import ConfigError
from loadgen.records import RequestRecord
from loadgen.settings import Settings


@dataclass
class Sidecars:
    """What runs beside the load: the Prometheus exporter, the GPU sampler, the server scraper."""

    settings: Settings
    exporter: Any = None
    sampler: Any = None
    scraper: Any = None
    remote: Any = None

    @classmethod
    def start(
        cls, settings: Settings, run_id: str, model: str, base_url: str, say: Callable[[str], None]
    ) -> Sidecars:
        from loadgen.observe.flavours import FlavourParser
        from loadgen.observe.gpu import GpuSampler
        from loadgen.observe.promtext import metrics_endpoint
        from loadgen.observe.remote import Remote, replaces_default_scrape
        from loadgen.observe.scrape import ServerMetricsScraper

        cars = cls(settings)
        default_scrape = settings.server_metrics_url != "none" and not replaces_default_scrape(settings)
        if default_scrape:  # parsed first: a bad URL starts nothing
            try:
                base, path = metrics_endpoint(base_url, settings.server_metrics_url)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            cars.scraper = ServerMetricsScraper(base, path=path, parse=FlavourParser(settings.server_kind))
        remote = Remote.start(settings, default_scrape=default_scrape)
        cars.remote = remote if remote.active else None
        if settings.metrics_port is not None or settings.pushgateway or settings.metrics_textfile:
            from loadgen.observe.exporter import Exporter

            classes = [c.name for c in settings.classes] if settings.classes else None
            cars.exporter = Exporter(run_id, settings.scenario.value, model, classes=classes)
            if settings.qps:
                cars.exporter.set_target_qps(settings.qps)
            if settings.metrics_port is not None:
                port = cars.exporter.start_http(settings.metrics_host, settings.metrics_port)
                say(f"Prometheus metrics on http://{settings.metrics_host}:{port}/metrics")
        if settings.gpu_telemetry:
            on_sample = cars.exporter.gpu_callback() if cars.exporter is not None else None
            cars.sampler = GpuSampler(gpus=settings.gpus, on_sample=on_sample)
            if not cars.sampler.start():
                say(f"GPU telemetry unavailable: {cars.sampler.reason}")
        return cars

    async def scrape_baseline(self, session: aiohttp.ClientSession) -> None:
        """The server's /metrics before the first measured request (after the warm-up): the deltas
        count from here, so it must not race the requests that start the run."""
        if self.scraper is not None:
            await self.scraper.baseline(session)
        if self.remote is not None:
            await self.remote.baseline(session)

    def scrape_during(self, tg: asyncio.TaskGroup, session: aiohttp.ClientSession, stop: asyncio.Event
                      ) -> None:
        """Scrape every second while the run lasts; after ``stop``, until the server's counters settle."""
        if self.scraper is not None:
            tg.create_task(self.scraper.run(session, stop))
        if self.remote is not None:
            self.remote.during(tg, session, stop)

    @property
    def observers(self) -> tuple[RunObserver, ...]:
        return (self.exporter,) if self.exporter is not None else ()

    def stop_sampling(self) -> None:
        if self.sampler is not None and self.sampler.available:
            self.sampler.sample_now()
            self.sampler.stop()

    def results(self, results: dict[str, Any], t0_ns: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.scraper is not None:
            out["server_metrics"] = self.scraper.result(results.get("ttft_ms"))
            out["server_metrics"]["server_kind"] = self.scraper.parse.kind
        if self.sampler is not None:
            end_ns = t0_ns + int((results.get("duration_s") or 0) * 1e9)
            out["telemetry"] = self.sampler.result(
                window_start_ns=t0_ns, window_end_ns=end_ns,
                output_tokens=results.get("output_tokens_total"), t0_ns=t0_ns,
            )
        return out

    async def add_results(self, data: dict[str, Any], records: list[RequestRecord], t0_ns: int) -> None:
        """Add the sidecars' sections to the built report: :meth:`results`, then the remote fleet's
        (loadgen.observe.remote) and the client's cached-prompt-token counts (loadgen.metrics.cached)."""
        from loadgen.metrics.cached import add_cached_tokens

        data.update(self.results(data["results"], t0_ns))
        if self.remote is not None:
            data.update(await self.remote.results(data, t0_ns))
        add_cached_tokens(data, records)

    async def finish(self, say: Callable[[str], None]) -> None:
        if self.exporter is None:
            return
        s = self.settings
        if s.metrics_port is not None and s.metrics_linger_s:
            say(f"serving the final metrics for {s.metrics_linger_s:g} s more (--metrics-linger-s)")
            await asyncio.sleep(s.metrics_linger_s)
        if s.pushgateway and self.exporter.push(s.pushgateway):
            say(f"pushed final metrics to the Pushgateway at {s.pushgateway}")
        if s.metrics_textfile:
            self.exporter.write_textfile(s.metrics_textfile)
        self.exporter.stop()

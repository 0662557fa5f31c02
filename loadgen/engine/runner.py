"""One run, end to end: ``run(settings) -> RunResult``. The CLI is a thin layer over this.

Order of work (nothing before step 6 is measured):

1. the output folder; ``run.json`` (settings, target, dataset) is written before any request, so a
   crashed run can be rebuilt from it plus ``requests.jsonl``;
2. the target: the built-in simulated server in its own process when no URL is given;
3. the probe: reachable, authorised, model served (errors here exit 2 and lose nothing);
4. the prompts (exact token counts where a tokenizer is known) and the trace, from the seed;
5. warm-up requests, if asked for (recorded in ``warmup.jsonl``, excluded from every statistic);
6. the measured trace from ``t0``, every record appended to ``requests.jsonl`` as it completes (the
   server's ``/metrics`` is scraped once just before, the baseline of its deltas, and after the run
   until its counters settle: :mod:`loadgen.observe.scrape`);
7. metrics, MLPerf validity, client health -> ``report.json``, ``summary.txt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import numpy as np
import orjson

from loadgen import __version__
from loadgen.client.client import Client, ClientOptions, make_session
from loadgen.client.probe import api_headers, probe
from loadgen.engine.gcpause import gc_frozen
from loadgen.engine.issuer import ErrorRateGuard, Issuer, IssueStats
from loadgen.engine.progress import Progress
from loadgen.engine.warmup import run_warmup, warmup_dataset
from loadgen.engine.workers import WorkerJob, WorkerPool, auto_workers, preconnect_count, split_trace
from loadgen.errors import ConfigError
from loadgen.limits import ensure_descriptors
from loadgen.metrics.gaps import GapStore, RecordTable
from loadgen.metrics.health import ClientHealth, LoopLagMonitor, admission_times, assess
from loadgen.records import RecordWriter, RequestRecord
from loadgen.report.build import build_report, write_outputs
from loadgen.schedule.trace import Trace, build_trace, cap_shares, seeded_rngs
from loadgen.settings import Scenario, Settings
from loadgen.workload.prefix import ttft_by_group
from loadgen.workload.samples import Dataset
from loadgen.workload.sources import load_dataset
from loadgen.workload.tokens import LocalTokenizer, ServerTokenizer, TokenCounter, WordCounter

DRAIN_GRACE_S = 30.0


class RunObserver(Protocol):
    """Something that watches requests live (the Prometheus exporter, for one).

    With worker processes the starts happen in the workers: ``request_started`` is not called, and an
    observer that also has ``set_in_flight(n: int)`` gets the workers' in-flight count every tick.
    """

    def request_started(self) -> None: ...

    def request_finished(self, record: RequestRecord) -> None: ...


@dataclass
class RunResult:
    out_dir: Path
    report: dict[str, Any]

    @property
    def valid(self) -> bool:
        return bool(self.report["validity"]["valid"])

    @property
    def interrupted(self) -> bool:
        return bool(self.report.get("interrupted"))


@dataclass
class RunControl:
    """Lets a signal handler stop a run: the first interrupt drains, the second aborts.

    Before the clock starts (the target starting, prompts, warm-up, workers starting) an interrupt
    cancels the run: nothing was measured. Afterwards the first one stops issuing and lets the requests
    in flight finish, for at most ``grace_s``; the second cancels them (recorded as ``cancelled``). Each
    step is announced through ``log`` (the CLI's stderr), and the report's reason says what happened.
    """

    grace_s: float = DRAIN_GRACE_S
    interrupts: int = 0
    signal_name: str | None = None
    log: Callable[[str], None] | None = None
    _issuer: Issuer | WorkerPool | None = field(default=None, repr=False)
    _main: asyncio.Task[Any] | None = field(default=None, repr=False)
    _reason: str | None = field(default=None, repr=False)

    def attach(self, main: asyncio.Task[Any] | None, log: Callable[[str], None] | None) -> None:
        """The run's task (cancelled by an interrupt before measuring), and ``log`` unless one is set."""
        self._main = main
        self.log = self.log or log

    def interrupt(self, signal_name: str = "SIGINT") -> None:
        self.interrupts += 1
        self.signal_name = self.signal_name or signal_name
        issuer = self._issuer
        if issuer is None or (isinstance(issuer, WorkerPool) and not issuer.measuring):
            # Not measuring yet: nothing to keep, stop the preparation.
            if self._main is not None:
                self._main.cancel()
            return
        again = "Ctrl-C" if signal_name == "SIGINT" else signal_name
        if self.interrupts == 1:
            self._reason = f"interrupted by {signal_name}: stopped issuing; the requests in flight finished"
            issuer.stop(self._reason)
            self._tell(f"{signal_name}: stopped issuing; waiting for the requests in flight to finish (at "
                       f"most {self.grace_s:g} s). {again} again cancels them.")
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_later(self.grace_s, self._grace_ended, issuer, signal_name)
        else:
            self._abort(issuer, f"interrupted by {signal_name} twice: stopped issuing, then cancelled the "
                                "requests in flight")
            self._tell(f"{signal_name} again: cancelling the requests in flight")

    def _grace_ended(self, issuer: Issuer | WorkerPool, signal_name: str) -> None:
        if self._issuer is not issuer:  # that run is over
            return
        self._abort(issuer, f"interrupted by {signal_name}: stopped issuing; the requests still in flight "
                            f"after {self.grace_s:g} s were cancelled")
        self._tell(f"the requests in flight did not finish within {self.grace_s:g} s: cancelling them")

    def _abort(self, issuer: Issuer | WorkerPool, reason: str) -> None:
        issuer.abort(reason)
        if issuer.stats.stopped_early == self._reason:  # replace our own earlier reason, nothing else
            issuer.stats.stopped_early = self._reason = reason

    def _tell(self, message: str) -> None:
        if self.log is None:
            return
        if sys.stderr.isatty():
            sys.stderr.write("\n")  # off the progress line (and the terminal's "^C")
        self.log(message)

    def stop(self, reason: str) -> None:
        if self._issuer is not None:
            self._issuer.stop(reason)


def default_out_dir(settings: Settings) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{settings.scenario.value}"


def launch_spec(settings: Settings) -> Any:
    """The vLLM launch spec of ``settings.server`` (loadgen.servers.vllm.VllmLaunchSpec)."""
    from loadgen.servers.vllm import VllmLaunchSpec

    srv = settings.server
    assert srv is not None
    return VllmLaunchSpec(
        model=srv.model, args=tuple(srv.args), command=tuple(srv.command), env=dict(srv.env),
        startup_timeout_s=srv.startup_timeout_s, served_model_name=srv.served_model_name,
    )


@contextlib.asynccontextmanager
async def _target(
    settings: Settings, out_dir: Path, say: Callable[[str], None]
) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
    """The endpoint's base URL: the given one, a vLLM loadgen launches, or the simulated server."""
    if settings.url is not None:
        yield settings.url, None
        return
    if settings.server is not None:
        from loadgen.servers.vllm import VllmLauncher

        # `async with`: the start (minutes) runs in a thread, so Ctrl-C still reaches the run
        launcher = VllmLauncher(launch_spec(settings), log_path=out_dir / "server.log", progress=say)
        async with launcher as vllm:
            ident = await asyncio.to_thread(vllm.identity)
            ident["launched"] = "vllm"
            ident["startup_s"] = vllm.startup_s
            yield vllm.base_url, ident
        return
    from loadgen.servers.sim import SimConfig, SimProcess  # only needed when we start it

    try:
        cfg = SimConfig.from_dict(settings.sim)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sim: {exc}. See `loadgen sim --help` for the simulator's settings.") from None
    with SimProcess(cfg) as sim:
        yield sim.url, {"launched": "loadgen-sim", "config": cfg.to_dict()}


def token_counter(
    settings: Settings, base_url: str, model: str, headers: dict[str, str],
    launched: dict[str, Any] | None = None,
) -> TokenCounter:
    """``--tokenizer``, else the server's ``/tokenize``, else words: exact only for the built-in
    simulator loadgen started (it counts words); for any other server the counts are approximate."""
    if settings.tokenizer:
        return LocalTokenizer(settings.tokenizer)
    server = ServerTokenizer(base_url, model, headers)
    if server.available():
        return server
    return WordCounter(exact=launched is not None and launched.get("launched") == "loadgen-sim")


def _max_connections(settings: Settings, trace: Trace) -> int:
    """Connection pool size: never smaller than what the scenario can have in flight."""
    if settings.max_connections is not None:
        return settings.max_connections
    if trace.open_loop:
        return 0  # aiohttp: 0 = no limit; an open loop must never wait for a connection
    bound = settings.in_flight_bound
    return int(bound) + 8 if math.isfinite(bound) else 0


def _open_at_once(trace: Trace) -> int | None:
    """The most connections the trace can hold open at once; None when the server decides (open loop)."""
    if not trace.open_loop:
        return trace.streams * trace.samples_per_query
    if len(trace.offsets_ns) and not trace.offsets_ns.any():  # Offline: everything at t0
        return len(trace.offsets_ns) * trace.samples_per_query
    return None


def _note_cap(data: dict[str, Any], settings: Settings) -> None:
    """Under --max-concurrency, say when the cap, not the server, held back the offered rate: a failed
    sustained-load check would otherwise read as the server's queue."""
    cap = (data.get("client") or {}).get("max_concurrency")
    e2e = (data["results"].get("e2e_ms") or {}).get("p50")
    sustained = ((data.get("mlperf") or {}).get("checks") or {}).get("sustained")
    if not cap or not e2e or not settings.qps or sustained is not False:
        return
    allowed = cap / (e2e / 1000)
    if allowed < settings.qps:
        data["validity"]["reasons"].append(
            f"the offered rate was held back by --max-concurrency {cap}: at most {cap} in flight at a "
            f"median E2E of {e2e:.3g} ms lets through ~{allowed:.3g} req/s, below --qps {settings.qps:g}, so "
            "queries waited for slots; raise --max-concurrency (or lower --qps) to offer this rate."
        )


def _start_outputs(out_dir: Path, meta: dict[str, Any]) -> None:
    """``run.json`` before any request; a rerun into the same folder starts afresh."""
    _write_json(out_dir / "run.json", meta)
    for stale in ("requests.jsonl", "warmup.jsonl", "report.json", "summary.txt"):
        (out_dir / stale).unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


async def run_async(
    settings: Settings,
    *,
    control: RunControl | None = None,
    observers: tuple[RunObserver, ...] = (),
    log: Callable[[str], None] | None = None,
    api_key: str | None = None,
) -> RunResult:
    """Run ``settings`` and write its report; see the module docstring for the order of work.

    ``api_key`` (e.g. typed at a prompt) replaces ``settings.api_key_env``; it goes only into the
    request headers, never into the settings or any output. Raises
    :class:`loadgen.errors.LoadgenError` subclasses for bad input or an unusable target (before anything
    is measured). Per-request failures are never raised; they are records.
    """
    control = control or RunControl()
    control.attach(asyncio.current_task(), log)
    say = log or (lambda _msg: None)
    out_dir = Path(settings.out) if settings.out is not None else default_out_dir(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    ensure_descriptors(None)  # before the target starts: a simulator or vLLM we launch inherits it
    async with _target(settings, out_dir, say) as (base_url, launched):
        headers = api_headers(settings.api_key_env, settings.headers, api_key)
        opts = ClientOptions(
            base_url=base_url, model=settings.model or "", endpoint=settings.endpoint,
            stream=settings.stream, ignore_eos=settings.ignore_eos, headers=headers,
            request_timeout_s=settings.request_timeout_s, idle_timeout_s=settings.idle_timeout_s,
            insecure=settings.insecure, transport=settings.http_client, retries=settings.retries,
        )
        opts, counter, dataset, trace, meta, warm = await _prepare(
            settings, opts, launched, run_id, say,
            key_from="the key typed at the prompt" if api_key is not None else None,
        )
        ensure_descriptors(_open_at_once(trace))
        model = opts.model
        _start_outputs(out_dir, meta)
        async with make_session(opts, _max_connections(settings, trace)) as session:
            client = Client(session if opts.transport == "aiohttp" else None, opts,
                            tokenizer=counter if settings.tokenizer else None)
            sidecars = Sidecars.start(settings, run_id, model, base_url, say)
            extra: dict[str, Any] = {}
            gaps = GapStore()
            observers = (*observers, *sidecars.observers)
            try:
                if warm is not None:
                    say(f"warm-up: {len(warm)} requests (not measured; prompts apart from the measured ones)")
                    await run_warmup(settings, client, warm, trace, out_dir)
                say(f"running {settings.scenario.mlperf_name}; results in {out_dir}")
                workers = choose_workers(settings, trace)
                meta["client_workers"] = workers
                await sidecars.scrape_baseline(session)
                stop_scraping = asyncio.Event()
                async with asyncio.TaskGroup() as tg:
                    sidecars.scrape_during(tg, session, stop_scraping)
                    try:
                        if settings.sessions is not None:
                            records, stats, health, extra = await _measure_sessions(
                                settings, client=client, counter=counter, out_dir=out_dir,
                                observers=observers, gaps=gaps,
                            )
                        else:
                            records, stats, health = await _measure(
                                settings=settings, client=client, dataset=dataset, trace=trace,
                                out_dir=out_dir, control=control, observers=observers,
                                workers=workers, max_connections=_max_connections(settings, trace),
                                gaps=gaps,
                            )
                    finally:
                        stop_scraping.set()
            finally:
                await client.close()
                sidecars.stop_sampling()
    # A signal interrupts a run (exit 130/143); a hard stop or --max-error-rate only ends it early
    # (stopped_early: a validity reason, exit 0).
    report = build_report(meta, records, settings=settings, health=health, stats=stats,
                          interrupted=control.interrupts > 0, itl=gaps.distribution())
    _note_cap(report.data, settings)
    await sidecars.add_results(report.data, records, client.t0_ns)
    _workload_results(report.data["results"], settings, records, dataset, extra)
    write_outputs(out_dir, report)
    await sidecars.finish(say)
    return RunResult(out_dir, report.data)


def _workload_results(
    results: dict[str, Any], settings: Settings, records: list[RequestRecord], dataset: Dataset,
    sessions: dict[str, Any],
) -> None:
    """Per-workload breakdowns: TTFT by shared-prefix group, and by turn of multi-turn sessions."""
    if settings.prefix is not None:
        groups = ttft_by_group(records, [smp.group for smp in dataset.samples])
        results["ttft_by_prefix_group"] = {str(g): v for g, v in groups.items()}
    if settings.sessions is not None:
        results["sessions_by_turn"] = sessions


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

            cars.exporter = Exporter(run_id, settings.scenario.value, model)
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
        (replicas, DCGM exporters, Prometheus: loadgen.observe.remote) and the client's cached-prompt-token
        counts."""
        data.update(self.results(data["results"], t0_ns))
        from loadgen.metrics.cached import add_cached_tokens

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


async def _measure_sessions(
    settings: Settings,
    *,
    client: Client,
    counter: TokenCounter,
    out_dir: Path,
    observers: tuple[RunObserver, ...],
    gaps: GapStore,
) -> tuple[list[RequestRecord], IssueStats, ClientHealth, dict[str, Any]]:
    """Multi-turn chat sessions (loadgen.workload.conversations): each user's history grows with the real
    replies."""
    from loadgen.workload.conversations import client_sender, plan_sessions, run_sessions, turn_summary

    assert settings.sessions is not None
    plan = plan_sessions(settings.sessions, settings, counter, seeded_rngs(settings.seed))
    records = RecordTable()
    stats = IssueStats()
    writer = RecordWriter(out_dir / "requests.jsonl")

    def on_record(rec: RequestRecord) -> None:
        writer.write(rec)
        stats.issued += 1
        if rec.ok:
            stats.completed += 1
            stats.output_tokens += rec.output_tokens
        else:
            stats.failed += 1
        for obs in observers:
            obs.request_finished(rec)
        gaps.add_record(rec)
        records.append(rec)

    inner = client_sender(client, counter, on_record)

    async def send(messages: Any, output_len: int) -> tuple[RequestRecord, str]:
        for obs in observers:
            obs.request_started()
        return await inner(messages, output_len)

    monitor = LoopLagMonitor()
    try:
        async with gc_frozen(), asyncio.TaskGroup() as tg:
            client.t0_ns = time.perf_counter_ns()
            monitor.start(tg)
            try:
                results = await run_sessions(plan, send, counter)
            finally:
                monitor.stop()
    finally:
        writer.close()
    summary = {str(k): v for k, v in turn_summary(results).items()}
    done = records.to_list()
    return done, stats, _health(settings, done, monitor.lags_ns, [monitor.cpu_cores]), summary


async def _prepare(
    settings: Settings,
    opts: ClientOptions,
    launched: dict[str, Any] | None,
    run_id: str,
    say: Callable[[str], None],
    *,
    key_from: str | None = None,
) -> tuple[ClientOptions, TokenCounter, Dataset, Trace, dict[str, Any], Dataset | None]:
    """Probe the target, count tokens, build the prompts, the trace and the warm-up prompts (None: no
    warm-up); nothing here is measured."""
    base_url, headers = opts.base_url, opts.headers
    rngs = seeded_rngs(settings.seed)
    async with make_session(opts, 0) as probe_session:
        server = await probe(probe_session, base_url, settings.model, headers, settings.api_key_env,
                             key_from=key_from)
    if launched:
        server.update(launched)
    model = server["model"]
    # vLLM (and the simulator) answer /version and take continuous_usage_stats; others may reject it
    opts = dataclasses.replace(opts, model=model, continuous_usage=server.get("version") is not None)
    say(f"target {base_url} model {model}; preparing prompts")
    counter = await asyncio.to_thread(token_counter, settings, base_url, model, headers, launched)
    dataset = await asyncio.to_thread(load_dataset, settings, counter, rngs)
    trace = build_trace(settings, len(dataset), rngs, dataset)
    warm = None
    if settings.warmup:
        warm, warm_info = await asyncio.to_thread(warmup_dataset, settings, dataset, trace, counter)
    meta = {
        "schema_version": 1,
        "run_id": run_id,
        "loadgen_version": __version__,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": settings.public_dict(),
        "server": server,
        "dataset": dataset.describe(),
        "trace": {
            "open_loop": trace.open_loop,
            "planned_queries": trace.planned_queries,
            "samples_per_query": trace.samples_per_query,
            "streams": trace.streams,
        },
    }
    if warm is not None:
        meta["warmup"] = warm_info
    return opts, counter, dataset, trace, meta, warm


def choose_workers(settings: Settings, trace: Trace) -> int:
    """``settings.workers``, or enough processes for the expected chunk rate and streams."""
    if settings.workers is not None:
        return settings.workers
    if trace.open_loop and len(trace.offsets_ns) > 1 and trace.offsets_ns[-1] > 0:
        rate = len(trace.offsets_ns) / (trace.offsets_ns[-1] / 1e9)
        return auto_workers(rate * settings.output_len.mean, 0)
    if trace.open_loop:  # Offline: everything at once
        return auto_workers(0, len(trace.offsets_ns))
    return auto_workers(0, trace.streams * trace.samples_per_query)


async def _measure(
    *,
    settings: Settings,
    client: Client,
    dataset: Dataset,
    trace: Trace,
    out_dir: Path,
    control: RunControl,
    observers: tuple[RunObserver, ...],
    workers: int = 1,
    max_connections: int = 0,
    gaps: GapStore,
) -> tuple[list[RequestRecord], IssueStats, ClientHealth]:
    records = RecordTable()  # bounded: rows of numpy columns while the clock runs
    path = out_dir / "requests.jsonl"
    guard = ErrorRateGuard(settings.max_error_rate) if settings.max_error_rate is not None else None

    def keep(rec: RequestRecord) -> None:
        # Written in full already; in memory only what the report needs (bounded memory).
        for obs in observers:
            obs.request_finished(rec)
        if guard is not None and (reason := guard.add(rec)) is not None:
            control.stop(reason)
        gaps.add_record(rec)
        records.append(rec)

    if workers > 1:
        return await _measure_workers(
            settings, client=client, dataset=dataset, trace=trace, path=path, control=control,
            workers=workers, max_connections=max_connections, keep=keep, records=records,
            observers=observers,
        )
    writer = RecordWriter(path)

    def on_record(rec: RequestRecord) -> None:
        writer.write(rec)
        keep(rec)

    def on_start() -> None:
        for obs in observers:
            obs.request_started()

    issuer = Issuer(client, dataset, trace, on_record, on_start if observers else None)
    await client.preconnect(preconnect_count(trace))
    control._issuer = issuer  # measuring from here: an interrupt drains instead of cancelling the run
    monitor = LoopLagMonitor()
    progress = None
    if settings.progress:
        progress = Progress(issuer.stats, trace.planned_queries, settings.duration_s)
    try:
        async with gc_frozen(), asyncio.TaskGroup() as tg:
            client.t0_ns = time.perf_counter_ns()
            monitor.start(tg)
            progress_task = tg.create_task(progress.run()) if progress else None
            try:
                await issuer.run()
            finally:
                monitor.stop()
                if progress_task is not None:
                    progress_task.cancel()
    finally:
        control._issuer = None
        writer.close()
    done = records.to_list()
    health = _health(settings, done, monitor.lags_ns, [monitor.cpu_cores])
    return done, issuer.stats, health


def _health(
    settings: Settings, records: list[RequestRecord], lags_ns: np.ndarray, cpus: list[float | None]
) -> ClientHealth:
    sent = [r for r in records if r.sent_ns]
    delays = np.array([r.sent_ns - r.scheduled_ns for r in sent], dtype=np.int64)
    known = [c for c in cpus if c is not None]
    closed = None
    if not settings.scenario.open_loop:
        closed = np.array([r.end_ns - r.sent_ns for r in sent if r.end_ns], dtype=np.int64)
    # under --max-concurrency a request is due when it got its slot (the wait was asked for)
    cap = settings.max_concurrency if settings.scenario.open_loop else None
    scheduled = np.array([r.scheduled_ns for r in sent], dtype=np.int64)
    due = scheduled
    if cap is not None:
        due = admission_times(np.array([r.index for r in sent], dtype=np.int64), scheduled,
                              np.array([max(r.end_ns, r.sent_ns) for r in sent], dtype=np.int64),
                              cap_shares(cap, len(cpus)))
    ok = np.array([r.first_token_ns is not None and r.error_class is None for r in sent], dtype=bool)
    first = np.array([r.first_token_ns or 0 for r in sent], dtype=np.int64)
    from_due = (first - due)[ok]
    from_sent = (first - np.array([r.sent_ns for r in sent], dtype=np.int64))[ok]
    waits = due - scheduled if cap is not None else None
    return assess(delays, lags_ns, max(known) if known else None,
                  check_issue_delay=settings.scenario != Scenario.OFFLINE, cpu_per_worker=cpus,
                  issue_delay_limit_ms=settings.issue_delay_limit_ms, closed_loop_latencies_ns=closed,
                  ttft_from_scheduled_ns=from_due, ttft_from_sent_ns=from_sent, slot_wait_ns=waits,
                  max_concurrency=cap)


async def _measure_workers(
    settings: Settings,
    *,
    client: Client,
    dataset: Dataset,
    trace: Trace,
    path: Path,
    control: RunControl,
    workers: int,
    max_connections: int,
    keep: Callable[[RequestRecord], None],
    records: RecordTable,
    observers: tuple[RunObserver, ...] = (),
) -> tuple[list[RequestRecord], IssueStats, ClientHealth]:
    parts = split_trace(trace, workers)
    # The starts happen in the workers, which report their in-flight counts every tick: observers that
    # can take a count get it (the exporter's loadgen_in_flight); request_started is never called here.
    counted = [f for obs in observers if (f := getattr(obs, "set_in_flight", None)) is not None]

    def on_in_flight(n: int) -> None:
        for set_in_flight in counted:
            set_in_flight(n)

    per_worker_conns = max_connections // len(parts) + 8 if max_connections else 0
    jobs = [
        WorkerJob(worker=w, workers=len(parts), trace=sub, query_ids=ids, dataset=dataset,
                  opts=client.options, max_connections=per_worker_conns, records_path=path,
                  tokenizer=client.tokenizer, preconnect=preconnect_count(sub))
        for w, (sub, ids) in enumerate(parts)
    ]
    pool = WorkerPool(jobs)
    control._issuer = pool  # an interrupt before its t0 cancels the run (pool.measuring)
    progress = None
    if settings.progress:
        progress = Progress(pool.stats, trace.planned_queries, settings.duration_s)
    try:
        async with asyncio.TaskGroup() as tg:
            progress_task = tg.create_task(progress.run()) if progress else None
            try:
                results = await pool.run(keep, on_in_flight if counted else None)
            finally:
                if progress_task is not None:
                    progress_task.cancel()
    finally:
        control._issuer = None
    client.t0_ns = pool.t0_ns
    lags = np.concatenate([r.lags_ns for r in results]) if results else np.zeros(0, np.int64)
    done = records.to_list()
    health = _health(settings, done, lags, [r.cpu_cores for r in results])
    return done, pool.stats, health


def run(
    settings: Settings,
    *,
    control: RunControl | None = None,
    observers: tuple[RunObserver, ...] = (),
    log: Callable[[str], None] | None = None,
    api_key: str | None = None,
) -> RunResult:
    """Synchronous wrapper of :func:`run_async` on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_async(settings, control=control, observers=observers, log=log,
                                    api_key=api_key))

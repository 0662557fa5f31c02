"""One run, end to end: ``run(settings) -> RunResult``. The CLI is a thin layer over this.

Order of work (nothing before step 6 is measured):

1. the output folder; ``run.json`` (settings, target, dataset) is written before any request, so a
   crashed run can be rebuilt from it plus ``requests.jsonl``;
2. the target (:mod:`loadgen.engine.target`): the built-in simulated server in its own process when no
   URL is given;
3. the probe: reachable, authorised, model served (errors here exit 2 and lose nothing);
4. the prompts (exact token counts where a tokenizer is known) and the trace, from the seed;
5. warm-up requests, if asked for (recorded in ``warmup.jsonl``, excluded from every statistic);
6. the measured trace from ``t0`` (:mod:`loadgen.engine.measure`), every record appended to
   ``requests.jsonl`` as it completes (the server's ``/metrics`` is scraped once just before, the
   baseline of its deltas, and after the run until its counters settle: :mod:`loadgen.engine.sidecars`);
7. metrics, MLPerf validity, client health -> ``report.json``, ``summary.txt``.

Signals: :func:`run_with_signals` is :func:`run` with SIGINT/SIGTERM handled by a
:class:`~loadgen.engine.control.RunControl` (the first drains, the second aborts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from loadgen import __version__
from loadgen.client.client import Client, ClientOptions, make_session
from loadgen.client.probe import api_headers, probe
from loadgen.engine.control import DRAIN_GRACE_S, RunControl
from loadgen.engine.measure import choose_workers, measure, warm_up
from loadgen.engine.progress import attach_sources
from loadgen.engine.sidecars import Sidecars
from loadgen.engine.sink import RunObserver
from loadgen.engine.target import open_target, token_counter
from loadgen.engine.warmup import warmup_dataset
from loadgen.errors import LoadgenError
from loadgen.limits import ensure_descriptors
from loadgen.loops import loop_factory
from loadgen.metrics.gaps import GapStore
from loadgen.records import RequestRecord
from loadgen.report.build import build_report
from loadgen.report.outputs import write_outputs
from loadgen.schedule.trace import Trace, build_trace, seeded_rngs
from loadgen.settings import Settings
from loadgen.workload.prefix import ttft_by_group
from loadgen.workload.samples import Dataset
from loadgen.workload.sources import load_dataset
from loadgen.workload.tokens import TokenCounter

__all__ = ["DRAIN_GRACE_S", "RunControl", "RunObserver", "RunResult", "default_out_dir", "run", "run_async",
           "run_with_signals"]


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


def default_out_dir(settings: Settings) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{settings.scenario.value}"


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
    async with open_target(settings, out_dir, say) as (base_url, launched):
        headers = api_headers(settings.api_key_env, settings.headers, api_key)
        opts = ClientOptions(
            base_url=base_url, model=settings.model or "", endpoint=settings.endpoint,
            stream=settings.stream, ignore_eos=settings.ignore_eos, headers=headers,
            request_timeout_s=settings.request_timeout_s, idle_timeout_s=settings.idle_timeout_s,
            insecure=settings.insecure, transport=settings.http_client, retries=settings.retries,
            extra_body=settings.extra_body,
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
            gaps = GapStore()
            observers = attach_sources((*observers, *sidecars.observers), scraper=sidecars.scraper,
                                       sampler=sidecars.sampler)
            try:
                if warm is not None:
                    await warm_up(settings, client=client, warm=warm, trace=trace, out_dir=out_dir, say=say)
                say(f"running {settings.scenario.mlperf_name}; results in {out_dir}")
                workers = choose_workers(settings, trace)
                meta["client_workers"] = workers
                await sidecars.scrape_baseline(session)
                stop_scraping = asyncio.Event()
                try:
                    async with asyncio.TaskGroup() as tg:
                        sidecars.scrape_during(tg, session, stop_scraping)
                        try:
                            records_of, stats, health, extra = await measure(
                                settings, client=client, counter=counter, dataset=dataset, trace=trace,
                                out_dir=out_dir, control=control, observers=observers, gaps=gaps,
                                workers=workers, max_connections=_max_connections(settings, trace),
                            )
                        finally:
                            stop_scraping.set()
                except* LoadgenError as group:  # bad input found late (a session file): its own message
                    raise group.exceptions[0] from None
            finally:
                await client.close()
                sidecars.stop_sampling()
    # The prompts and the schedule are done with (a 200,000-request run's synthetic prompts are ~14 MB):
    # let them go before the report is built, the run's peak of memory. Only shared-prefix runs need
    # the prompts' groups.
    groups = [smp.group for smp in dataset.samples] if settings.prefix is not None else None
    del dataset, trace, warm
    records = records_of()  # views on the record table (loadgen.metrics.rows)
    # A signal interrupts a run (exit 130/143); a hard stop or --max-error-rate only ends it early
    # (stopped_early: a validity reason, exit 0).
    report = build_report(meta, records, settings=settings, health=health, stats=stats,
                          interrupted=control.interrupts > 0, itl=gaps.distribution())
    await _add_results(report.data, settings, records, groups=groups, sessions=extra, sidecars=sidecars,
                       t0_ns=client.t0_ns)
    # report.html re-reads requests.jsonl for its plots: let the in-memory copies go first, so that a
    # long run's peak memory is the larger of the two steps, not their sum
    del records, gaps
    write_outputs(out_dir, report)
    await sidecars.finish(say)
    return RunResult(out_dir, report.data)


async def _add_results(
    data: dict[str, Any], settings: Settings, records: list[RequestRecord], *,
    groups: list[int | None] | None, sessions: dict[str, Any], sidecars: Sidecars, t0_ns: int,
) -> None:
    """What the report gains beyond :func:`build_report`: the in-flight cap's note, the sidecars'
    results (server metrics, GPU telemetry), and the per-workload breakdowns: TTFT by shared-prefix
    group (``groups``: each prompt's, for a shared-prefix run), and by turn of multi-turn sessions."""
    _note_cap(data, settings)
    await sidecars.add_results(data, records, t0_ns)
    results = data["results"]
    if groups is not None:
        by_group = ttft_by_group(records, groups)
        results["ttft_by_prefix_group"] = {str(g): v for g, v in by_group.items()}
    results.update(sessions)  # sessions_by_turn, and agentic sessions' per-session summary


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


def run(
    settings: Settings,
    *,
    control: RunControl | None = None,
    observers: tuple[RunObserver, ...] = (),
    log: Callable[[str], None] | None = None,
    api_key: str | None = None,
) -> RunResult:
    """Synchronous wrapper of :func:`run_async` on a fresh event loop (uvloop when installed)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(run_async(settings, control=control, observers=observers, log=log,
                                    api_key=api_key))


def run_with_signals(
    settings: Settings,
    *,
    control: RunControl | None = None,
    observers: tuple[RunObserver, ...] = (),
    log: Callable[[str], None] | None = None,
    api_key: str | None = None,
) -> RunResult:
    """:func:`run` with SIGINT and SIGTERM handled (main thread only): the first stops issuing and lets
    the requests in flight finish, the second cancels them; before measuring starts, one cancels the
    run (``asyncio.CancelledError`` comes out: nothing was measured). ``control.signal_name`` tells
    which signal came (for the exit code). The handlers are removed on return."""
    control = control or RunControl()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        loop = runner.get_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, control.interrupt, sig.name)
        try:
            return runner.run(run_async(settings, control=control, observers=observers, log=log,
                                        api_key=api_key))
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

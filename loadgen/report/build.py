"""Reports: ``report.json`` (the source of truth), ``summary.txt`` (MLPerf layout) and the console view.

:func:`build_report` turns run metadata plus records into the report; :func:`rebuild` does the same from
files on disk (a report folder, ``report.json`` or ``requests.jsonl`` with its ``run.json``), which is
how ``loadgen report`` re-renders a run and how a crashed run gets its report after all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loadgen.errors import ReportError
from loadgen.metrics import latency as metrics
from loadgen.metrics import mlperf
from loadgen.metrics.gaps import GapStore, RecordTable
from loadgen.metrics.validity import evaluate
from loadgen.records import RequestRecord, iter_records
from loadgen.report.files import load_json
from loadgen.report.fleet import fleet_console_lines, fleet_summary_lines
from loadgen.report.schema import SCHEMA_VERSION, Validity
from loadgen.report.summary import render_summary
from loadgen.settings import Scenario, Settings
from loadgen.specs import POOLING_ENDPOINTS, bounds_text

if TYPE_CHECKING:
    from loadgen.metrics.health import ClientHealth

class IssueOutcome(Protocol):
    """What the report needs of the issuer's stats (:class:`loadgen.engine.issuer.IssueStats`), which
    it may not import: the engine sits above the report in the data flow."""

    @property
    def stopped_early(self) -> str | None:  # why issuing ended before the trace did, or None
        ...


_MLPERF_SCENARIO: dict[Scenario, mlperf.ScenarioName] = {
    Scenario.SINGLESTREAM: "SingleStream",
    Scenario.MULTISTREAM: "MultiStream",
    Scenario.SERVER: "Server",
    Scenario.CONSTANT: "Server",  # open loop with scheduled times: Server's rules apply as they are
    Scenario.CONCURRENCY: "Server",  # closed loop; judged by Server's latency and early-stopping rules
    Scenario.OFFLINE: "Offline",
    Scenario.REPLAY: "Server",  # open loop from a trace's timestamps: Server's rules, the trace's length
}


@dataclass
class Report:
    data: dict[str, Any]
    mlperf_result: mlperf.MlperfResult
    scenario_note: str | None = None  # beyond MLPerf: "(concurrency: not an MLPerf scenario; ...)"

    @property
    def validity(self) -> Validity:
        """The one verdict (``report.json``'s ``validity``)."""
        v = self.data["validity"]
        return {"valid": bool(v["valid"]), "reasons": list(v["reasons"])}

    @property
    def valid(self) -> bool:
        return self.validity["valid"]

    @property
    def summary_text(self) -> str:
        """``summary.txt`` from the report as it is now (server metrics and GPU telemetry are added to
        ``data`` after :func:`build_report`): LoadGen's layout, plus :func:`additional_stats`."""
        text = render_summary(self.mlperf_result, additional_stats(self.data))
        if self.scenario_note:
            text = text.replace("Scenario : Server", f"Scenario : Server {self.scenario_note}", 1)
        return text


def _num(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def additional_stats(data: dict[str, Any]) -> list[str]:
    """``summary.txt`` lines beyond LoadGen's (under "Additional Stats"; each ``key : value``, the key
    free of ``:``): failed requests in all, by error class and by HTTP status, and the GPU energy over
    the measured window — or why there is none."""
    r = data.get("results") or {}
    lines = [f"Failed requests : {r.get('requests_failed', 0)}"]
    lines += [f"Failed requests of class {k} : {v}"
              for k, v in sorted((r.get("errors_by_class") or {}).items())]
    lines += [f"Failed requests with HTTP status {k} : {v}"
              for k, v in sorted((r.get("errors_by_status") or {}).items())]
    if r.get("reasoning_tokens"):
        ttfa = r.get("time_to_first_answer_ms") or {}
        lines += [f"Reasoning tokens : {r['reasoning_tokens']}", f"Answer tokens : {r.get('answer_tokens')}",
                  f"Time to first answer p50 (ms) : {_num(ttfa.get('p50'), '.3f')}",
                  f"Time to first answer p99 (ms) : {_num(ttfa.get('p99'), '.3f')}"]
    tel = data.get("telemetry")
    if isinstance(tel, dict) and not tel.get("available"):
        lines.append(f"GPU telemetry : unavailable: {tel.get('reason') or 'unknown reason'}")
    elif isinstance(tel, dict):
        total = tel.get("total") or {}
        power = total.get("power_w") or {}
        lines += [
            f"GPU energy (J) : {_num(total.get('energy_j'), '.2f')}",
            f"GPU energy method : {total.get('energy_method') or 'n/a'}",
            f"GPU joules per output token : {_num(total.get('joules_per_output_token'), '.6f')}",
            f"GPU output tokens per joule : {_num(total.get('output_tokens_per_joule'), '.4f')}",
            f"GPU mean power (W) : {_num(power.get('mean'), '.2f')}",
            f"GPU peak power (W) : {_num(power.get('peak'), '.2f')}",
        ]
    return lines + fleet_summary_lines(data)


def mlperf_params(settings: Settings, sut_name: str) -> mlperf.MlperfParams:
    slo = settings.effective_slo
    replay = settings.scenario == Scenario.REPLAY
    ns = 1_000_000
    return mlperf.MlperfParams(
        scenario=_MLPERF_SCENARIO[settings.scenario],
        target_qps=settings.qps if settings.scenario in (Scenario.SERVER, Scenario.CONSTANT) else None,
        ttft_bound_ns=int(slo.ttft_ms * ns) if slo.ttft_ms else None,
        tpot_bound_ns=int(slo.tpot_ms * ns) if slo.tpot_ms else None,
        # a replayed trace is its own minimum: its window's rows, whatever the duration
        min_duration_ns=0 if replay else int(settings.duration_s * 1e9),
        min_query_count=1 if replay else settings.num_requests,
        target_latency_percentile=settings.latency_percentile,
        samples_per_query=settings.samples_per_query if settings.scenario == Scenario.MULTISTREAM else 1,
        sut_name=sut_name,
        check_sustained=settings.scenario in (Scenario.SERVER, Scenario.CONSTANT, Scenario.REPLAY),
        closed_loop=settings.scenario == Scenario.CONCURRENCY,
    )


_SESSIONS_MORE = re.compile(r"--num-requests (\d+) or more")


def _sessions_more(m: re.Match[str]) -> str:
    return (f"{m.group(1)} turns or more: a session run sends its sessions' turns, whatever --num-requests "
            "says; add sessions (sessions.count, or more lines in sessions.path) or turns (sessions.turns)")


def _replay_more(m: re.Match[str]) -> str:
    return (f"{m.group(1)} queries or more: a replay sends the trace's rows in its window, whatever "
            "--num-requests says; widen the window (replay.duration_s, replay.start_s) or replay a longer "
            "trace")


def verdict_section(ml: mlperf.MlperfResult) -> Validity:
    """``report.json``'s ``validity`` from the evaluation: ``valid`` exactly when ``reasons`` is empty."""
    return {"valid": ml.valid, "reasons": list(ml.reasons)}


def build_report(
    meta: dict[str, Any],
    records: list[RequestRecord],
    *,
    settings: Settings,
    health: ClientHealth | None = None,
    stats: IssueOutcome | None = None,
    interrupted: bool = False,
    itl: dict[str, Any] | None = None,
) -> Report:
    """``itl``: the ITL distribution pooled while records were compacted (see loadgen.metrics.gaps)."""
    measured = [r for r in records if not r.warmup]
    slo = settings.effective_slo
    results = metrics.summarize(
        measured, slo=metrics.Slo.of(slo), itl=itl
    )
    server = meta.get("server") or {}
    sut = f"{server.get('model') or settings.model or '?'} @ {server.get('url') or settings.url or '?'}"
    limited = "; ".join(health.reasons) if health is not None and health.limited else None
    stopped = stats.stopped_early if stats is not None else None
    ml = evaluate(measured, mlperf_params(settings, sut), client_limited=limited,
                  stopped_early=stopped, interrupted=interrupted)
    results["retries_total"] = ml.retries_total
    if settings.pools:  # every request carries the same number of texts (loadgen.workload.pooling)
        per = settings.pooling.inputs if settings.pooling is not None else 1
        rate = results.get("requests_per_s")
        results["inputs_per_request"] = per
        results["inputs_per_s"] = None if rate is None else rate * per
    if settings.classes:
        from loadgen.metrics.classes import class_results

        results["classes"], missed = class_results(measured, settings.classes, results.get("duration_s"),
                                                   settings.class_shares(), settings.class_rates())
        ml.reasons += missed
        ml.valid = ml.valid and not missed
        ml.checks["class_slos"] = not missed
    if health is not None and health.clock_reasons:  # Ray: nodes' clocks too uncertain to trust
        ml.reasons += list(health.clock_reasons)
        ml.valid = False
        ml.checks["clock_sync"] = False
    if settings.sessions is not None:  # sessions send their turns: --num-requests cannot add queries
        ml.reasons[:] = [_SESSIONS_MORE.sub(_sessions_more, r) for r in ml.reasons]
    elif settings.scenario == Scenario.REPLAY:  # nor can they add rows to a trace
        ml.reasons[:] = [_SESSIONS_MORE.sub(_replay_more, r) for r in ml.reasons]
    data = {
        **meta,
        "schema_version": SCHEMA_VERSION,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "interrupted": interrupted,
        "stopped_early": stopped,
        "results": results,
        # the one verdict: report.json, summary.txt, the console and the HTML all show this one
        "validity": verdict_section(ml),
        "mlperf": ml.to_dict(),
        "client": health.to_dict() if health is not None else None,
    }
    note = None
    if settings.scenario in (Scenario.CONCURRENCY, Scenario.CONSTANT, Scenario.REPLAY):
        note = f"({settings.scenario.mlperf_name}: not an MLPerf scenario; judged by Server's rules)"
    return Report(data, ml, note)


def rebuild(path: Path) -> Report | dict[str, Any]:
    """Re-read a run: ``report.json`` as it is, or a fresh report from ``requests.jsonl`` + ``run.json``.

    Returns the stored report dict for a ``report.json``; a new :class:`Report` when rebuilding.
    """
    if path.is_dir():
        if (path / "report.json").is_file():
            return load_json(path / "report.json")
        path = path / "requests.jsonl"
    if not path.exists():
        raise ReportError(
            f"{path} does not exist. Give a run folder, its report.json or its requests.jsonl."
        )
    if path.suffix == ".json":
        data = load_json(path)
        if "results" not in data:
            raise ReportError(f"{path} is not a loadgen report (no `results`).")
        return data
    gaps, table = GapStore(), RecordTable()  # bounded, as during a run (see loadgen.metrics.gaps)
    for rec in iter_records(path):
        gaps.add_record(rec)
        table.append(rec)
    run_json = path.parent / "run.json"
    if not run_json.is_file():
        raise ReportError(
            f"{run_json} is missing: it holds the run's settings, which the report needs next to "
            f"{path.name}. Copy it from the run folder."
        )
    meta = load_json(run_json)
    try:
        settings = Settings.model_validate(meta["settings"])
    except (KeyError, ValueError) as exc:
        raise ReportError(f"{run_json} has no usable settings ({exc}).") from exc
    report = build_report(meta, table.to_list(), settings=settings, itl=gaps.distribution())
    report.data["rebuilt_from"] = str(path.name)
    return report


# ---- console view ----------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _console_errors(r: dict[str, Any]) -> list[str]:
    lines = []
    for key, what in (("errors_by_class", "class"), ("errors_by_status", "HTTP status")):
        if r.get(key):
            lines.append(f"errors by {what}: " + ", ".join(f"{k}: {v}" for k, v in sorted(r[key].items())))
    return lines


def _console_gpu(tel: dict[str, Any]) -> list[str]:
    if not tel:
        return []  # --no-gpu-telemetry
    if not tel.get("available"):
        return [f"GPU telemetry unavailable: {tel.get('reason') or 'unknown reason'}"]
    total = tel.get("total") or {}
    power = total.get("power_w") or {}
    return [
        f"GPU: {_fmt(total.get('energy_j'), 0)} J over the run ({total.get('energy_method')}), "
        f"{_fmt(total.get('joules_per_output_token'), 4)} J/output token, "
        f"{_fmt(total.get('output_tokens_per_joule'), 2)} output tokens/J, power mean "
        f"{_fmt(power.get('mean'), 0)} W, peak {_fmt(power.get('peak'), 0)} W"
    ]


def _slot_wait(client: dict[str, Any]) -> str:
    wait = client.get("slot_wait_ms")
    if not client.get("max_concurrency") or not wait:
        return ""
    return (f" (of which waiting for one of --max-concurrency {client['max_concurrency']} slots: p50/p99 "
            f"{_fmt(wait.get('p50'), 3)}/{_fmt(wait.get('p99'), 3)} ms)")


def _latency_lines(r: dict[str, Any], endpoint: str | None) -> list[str]:
    """The console's latency table (ms) and what the token counts say."""
    lines = [f"{'(ms)':<24}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}"]
    rows = [("TTFT (from sent)", "ttft_ms"), ("TTFT (from scheduled)", "ttft_from_scheduled_ms"),
            ("ITL", "itl_ms"), ("TPOT", "tpot_ms"), ("E2E", "e2e_ms")]
    if r.get("reasoning_tokens"):  # a reasoning model: when its answer began, after the thinking
        rows.insert(2, ("First answer (sent)", "time_to_first_answer_ms"))
    pools = endpoint in POOLING_ENDPOINTS
    if pools:  # nothing is generated: latency is request to answer
        rows = [("Latency (from sent)", "e2e_ms"), ("Latency (scheduled)", "e2e_from_scheduled_ms")]
    for label, key in rows:
        d = r.get(key) or {}
        lines.append(f"{label:<24}{_fmt(d.get('mean')):>10}{_fmt(d.get('p50')):>10}{_fmt(d.get('p90')):>10}"
                     f"{_fmt(d.get('p99')):>10}{_fmt(d.get('p99_9')):>10}")
    if r.get("reasoning_tokens"):
        lines.append(f"output tokens: {r['reasoning_tokens']} reasoning + {r.get('answer_tokens')} answer")
    if pools:
        what = "inputs" if endpoint == "embeddings" else "documents"
        per = r.get("inputs_per_request", 1)
        rate = r.get("inputs_per_s", r.get("requests_per_s"))
        lines.append(f"{endpoint}: no TTFT, ITL or TPOT (nothing is generated); {_fmt(rate)} {what}/s "
                     f"({per} per request), {_fmt(r.get('input_tokens_per_s'), 0)} input tok/s; latency is "
                     "send to answer")
    return lines


def _class_lines(classes: dict[str, Any]) -> list[str]:
    """One line per traffic class: share, tails, and its SLO."""
    out = []
    for name, c in classes.items():
        tails = {k: _fmt((c.get(d) or {}).get(q), 1) for k, d, q in (
            ("t50", "ttft_ms", "p50"), ("t99", "ttft_from_scheduled_ms", "p99"), ("o99", "tpot_ms", "p99"),
            ("e99", "e2e_from_scheduled_ms", "p99"))}
        slo = bounds_text(c["slo"])
        verdict = "" if c["slo_met"] is None else f"; SLO {'met' if c['slo_met'] else 'MISSED'} ({slo})"
        share = "-" if c["share"] is None else f"{c['share']:.1%}"
        head = (f"class {name}: {share} of queries (asked {c['share_asked']:.0%}), "
                f"{c['requests_completed']} done")
        if c.get("endpoint") in POOLING_ENDPOINTS:  # nothing generated: no TTFT or TPOT to show
            lat = _fmt((c.get("e2e_ms") or {}).get("p50"), 1)
            out.append(f"{head}, {c['endpoint']} latency p50 {lat} ms, E2E p99 {tails['e99']} ms{verdict}")
            continue
        out.append(f"{head}, TTFT p50/p99 {tails['t50']}/{tails['t99']} ms, TPOT p99 {tails['o99']} ms, "
                   f"E2E p99 {tails['e99']} ms{verdict}")
    return out


def render_console(data: dict[str, Any]) -> str:
    """The human summary printed at the end of a run and by ``loadgen report``."""
    s = data.get("settings", {})
    r = data["results"]
    server = data.get("server") or {}
    scen = str(s.get("scenario", "?"))
    head = f"loadgen {scen}"
    if s.get("qps"):
        head += f" @ {s['qps']:g} QPS"
    if scen == "concurrency":
        head += f" x{s.get('concurrency')}"
    head += f" against {server.get('url', s.get('url'))} (model {server.get('model', s.get('model'))})"
    lines = [head, "=" * len(head)]
    lines.append(
        f"requests: {r['requests_completed']} completed, {r['requests_failed']} failed in "
        f"{_fmt(r.get('duration_s'))} s | {_fmt(r.get('requests_per_s'))} req/s | "
        f"{_fmt(r.get('output_tokens_per_s'), 0)} output tok/s | {_fmt(r.get('total_tokens_per_s'), 0)} "
        f"total tok/s"
    )
    lines += _console_errors(r)
    lines.append("")
    lines += _latency_lines(r, s.get("endpoint"))
    src = r.get("tokens_source") or {}
    if src:
        lines.append("output tokens counted from: " + ", ".join(f"{k} ({v})" for k, v in src.items() if v))
    if (data.get("dataset") or {}).get("input_tokens_exact") is False:
        lines.append(
            f"input tokens: APPROXIMATE (counted as {data['dataset'].get('token_counter')}: no --tokenizer "
            "was given and the server has no /tokenize); pass --tokenizer DIR for exact counts"
        )
    images = (data.get("dataset") or {}).get("images")
    if images:
        shape = (f"{images['width']}x{images['height']} synthetic PNG" if images["source"] == "synthetic"
                 else f"from {images['source']}")
        lines.append(f"images: {images['per_request']} per request ({shape}), "
                     f"{_fmt(images['bytes_per_request_mean'] / 1024, 1)} KiB per request; their tokens "
                     "are in the server's prompt_tokens (requests.jsonl), not in input tok/s")
    lines += _class_lines(r.get("classes") or {})
    goodput = r.get("goodput")
    if goodput:
        lines.append(
            f"goodput: {_fmt(goodput.get('requests_per_s'))} req/s met every SLO "
            f"({_fmt(100 * (goodput.get('fraction') or 0), 1)}% of requests)"
        )
    client = data.get("client")
    if client:
        iss, lag = client["issue_delay_ms"], client["loop_lag_ms"]
        lines.append(
            f"client: issue delay p50/p99/max {_fmt(iss.get('p50'), 3)}/{_fmt(iss.get('p99'), 3)}/"
            f"{_fmt(iss.get('max'), 3)} ms{_slot_wait(client)}, loop lag p99 {_fmt(lag.get('p99'), 3)} ms, "
            f"CPU {_fmt(client.get('cpu_cores'))} cores"
            + (f", concurrency held {client['concurrency_held']:.2%}"
               if client.get("concurrency_held") else "")
            + (" -- CLIENT-LIMITED" if client.get("client_limited") else "")
        )
    cross = (data.get("server_metrics") or {}).get("cross_check") or {}
    if cross.get("server_ttft_p50_ms") is not None and cross.get("client_ttft_p50_ms") is not None:
        lines.append(
            f"server cross-check: client TTFT p50 {_fmt(cross['client_ttft_p50_ms'])} ms vs the server's own "
            f"histogram {_fmt(cross['server_ttft_p50_ms'])} ms (difference {_fmt(cross['difference_ms'])} "
            f"ms; the server's value is known to +/- {_fmt(cross['bucket_resolution_ms'], 1)} ms)"
        )
    hit_rate = (data.get("server_metrics") or {}).get("prefix_cache_hit_rate")
    if hit_rate is not None:
        lines.append(f"server prefix cache: {hit_rate:.1%} of prompt tokens were cached")
    if (data.get("server_metrics") or {}).get("note"):
        lines.append(f"server metrics: {data['server_metrics']['note']}")
    lines += _console_gpu(data.get("telemetry") or {})
    lines += fleet_console_lines(data)
    lines.append("")
    v = data["validity"]
    lines.append("Result is : VALID" if v["valid"] else "Result is : INVALID")
    lines.extend(f"  - {reason}" for reason in v["reasons"])
    return "\n".join(lines)


"""CLI commands over many runs: ``sweep``, ``find-peak``, ``plan`` and ``compare``.

``register(app)`` adds them to the ``loadgen`` typer app. Each parses options into settings and calls one
library function (:func:`loadgen.study.sweep.run_sweep`, :func:`loadgen.study.peak.find_peak`,
:func:`loadgen.study.plan.make_plan`, :func:`loadgen.study.compare.compare`).

Exit codes: 0 done; 1 ``sweep`` with a failed point, ``find-peak`` with no VALID rate, ``compare`` with a
regression beyond noise; 2 bad input; 130/143 interrupted (what was measured is kept; rerun the same
``sweep`` command to resume it).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from loadgen.errors import LoadgenError
from loadgen.settings import Settings, load_settings

_Url = Annotated[str | None, typer.Option(help="OpenAI-compatible base URL; omitted: the built-in simulated "
                                                "server (or the scenario's server: block)")]
_Model = Annotated[str | None, typer.Option(help="model name (default: the first one served)")]
_Duration = Annotated[float | None, typer.Option(help="minimum duration of each run, seconds")]
_NumRequests = Annotated[int | None, typer.Option(help="minimum queries per run")]
_Seed = Annotated[int | None, typer.Option(help="base seed; each run gets its own seed derived from it")]
_InputLen = Annotated[int | None, typer.Option(help="input tokens per prompt (fixed)")]
_OutputLen = Annotated[int | None, typer.Option(help="output tokens per request (fixed)")]
_TtftMs = Annotated[float | None, typer.Option(help="p99 TTFT bound (ms)")]
_TpotMs = Annotated[float | None, typer.Option(help="p99 TPOT bound (ms)")]
_Preset = Annotated[str | None, typer.Option(help="MLPerf latency preset, e.g. llama3_1-8b")]
_Quiet = Annotated[bool, typer.Option("--quiet", help="no progress line")]


def _err(message: str) -> None:
    typer.echo(f"loadgen: error: {message}", err=True)


def _info(message: str) -> None:
    typer.echo(f"loadgen: {message}", err=True)


def _settings(scenario: str, overrides: dict[str, Any], ttft_ms: float | None, tpot_ms: float | None
              ) -> Settings:
    return _with_slo(load_settings(scenario, overrides), ttft_ms, tpot_ms)


def _with_slo(settings: Settings, ttft_ms: float | None, tpot_ms: float | None) -> Settings:
    if ttft_ms is not None or tpot_ms is not None:
        slo = settings.slo.model_copy(update={
            k: v for k, v in (("ttft_ms", ttft_ms), ("tpot_ms", tpot_ms)) if v is not None
        })
        settings = settings.model_copy(update={"slo": slo})
    return settings


def _execute(settings: Settings) -> Any:
    """One run with the CLI's signal handling (first SIGINT drains, the second aborts)."""
    from loadgen.engine.runner import run_with_signals

    return run_with_signals(settings, log=_info)


def _default_out(kind: str) -> Path:
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{kind}"


def sweep(
    scenario: Annotated[str, typer.Argument(help="built-in scenario name or a YAML scenario file")],
    param: Annotated[list[str] | None, typer.Option(
        help="NAME=VALUES to sweep: concurrency=1,4,16,64, qps=5:40:5 (inclusive), input_len=...")] = None,
    server_arg: Annotated[list[str] | None, typer.Option(help=(
        "server flag to sweep, relaunching the server per point: --server-arg=--max-num-seqs=8,32,128 "
        "(vLLM's flags with a server: block; without one, the built-in simulator's options, e.g. --max-seqs)"
    ))]
    = None,
    out: Annotated[Path | None, typer.Option(help="sweep folder (rerun with the same one to resume)")] = None,
    url: _Url = None,
    model: _Model = None,
    duration: _Duration = None,
    num_requests: _NumRequests = None,
    seed: _Seed = None,
    qps: Annotated[float | None, typer.Option(help="target QPS when not swept")] = None,
    concurrency: Annotated[int | None, typer.Option(help="virtual users when not swept")] = None,
    input_len: _InputLen = None,
    output_len: _OutputLen = None,
    ttft_ms: _TtftMs = None,
    tpot_ms: _TpotMs = None,
    preset: _Preset = None,
    tier: Annotated[list[str] | None, typer.Option(help=(
        "SLO tier NAME:KEY=MS,... (repeatable), e.g. interactive:ttft_ms=300,tpot_ms=30: the most load "
        "that met it (keys ttft_ms, tpot_ms, e2e_ms, ttfa_ms; p99s)"))] = None,
    quiet: _Quiet = False,
) -> None:
    """Run a scenario once per point of a parameter grid; write sweep.json, sweep.csv, a folder per point."""
    from loadgen.study.sweep import load_sweep_scenario, parse_param, render_table, run_sweep
    from loadgen.study.tiers import parse_tier

    out_dir = out or _default_out("sweep")
    try:
        given = [parse_param(p) for p in param or ()] + [parse_param(p, server_arg=True)
                                                         for p in server_arg or ()]
        settings, params = load_sweep_scenario(scenario, {
            "url": url, "model": model, "duration_s": duration, "num_requests": num_requests, "seed": seed,
            "qps": qps, "concurrency": concurrency, "input_len": input_len, "output_len": output_len,
            "preset": preset, "progress": False if quiet else None,
        }, given)
        settings = _with_slo(settings, ttft_ms, tpot_ms)
        tiers = [parse_tier(t) for t in tier or ()]
        result = run_sweep(settings, params, out_dir, scenario=scenario, run_point=_execute, tiers=tiers,
                           log=_info)
    except LoadgenError as exc:
        _err(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except asyncio.CancelledError:  # interrupted while a point was starting: nothing of it measured
        _err(f"interrupted; rerun the same command with --out {out_dir} to resume")
        raise typer.Exit(130) from None
    typer.echo(render_table(result.data))
    _sweep_html(out_dir)
    typer.echo(f"\nsweep: {out_dir / 'sweep.json'}")
    statuses = {p["status"] for p in result.points}
    if "interrupted" in statuses:
        _info(f"interrupted; rerun the same command with --out {out_dir} to resume")
        raise typer.Exit(130)
    if "failed" in statuses:
        raise typer.Exit(1)


def _sweep_html(out_dir: Path) -> None:
    try:
        from loadgen.report.html import write_sweep_html
    except ImportError:
        return
    try:
        typer.echo(f"html: {write_sweep_html(out_dir)}")
    except LoadgenError as exc:
        _info(f"sweep.html not written: {exc}")


def find_peak(
    scenario: Annotated[str, typer.Argument(help="built-in scenario name or a YAML scenario file "
                                                 "(run as the Server scenario)")],
    ttft_ms: _TtftMs = None,
    tpot_ms: _TpotMs = None,
    preset: _Preset = None,
    start_qps: Annotated[float | None, typer.Option(help="first QPS tried (default: the scenario's qps)")]
    = None,
    step: Annotated[float, typer.Option(help="widen by x(1+step) while runs pass (1 = doubling)")] = 1.0,
    precision: Annotated[float, typer.Option(help="stop bisecting when the bracket is this narrow (QPS)")]
    = 0.1,
    repeats: Annotated[int, typer.Option(help="extra runs at each end of the final bracket")] = 2,
    max_runs: Annotated[int, typer.Option(help="at most this many runs in all")] = 20,
    out: Annotated[Path | None, typer.Option(help="output folder (peak.json, one folder per run)")] = None,
    url: _Url = None,
    model: _Model = None,
    duration: _Duration = None,
    num_requests: Annotated[int | None, typer.Option(help="queries per run (at least 662: VALID at p99 "
                                                          "needs >= 459)")] = None,
    seed: _Seed = None,
    input_len: _InputLen = None,
    output_len: _OutputLen = None,
    quiet: _Quiet = False,
) -> None:
    """Find the highest Server QPS whose run is fully VALID (FindPeakPerformance); write peak.json."""
    from loadgen.study.peak import find_peak as _find_peak
    from loadgen.study.peak import render_table

    out_dir = out or _default_out("peak")
    try:
        settings = _settings(scenario, {
            "url": url, "model": model, "duration_s": duration, "num_requests": num_requests, "seed": seed,
            "input_len": input_len, "output_len": output_len, "preset": preset,
            "progress": False if quiet else None,
        }, ttft_ms, tpot_ms)
        result = _find_peak(settings, out_dir, start_qps=start_qps, step=step, precision=precision,
                            repeats=repeats, max_runs=max_runs, run_point=_execute, log=_info)
    except LoadgenError as exc:
        _err(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except asyncio.CancelledError:
        _err(f"interrupted; the runs so far are in {out_dir}")
        raise typer.Exit(130) from None
    typer.echo(render_table(result.data))
    typer.echo(f"\npeak: {out_dir / 'peak.json'}")
    if not result.data["complete"] and any("interrupted" in n for n in result.data["notes"]):
        raise typer.Exit(130)
    if result.peak_qps is None:
        raise typer.Exit(1)


def plan(
    source: Annotated[Path, typer.Argument(help="a sweep or find-peak folder, or its sweep.json/peak.json")],
    peak_qps: Annotated[float, typer.Option(help="the traffic to plan for, requests/s")],
    headroom: Annotated[float, typer.Option(help="spare capacity on top of the peak (0.2 = 20%)")] = 0.2,
    gpu_hour_usd: Annotated[float | None, typer.Option(help="price of one GPU-hour (USD)")] = None,
    gpus_per_replica: Annotated[int, typer.Option(help="GPUs per serving replica")] = 1,
    input_len: Annotated[int | None, typer.Option(help="input tokens of your traffic (warns on mismatch)")]
    = None,
    output_len: Annotated[int | None, typer.Option(help="output tokens of your traffic (warns on mismatch)")]
    = None,
    ttft_ms: Annotated[float | None, typer.Option(help="p99 TTFT bound (default: the source's)")] = None,
    tpot_ms: Annotated[float | None, typer.Option(help="p99 TPOT bound (default: the source's)")] = None,
    allow_invalid: Annotated[bool, typer.Option(
        "--allow-invalid", help="use points within the SLO even if INVALID (e.g. few queries)")] = False,
    out: Annotated[Path | None, typer.Option(help="plan.json path (default: next to the source)")] = None,
) -> None:
    """Replicas, expected latency, tokens per GPU-second, cost and energy for a peak load; write plan.json."""
    from loadgen.study.plan import PlanInputs, load_source, make_plan, render

    try:
        src = load_source(source)
        result = make_plan(src, PlanInputs(
            peak_qps=peak_qps, headroom=headroom, gpu_hour_usd=gpu_hour_usd,
            gpus_per_replica=gpus_per_replica, input_len=input_len, output_len=output_len,
            ttft_ms=ttft_ms, tpot_ms=tpot_ms, require_valid=not allow_invalid,
        ))
    except LoadgenError as exc:
        _err(str(exc))
        raise typer.Exit(exc.exit_code) from None
    path = out or src.path.parent / "plan.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    typer.echo(render(result))
    typer.echo(f"\nplan: {path}")


def compare(
    a: Annotated[Path, typer.Argument(help="run A (baseline): folder or report.json; or a sweep folder")],
    b: Annotated[Path, typer.Argument(help="run B (candidate), of the same kind as A")],
    metric: Annotated[list[str] | None, typer.Option(help="metric that decides the exit code (repeatable; "
                                                          "default ttft_p99_ms and tpot_p99_ms)")] = None,
    threshold: Annotated[float, typer.Option(help="relative change that counts (0.1 = 10%)")] = 0.1,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    out: Annotated[Path | None, typer.Option(help="also write the comparison as JSON here")] = None,
) -> None:
    """A/B two runs (or two sweeps point by point); exit 1 when a checked metric regressed beyond noise."""
    from loadgen.study.compare import DEFAULT_METRICS, render
    from loadgen.study.compare import compare as _compare

    try:
        result = _compare(a, b, metrics=tuple(metric or DEFAULT_METRICS), threshold=threshold,
                          resamples=resamples, seed=seed)
    except LoadgenError as exc:
        _err(str(exc))
        raise typer.Exit(exc.exit_code) from None
    typer.echo(render(result))
    if out is not None:
        out.write_bytes(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2))
    if result.regressed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``sweep``, ``find-peak``, ``plan`` and ``compare`` to ``app``."""
    app.command()(sweep)
    app.command("find-peak")(find_peak)
    app.command()(plan)
    app.command()(compare)

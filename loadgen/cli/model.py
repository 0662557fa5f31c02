"""CLI commands of the serving model: ``calibrate`` (runs → model.json) and ``predict`` (model.json + a
scenario → latency, throughput, capacity and SLO tiers, each with its band; ``--confirm`` runs the
scenario and says whether the measurement landed inside the bands).

Library: :func:`loadgen.study.calibrate.calibrate`, :func:`loadgen.study.predict.predict`,
:func:`loadgen.study.predict.confirm`. Exit codes: 0 done (and, with ``--confirm``, confirmed); 1 a
confirmation outside the bands; 2 bad input; 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from loadgen.cli.study import _err, _execute, _info, _settings
from loadgen.errors import ConfigError, LoadgenError


def calibrate(
    sources: Annotated[list[Path], typer.Argument(help="run folders or sweep folders of one deployment")],
    out: Annotated[Path, typer.Option(help="where to write the fitted model")] = Path("model.json"),
) -> None:
    """Fit a serving model (prefill, decode step vs batch, slots) to measured runs; write model.json."""
    from loadgen.study.calibrate import calibrate as fit

    try:
        data = fit(sources)
    except LoadgenError as exc:
        _err(str(exc))
        raise typer.Exit(exc.exit_code) from None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    except OSError as exc:
        _err(f"--out {out}: cannot write it ({exc.strerror}); give a writable path")
        raise typer.Exit(2) from None
    p = data["parameters"]
    sig = p["sigma"]
    for name in ("ttft_ms", "prefill_ms_per_token", "itl_ms", "itl_slope"):
        typer.echo(f"{name:<22}{p[name]:>12.5g}  ± {sig.get(name, 0):.2g}")
    typer.echo(f"{'max_seqs':<22}{'not identified' if p['max_seqs'] is None else p['max_seqs']:>12}")
    worst = data["fit_error_max"]
    typer.echo(f"fit error on the {len(data['runs'])} runs (TTFT and TPOT p50): worst "
               f"{'-' if worst is None else f'{worst:.1%}'}")
    for note in data["notes"]:
        typer.echo(f"note: {note}")
    typer.echo(f"model: {out}")


def predict(
    model: Annotated[Path, typer.Argument(help="model.json from loadgen calibrate")],
    scenario: Annotated[str, typer.Argument(help="built-in scenario name or a YAML scenario file")],
    concurrency: Annotated[int | None, typer.Option(help="virtual users (closed loops)")] = None,
    qps: Annotated[float | None, typer.Option(help="request rate (server, constant)")] = None,
    input_len: Annotated[int | None, typer.Option(help="input tokens per prompt (fixed)")] = None,
    output_len: Annotated[int | None, typer.Option(help="output tokens per request (fixed)")] = None,
    num_requests: Annotated[int | None, typer.Option(help="requests the run would send")] = None,
    duration: Annotated[float | None, typer.Option(help="minimum duration of the run, seconds")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the lengths and arrivals")] = None,
    tier: Annotated[list[str] | None, typer.Option(help="SLO tier NAME:KEY=MS,... (repeatable): the most "
                                                        "load the model says meets it")] = None,
    ttft_ms: Annotated[float | None, typer.Option(help="p99 TTFT bound (the SLO replicas are planned for)")]
    = None,
    tpot_ms: Annotated[float | None, typer.Option(help="p99 TPOT bound")] = None,
    peak_qps: Annotated[float | None, typer.Option(help="traffic to plan replicas for, requests/s")] = None,
    headroom: Annotated[float, typer.Option(help="spare capacity on top of the peak (0.2 = 20%)")] = 0.2,
    gpu_hour_usd: Annotated[float | None, typer.Option(help="price of one GPU-hour (USD)")] = None,
    gpus_per_replica: Annotated[int, typer.Option(help="GPUs per serving replica")] = 1,
    confirm: Annotated[bool, typer.Option("--confirm", help="run the scenario and compare")] = False,
    url: Annotated[str | None, typer.Option(help="the endpoint to confirm against (default: the "
                                                 "built-in simulator serving the model)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for prediction.json (and the run)")] = None,
) -> None:
    """Predict a scenario's latency, throughput, capacity and SLO tiers from model.json; --confirm runs it."""
    from loadgen.report.files import load_json
    from loadgen.study.predict import confirm as compare
    from loadgen.study.predict import predict as forecast
    from loadgen.study.predict import render, replicas
    from loadgen.study.servemodel import ServingModel
    from loadgen.study.tiers import parse_tier

    try:
        data = load_json(model)
        fitted = ServingModel.from_dict(data, str(model))
        overrides: dict[str, Any] = {"concurrency": concurrency, "qps": qps, "input_len": input_len,
                                     "output_len": output_len, "num_requests": num_requests,
                                     "duration_s": duration, "seed": seed, "url": url,
                                     "out": out / "run" if out else None}
        settings = _settings(scenario, overrides, ttft_ms, tpot_ms)
        if confirm and url is None and settings.url is None:
            settings = settings.model_copy(update={"sim": {**settings.sim, **fitted.sim_options()}})
        result = forecast(fitted, settings, fit_error=data.get("fit_error_max"),
                          tiers=[parse_tier(t) for t in tier or ()])
        if peak_qps is not None:
            result["replicas"] = replicas(fitted, settings, peak_qps, headroom=headroom,
                                          gpu_hour_usd=gpu_hour_usd, gpus_per_replica=gpus_per_replica)
        checked = None
        if confirm:
            _info(f"confirming against {settings.url or 'the built-in simulator serving the model'}")
            run = _execute(settings)
            checked = compare(result, run.report)
            result["confirmation"] = checked
    except LoadgenError as exc:
        _err(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except (OSError, ValueError) as exc:
        _err(str(ConfigError(f"{model}: {exc}")))
        raise typer.Exit(2) from None
    typer.echo(render(result, checked))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "prediction.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        typer.echo(f"prediction: {out / 'prediction.json'}")
    if checked is not None and not checked["confirmed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(calibrate)
    app.command()(predict)

"""The ``loadgen`` command line: parses options into settings and calls the library.

Exit codes: 0 the run completed (whatever the verdict); 1 with ``--fail-on-invalid`` when the result
is INVALID; 2 bad input (settings, files, target); 130 after SIGINT, 143 after SIGTERM (a partial
report is written first).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from loadgen.cli import options
from loadgen.cli.aliases import pick, rate_overrides, unsupported_vllm_flag, vllm_endpoint
from loadgen.cli.model import register as register_model
from loadgen.cli.study import register as register_analysis
from loadgen.engine.runner import RunControl, run_with_signals
from loadgen.errors import ConfigError, LoadgenError
from loadgen.report.build import Report, rebuild, render_console
from loadgen.report.outputs import write_outputs
from loadgen.schedule.length import check_max_duration, expected_length
from loadgen.settings import Settings, declared_scenario, load_settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Load tester for LLM serving endpoints with MLPerf LoadGen scenario semantics.",
    pretty_exceptions_enable=False,
)

EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def _err(message: str) -> None:
    typer.echo(f"loadgen: error: {message}", err=True)


def _info(message: str) -> None:
    typer.echo(f"loadgen: {message}", err=True)


def prompt_api_key(api_key_env: str | None) -> str:
    """The API key typed at a terminal (not echoed). A key is never taken from the command line itself.

    Raises ConfigError when ``--api-key-env`` is given too, when stdin is not a terminal (a pipe or CI:
    use ``--api-key-env``) or when nothing was typed.
    """
    if api_key_env:
        raise ConfigError("give either --api-key-env VAR or --api-key-prompt, not both.")
    if not sys.stdin.isatty():
        raise ConfigError(
            "--api-key-prompt needs a terminal to type the key into, and stdin is not one. In scripts and "
            "CI put the key in an environment variable and pass --api-key-env VAR instead."
        )
    try:
        key = getpass.getpass("API key (not echoed): ")
    except EOFError:
        key = ""
    if not key.strip():
        raise ConfigError("--api-key-prompt: no key was entered. Type the key, or leave the option out.")
    return key.strip()


def live_dashboard(settings: Settings, expectation: Any, control: RunControl, choice: bool | None
                   ) -> tuple[Any, ...]:
    """The dashboard observer when asked for, or by default on a terminal (not with --quiet, not for
    multi-turn sessions, which show no live view)."""
    on = choice if choice is not None else (
        settings.progress and sys.stdout.isatty() and os.environ.get("TERM", "") not in ("", "dumb"))
    if not on or settings.sessions is not None:
        return ()
    from loadgen.observe.dashboard import Dashboard, shape_from

    dash = Dashboard(shape_from(settings, expectation), control=control)
    dash.spawn()  # its start-up CPU before the run, not in the measured window
    return (dash,)


@app.command()
def run(
    scenario: Annotated[str, typer.Argument(help="built-in scenario name or a YAML scenario file")],
    url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL; omitted: the built-in "
                                                 "simulated server is started for the run")] = None,
    model: Annotated[str | None, typer.Option(help="model name (default: the first one served)")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="environment variable holding the API key")] = None,
    api_key_prompt: Annotated[bool, typer.Option("--api-key-prompt", help="type the API key at a prompt "
                                                 "(a terminal only; never stored)")] = False,
    out: Annotated[Path | None, typer.Option(help="output folder (default: runs/<time>-<scenario>)")] = None,
    qps: Annotated[float | None, typer.Option(help="target queries per second (server, constant)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="virtual users (concurrency)")] = None,
    duration: Annotated[float | None, typer.Option(help="minimum duration in seconds (with --num-requests: "
                                                       "the run lasts until both are met)")] = None,
    num_requests: Annotated[int | None, typer.Option(help="minimum number of queries (with --duration: "
                                                          "the run lasts until both are met)")] = None,
    max_duration: Annotated[float | None, typer.Option(help="hard stop in seconds of closed loops "
                                                            "(default max(10 x --duration, --duration + "
                                                            "600)); an open-loop schedule due past it is "
                                                            "refused")] = None,
    input_len: Annotated[int | None, typer.Option(help="input tokens per prompt (fixed)")] = None,
    output_len: Annotated[int | None, typer.Option(help="output tokens per request (fixed)")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the schedule and the prompts")] = None,
    endpoint: Annotated[str | None, typer.Option(help="completions, chat, responses, embeddings, rerank or "
                                                      "score")] = None,
    inputs_per_request: Annotated[int | None, typer.Option(help="embeddings: texts per request; rerank, "
                                                               "score: documents per query")] = None,
    document_len: Annotated[int | None, typer.Option(help="rerank, score: tokens per document (default "
                                                         "--input-len)")] = None,
    extra_body: Annotated[str | None, typer.Option(
        help="JSON object laid over every request body, e.g. '{\"temperature\":0.7}' (null drops a field)",
    )] = None,
    images: Annotated[int | None, typer.Option(help="images in every chat prompt (synthetic PNGs, or "
                                                    "--image-folder's files)")] = None,
    image_size: Annotated[str | None, typer.Option(help="synthetic image pixels WxH (512x512)")] = None,
    image_folder: Annotated[Path | None, typer.Option(help="send these pictures (png, jpg, webp, gif) in "
                                                           "name order")] = None,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="non-streaming requests")] = False,
    warmup: Annotated[int | None, typer.Option(help="requests sent before the clock starts")] = None,
    samples_per_query: Annotated[int | None, typer.Option(help="samples per query (multistream)")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="local tokenizer directory (tokenizer.json)")] = None,
    prompts_file: Annotated[Path | None, typer.Option(help="JSONL prompts file")] = None,
    ttft_ms: Annotated[float | None, typer.Option(help="p99 TTFT bound for validity (ms)")] = None,
    tpot_ms: Annotated[float | None, typer.Option(help="p99 TPOT bound for validity (ms)")] = None,
    preset: Annotated[str | None, typer.Option(help="MLPerf latency preset, e.g. llama3_1-8b")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", "--extra-header",
                                                     help="extra request header NAME:VALUE")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="do not verify TLS certificates")] = False,
    fail_on_invalid: Annotated[bool, typer.Option("--fail-on-invalid", help="exit 1 when INVALID")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress line")] = False,
    dashboard: Annotated[bool | None, typer.Option("--dashboard/--no-dashboard",
                                                   help="live dashboard (default: on when stdout is a "
                                                        "terminal; keys q stop, x abort)")] = None,
    workers: Annotated[int | None, typer.Option(help="client processes, or Ray actors with --ray "
                                                     "(default: from the load)")] = None,
    ray: Annotated[str | None, typer.Option(help="run the workers as Ray actors: a cluster's address "
                                                 "(ray://HEAD:10001, HEAD:6379, auto) or local")] = None,
    http_client: Annotated[str | None, typer.Option(help="streaming transport: fast or aiohttp")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="serve live Prometheus metrics on this port "
                                                        "(0: any free port)")] = None,
    metrics_host: Annotated[str | None, typer.Option(help="address for --metrics-port "
                                                         "(default 127.0.0.1)")] = None,
    pushgateway: Annotated[str | None, typer.Option(help="push final metrics to this Pushgateway")] = None,
    metrics_textfile: Annotated[Path | None, typer.Option(help="write final metrics for node_exporter's "
                                                               "textfile collector")] = None,
    metrics_linger_s: Annotated[float | None, typer.Option(help="keep serving --metrics-port this many "
                                                             "seconds after the run")] = None,
    gpus: Annotated[str | None, typer.Option(help="GPU indices to sample, e.g. 0,1 (default: "
                                                  "CUDA_VISIBLE_DEVICES or all)")] = None,
    no_gpu_telemetry: Annotated[bool, typer.Option("--no-gpu-telemetry", help="do not sample GPUs")] = False,
    launch: Annotated[str | None, typer.Option(help="start this server for the run: vllm")] = None,
    vllm_arg: Annotated[list[str] | None, typer.Option(help="extra vLLM argument (repeatable; "
                                                           "--vllm-arg=--max-num-seqs=64)")] = None,
    vllm_command: Annotated[str | None, typer.Option(help="launch command prefix, e.g. 'python -m "
                                                          "vllm.entrypoints.openai.api_server'")] = None,
    server_metrics_url: Annotated[str | None, typer.Option(help="Prometheus /metrics of the server "
                                                                "('none': skip)")] = None,
    metrics_url: Annotated[list[str] | None, typer.Option(help="a replica's /metrics (repeatable: fleet "
                                                              "sums + per-replica sections)")] = None,
    server_kind: Annotated[str | None, typer.Option(help="metric names: vllm, vllm-v0, sglang, tgi, "
                                                         "trtllm (default: detected)")] = None,
    prometheus_url: Annotated[str | None, typer.Option(help="read server and DCGM series from this "
                                                            "Prometheus (PromQL) over the run")] = None,
    dcgm_url: Annotated[list[str] | None, typer.Option(help="a DCGM exporter's /metrics (repeatable): "
                                                            "remote GPU energy")] = None,
    request_timeout: Annotated[float | None, typer.Option(help="seconds one request may take in all "
                                                               "(error class timeout)")] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="seconds without a byte mid-response "
                                                            "(error class idle_timeout)")] = None,
    retries: Annotated[int | None, typer.Option(help="retry connect failures and HTTP 429/503 up to N "
                                                     "times (default 0; distorts the offered load)")] = None,
    max_error_rate: Annotated[float | None, typer.Option(help="stop issuing when more than this fraction "
                                                              "of the last 100 finished requests "
                                                              "failed, e.g. 0.5")] = None,
    max_concurrency: Annotated[int | None, typer.Option(help="open loops: at most N requests in flight; a "
                                                             "query due while N are out waits for one to "
                                                             "end, keeping its scheduled time (as vllm "
                                                             "bench serve's)")] = None,
    num_prompts: Annotated[int | None, typer.Option(help="= --num-requests (vllm bench serve's name)",
                                                    rich_help_panel="vllm bench serve names")] = None,
    request_rate: Annotated[float | None, typer.Option(help="= --qps (vllm bench serve's name); inf: every "
                                                            "request at once, the offline scenario",
                                                       rich_help_panel="vllm bench serve names")] = None,
    random_input_len: Annotated[int | None, typer.Option(help="= --input-len (vllm bench serve's name)",
                                                         rich_help_panel="vllm bench serve names")] = None,
    random_output_len: Annotated[int | None, typer.Option(help="= --output-len (vllm bench serve's name)",
                                                          rich_help_panel="vllm bench serve names")] = None,
) -> None:
    """Run a scenario and write report.json, summary.txt and requests.jsonl."""
    try:
        rate, note = rate_overrides(request_rate, qps, declared_scenario(scenario), duration is not None)
        overrides: dict[str, Any] = {
            "url": url, "model": model, "api_key_env": api_key_env, "out": out, "qps": qps,
            "concurrency": concurrency, "duration_s": duration,
            "num_requests": pick("--num-requests", num_requests, "--num-prompts", num_prompts),
            "max_duration_s": max_duration, "max_concurrency": max_concurrency,
            "input_len": pick("--input-len", input_len, "--random-input-len", random_input_len),
            "output_len": pick("--output-len", output_len, "--random-output-len", random_output_len),
            "seed": seed, "endpoint": vllm_endpoint(endpoint), "extra_body": options.json_object(
                "--extra-body", extra_body),
            "warmup": warmup, "samples_per_query": samples_per_query, "tokenizer": tokenizer,
            "prompts_file": prompts_file, "preset": preset, "headers": options.headers(header),
            "stream": False if no_stream else None, "insecure": True if insecure else None,
            "fail_on_invalid": True if fail_on_invalid else None, "progress": False if quiet else None,
            "workers": workers, "ray": ray, "http_client": http_client, "metrics_port": metrics_port,
            "metrics_host": metrics_host, "pushgateway": pushgateway, "metrics_textfile": metrics_textfile,
            "metrics_linger_s": metrics_linger_s,
            "gpus": options.gpus(gpus), "gpu_telemetry": False if no_gpu_telemetry else None,
        }
        overrides["server_metrics_url"] = server_metrics_url
        overrides["images"] = options.images_block(images, image_size, image_folder)
        overrides["pooling"] = options.pooling_block(inputs_per_request, document_len)
        overrides.update(metrics_urls=metrics_url or None, server_kind=server_kind,
                         prometheus_url=prometheus_url, dcgm_urls=dcgm_url or None)
        overrides.update(rate)
        overrides.update(request_timeout_s=request_timeout, idle_timeout_s=idle_timeout, retries=retries,
                         max_error_rate=max_error_rate)
        if launch is not None:
            overrides["server"] = options.launch_block(launch, model, vllm_arg, vllm_command)
            overrides["model"] = None  # --model named what to launch; the served name is probed
        settings = load_settings(scenario, overrides)
        if ttft_ms is not None or tpot_ms is not None:
            slo = settings.slo.model_copy(update={
                k: v for k, v in (("ttft_ms", ttft_ms), ("tpot_ms", tpot_ms)) if v is not None
            })
            settings = settings.model_copy(update={"slo": slo})
        expectation = expected_length(settings, {k for k, v in overrides.items() if v is not None})
        check_max_duration(settings, expectation.issue_s)
        _info(expectation.line)  # the first line of the run: how long it will take, and why
        if note:
            _info(note)
        if settings.insecure:
            _info("WARNING: --insecure: TLS certificates are NOT verified")
        key = prompt_api_key(settings.api_key_env) if api_key_prompt else None
        control = RunControl()
        result = run_with_signals(settings, control=control, log=_info, api_key=key,
                                  observers=live_dashboard(settings, expectation, control, dashboard))
    except LoadgenError as exc:
        _err(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except asyncio.CancelledError:
        _err("interrupted before measuring started; nothing was measured")
        raise typer.Exit(130) from None
    typer.echo(render_console(result.report))
    typer.echo(f"\nreport: {result.out_dir / 'report.json'}")
    if result.interrupted:
        raise typer.Exit(EXIT_SIGNAL.get(control.signal_name or "SIGINT", 130))
    if settings.fail_on_invalid and not result.valid:
        raise typer.Exit(1)


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free port)")] = 8000,
    model: Annotated[str, typer.Option(help="served model name")] = "sim-model",
    ttft_ms: Annotated[float, typer.Option(help="time to first token at light load (ms)")] = 50.0,
    itl_ms: Annotated[float, typer.Option(help="decode step time with one sequence (ms)")] = 10.0,
    itl_slope: Annotated[float, typer.Option(help="step time growth per extra running sequence")] = 0.0,
    prefill_ms_per_token: Annotated[float, typer.Option(help="extra TTFT per prompt token (ms)")] = 0.0,
    max_seqs: Annotated[int, typer.Option(help="sequences decoded together; the rest queue")] = 256,
    tokens_per_chunk: Annotated[int, typer.Option(help="tokens carried by each SSE chunk")] = 1,
    reasoning_tokens: Annotated[int, typer.Option(
        help="chat, responses: the first N generated tokens are thinking (delta.reasoning_content)")] = 0,
    keep_bodies: Annotated[int, typer.Option(help="keep the last N request bodies at GET /sim/bodies")] = 0,
    image_prefill_ms: Annotated[float, typer.Option(help="extra TTFT per image in a chat prompt (ms)")] = 0.0,
    image_tokens: Annotated[int, typer.Option(help="prompt tokens each image counts")] = 0,
    lora: Annotated[list[str] | None, typer.Option(help="a LoRA adapter name served beside --model "
                                                        "(repeatable)")] = None,
    seed: Annotated[int, typer.Option(help="seed of faults and generated words")] = 0,
    api_key_env: Annotated[str | None, typer.Option(help="require the key in this variable")] = None,
    fault: Annotated[list[str] | None, typer.Option(help="inject a fault, e.g. http_500:0.1")] = None,
    serving_model: Annotated[Path | None, typer.Option(
        "--serving-model", help="serve a fitted model.json (loadgen calibrate); its timing replaces "
                                "--ttft-ms, --prefill-ms-per-token, --itl-ms, --itl-slope and --max-seqs",
    )] = None,
) -> None:
    """Run the built-in simulated OpenAI-compatible server until Ctrl-C."""
    from loadgen.servers.sim import SimConfig, parse_fault, serve

    try:
        faults = tuple(parse_fault(f) for f in fault or ())
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise ConfigError(f"--api-key-env {api_key_env}: that environment variable is not set.")
        timing: dict[str, Any] = {"ttft_ms": ttft_ms, "itl_ms": itl_ms, "itl_slope": itl_slope,
                                  "prefill_ms_per_token": prefill_ms_per_token, "max_seqs": max_seqs}
        if serving_model is not None:
            from loadgen.report.files import load_json
            from loadgen.study.servemodel import ServingModel

            timing = ServingModel.from_dict(load_json(serving_model), str(serving_model)).sim_options()
        cfg = SimConfig(
            model=model, **timing, tokens_per_chunk=tokens_per_chunk, seed=seed, api_key=key, faults=faults,
            reasoning_tokens=reasoning_tokens, keep_bodies=keep_bodies, image_prefill_ms=image_prefill_ms,
            image_tokens=image_tokens, lora_adapters=tuple(lora or ()),
        )
    except (ValueError, TypeError) as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    except LoadgenError as exc:
        _err(str(exc))
        raise typer.Exit(exc.exit_code) from None
    try:
        serve(cfg, host, port, ready=lambda u: typer.echo(f"loadgen sim listening on {u} (Ctrl-C stops)"))
    except OSError as exc:
        _err(f"cannot listen on {host}:{port}: {exc.strerror}. Choose another --port.")
        raise typer.Exit(2) from None


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="run folder, report.json or requests.jsonl")],
) -> None:
    """Print a run's summary; rebuild report.json from requests.jsonl when there is none."""
    try:
        result = rebuild(path)
    except LoadgenError as exc:
        _err(str(exc))
        raise typer.Exit(exc.exit_code) from None
    if isinstance(result, Report):
        folder = path if path.is_dir() else path.parent
        write_outputs(folder, result)
        typer.echo(render_console(result.data))
        typer.echo(f"\nrebuilt: {folder / 'report.json'}")
    else:
        typer.echo(render_console(result))


register_analysis(app)  # sweep, find-peak, plan, compare
register_model(app)  # calibrate, predict


def main() -> None:
    problem = unsupported_vllm_flag(sys.argv[1:])
    if problem is not None:  # before typer: its "No such option" would not say what to use instead
        _err(problem)
        sys.exit(2)
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C outside a run (e.g. during `loadgen sim` start-up)
        sys.exit(130)

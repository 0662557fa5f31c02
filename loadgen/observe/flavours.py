"""Which server is behind ``/metrics``: metric-name tables per server kind, detection, translation.

Every table maps loadgen's canonical series (vLLM v1's names, the ones :mod:`loadgen.observe.promtext`
and the report use) to where that server keeps the same quantity. A scrape is translated into a
:class:`~loadgen.observe.promtext.Snapshot` under the canonical names, so the deltas, histograms,
cross-check and fleet sums work the same for every kind. A quantity the server does not export is
absent from its table (the report then shows None for it, never a guess).

Kinds and where each name comes from (the server's own source or docs):

* ``vllm``: vLLM v1, ``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``).
* ``vllm-v0``: vLLM's older engine, ``vllm/engine/metrics.py`` (``Metrics``): ``gpu_cache_usage_perc``
  and ``time_per_output_token_seconds`` before their v1 renames; no prefix-cache counters (v0 had only
  a hit-rate gauge, ``vllm:gpu_prefix_cache_hit_rate``, which cannot be windowed).
* ``sglang``: ``python/sglang/srt/metrics/collector.py`` (``TokenizerMetricsCollector``,
  ``SchedulerMetricsCollector``) and ``docs/references/production_metrics.md``. Prefix cache: hits are
  ``sglang:cached_tokens_total``, look-ups are all prompt tokens (``sglang:prompt_tokens_total``);
  preemptions are SGLang's retractions.
* ``tgi``: Text Generation Inference, ``docs/source/reference/metrics.md``. TGI has no token counters:
  the token totals are the ``_sum`` of its per-request histograms ``tgi_request_input_length`` and
  ``tgi_request_generated_tokens``; no TTFT histogram (so no TTFT cross-check); ITL is
  ``tgi_request_mean_time_per_token_duration`` (one mean per request, not one per token).
* ``trtllm``: ``trtllm-serve``'s ``tensorrt_llm/metrics/collector.py`` (``MetricsCollector``, prefix
  ``trtllm_``); TPOT is ``trtllm_time_per_output_token_seconds``; prefix-cache hits
  ``trtllm_prompt_cached_tokens_total`` over ``trtllm_prompt_tokens_total``.
* ``dcgm``: NVIDIA dcgm-exporter, ``etc/default-counters.csv``: GPU series, not a server; read by
  :mod:`loadgen.observe.dcgm`, listed here so detection can tell a GPU exporter from a server.

Detection (:func:`detect`) looks for each kind's marker prefix in the scraped text (``vllm:`` with
``vllm:kv_cache_usage_perc`` or ``vllm:gpu_cache_usage_perc`` to split the two vLLM kinds,
``sglang:``, ``tgi_``, ``trtllm_``, ``DCGM_FI_``); ``--server-kind`` overrides it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from loadgen.observe.promtext import Histogram, Snapshot

__all__ = [
    "FLAVOURS",
    "KINDS",
    "Flavour",
    "FlavourParser",
    "Source",
    "detect",
    "iter_samples",
    "parse_flavour",
]


@dataclass(frozen=True)
class Source:
    """Where one canonical scalar lives: sample ``name`` (summed over label sets that match ``labels``)."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Flavour:
    """One server kind: canonical scalar → :class:`Source`, canonical histogram family → its family."""

    kind: str
    cite: str
    scalars: Mapping[str, Source] = field(default_factory=dict)
    histograms: Mapping[str, str] = field(default_factory=dict)
    #: Prefix-cache look-ups are the prompt tokens (SGLang, TRT-LLM have no separate queries counter).
    queries_are_prompt_tokens: bool = False


def _s(name: str, **labels: str) -> Source:
    return Source(name, tuple(sorted(labels.items())))


_V1 = "vllm/v1/metrics/loggers.py"
VLLM = Flavour("vllm", _V1, scalars={
    "vllm:num_requests_running": _s("vllm:num_requests_running"),
    "vllm:num_requests_waiting": _s("vllm:num_requests_waiting"),
    "vllm:kv_cache_usage_perc": _s("vllm:kv_cache_usage_perc"),
    "vllm:num_preemptions_total": _s("vllm:num_preemptions_total"),
    "vllm:prompt_tokens_total": _s("vllm:prompt_tokens_total"),
    "vllm:generation_tokens_total": _s("vllm:generation_tokens_total"),
    "vllm:request_success_total": _s("vllm:request_success_total"),
    "vllm:prefix_cache_queries_total": _s("vllm:prefix_cache_queries_total"),
    "vllm:prefix_cache_hits_total": _s("vllm:prefix_cache_hits_total"),
}, histograms={
    "vllm:time_to_first_token_seconds": "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds": "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds": "vllm:e2e_request_latency_seconds",
})
VLLM_V0 = Flavour("vllm-v0", "vllm/engine/metrics.py", scalars={
    "vllm:num_requests_running": _s("vllm:num_requests_running"),
    "vllm:num_requests_waiting": _s("vllm:num_requests_waiting"),
    "vllm:kv_cache_usage_perc": _s("vllm:gpu_cache_usage_perc"),
    "vllm:num_preemptions_total": _s("vllm:num_preemptions_total"),
    "vllm:prompt_tokens_total": _s("vllm:prompt_tokens_total"),
    "vllm:generation_tokens_total": _s("vllm:generation_tokens_total"),
    "vllm:request_success_total": _s("vllm:request_success_total"),
}, histograms={
    "vllm:time_to_first_token_seconds": "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds": "vllm:time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds": "vllm:e2e_request_latency_seconds",
})
SGLANG = Flavour("sglang", "python/sglang/srt/metrics/collector.py; docs/references/production_metrics.md",
                 scalars={
    "vllm:num_requests_running": _s("sglang:num_running_reqs"),
    "vllm:num_requests_waiting": _s("sglang:num_queue_reqs"),
    "vllm:kv_cache_usage_perc": _s("sglang:token_usage"),
    "vllm:num_preemptions_total": _s("sglang:num_retracted_requests_total"),
    "vllm:prompt_tokens_total": _s("sglang:prompt_tokens_total"),
    "vllm:generation_tokens_total": _s("sglang:generation_tokens_total"),
    "vllm:request_success_total": _s("sglang:num_requests_total"),
    "vllm:prefix_cache_hits_total": _s("sglang:cached_tokens_total"),
}, histograms={
    "vllm:time_to_first_token_seconds": "sglang:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds": "sglang:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds": "sglang:e2e_request_latency_seconds",
}, queries_are_prompt_tokens=True)
TGI = Flavour("tgi", "docs/source/reference/metrics.md (text-generation-inference)", scalars={
    "vllm:num_requests_running": _s("tgi_batch_current_size"),
    "vllm:num_requests_waiting": _s("tgi_queue_size"),
    "vllm:prompt_tokens_total": _s("tgi_request_input_length_sum"),
    "vllm:generation_tokens_total": _s("tgi_request_generated_tokens_sum"),
    "vllm:request_success_total": _s("tgi_request_success"),
}, histograms={
    "vllm:inter_token_latency_seconds": "tgi_request_mean_time_per_token_duration",
    "vllm:e2e_request_latency_seconds": "tgi_request_duration",
})
TRTLLM = Flavour("trtllm", "tensorrt_llm/metrics/collector.py (trtllm-serve)", scalars={
    "vllm:num_requests_running": _s("trtllm_num_requests_running"),
    "vllm:num_requests_waiting": _s("trtllm_num_requests_waiting"),
    "vllm:kv_cache_usage_perc": _s("trtllm_kv_cache_utilization"),
    "vllm:prompt_tokens_total": _s("trtllm_prompt_tokens_total"),
    "vllm:generation_tokens_total": _s("trtllm_generation_tokens_total"),
    "vllm:request_success_total": _s("trtllm_request_success_total"),
    "vllm:prefix_cache_hits_total": _s("trtllm_prompt_cached_tokens_total"),
}, histograms={
    "vllm:time_to_first_token_seconds": "trtllm_time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds": "trtllm_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds": "trtllm_e2e_request_latency_seconds",
}, queries_are_prompt_tokens=True)
DCGM = Flavour("dcgm", "etc/default-counters.csv (NVIDIA/dcgm-exporter)", scalars={
    "DCGM_FI_DEV_POWER_USAGE": _s("DCGM_FI_DEV_POWER_USAGE"),  # gauge, W
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": _s("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"),  # counter, mJ
    "DCGM_FI_DEV_GPU_UTIL": _s("DCGM_FI_DEV_GPU_UTIL"),  # gauge, %
    "DCGM_FI_DEV_FB_USED": _s("DCGM_FI_DEV_FB_USED"),  # gauge, MiB
})

FLAVOURS: dict[str, Flavour] = {f.kind: f for f in (VLLM, VLLM_V0, SGLANG, TGI, TRTLLM, DCGM)}
KINDS = tuple(FLAVOURS)


def detect(text: str) -> str | None:
    """The server kind whose names appear in a scrape (None: no known names). vLLM's older engine is
    told from v1 by ``vllm:gpu_cache_usage_perc`` without ``vllm:kv_cache_usage_perc``."""
    if "vllm:" in text:
        if "vllm:kv_cache_usage_perc" not in text and "vllm:gpu_cache_usage_perc" in text:
            return "vllm-v0"
        return "vllm"
    for marker, kind in (("sglang:", "sglang"), ("\ntrtllm_", "trtllm"), ("\ntgi_", "tgi"),
                         ("DCGM_FI_", "dcgm")):
        if marker in "\n" + text:
            return kind
    return None


def _labels(body: str) -> dict[str, str]:
    """``a="x",b="y"`` → dict (values without escapes beyond ``\\"``, as servers write them)."""
    out: dict[str, str] = {}
    i, n = 0, len(body)
    while i < n:
        eq = body.find("=", i)
        if eq < 0:
            break
        key = body[i:eq].strip().lstrip(",").strip()
        q1 = body.find('"', eq)
        j = q1 + 1
        chunks = []
        while j < n and body[j] != '"':
            if body[j] == "\\" and j + 1 < n:
                chunks.append(body[j + 1])
                j += 2
                continue
            chunks.append(body[j])
            j += 1
        out[key] = "".join(chunks)
        i = j + 1
    return out


def iter_samples(text: str, names: Iterable[str]) -> Iterable[tuple[str, dict[str, str], float]]:
    """``(name, labels, value)`` for every sample whose name is in ``names`` (one pass over the lines;
    the others are skipped unparsed). Raises ValueError for a wanted line without a value."""
    want = set(names)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        cut = brace if brace >= 0 and (space < 0 or brace < space) else space
        if cut <= 0:
            continue
        name = line[:cut]
        if name not in want:
            continue
        if brace == cut:
            close = line.rfind("}")
            labels, rest = _labels(line[brace + 1 : close]), line[close + 1 :]
        else:
            labels, rest = {}, line[cut:]
        fields = rest.split()
        if not fields:
            raise ValueError(f"not Prometheus text format: {line[:80]!r}")
        yield name, labels, float(fields[0])


def parse_flavour(text: str, flavour: Flavour | str) -> Snapshot:
    """A scrape of a ``flavour`` server under the canonical (vLLM v1) names: scalars summed over the
    label sets matching each :class:`Source`, histograms summed bucket-wise over label sets. For kinds
    whose prefix-cache look-ups are their prompt tokens, ``vllm:prefix_cache_queries_total`` is filled
    from ``vllm:prompt_tokens_total``."""
    fl = FLAVOURS[flavour] if isinstance(flavour, str) else flavour
    by_name: dict[str, list[tuple[str, Source]]] = {}
    for canon, src in fl.scalars.items():
        by_name.setdefault(src.name, []).append((canon, src))
    fam_of = {fam: canon for canon, fam in fl.histograms.items()}
    hist_names = {f"{fam}{suffix}": fam for fam in fam_of for suffix in ("_bucket", "_sum", "_count")}
    scalars: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for name, labels, value in iter_samples(text, (*by_name, *hist_names)):
        for canon, src in by_name.get(name, ()):
            if all(labels.get(k) == v for k, v in src.labels):
                scalars[canon] = scalars.get(canon, 0.0) + value
        fam = hist_names.get(name)
        if fam is None:
            continue
        canon = fam_of[fam]
        if name.endswith("_bucket"):
            if "le" not in labels:
                raise ValueError(f"bucket without le in {name}")
            per_le = buckets.setdefault(canon, {})
            le = float(labels["le"])
            per_le[le] = per_le.get(le, 0.0) + value
        elif name.endswith("_sum"):
            sums[canon] = sums.get(canon, 0.0) + value
        else:
            counts[canon] = counts.get(canon, 0.0) + value
    if fl.queries_are_prompt_tokens and "vllm:prompt_tokens_total" in scalars:
        scalars["vllm:prefix_cache_queries_total"] = scalars["vllm:prompt_tokens_total"]
    hists = {
        canon: Histogram(buckets=tuple(sorted(per_le.items())),
                         count=counts.get(canon, max(per_le.values(), default=0.0)),
                         sum=sums.get(canon, math.nan))
        for canon, per_le in buckets.items()
    }
    return Snapshot(scalars=scalars, histograms=hists)


class FlavourParser:
    """A scraper's parse hook: translates each scrape of one server into canonical names. ``kind``
    None detects it from the first scrape (vLLM when nothing known is found); :attr:`kind` then says
    which table was used."""

    def __init__(self, kind: str | None = None) -> None:
        if kind is not None and kind not in FLAVOURS:
            raise ValueError(f"server kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind = kind
        self.detected = kind is None

    def __call__(self, text: str) -> Snapshot:
        if self.kind is None:
            self.kind = detect(text) or "vllm"
        return parse_flavour(text, self.kind)

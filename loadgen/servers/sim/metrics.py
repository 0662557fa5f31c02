"""``/metrics`` (Prometheus text, vLLM's metric names and buckets) and ``/sim/stats`` (JSON) of the sim."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from loadgen.servers.sim.engine import Histogram, LatenessRecorder
from loadgen.servers.sim.flavours import render_flavour

if TYPE_CHECKING:
    from loadgen.servers.sim.state import SimState


def _fmt(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _histogram(out: list[str], name: str, help_: str, labels: str, hist: Histogram) -> None:
    out += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    sep = "," if labels else ""
    for bound, acc in hist.cumulative():
        out.append(f'{name}_bucket{{{labels}{sep}le="{_fmt(bound)}"}} {acc}')
    tail = f"{{{labels}}}" if labels else ""
    out += [f"{name}_count{tail} {hist.count}", f"{name}_sum{tail} {hist.sum!r}"]


def _scalar(out: list[str], name: str, kind: str, help_: str, labels: str, *, value: float) -> None:
    tail = f"{{{labels}}}" if labels else ""
    out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name}{tail} {value!r}"]


def render_metrics(app: SimState) -> bytes:
    """The Prometheus text exposition; every series labelled ``model_name`` like vLLM's."""
    eng, cfg = app.engine, app.cfg
    labels = 'model_name="{}"'.format(cfg.model.replace("\\", "\\\\").replace('"', '\\"'))
    out: list[str] = []
    if cfg.metrics_flavour != "vllm":
        render_flavour(cfg.metrics_flavour, eng, max_seqs=cfg.max_seqs, labels=labels, out=out,
                       scalar=_scalar, hist=_histogram)
        return ("\n".join(out) + "\n").encode()
    _scalar(out, "vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
            labels, value=eng.running)
    _scalar(out, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
            labels, value=len(eng.waiting))
    _scalar(out, "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.",
            labels, value=eng.running / cfg.max_seqs)
    _scalar(out, "vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.",
            labels, value=0)
    _scalar(out, "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
            labels, value=eng.prompt_tokens_total)
    _scalar(out, "vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
            labels, value=eng.generation_tokens_total)
    _scalar(out, "vllm:prefix_cache_queries_total", "counter", "Prefix cache queries, in terms of tokens.",
            labels, value=eng.prefix_queries_total)
    _scalar(out, "vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of tokens.",
            labels, value=eng.prefix_hits_total)
    _scalar(out, "vllm:request_success_total", "counter", "Count of successfully processed requests.",
            labels + ',finished_reason="length"', value=eng.success_total)
    _histogram(out, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
               labels, eng.ttft)
    _histogram(out, "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
               labels, eng.itl)
    _histogram(out, "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
               labels, eng.e2e)
    _histogram(out, "loadgen_sim_emit_lateness_seconds",
               "Chunk send time minus its model due time (simulator health).", labels,
               eng.lateness.histogram())
    return ("\n".join(out) + "\n").encode()


def stats(app: SimState) -> dict[str, Any]:
    """The sim's own health and counters (JSON of ``GET /sim/stats``)."""
    eng = app.engine
    return {
        "lateness_ms": _lateness(eng.lateness),  # every chunk: send time - due time
        "first_token_lateness_ms": _lateness(eng.first_lateness),  # first chunks only (TTFT)
        "chunks_emitted": eng.chunks_total,
        "tokens_emitted": eng.generation_tokens_total,
        "requests_total": app.requests,
        "requests": dict(app.outcomes),
        "faults": dict(app.fault_counts),
        "running": eng.running,
        "waiting": len(eng.waiting),
        "uptime_s": (time.perf_counter_ns() - app.started_ns) / 1e9,
        "pid": os.getpid(),  # several processes can share one port (SO_REUSEPORT): which one answered
    }


def _lateness(late: LatenessRecorder) -> dict[str, float]:
    return {"p50": late.percentile_ms(0.5), "p90": late.percentile_ms(0.9), "p99": late.percentile_ms(0.99),
            "p999": late.percentile_ms(0.999), "max": late.max_ns / 1e6,
            "mean": late.sum_ns / late.count / 1e6 if late.count else 0.0, "count": late.count}

"""``/metrics`` of the simulator in another server's names (``SimConfig.metrics_flavour``).

The same engine state, written the way vLLM's older engine, SGLang, TGI or TensorRT-LLM's
``trtllm-serve`` write it (names, types, labels), so a client's flavour tables
(:mod:`loadgen.observe.flavours`) are tested over real HTTP. Where each server's names come from is
cited there. The simulator keeps its own copy of the names: it plays the server, and a server does not
read its client's tables. TGI has no token counters and no TTFT histogram: its token totals live in the
``_sum`` of per-request histograms, written here as TGI writes them (``tgi_request_input_length``,
``tgi_request_generated_tokens``, with token-count buckets). One approximation: under TGI's
``tgi_request_mean_time_per_token_duration`` (one per-request mean in TGI) the simulator writes its
per-token ITL histogram (same unit, finer count).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loadgen.servers.sim.engine import Engine, Histogram

__all__ = ["render_flavour"]

Line = list[str]
Hist = Callable[[Line, str, str, str, "Histogram"], None]
Scalar = Callable[..., None]


def render_flavour(flavour: str, eng: Engine, *, max_seqs: int, labels: str, out: Line, scalar: Scalar,
                   hist: Hist) -> None:
    """Append ``eng``'s series under ``flavour``'s names to ``out`` (``scalar``/``hist`` write one
    series each)."""
    running, waiting = eng.running, len(eng.waiting)
    usage = eng.running / max_seqs
    if flavour == "vllm-v0":
        scalar(out, "vllm:num_requests_running", "gauge", "Number of requests currently running on GPU.",
               labels, value=running)
        scalar(out, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
               labels, value=waiting)
        scalar(out, "vllm:gpu_cache_usage_perc", "gauge", "GPU KV-cache usage. 1 means 100 percent usage.",
               labels, value=usage)
        scalar(out, "vllm:num_preemptions_total", "counter", "Cumulative number of preemption.", labels,
               value=0)
        scalar(out, "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", labels,
               value=eng.prompt_tokens_total)
        scalar(out, "vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
               labels, value=eng.generation_tokens_total)
        scalar(out, "vllm:request_success_total", "counter", "Count of successfully processed requests.",
               labels + ',finished_reason="length"', value=eng.success_total)
        hist(out, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
             labels, eng.ttft)
        hist(out, "vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
             labels, eng.itl)
        hist(out, "vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
             labels, eng.e2e)
    elif flavour == "sglang":
        scalar(out, "sglang:num_running_reqs", "gauge", "The number of running requests.", labels,
               value=running)
        scalar(out, "sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.",
               labels, value=waiting)
        scalar(out, "sglang:token_usage", "gauge", "The token usage.", labels, value=usage)
        scalar(out, "sglang:prompt_tokens_total", "counter", "Number of prefill tokens processed.", labels,
               value=eng.prompt_tokens_total)
        scalar(out, "sglang:generation_tokens_total", "counter", "Number of generation tokens processed.",
               labels, value=eng.generation_tokens_total)
        scalar(out, "sglang:cached_tokens_total", "counter", "Number of cached prompt tokens.",
               labels + ',cache_source="device"', value=eng.prefix_hits_total)
        scalar(out, "sglang:num_requests_total", "counter", "Number of requests processed.", labels,
               value=eng.success_total)
        scalar(out, "sglang:num_retracted_requests_total", "counter", "Number of retracted requests.",
               labels, value=0)
        hist(out, "sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
             labels, eng.ttft)
        hist(out, "sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
             labels, eng.itl)
        hist(out, "sglang:e2e_request_latency_seconds", "Histogram of E2E request latency in seconds",
             labels, eng.e2e)
    elif flavour == "tgi":
        scalar(out, "tgi_batch_current_size", "gauge", "Current batch size", "", value=running)
        scalar(out, "tgi_queue_size", "gauge", "Current queue size", "", value=waiting)
        scalar(out, "tgi_request_count", "counter", "Total number of requests", "", value=eng.success_total)
        scalar(out, "tgi_request_success", "counter", "Number of successful requests", "",
               value=eng.success_total)
        hist(out, "tgi_request_input_length", "Input token length per request", "", eng.input_lengths)
        hist(out, "tgi_request_generated_tokens", "Generated tokens per request", "", eng.generated_lengths)
        hist(out, "tgi_request_duration", "Total time spent processing the request", "", eng.e2e)
        hist(out, "tgi_request_mean_time_per_token_duration", "Mean time per token per request", "",
             eng.itl)
    elif flavour == "trtllm":
        scalar(out, "trtllm_num_requests_running", "gauge", "Number of active requests", labels,
               value=running)
        scalar(out, "trtllm_num_requests_waiting", "gauge", "Number of queued requests", labels,
               value=waiting)
        scalar(out, "trtllm_kv_cache_utilization", "gauge", "KV cache utilization", labels, value=usage)
        scalar(out, "trtllm_prompt_tokens_total", "counter", "Cumulative number of prompt tokens processed.",
               labels, value=eng.prompt_tokens_total)
        scalar(out, "trtllm_generation_tokens_total", "counter",
               "Cumulative number of generation tokens produced.", labels, value=eng.generation_tokens_total)
        scalar(out, "trtllm_prompt_cached_tokens_total", "counter",
               "Cumulative number of cached prompt tokens.", labels, value=eng.prefix_hits_total)
        scalar(out, "trtllm_request_success_total", "counter", "Count of successfully processed requests.",
               labels + ',finished_reason="length"', value=eng.success_total)
        hist(out, "trtllm_time_to_first_token_seconds", "Histogram of time to first token in seconds.",
             labels, eng.ttft)
        hist(out, "trtllm_time_per_output_token_seconds", "Histogram of time per output token in seconds.",
             labels, eng.itl)
        hist(out, "trtllm_e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
             labels, eng.e2e)
    else:
        raise ValueError(f"unknown metrics flavour {flavour!r}")


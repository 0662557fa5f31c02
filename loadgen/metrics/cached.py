"""Prefix-cache hits as the client sees them: ``usage.prompt_tokens_details.cached_tokens`` per request.

Over the successful requests whose usage reported it (vLLM with ``--enable-prompt-tokens-details``,
SGLang, TRT-LLM, the simulator with a prefix cache)::

    total          = Σ cached_tokens                                   tokens
    prompt_tokens  = Σ prompt tokens of those requests (usage.prompt_tokens, else the client's count)
    hit_rate       = total / prompt_tokens                             the server's hits / queries, per token
    requests_hit   = requests with cached_tokens > 0

The server's own rate (its prefix-cache counters over the window, ``server_metrics``) sits beside it
as ``server_hit_rate``: both count tokens, so they agree when every request the server served was
the client's and reported its usage. None when no request reported cached tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from loadgen.records import RequestRecord

__all__ = ["add_cached_tokens", "cached_prompt_tokens"]


def cached_prompt_tokens(records: Iterable[RequestRecord], server_hit_rate: float | None = None
                         ) -> dict[str, Any] | None:
    """The ``results.cached_prompt_tokens`` section (see the module docstring), or None."""
    n = hit = total = prompt = 0
    for r in records:
        if r.error_class is not None or r.cached_tokens is None or r.warmup:
            continue
        n += 1
        total += r.cached_tokens
        prompt += r.prompt_tokens if r.prompt_tokens is not None else r.input_tokens
        hit += r.cached_tokens > 0
    if n == 0:
        return None
    return {
        "requests_reporting": n,
        "requests_hit": hit,
        "total": total,
        "prompt_tokens": prompt,
        "hit_rate": total / prompt if prompt else None,
        "server_hit_rate": server_hit_rate,
    }


def add_cached_tokens(data: dict[str, Any], records: Iterable[RequestRecord]) -> None:
    """Put :func:`cached_prompt_tokens` in a built report's ``results`` (with the server's hit rate from
    its ``server_metrics``), when any request reported cached tokens."""
    sm = data.get("server_metrics")
    cached = cached_prompt_tokens(records, sm.get("prefix_cache_hit_rate") if isinstance(sm, dict) else None)
    if cached is not None:
        data["results"]["cached_prompt_tokens"] = cached

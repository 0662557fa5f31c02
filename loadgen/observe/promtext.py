"""A server's Prometheus ``/metrics``: parsing, deltas, histogram quantiles, the TTFT cross-check.

Pure (no I/O, no clocks); the scraper that takes the snapshots during a run is
:mod:`loadgen.observe.scrape`::

    parse_exposition(text) -> Snapshot              text format → series summed over label sets
    parse_selected(text, scalars, histograms)       the same for the named series, in one cheap pass
    counter_deltas(before, after, names)            after − before per counter (None: reset or absent)
    histogram_delta(before, after) -> Histogram     bucket-wise after − before
    histogram_quantile(q, hist) -> Quantile | None  Prometheus-style linear interpolation in a bucket
    cross_check(client_ttft_ms, server_ttft)        client TTFT p50 beside the server's

Series are summed over label sets (``model_name``, ``engine``, ``finished_reason``…): one number per
metric for the whole server. Names are vLLM's (the built-in simulated server uses the same).

Resolution. A server histogram only says how many observations fell between two bucket bounds, so a
quantile from it is interpolated linearly inside the bucket that holds the rank, as Prometheus's
``histogram_quantile`` does: it is exact only to within that bucket's width (vLLM's TTFT buckets are
e.g. 20 ms wide around 50 ms, 250 ms wide around 0.5 s). A quantile in the ``+Inf`` bucket is reported
as the highest finite bound. The report carries the width next to each estimate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DEFAULT_COUNTERS",
    "DEFAULT_GAUGES",
    "DEFAULT_HISTOGRAMS",
    "NO_METRICS_NOTE",
    "Histogram",
    "Quantile",
    "Snapshot",
    "counter_deltas",
    "cross_check",
    "cross_check_problems",
    "histogram_delta",
    "histogram_quantile",
    "histogram_summary",
    "metrics_endpoint",
    "parse_exposition",
    "parse_selected",
    "prefix_cache_hit_rate",
]

DEFAULT_GAUGES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
)
DEFAULT_COUNTERS = (
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total",  # prompt tokens looked up in the prefix cache
    "vllm:prefix_cache_hits_total",  # of those, found cached (hits / queries = hit rate)
)
#: Report name → histogram family (without ``_bucket``/``_sum``/``_count``), all in seconds.
DEFAULT_HISTOGRAMS = {
    "time_to_first_token": "vllm:time_to_first_token_seconds",
    "inter_token_latency": "vllm:inter_token_latency_seconds",
    "e2e_request_latency": "vllm:e2e_request_latency_seconds",
}
NO_METRICS_NOTE = "the endpoint has no /metrics; server metrics skipped"

_CROSS_CHECK_EXPLANATION = (
    "vLLM times TTFT inside the server, from the request's arrival in its API process to the first "
    "token leaving the engine; the client's TTFT also holds the network, HTTP and SSE framing and the "
    "client's own event-loop delay, so client − server is normally small and positive. The server p50 is "
    "interpolated inside one histogram bucket and is only known to ± bucket_resolution_ms."
)


# -----------------------------------------------------------------------------------------------------


def metrics_endpoint(base_url: str, metrics_url: str | None = None) -> tuple[str, str]:
    """``(base, path)`` to scrape: ``base_url + "/metrics"`` by default; for ``--server-metrics-url``,
    its own path (and query) when it has one, else ``/metrics`` on that host
    (``http://h:8000`` → ``("http://h:8000", "/metrics")``). Raises ``ValueError`` for a URL that is not
    ``http(s)://host[:port][/path]``."""
    if not metrics_url:
        return base_url.rstrip("/"), "/metrics"
    parts = urlsplit(metrics_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"--server-metrics-url {metrics_url!r} is not an http(s) URL; give e.g. http://host:8000 "
            "(scrapes /metrics there) or http://host:8000/path/to/metrics, or 'none'"
        )
    path = parts.path.rstrip("/") or "/metrics"
    if parts.query:
        path += "?" + parts.query
    return urlunsplit((parts.scheme, parts.netloc, "", "", "")), path



@dataclass(frozen=True)
class Histogram:
    """Cumulative buckets ``(upper bound, count ≤ bound)`` sorted by bound (last is ``inf``), in the
    metric's unit (seconds for vLLM's latency histograms)."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float


@dataclass(frozen=True)
class Snapshot:
    """One scrape: counters and gauges by sample name (``vllm:generation_tokens_total``), histograms by
    family name (``vllm:time_to_first_token_seconds``); every series summed over its label sets."""

    scalars: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)


@dataclass(frozen=True)
class Quantile:
    """An estimate and the bounds of the bucket it was interpolated in (same unit as the histogram)."""

    value: float
    lower: float
    upper: float

    @property
    def resolution(self) -> float:
        return self.upper - self.lower


def parse_exposition(text: str) -> Snapshot:
    """Parse Prometheus text exposition format. ``*_created`` samples are dropped.

    Raises ValueError on text that is not in the exposition format.
    """
    from prometheus_client.parser import text_string_to_metric_families

    scalars: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except (IndexError, KeyError, TypeError) as e:  # the parser's less polite ways of saying "bad line"
        raise ValueError(f"not Prometheus text format: {e!r}") from e
    for family in families:
        for sample in family.samples:
            name, value = sample.name, float(sample.value)
            if name.endswith("_created"):
                continue
            if family.type in ("histogram", "gaugehistogram"):
                if name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    per_le = buckets.setdefault(family.name, {})
                    per_le[le] = per_le.get(le, 0.0) + value
                elif name.endswith("_sum") or name.endswith("_gsum"):
                    sums[family.name] = sums.get(family.name, 0.0) + value
                elif name.endswith("_count") or name.endswith("_gcount"):
                    counts[family.name] = counts.get(family.name, 0.0) + value
                continue
            scalars[name] = scalars.get(name, 0.0) + value
    histograms = {
        name: Histogram(
            buckets=tuple(sorted(per_le.items())),
            count=counts.get(name, max(per_le.values(), default=0.0)),
            sum=sums.get(name, math.nan),
        )
        for name, per_le in buckets.items()
    }
    return Snapshot(scalars=scalars, histograms=histograms)


def parse_selected(text: str, scalars: Iterable[str], histograms: Iterable[str]) -> Snapshot:
    """Like :func:`parse_exposition`, for the named series only, in one cheap pass over the lines.

    The scraper runs on the client's event loop: prometheus_client's full parser takes tens of
    milliseconds on a vLLM ``/metrics`` page, which would stall the timestamps of arriving chunks. This
    one looks at each line's metric name and skips everything not asked for. Same result as
    :func:`parse_exposition` for the names it covers (tested).
    """
    want_scalar = set(scalars)
    want_hist = set(histograms)
    out_scalars: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        cut = brace if 0 <= brace < space or (brace >= 0 and space < 0) else space
        if cut <= 0:
            continue
        name = line[:cut]
        if name in want_scalar:
            kind = "scalar"
        else:
            base, _, suffix = name.rpartition("_")
            if base not in want_hist or suffix not in ("bucket", "sum", "count"):
                continue
            kind = suffix
        rest = line[line.rfind("}") + 1 :] if brace == cut else line[cut:]
        fields = rest.split()
        if not fields:
            raise ValueError(f"not Prometheus text format: {line[:80]!r}")
        value = float(fields[0])
        if kind == "scalar":
            out_scalars[name] = out_scalars.get(name, 0.0) + value
        elif kind == "bucket":
            start = line.find('le="', cut)
            if start < 0:
                raise ValueError(f"bucket without le: {line[:80]!r}")
            le = float(line[start + 4 : line.find('"', start + 4)])
            per_le = buckets.setdefault(base, {})
            per_le[le] = per_le.get(le, 0.0) + value
        elif kind == "sum":
            sums[base] = sums.get(base, 0.0) + value
        else:
            counts[base] = counts.get(base, 0.0) + value
    hists = {
        name: Histogram(
            buckets=tuple(sorted(per_le.items())),
            count=counts.get(name, max(per_le.values(), default=0.0)),
            sum=sums.get(name, math.nan),
        )
        for name, per_le in buckets.items()
    }
    return Snapshot(scalars=out_scalars, histograms=hists)


def prefix_cache_hit_rate(deltas: Mapping[str, float | None]) -> float | None:
    """Prefix-cache hit rate over the run (hit tokens / looked-up tokens), None when not exported.
    Comparisons between load generators are only fair at equal hit rates: a cached prefix skips
    its prefill."""
    queries = deltas.get("vllm:prefix_cache_queries_total")
    hits = deltas.get("vllm:prefix_cache_hits_total")
    if not queries or hits is None:
        return None
    return hits / queries


def counter_deltas(before: Snapshot, after: Snapshot, names: Iterable[str]) -> dict[str, float | None]:
    """``after − before`` for each counter; None when absent from either or when it went down (the
    server restarted between the scrapes)."""
    out: dict[str, float | None] = {}
    for name in names:
        a, b = before.scalars.get(name), after.scalars.get(name)
        out[name] = None if a is None or b is None or b < a else b - a
    return out


def histogram_delta(before: Histogram | None, after: Histogram) -> Histogram:
    """The observations made between two scrapes. Raises ValueError when the bucket bounds differ or a
    bucket went down (a restarted server)."""
    if before is None:
        return after
    if [le for le, _ in before.buckets] != [le for le, _ in after.buckets]:
        raise ValueError("histogram bucket bounds changed between scrapes")
    diff = tuple((le, a - b) for (le, b), (_, a) in zip(before.buckets, after.buckets, strict=True))
    if any(c < 0 for _, c in diff) or after.count < before.count:
        raise ValueError("histogram counts went down between scrapes (server restarted?)")
    return Histogram(buckets=diff, count=after.count - before.count, sum=after.sum - before.sum)


def histogram_quantile(q: float, hist: Histogram) -> Quantile | None:
    """The ``q``-quantile (0 ≤ q ≤ 1), interpolated linearly inside the bucket holding rank ``q·total``,
    as Prometheus's ``histogram_quantile``; the first bucket's lower bound is 0. In the ``+Inf`` bucket
    the estimate is the highest finite bound (lower = upper = that bound: the resolution is unknown).
    None for an empty histogram."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    if not hist.buckets:
        return None
    total = hist.buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cumulative in hist.buckets:
        if cumulative >= rank and cumulative > below:
            if math.isinf(upper):
                return Quantile(value=lower, lower=lower, upper=lower)
            value = lower + (upper - lower) * (rank - below) / (cumulative - below)
            return Quantile(value=value, lower=lower, upper=upper)
        lower, below = upper, cumulative
    return Quantile(value=lower, lower=lower, upper=lower)  # pragma: no cover - total is the last bucket


def _ms(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x * 1000.0


def histogram_summary(hist: Histogram, quantiles: Sequence[float] = (0.5, 0.99)) -> dict[str, Any]:
    """``count``, ``sum`` (seconds), ``mean_ms`` and per quantile ``pNN_ms`` with its bucket
    ``pNN_bucket_ms`` = [lower, upper] (the estimate's resolution)."""
    out: dict[str, Any] = {
        "count": hist.count,
        "sum": hist.sum,
        "mean_ms": _ms(hist.sum / hist.count) if hist.count > 0 else None,
    }
    for q in quantiles:
        key = f"p{q * 100:g}".replace(".", "_")
        est = histogram_quantile(q, hist)
        out[f"{key}_ms"] = _ms(est.value) if est else None
        out[f"{key}_bucket_ms"] = [_ms(est.lower), _ms(est.upper)] if est else None
    return out


def cross_check(client_ttft_ms: Mapping[str, Any] | None, server_ttft: Histogram | None) -> dict[str, Any]:
    """Client TTFT p50 (``client_ttft_ms["p50_ms"]``, or ``["p50"]``) beside the server's, with the
    bucket width that bounds how exactly the server's is known."""
    client_p50 = None
    if client_ttft_ms:
        raw = client_ttft_ms.get("p50_ms", client_ttft_ms.get("p50"))
        client_p50 = float(raw) if raw is not None else None
    est = histogram_quantile(0.5, server_ttft) if server_ttft is not None else None
    server_p50 = _ms(est.value) if est else None
    difference = client_p50 - server_p50 if client_p50 is not None and server_p50 is not None else None
    return {
        "client_ttft_p50_ms": client_p50,
        "server_ttft_p50_ms": server_p50,
        "difference_ms": difference,
        "bucket_resolution_ms": _ms(est.resolution) if est else None,
        "server_bucket_ms": [_ms(est.lower), _ms(est.upper)] if est else None,
        "explanation": _CROSS_CHECK_EXPLANATION,
    }


def cross_check_problems(cross: Mapping[str, Any], *, max_overhead_ms: float, slack_ms: float = 1.0
                         ) -> list[str]:
    """Why a :func:`cross_check` result is implausible (empty: plausible).

    Each request's client TTFT contains the server's (the server's clock starts after the request is
    sent and stops before the first token is received), so over the same requests the client p50 is at
    least the server's true p50, which lies in ``server_bucket_ms`` = [lower, upper]: client p50 ≥
    lower − ``slack_ms`` (which also bounds ``difference_ms`` below by −width − slack, the estimate
    being ≤ upper). With the per-request overhead at most ``max_overhead_ms``, client p50 ≤ upper +
    overhead, and the estimate is ≥ lower, so ``difference_ms`` ≤ width + ``max_overhead_ms`` (width =
    ``bucket_resolution_ms``). In the ``+Inf`` bucket (width 0, upper unknown) only the lower bound is
    checked.
    """
    client, server = cross.get("client_ttft_p50_ms"), cross.get("server_ttft_p50_ms")
    bucket, width, diff = cross.get("server_bucket_ms"), cross.get("bucket_resolution_ms"), cross.get(
        "difference_ms")
    if client is None or server is None or not bucket or width is None or diff is None:
        return ["no cross-check: the client or the server TTFT p50 is missing"]
    problems = []
    lower = bucket[0]
    if client < lower - slack_ms:
        problems.append(
            f"client TTFT p50 {client:.3f} ms is below the server's bucket [{lower:.3f}, {bucket[1]:.3f}] ms "
            f"(minus {slack_ms:g} ms slack): the client cannot see a first token before the server made it"
        )
    if width > 0 and diff > width + max_overhead_ms:
        problems.append(
            f"difference {diff:.3f} ms exceeds the bucket width {width:.3f} ms + {max_overhead_ms:g} ms of "
            "client overhead"
        )
    return problems

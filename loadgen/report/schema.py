"""The shape of ``report.json`` (``schema_version`` 1), section by section, as TypedDicts.

These describe what :func:`loadgen.report.build.build_report` writes and what the console, summary, HTML,
compare and plan read. Sections a run may lack (no GPU, no server ``/metrics``, a rebuilt report) are
optional keys; numbers that could not be measured are None. Nested sections not typed here yet
(``settings``, ``server``, ``mlperf``, ``client``, ``server_metrics``, ``telemetry``) stay plain dicts:
their writers own their shapes (``Settings.public_dict``, ``MlperfResult.to_dict``,
``ClientHealth.to_dict``, the scraper's and the GPU sampler's ``result()``).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = ["SCHEMA_VERSION", "Distribution", "Files", "Goodput", "ReportJson", "Results", "Validity"]

SCHEMA_VERSION: Literal[1] = 1


class Distribution(TypedDict, total=False):
    """A latency distribution in ms (``results.ttft_ms``, ``itl_ms`` ...): numpy-linear percentiles."""

    count: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    p99_9: float | None
    exact: bool  # itl_ms: exact gaps (else the ±0.5 % log histogram took over)


class Goodput(TypedDict, total=False):
    """Requests that met every SLO given (``results.goodput``)."""

    slo: dict[str, float]
    requests: int
    fraction: float | None
    requests_per_s: float | None


class Results(TypedDict, total=False):
    """``results``: what was measured (loadgen.metrics.latency.summarize, plus ``retries_total``)."""

    ttft_ms: Distribution
    ttft_from_scheduled_ms: Distribution
    time_to_first_answer_ms: Distribution  # first chunk that was not thinking (= TTFT without thinking)
    itl_ms: Distribution
    tpot_ms: Distribution
    e2e_ms: Distribution
    e2e_from_scheduled_ms: Distribution
    issue_delay_ms: Distribution
    requests_issued: int
    requests_completed: int
    requests_failed: int
    errors_by_class: dict[str, int]
    errors_by_status: dict[str, int]
    duration_s: float | None
    requests_per_s: float | None
    output_tokens_per_s: float | None
    input_tokens_per_s: float | None
    total_tokens_per_s: float | None
    output_tokens_total: int
    input_tokens_total: int
    reasoning_tokens: int  # of output_tokens_total: thinking (usage's reasoning_tokens, else counted)
    answer_tokens: int  # output_tokens_total - reasoning_tokens
    tokens_source: dict[str, int]
    goodput: Goodput  # only with an SLO
    retries_total: int
    # pooling endpoints: embeddings inputs, or rerank/score documents, scored per second
    inputs_per_request: NotRequired[int]
    inputs_per_s: NotRequired[float | None]


class Validity(TypedDict):
    """``validity``: THE verdict (loadgen.metrics.validity); ``valid`` exactly when ``reasons`` is empty."""

    valid: bool
    reasons: list[str]


class Files(TypedDict, total=False):
    """``files``: the run folder's files by role."""

    report: str
    summary: str
    requests: str
    html: str


class ReportJson(TypedDict):
    """``report.json``: the run's metadata (``run.json``'s keys) and its results and verdict."""

    schema_version: int
    run_id: NotRequired[str]
    loadgen_version: NotRequired[str]
    started_at: NotRequired[str]
    finished_at: str
    settings: dict[str, Any]
    server: NotRequired[dict[str, Any] | None]
    interrupted: bool
    stopped_early: str | None
    results: Results
    validity: Validity
    mlperf: dict[str, Any]
    client: dict[str, Any] | None
    server_metrics: NotRequired[dict[str, Any] | None]
    telemetry: NotRequired[dict[str, Any] | None]
    files: NotRequired[Files]
    rebuilt_from: NotRequired[str]

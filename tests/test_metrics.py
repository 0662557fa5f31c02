"""Metrics over hand-built records whose right answers are known independently of the code."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.metrics.latency import (
    PERCENTILES,
    RequestArrays,
    Slo,
    distribution,
    e2e_ns,
    issue_delay_ns,
    itl_ns,
    summarize,
    tpot_ns,
    ttft_ns,
)
from loadgen.records import RequestRecord

MS = 1_000_000


def rec(
    i: int = 0,
    *,
    scheduled: int = 0,
    sent: int | None = None,
    first: int | None = None,
    chunks: list[int] | None = None,
    tokens: list[int] | None = None,
    end: int | None = None,
    output_tokens: int | None = None,
    input_tokens: int = 0,
    source: str = "usage",
    error: str | None = None,
    status: int | None = 200,
    warmup: bool = False,
) -> RequestRecord:
    """A record; times in ms (converted to ns here)."""
    chunk_ms = chunks if chunks is not None else ([first] if first is not None else [])
    chunk_tokens = tokens if tokens is not None else [1] * len(chunk_ms)
    sent_ms = scheduled if sent is None else sent
    end_ms = end if end is not None else (chunk_ms[-1] if chunk_ms else sent_ms) + 1
    return RequestRecord(
        index=i,
        sample=i,
        query=i,
        scheduled_ns=scheduled * MS,
        sent_ns=sent_ms * MS,
        end_ns=end_ms * MS,
        first_token_ns=None if first is None else first * MS,
        chunk_ns=[c * MS for c in chunk_ms],
        chunk_tokens=chunk_tokens,
        input_tokens=input_tokens,
        output_tokens=sum(chunk_tokens) if output_tokens is None else output_tokens,
        tokens_source=source,
        status=status,
        error_class=error,
        warmup=warmup,
    )


def test_distribution_of_10_to_100_ms() -> None:
    # TTFTs of 10, 20, ..., 100 ms: linear interpolation gives p50 = 55 and p90 = 91 (rank 8.1),
    # population std = 10 * std(1..10) = 10 * sqrt(8.25)
    records = [rec(i, first=10 * (i + 1)) for i in range(10)]
    d = distribution(ttft_ns(RequestArrays.from_records(records)))
    assert d["count"] == 10
    assert d["p50"] == pytest.approx(55.0)
    assert d["p90"] == pytest.approx(91.0)
    assert d["p99"] == pytest.approx(99.1)
    assert d["p99_9"] == pytest.approx(99.91)
    assert d["mean"] == pytest.approx(55.0)
    assert d["std"] == pytest.approx(10 * math.sqrt(8.25))
    assert (d["min"], d["max"]) == (10.0, 100.0)
    assert set(d) == {"count", "mean", "std", "min", "max", "p50", "p90", "p95", "p99", "p99_9"}


def test_distribution_empty_and_single() -> None:
    empty = distribution([])
    assert empty["count"] == 0
    assert all(v is None for k, v in empty.items() if k != "count")
    one = distribution([7 * MS])
    assert one == {"count": 1, "mean": 7.0, "std": 0.0, "min": 7.0, "max": 7.0} | {
        k: 7.0 for k in ("p50", "p90", "p95", "p99", "p99_9")
    }


def test_ttft_and_e2e_bases() -> None:
    # scheduled at 0, sent 5 ms late, first token at 25 ms, end at 45 ms
    r = rec(scheduled=0, sent=5, first=25, end=45)
    a = RequestArrays.from_records([r])
    assert ttft_ns(a, "sent").tolist() == [20 * MS]
    assert ttft_ns(a, "scheduled").tolist() == [25 * MS]
    assert e2e_ns(a, "sent").tolist() == [40 * MS]
    assert e2e_ns(a, "scheduled").tolist() == [45 * MS]
    assert issue_delay_ns(a).tolist() == [5 * MS]
    with pytest.raises(ValueError, match="base"):
        ttft_ns(a, "end")  # type: ignore[arg-type]


def test_itl_counts_a_two_token_chunk_twice() -> None:
    # chunks at 100, 110, 130 ms; the last carries 2 tokens: gaps 10 and 20 -> 10, 10, 10
    r = rec(first=100, chunks=[100, 110, 130], tokens=[1, 1, 2])
    assert itl_ns([r]).tolist() == [10 * MS, 10 * MS, 10 * MS]
    # the 2-token chunk in the middle: 10 ms over 2 tokens, then 20 ms over 1
    r2 = rec(first=100, chunks=[100, 110, 130], tokens=[1, 2, 1])
    assert sorted(itl_ns([r2]).tolist()) == [5 * MS, 5 * MS, 20 * MS]
    # a first chunk of 3 tokens adds no gap (its wait is TTFT)
    r3 = rec(first=100, chunks=[100, 104], tokens=[3, 1])
    assert itl_ns([r3]).tolist() == [4 * MS]


def test_itl_skips_failed_and_warmup_records() -> None:
    good = rec(0, first=0, chunks=[0, 10])
    failed = rec(1, first=0, chunks=[0, 50], error="disconnect")
    warm = rec(2, first=0, chunks=[0, 70], warmup=True)
    assert itl_ns([good, failed, warm]).tolist() == [10 * MS]


def test_tpot_per_request() -> None:
    # first token at 100 ms, last chunk at 190 ms, 10 tokens: 90 ms over 9 -> 10 ms
    r = rec(first=100, chunks=[100, 130, 160, 190], tokens=[1, 3, 3, 3])
    a = RequestArrays.from_records([r])
    assert tpot_ns(a).tolist() == [10 * MS]
    # one-token outputs have no TPOT, and give None rather than NaN
    one = RequestArrays.from_records([rec(first=5)])
    assert tpot_ns(one).size == 0
    assert distribution(tpot_ns(one))["mean"] is None


def test_summarize_counts_errors_and_rates() -> None:
    records = [
        rec(0, scheduled=0, first=100, end=500, input_tokens=10, output_tokens=20),
        rec(1, scheduled=100, first=300, end=1000, input_tokens=10, output_tokens=30, source="tokenizer"),
        rec(2, scheduled=200, first=400, end=1500, input_tokens=10, output_tokens=40, source="chunks"),
        rec(3, scheduled=300, first=600, end=2000, input_tokens=10, output_tokens=10),
        rec(4, scheduled=400, end=450, error="http_status", status=500),
        rec(5, scheduled=500, end=900, error="http_status", status=503),
        rec(6, scheduled=600, first=700, end=800, error="disconnect", status=200),
        rec(7, scheduled=-900, first=-800, end=-100, output_tokens=999, warmup=True),
    ]
    s = summarize(records)
    assert s["requests_issued"] == 7
    assert s["requests_completed"] == 4
    assert s["requests_failed"] == 3
    assert s["errors_by_class"] == {"disconnect": 1, "http_status": 2}
    assert s["errors_by_status"] == {"500": 1, "503": 1}
    assert s["duration_s"] == pytest.approx(2.0)
    assert s["requests_per_s"] == pytest.approx(2.0)  # 4 completed in 2 s
    assert s["output_tokens_total"] == 100
    assert s["input_tokens_total"] == 40
    assert s["output_tokens_per_s"] == pytest.approx(50.0)
    assert s["input_tokens_per_s"] == pytest.approx(20.0)
    assert s["total_tokens_per_s"] == pytest.approx(70.0)
    assert s["tokens_source"] == {"chunks": 1, "tokenizer": 1, "usage": 2}
    assert s["ttft_ms"]["count"] == 4
    assert s["ttft_ms"]["max"] == pytest.approx(300.0)
    assert s["e2e_from_scheduled_ms"]["max"] == pytest.approx(1700.0)
    assert s["issue_delay_ms"]["count"] == 7
    assert "goodput" not in s


def test_goodput_fraction() -> None:
    # TTFTs 10, 20, 30, 40 ms; the last request also stalls 50 ms between two tokens
    records = [
        rec(0, first=10, chunks=[10, 12], end=100),
        rec(1, first=20, chunks=[20, 22], end=100),
        rec(2, first=30, chunks=[30, 32], end=100),
        rec(3, first=40, chunks=[40, 90], end=200),
        rec(4, end=50, error="timeout", status=None),
    ]
    g = summarize(records, slo=Slo(ttft_ms=25))["goodput"]
    assert g == {
        "slo": {"ttft_ms": 25},
        "requests": 2,
        "requests_per_s": pytest.approx(10.0),
        "fraction": 0.5,
    }
    g = summarize(records, slo=Slo(ttft_ms=35, itl_ms=20))["goodput"]
    assert (g["requests"], g["fraction"]) == (3, 0.75)
    g = summarize(records, slo=Slo(e2e_ms=100))["goodput"]
    assert g["requests"] == 3
    # TPOT: request 3 spends 50 ms on its one further token
    g = summarize(records, slo=Slo(tpot_ms=10))["goodput"]
    assert g["requests"] == 3


def test_slo_of_settings_like_object() -> None:
    class Like:
        ttft_ms = 100.0
        tpot_ms = None
        e2e_ms = 5.0

    assert Slo.of(Like()) == Slo(ttft_ms=100.0, e2e_ms=5.0)


@pytest.mark.parametrize(
    "records",
    [
        [],
        [rec(0, end=10, error="connect", status=None)],
        [rec(0, first=5, end=5)],  # one request, one token, zero-length tail
        [rec(0, scheduled=0, sent=0, end=0, first=0, output_tokens=1)],  # zero duration
    ],
)
def test_degenerate_runs_give_json_without_nan(records: list[RequestRecord]) -> None:
    s = summarize(records, slo=Slo(ttft_ms=1, tpot_ms=1, e2e_ms=1, itl_ms=1))
    json.dumps(s, allow_nan=False)  # raises on NaN or inf


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=200))
def test_distribution_percentiles_are_ordered_and_bounded(values: list[int]) -> None:
    d = distribution(values)
    keys = ["min"] + [f"p{p:g}".replace(".", "_") for p in PERCENTILES] + ["max"]
    got = [d[k] for k in keys]
    assert all(a <= b * (1 + 1e-12) for a, b in itertools.pairwise(got))
    assert d["count"] == len(values)
    assert d["max"] == pytest.approx(max(values) / 1e6)
    assert np.isfinite(d["std"])

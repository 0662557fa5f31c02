"""Bounded-memory ITL: exact below the limit, within the stated relative error above it."""

import numpy as np
import pytest

from loadgen.gaps import RELATIVE_ERROR, GapStore, compact
from loadgen.metrics import distribution, summarize
from loadgen.records import RequestRecord


def _rec(i: int, chunks: list[int]) -> RequestRecord:
    return RequestRecord(index=i, sample=i, query=i, scheduled_ns=0, sent_ns=0, end_ns=chunks[-1] + 1,
                         first_token_ns=chunks[0], chunk_ns=list(chunks), chunk_tokens=[1] * len(chunks),
                         output_tokens=len(chunks), tokens_source="usage")


def test_exact_below_the_limit_matches_the_plain_distribution():
    rng = np.random.default_rng(1)
    recs = [_rec(i, list(np.cumsum(rng.integers(1_000_000, 20_000_000, 30)))) for i in range(50)]
    store = GapStore()
    for r in recs:
        store.add_record(r)
    exact = store.distribution()
    plain = summarize(recs)["itl_ms"]
    assert exact["exact"] is True
    for key in ("count", "mean", "p50", "p99", "max"):
        assert exact[key] == pytest.approx(plain[key])


def test_histogram_mode_stays_within_the_stated_relative_error():
    rng = np.random.default_rng(2)
    gaps = rng.lognormal(np.log(10e6), 0.6, 400_000)  # ~10 ms with a long tail, ns
    store = GapStore(exact_limit=50_000)
    for block in np.array_split(gaps, 40):
        store.add(block)
    approx = store.distribution()
    truth = distribution(gaps)
    assert approx["exact"] is False and approx["count"] == 400_000
    for key in ("p50", "p90", "p99", "p99_9"):
        assert abs(approx[key] / truth[key] - 1) <= RELATIVE_ERROR + 1e-3, key
    assert approx["mean"] == pytest.approx(truth["mean"], rel=1e-9)
    assert approx["max"] == pytest.approx(truth["max"])


def test_compaction_keeps_what_tpot_needs():
    r = _rec(0, [10, 20, 40, 80])
    full = summarize([r])["tpot_ms"]["p50"]
    compact(r)
    assert r.chunk_ns == [] and r.last_chunk_ns == 80
    assert summarize([r])["tpot_ms"]["p50"] == full

"""Bounded-memory ITL: exact below the limit, within the stated relative error above it."""

import numpy as np
import pytest

from loadgen.metrics.gaps import RELATIVE_ERROR, GapStore, compact
from loadgen.metrics.latency import distribution, summarize
from loadgen.records import RequestRecord


def _rec(i: int, chunks: list[int]) -> RequestRecord:
    return RequestRecord(index=i, sample=i, query=i, scheduled_ns=0, sent_ns=0, end_ns=chunks[-1] + 1,
                         first_token_ns=chunks[0], chunk_ns=list(chunks), chunk_tokens=[1] * len(chunks),
                         output_tokens=len(chunks), tokens_source="usage")


def _same(view, want: RequestRecord) -> None:
    """A table's view reads back every field and property of the compacted record."""
    from dataclasses import fields

    for f in fields(want):
        assert getattr(view, f.name) == getattr(want, f.name), (want.index, f.name)
    assert view.ok == want.ok and view.issue_delay_ns == want.issue_delay_ns


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


def test_crossing_the_limit_loses_no_sample_zeros_and_outliers_included():
    """The histogram is counted from the first sample, so switching to it at the limit drops nothing:
    right after the switch its percentiles agree with the exact ones of the same samples."""
    rng = np.random.default_rng(3)
    blocks = [np.concatenate([rng.normal(8e6, 5e5, 120), [0.0, 0.0], [3e12]]) for _ in range(100)]
    store = GapStore(exact_limit=sum(b.size for b in blocks) - 1)  # the last block crosses the limit
    for b in blocks[:-1]:
        store.add(b)
    assert store.exact
    store.add(blocks[-1])
    assert not store.exact
    approx, truth = store.distribution(), distribution(np.concatenate(blocks))
    assert approx["count"] == truth["count"] == 12_300
    for key in ("p50", "p90", "p99"):
        assert abs(approx[key] / truth[key] - 1) <= RELATIVE_ERROR + 1e-3, key
    assert approx["min"] == 0.0 and approx["max"] == pytest.approx(3e6)  # ms: 3e12 ns, beyond the buckets


def test_record_table_gives_back_the_compacted_records():
    """Every field round-trips, None included, across block boundaries; chunk lists are dropped."""
    from loadgen.metrics.gaps import RecordTable

    table, want = RecordTable(), []
    for i in range(RecordTable.BLOCK + 5):
        r = _rec(i, [1_000 + i, 2_000 + i, 5_000_000_000_000 + i])
        if i % 7 == 0:  # a failure: no tokens, no status, a long message
            r = RequestRecord(index=i, sample=3, query=i, scheduled_ns=5, sent_ns=9, end_ns=12,
                              error_class="connect", error="refused " * 40, worker=2, retries=1)
        r.warmup = i % 11 == 0
        r.prompt_tokens = None if i % 3 else 17
        table.append(r)
        want.append(compact(r))
    got = table.to_list()
    assert len(table) == len(got) == len(want)
    for view, rec in zip(got, want, strict=True):
        _same(view, rec)
    assert got[1].chunk_ns == [] and got[1].last_chunk_ns == 5_000_000_000_001
    assert got[0].error == ("refused " * 40)[:200] and got[0].tokens_source == "chunks"


def test_record_table_is_smaller_than_the_records_it_replaces():
    import tracemalloc

    from loadgen.metrics.gaps import RecordTable

    def held(make):
        tracemalloc.start()
        kept = make()
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return size / 20_000, kept

    def records():
        return [compact(_rec(i, [10**12 + i, 10**12 + 2 * i + 7])) for i in range(20_000)]

    def table():
        t = RecordTable()
        for i in range(20_000):
            t.append(_rec(i, [10**12 + i, 10**12 + 2 * i + 7]))
        return t

    per_record, _ = held(records)
    per_row, _ = held(table)
    # 102-byte rows (6 int64 timestamps, 11 int32 counts and ids, 10 bytes of small ones) in blocks of
    # 8192: 20,000 rows hold 3 blocks, 125 bytes a row.
    assert per_row < 130 and per_record > 2 * per_row, (per_record, per_row)


def test_exact_samples_survive_block_boundaries(monkeypatch):
    """Gaps are copied into fixed blocks; requests whose gaps straddle a block's end come back whole
    and in order."""
    from loadgen.metrics import gaps as gaps_mod

    monkeypatch.setattr(gaps_mod, "BLOCK", 7)
    rng = np.random.default_rng(3)
    parts = [rng.uniform(1e6, 2e7, int(k)) for k in rng.integers(1, 20, 60)]
    store = GapStore(exact_limit=10_000)
    for part in parts:
        store.add(part)
    assert store.exact
    np.testing.assert_array_equal(store.values(), np.concatenate(parts))
    assert store.distribution()["count"] == sum(p.size for p in parts)


def test_table_rows_read_back_every_field_of_the_compacted_records():
    """RecordTable.to_list gives views (RowRecord) whose every field and property equals the compacted
    record's: None and 0, errors, classes, cached tokens, warm-up, across several blocks."""
    from loadgen.metrics.gaps import RecordTable

    table = RecordTable()
    table.BLOCK = 5  # several blocks, the last one part-filled
    recs = []
    for i in range(13):
        r = _rec(i, [1_000 * i + 10, 1_000 * i + 25, 1_000 * i + 40])
        r.first_answer_ns = None if i % 3 else r.first_token_ns
        r.cached_tokens = None if i % 2 else i * 4
        r.cls = ("chat", None, "code")[i % 3]
        r.warmup = i < 2
        r.worker = i % 4
        r.prompt_tokens = None if i == 7 else 16
        if i in (3, 11):
            r.error_class, r.error, r.status, r.first_token_ns = "http_status", "x" * 300, 503, None
        recs.append(r)
        table.append(r)
    views = table.to_list()
    assert len(views) == len(recs)
    for view, rec in zip(views, recs, strict=True):
        _same(view, compact(rec))
    assert views[3].error == "x" * 200 and views[4].error is None


def test_the_report_reads_a_tables_columns_as_it_reads_records():
    """RequestArrays of a table's views (read from its columns) equal those of the compacted records
    (read one object at a time): all rows, a filtered subset and a reordered list, with warm-up rows,
    failures, missing first tokens and chunk-less records; and summarize gives the same report."""
    from dataclasses import fields

    from loadgen.metrics.gaps import RecordTable
    from loadgen.metrics.latency import RequestArrays, Slo
    from loadgen.metrics.rows import FieldReader, columns_of

    table, recs = RecordTable(), []
    table.BLOCK = 4
    for i in range(23):
        r = _rec(i, [1_000 * i + 10, 1_000 * i + 25, 1_000 * i + 40])
        r.sent_ns, r.scheduled_ns = 5 + i, i
        r.input_tokens, r.status = 16 + i, 200
        r.warmup = i in (0, 9)
        r.reasoning_tokens = None if i % 2 else 1
        r.first_answer_ns = None if i % 3 else r.first_token_ns
        if i in (4, 13):  # a failure with no first token and no chunks
            r.error_class, r.error, r.status = "http_status", "busy", 503
            r.first_token_ns, r.chunk_ns, r.chunk_tokens, r.output_tokens = None, [], [], 0
        if i == 17:  # a failure that never got a status
            r.error_class, r.status, r.first_token_ns = "connect", None, None
            r.chunk_ns, r.chunk_tokens = [], []
        recs.append(r)
        table.append(r)
    views = table.to_list()
    plain = [compact(r) for r in recs]
    for pick in (lambda x: x, lambda x: [r for r in x if r.index % 3], lambda x: x[::-1]):
        fast, slow = RequestArrays.from_records(pick(views)), RequestArrays.from_records(pick(plain))
        assert columns_of(pick(views)) is not None
        for f in fields(RequestArrays):
            np.testing.assert_array_equal(getattr(fast, f.name), getattr(slow, f.name), err_msg=f.name)
        fast_f, slow_f = FieldReader(pick(views)), FieldReader(pick(plain))
        for name, none in (("sent_ns", 0), ("first_token_ns", -1), ("status", -1), ("index", 0)):
            np.testing.assert_array_equal(fast_f.get(name, none), slow_f.get(name, none), err_msg=name)
        np.testing.assert_array_equal(fast_f.no_error(), slow_f.no_error())
    slo = Slo(ttft_ms=0.01, tpot_ms=1.0)
    assert summarize(views, slo=slo) == summarize(plain, slo=slo)

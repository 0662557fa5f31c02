"""LoadGen's rules (MLPERF.md) against numbers known independently: its check values, scipy's binomial
distribution, and hand-built runs whose outcome follows from the rules by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from loadgen.metrics.early_stopping import early_stopping_h, percentile
from loadgen.metrics.mlperf_result import MlperfParams, MlperfResult
from loadgen.metrics.validity import _verdict, evaluate
from loadgen.records import RequestRecord
from loadgen.report.summary import render_summary

MS = 1_000_000
S = 1_000_000_000


def rec(
    i: int,
    *,
    scheduled: int,
    ttft: int | None,
    e2e: int,
    tokens: int = 11,
    query: int | None = None,
    sent: int | None = None,
    error: str | None = None,
) -> RequestRecord:
    """A record in ns: first token ``ttft`` and end ``e2e`` after ``scheduled``."""
    return RequestRecord(
        index=i,
        sample=i,
        query=i if query is None else query,
        scheduled_ns=scheduled,
        sent_ns=scheduled if sent is None else sent,
        end_ns=scheduled + e2e,
        first_token_ns=None if ttft is None else scheduled + ttft,
        chunk_ns=[] if ttft is None else [scheduled + ttft, scheduled + e2e],
        chunk_tokens=[] if ttft is None else [1, tokens - 1],
        output_tokens=tokens,
        tokens_source="usage",
        error_class=error,
        status=200 if error is None else 500,
    )


def server_params(**kw: object) -> MlperfParams:
    base: dict[str, object] = {
        "scenario": "Server",
        "target_qps": 100.0,
        "ttft_bound_ns": 10 * MS,
        "tpot_bound_ns": 5 * MS,
        "min_duration_ns": 1 * S,
        "min_query_count": 100,
    }
    return MlperfParams(**(base | kw))  # type: ignore[arg-type]


def server_run(n: int, ttft: int = 5 * MS, e2e: int = 50 * MS, tokens: int = 11) -> list[RequestRecord]:
    # one query every 10 ms: the last is scheduled at (n - 1) * 10 ms, past the 1 s minimum for n > 101
    return [rec(i, scheduled=i * 10 * MS, ttft=ttft, e2e=e2e, tokens=tokens) for i in range(n)]


def parse_summary(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            out.setdefault(key.strip(), value.strip())
    return out


# ---- statistics -------------------------------------------------------------------------------------


def test_early_stopping_check_values_from_mlperf_md() -> None:
    assert early_stopping_h(0, 0.99) == 459
    assert early_stopping_h(1, 0.99) + 1 == 662
    assert early_stopping_h(0, 0.90) == 44
    assert early_stopping_h(1, 0.90) + 1 == 64


def _h_by_scipy(t: int, p: float, confidence: float) -> int:
    """The smallest h by a plain scan of scipy's binomial CDF (vectorised over h)."""
    hs = np.arange(0, 200_000)
    fails = binom.cdf(t, hs + t, 1 - p) >= 1 - confidence
    return int(np.argmin(fails))


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(min_value=0, max_value=400),
    p=st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995]),
    confidence=st.sampled_from([0.9, 0.95, 0.99]),
)
def test_early_stopping_matches_scipy_binomial(t: int, p: float, confidence: float) -> None:
    h = early_stopping_h(t, p, confidence)
    assert binom.cdf(t, h + t, 1 - p) < 1 - confidence
    assert h == 0 or binom.cdf(t, h - 1 + t, 1 - p) >= 1 - confidence


def test_early_stopping_small_cases_match_a_linear_scipy_scan() -> None:
    for t in (0, 1, 2, 5, 17):
        for p in (0.9, 0.99):
            assert early_stopping_h(t, p) == _h_by_scipy(t, p, 0.99)


def test_early_stopping_large_t_is_fast_and_right() -> None:
    # n in the hundreds of thousands: scipy's own CDF on both sides of the answer
    h = early_stopping_h(5000, 0.99)
    assert binom.cdf(5000, h + 5000, 0.01) < 0.01 <= binom.cdf(5000, h + 4999, 0.01)


def test_percentile_is_loadgens_index_rule() -> None:
    values = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert percentile(values, 0.90) == 100  # int(10 * 0.9) = 9: the maximum
    assert percentile(values, 0.50) == 60  # no interpolation (numpy would say 55)
    assert percentile(values, 0.0) == 10
    assert percentile(values, 1.0) == 100  # clamped
    with pytest.raises(ValueError):
        percentile([], 0.5)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=300),
    st.floats(min_value=0, max_value=1),
    st.floats(min_value=0, max_value=1),
)
def test_percentile_is_monotone_in_p(values: list[int], p1: float, p2: float) -> None:
    s = sorted(values)
    lo, hi = sorted((p1, p2))
    assert percentile(s, lo) <= percentile(s, hi)
    assert percentile(s, hi) in values


# ---- Server ---------------------------------------------------------------------------------------------


def test_server_458_perfect_queries_is_invalid_459_is_valid() -> None:
    r458 = evaluate(server_run(458), server_params())
    assert not r458.valid
    assert r458.checks["early_stopping"] is False
    assert r458.checks["min_duration"] and r458.checks["performance_constraints"]
    assert any("Would need to run at least 1 more queries" in x for x in r458.reasons)
    r459 = evaluate(server_run(459), server_params())
    assert r459.valid, r459.reasons
    assert r459.reasons == []


def test_server_one_query_over_the_bound_needs_662() -> None:
    # one TTFT over the bound: h(1) + 1 = 662 queries are needed
    def run(n: int) -> list[RequestRecord]:
        records = server_run(n)
        records[3] = rec(3, scheduled=30 * MS, ttft=11 * MS, e2e=50 * MS)
        return records

    assert evaluate(run(662), server_params()).valid
    r = evaluate(run(661), server_params())
    assert not r.valid and not r.checks["early_stopping"]
    ttft_es = next(e for e in r.early_stopping if e.metric == "ttft")
    assert (ttft_es.overlatency, ttft_es.queries_needed) == (1, 662)
    assert any(x.startswith("TTFT early stopping") and "at least 1 more" in x for x in r.reasons)


def test_equality_at_the_bound_passes() -> None:
    # TTFT exactly 10 ms; TPOT exactly (55 - 10) / (10 - 1) = 5 ms
    records = server_run(500, ttft=10 * MS, e2e=55 * MS, tokens=10)
    r = evaluate(records, server_params())
    assert r.target_ttft_ns == 10 * MS and r.target_tpot_ns == 5 * MS
    assert r.valid, r.reasons
    tighter = evaluate(records, server_params(tpot_bound_ns=5 * MS - 1))
    assert not tighter.valid and not tighter.checks["performance_constraints"]
    assert any("TPOT constraint not met" in x and "Reduce target QPS" in x for x in tighter.reasons)


def test_tpot_is_integer_ns_from_e2e_and_output_tokens() -> None:
    # e2e - TTFT = 1001 ns over 3 - 1 tokens: floor to 500 ns
    records = [rec(0, scheduled=0, ttft=1000, e2e=2001, tokens=3)]
    r = evaluate(records, MlperfParams("SingleStream", min_duration_ns=0, min_query_count=1))
    assert r.tpot_ns is not None and r.tpot_ns.min == 500
    assert r.ttft_ns is not None and r.ttft_ns.max == 1000


def test_latency_is_measured_from_the_scheduled_time() -> None:
    # sent 40 ms after its scheduled time: the lateness counts in TTFT and latency
    records = [rec(0, scheduled=0, sent=40 * MS, ttft=50 * MS, e2e=90 * MS)]
    r = evaluate(records, server_params(min_duration_ns=0, min_query_count=1))
    assert r.target_ttft_ns == 50 * MS
    assert r.latency_ns is not None and r.latency_ns.max == 90 * MS


def test_a_failed_request_makes_it_invalid() -> None:
    records = server_run(600)
    records[10] = rec(10, scheduled=100 * MS, ttft=None, e2e=2 * MS, error="http_status")
    r = evaluate(records, server_params())
    assert not r.valid
    assert r.checks["requests_ok"] is False
    assert any(x.startswith("1 requests failed") for x in r.reasons)


def test_client_limited_makes_it_invalid() -> None:
    r = evaluate(server_run(600), server_params(), client_limited="issue delay p99 was 250 ms")
    assert not r.valid
    assert any("issue delay p99 was 250 ms" in x for x in r.reasons)


def test_one_token_output_is_an_error() -> None:
    records = server_run(600)
    records[5] = rec(5, scheduled=50 * MS, ttft=5 * MS, e2e=6 * MS, tokens=1)
    r = evaluate(records, server_params())
    assert not r.valid and r.token_errors == 1


def test_server_throughput_and_duration() -> None:
    # 11 queries, scheduled every 0.5 s (last at 5 s), the last one done at 6 s: (11 - 1) / 6
    records = [rec(i, scheduled=i * S // 2, ttft=5 * MS, e2e=S, tokens=11) for i in range(11)]
    r = evaluate(records, server_params(min_duration_ns=5 * S, min_query_count=11))
    assert r.samples_per_s == pytest.approx(10 / 6)
    assert r.tokens_per_s == pytest.approx(121 / 6)
    assert r.scheduled_samples_per_s == pytest.approx(10 / 5)
    assert r.checks["min_duration"] and r.checks["min_queries"]
    short = evaluate(records, server_params(min_duration_ns=6 * S, min_query_count=12))
    assert not short.checks["min_duration"] and not short.checks["min_queries"]
    # the schedule itself ended before the minimums: a longer --duration is not the fix (it was 6 s)
    assert not any("--duration" in x for x in short.reasons), short.reasons
    assert any("Min duration not met" in x and "cut short" in x for x in short.reasons)
    assert any("Min queries not met: 11 queries of min_query_count 12" in x for x in short.reasons)


# ---- other scenarios -------------------------------------------------------------------------------


def test_singlestream_p90_of_10_to_100_ms_is_the_maximum() -> None:
    records = [rec(i, scheduled=i * S, ttft=(i + 1) * 10 * MS, e2e=200 * MS) for i in range(10)]
    r = evaluate(records, MlperfParams("SingleStream", min_duration_ns=0, min_query_count=1))
    assert r.target_ttft_ns == 100 * MS
    assert r.ttft_ns is not None
    assert r.ttft_ns.percentiles[0.5] == 60 * MS
    assert r.ttft_ns.mean == 55 * MS
    # 10 queries are far fewer than h(1) + 1 = 64 for p90: early stopping fails and says by how much
    assert not r.checks["early_stopping"]
    assert any("Would need to run at least 54 more queries" in x for x in r.reasons)


def test_singlestream_early_stopping_estimate() -> None:
    # latencies 1..200 ms; the largest t with 200 >= h(t) + t, found by scipy, picks sorted[200 - t]
    n, p = 200, 0.90
    t = max(k for k in range(1, 40) if _h_by_scipy(k, p, 0.99) + k <= n)  # h(k) + k > 200 for k ≥ 20
    records = [rec(i, scheduled=i * S, ttft=None, e2e=(i + 1) * MS, tokens=11) for i in range(n)]
    params = MlperfParams("SingleStream", min_duration_ns=0, min_query_count=1, use_token_latencies=False)
    r = evaluate(records, params)
    (es,) = r.early_stopping
    assert es.passed and es.estimate_ns == (n - t + 1) * MS
    assert r.valid, r.reasons
    assert r.target_latency_ns == 181 * MS  # sorted[int(200 * 0.9)] = sorted[180]


def test_multistream_query_latency_is_the_slowest_sample() -> None:
    # 2 queries of 4 samples; query q scheduled at q s, its samples end 10, 20, 30, 40 (+q) ms later
    records = [
        rec(4 * q + k, query=q, scheduled=q * S, ttft=None, e2e=(10 * (k + 1) + q) * MS)
        for q in range(2)
        for k in range(4)
    ]
    params = MlperfParams("MultiStream", samples_per_query=4, min_duration_ns=0, min_query_count=1)
    r = evaluate(records, params)
    assert r.queries == 2 and r.samples == 8
    assert r.query_latency_ns is not None
    assert (r.query_latency_ns.min, r.query_latency_ns.max) == (40 * MS, 41 * MS)
    assert r.target_latency_ns == 41 * MS


def test_offline_throughput_over_max_latency() -> None:
    # 10 samples issued at 0, the slowest done at 2 s: 5 samples/s
    records = [rec(i, scheduled=0, ttft=MS, e2e=(i + 1) * S // 5, tokens=i + 2) for i in range(10)]
    # ((i+2) summed over i = 0..9) = 65 tokens
    r = evaluate(records, MlperfParams("Offline", min_duration_ns=2 * S, min_query_count=10))
    assert r.samples_per_s == pytest.approx(5.0)
    assert r.tokens_per_s == pytest.approx(32.5)
    assert r.valid, r.reasons
    assert not evaluate(records, MlperfParams("Offline", min_duration_ns=2 * S + 1)).checks["min_duration"]


# ---- output -------------------------------------------------------------------------------------------


def test_summary_text_layout() -> None:
    text = render_summary(evaluate(server_run(459), server_params(sut_name="sim")))
    lines = text.splitlines()
    assert lines[:3] == ["=" * 48, "MLPerf Results Summary", "=" * 48]
    kv = parse_summary(text)
    assert kv["SUT name"] == "sim"
    assert kv["Scenario"] == "Server"
    assert kv["Mode"] == "PerformanceOnly"
    assert kv["Result is"] == "VALID"
    assert kv["Performance constraints satisfied"] == "Yes"
    assert kv["Early stopping satisfied"] == "Yes"
    assert float(kv["Completed samples per second"]) == pytest.approx(458 / 4.63, abs=0.01)
    assert kv["99.00 percentile first token latency (ns)"] == str(5 * MS)
    assert kv["99.90 percentile time to output token (ns)"] == str(45 * MS // 10)
    assert kv["ttft_latency (ns)"] == str(10 * MS)
    assert kv["min_duration (ms)"] == "1000"
    assert "TTFT Early Stopping Result:" in lines and "TPOT Early Stopping Result:" in lines
    assert lines.index("Additional Stats") < lines.index("Test Parameters Used")
    # a shortened minimum duration is said plainly
    assert "shorter than MLPerf's default 600 s" in text


def test_summary_text_invalid() -> None:
    text = render_summary(evaluate(server_run(458), server_params()))
    kv = parse_summary(text)
    assert kv["Result is"] == "INVALID"
    assert kv["Early stopping satisfied"] == "NO"
    assert "Recommendations:" in text.splitlines()
    assert " * Run unsuccessful." in text.splitlines()


def test_default_min_duration_has_no_shortening_note() -> None:
    r = evaluate(server_run(10), server_params(min_duration_ns=600 * S))
    assert not r.checks["min_duration"]
    assert "shorter than MLPerf" not in render_summary(r)


@pytest.mark.parametrize(
    "records",
    [[], [rec(0, scheduled=0, ttft=None, e2e=MS, error="connect")], [rec(0, scheduled=0, ttft=0, e2e=0)]],
)
@pytest.mark.parametrize("scenario", ["SingleStream", "MultiStream", "Server", "Offline"])
def test_degenerate_runs_are_invalid_and_json_safe(records: list[RequestRecord], scenario: str) -> None:
    r: MlperfResult = evaluate(records, MlperfParams(scenario))  # type: ignore[arg-type]
    assert not r.valid and r.reasons
    json.dumps(r.to_dict(), allow_nan=False)
    assert "Result is : INVALID" in render_summary(r)


def test_to_dict_keys() -> None:
    d = evaluate(server_run(459), server_params()).to_dict()
    assert d["result"] == "VALID" and d["valid"] is True
    assert set(d["checks"]) >= {"performance_constraints", "min_duration", "min_queries", "early_stopping"}
    assert set(d["ttft_ns"]) == {"count", "min", "max", "mean", "p50", "p90", "p95", "p97", "p99", "p99_9"}
    assert np.isclose(d["params"]["min_duration_ns"], S)
    json.dumps(d, allow_nan=False)


def _server_records(n: int, qps: float, service_s: float, capacity_qps: float | None = None):
    """Queries scheduled every 1/qps s; each takes service_s, or (with capacity) waits in a FIFO
    queue that serves capacity_qps."""
    from loadgen.records import RequestRecord

    recs = []
    free = 0.0
    for i in range(n):
        t = i / qps
        if capacity_qps is None:
            end = t + service_s
        else:
            start = max(t, free)
            free = start + 1 / capacity_qps
            end = start + service_s
        recs.append(RequestRecord(index=i, sample=i, query=i, scheduled_ns=int(t * 1e9),
                                  sent_ns=int(t * 1e9), end_ns=int(end * 1e9),
                                  first_token_ns=int((end - 0.01) * 1e9), chunk_ns=[int(end * 1e9)],
                                  chunk_tokens=[1], output_tokens=2))
    return recs


def test_sustained_server_keeps_up_and_overloaded_one_does_not():
    params = MlperfParams(scenario="Server", min_query_count=1, check_sustained=True)
    ok = evaluate(_server_records(400, qps=20, service_s=1.0), params)
    assert ok.checks["sustained"] and ok.sustained["ratio"] == pytest.approx(1.0, abs=0.01)
    # offered 20/s, served 16/s: over the second half about 16/20 of what fell due ended
    over = evaluate(_server_records(400, qps=20, service_s=1.0, capacity_qps=16), params)
    assert not over.checks["sustained"] and not over.valid
    assert over.sustained["ratio"] == pytest.approx(0.8, abs=0.03)
    assert any("did not keep up with the offered rate" in r for r in over.reasons)
    assert "Offered load sustained : NO" in render_summary(over)


def test_sustained_needs_an_issue_span_of_twice_the_median_latency():
    params = MlperfParams(scenario="Server", min_query_count=1, check_sustained=True)
    short = evaluate(_server_records(40, qps=20, service_s=3.0), params)  # span 1.95 s, latency 3 s
    assert not short.checks["sustained"]
    assert any("Too short to show that the server keeps up" in r for r in short.reasons)
    # LoadGen's own rules (check_sustained off, the default) are untouched by it
    plain = evaluate(_server_records(40, qps=20, service_s=3.0),
                     MlperfParams(scenario="Server", min_query_count=1))
    assert "sustained" not in plain.checks


def test_a_short_run_at_three_times_capacity_says_lower_the_qps_not_run_longer():
    """At 3x capacity the median latency grows with the run (about as long as the run itself), so
    "run longer" could never fix it: the growing latency is named instead, with the advice that does."""
    params = MlperfParams(scenario="Server", min_query_count=1, check_sustained=True)
    for n in (60, 120):  # 3 s and 6 s of schedule at 20/s, served at 20/3 per s
        over = evaluate(_server_records(n, qps=20, service_s=0.05, capacity_qps=20 / 3), params)
        assert not over.checks["sustained"]
        assert over.sustained["median_latency_s"] > over.sustained["span_s"] / 2
        text = " ".join(over.reasons)
        assert "did not keep up" in text and "Lower the QPS" in text, over.reasons
        assert "--duration" not in text and "Too short" not in text


def test_too_short_advice_names_a_duration_that_makes_the_check_possible():
    params = MlperfParams(scenario="Server", min_query_count=1, check_sustained=True)
    short = evaluate(_server_records(40, qps=20, service_s=3.0), params)  # steady latency 3 s
    (reason,) = [r for r in short.reasons if "Too short" in r]
    want = int(reason.split("--duration ")[1].split()[0])
    assert want == 8  # ceil(2.5 x 3 s)
    followed = evaluate(_server_records(20 * want, qps=20, service_s=3.0), params)
    assert followed.checks["sustained"], followed.reasons


def test_verdict_and_reasons_never_disagree() -> None:
    """valid == (not reasons) on every path: a failed check without its own reason gets one naming it,
    and a reason makes the result INVALID whatever the checks say."""
    bare = evaluate(server_run(459), server_params())
    assert bare.valid and not bare.reasons
    bare.checks["min_queries"] = False
    _verdict(bare)
    assert not bare.valid
    assert bare.reasons == ["Check(s) failed: min_queries (loadgen gave no reason: a bug)."]
    odd = evaluate(server_run(459), server_params())
    odd.reasons.append("something")
    _verdict(odd)
    assert not odd.valid


def test_retried_requests_fail_a_check_with_their_reason() -> None:
    """A retry's first attempt failed (connect, 429, 503): without --retries that run is INVALID, so a
    retry must not make it VALID; the check and its reason say so together."""
    records = server_run(459)
    records[3].retries = 2
    records[7].retries = 1
    r = evaluate(records, server_params())
    assert not r.valid and r.checks["no_retries"] is False and r.retries_total == 3
    assert any(x.startswith("2 requests needed retries (3 resends, --retries)") for x in r.reasons)
    assert "No request retried : NO" in render_summary(r)
    assert evaluate(server_run(459), server_params()).checks["no_retries"] is True


def test_a_stop_makes_the_result_invalid_in_summary_and_report_alike() -> None:
    """An interrupted run whose minimums were all met is still INVALID, in the MLPerf result itself (so
    summary.txt and report.json cannot disagree)."""
    r = evaluate(server_run(459), server_params(), stopped_early="interrupted by SIGINT: ...",
                 interrupted=True)
    assert not r.valid and r.checks["ran_to_completion"] is False
    assert any("interrupted" in x for x in r.reasons)
    text = render_summary(r)
    assert "Result is : INVALID" in text and "Ran to completion : NO" in text


def test_offline_min_duration_advice_says_when_the_count_is_only_a_floor() -> None:
    """Offline issues exactly the count; the advice scales it to the duration. Saturated (samples
    waited for slots) that count lasts; unsaturated (every first token at once) it is only a floor."""
    waves = [rec(i, scheduled=0, ttft=(i // 4 + 1) * 100 * MS, e2e=(i // 4 + 1) * 100 * MS + MS)
             for i in range(16)]  # 4 slots, 4 waves of 100 ms
    r = evaluate(waves, MlperfParams("Offline", min_duration_ns=2 * S, min_query_count=16))
    (reason,) = [x for x in r.reasons if x.startswith("Min duration not met")]
    # 16 samples x 2 s / 0.401 s x 1.1
    assert "raise --num-requests to at least 88 " in reason and "floor" not in reason, reason
    at_once = [rec(i, scheduled=0, ttft=20 * MS, e2e=100 * MS) for i in range(16)]
    r = evaluate(at_once, MlperfParams("Offline", min_duration_ns=2 * S, min_query_count=16))
    (reason,) = [x for x in r.reasons if x.startswith("Min duration not met")]
    assert "at least 352 " in reason and "not saturated" in reason and "floor" in reason, reason

"""Run options and scenarios end to end through the real CLI, against the built-in simulated server
(TTFT 50 ms, one token every 10 ms unless a scenario file says otherwise) or a recording endpoint."""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np

from loadgen.records import read_records
from tests.conftest import load_report, run_cli, write_scenario
from tests.recording_server import RecordingServer


def _records(out):
    return sorted(read_records(out / "requests.jsonl"), key=lambda r: r.index)


def test_fail_on_invalid_exits_1_on_an_invalid_run_and_0_without_it(tmp_path):
    """Ten Server queries can never be VALID (early stopping at p99 needs at least 459)."""
    args = ("run", "server", "--qps", "20", "--duration", "0.5", "--num-requests", "10",
            "--output-len", "2", "--quiet")
    gated = run_cli(*args, "--out", str(tmp_path / "gated"), "--fail-on-invalid")
    assert gated.code == 1, gated.output
    assert "Result is : INVALID" in gated.stdout and "Traceback" not in gated.output
    assert load_report(tmp_path / "gated")["validity"]["valid"] is False  # the report is still written
    plain = run_cli(*args, "--out", str(tmp_path / "plain"))
    assert plain.code == 0, plain.output
    assert "Result is : INVALID" in plain.stdout


def test_no_stream_ttft_equals_e2e_and_tokens_come_from_usage(tmp_path):
    out = tmp_path / "run"
    res = run_cli("run", "singlestream", "--no-stream", "--num-requests", "8", "--duration", "0",
                  "--input-len", "10", "--output-len", "6", "--out", str(out), "--quiet")
    assert res.code == 0, res.output
    recs = _records(out)
    assert len(recs) == 8 and all(r.ok for r in recs)
    for r in recs:
        assert r.first_token_ns == r.end_ns  # the first token is only seen with the last
        assert r.chunk_ns == []  # no stream: no chunks to time
        assert (r.output_tokens, r.tokens_source) == (6, "usage")
        assert r.prompt_tokens == r.input_tokens == 10
    results = load_report(out)["results"]
    assert results["ttft_ms"]["p50"] == results["e2e_ms"]["p50"]
    # the simulator finishes 50 ms + 5 x 10 ms after arrival
    assert abs(results["e2e_ms"]["p50"] - 100.0) < 3.0, results["e2e_ms"]
    assert results["tokens_source"]["usage"] == 8
    assert load_report(out)["settings"]["stream"] is False


def test_chat_endpoint_streams_through_the_chat_template(tmp_path):
    """The simulator adds 3 template tokens per chat message (and none on /v1/completions), so
    prompt_tokens - input_tokens = 3 shows the requests went to /v1/chat/completions."""
    f = write_scenario(tmp_path / "s.yaml", scenario="singlestream", num_requests=10, duration_s=0,
                       input_len=20, output_len=12, endpoint="chat",
                       sim={"ttft_ms": 50, "itl_ms": 10, "chat_template_tokens": 3})
    out = tmp_path / "run"
    res = run_cli("run", str(f), "--out", str(out), "--quiet")
    assert res.code == 0, res.output
    recs = _records(out)
    assert len(recs) == 10 and all(r.ok for r in recs)
    assert all(r.prompt_tokens - r.input_tokens == 3 and r.input_tokens == 20 for r in recs)
    assert all(r.output_tokens == 12 and len(r.chunk_ns) == 12 for r in recs)  # streamed, one per chunk
    results = load_report(out)["results"]
    assert abs(results["ttft_ms"]["p50"] - 50.0) < 1.0 and abs(results["itl_ms"]["p50"] - 10.0) < 1.0
    assert load_report(out)["settings"]["endpoint"] == "chat"


def test_chat_endpoint_option_on_the_command_line(tmp_path):
    with RecordingServer() as srv:
        res = run_cli("run", "singlestream", "--url", srv.url, "--endpoint", "chat", "--num-requests", "3",
                      "--duration", "0", "--output-len", "2", "--quiet", "--out", str(tmp_path / "run"))
        paths = list(srv.paths)
    assert res.code == 0, res.output
    assert paths == ["/v1/chat/completions"] * 3


def test_same_seed_sends_the_same_prompt_text(tmp_path):
    """What the server received, not what loadgen says it sent: SingleStream, so arrival order is the
    sending order."""
    received = []
    with RecordingServer() as srv:
        for i, seed in enumerate((4, 4, 5)):
            res = run_cli("run", "singlestream", "--url", srv.url, "--num-requests", "10", "--duration", "0",
                          "--input-len", "24", "--output-len", "2", "--seed", str(seed),
                          "--out", str(tmp_path / f"r{i}"), "--quiet")
            assert res.code == 0, res.output
            received.append(srv.take())
    assert len(received[0]) == 10 and len(set(received[0])) == 10
    assert received[0] == received[1]
    assert set(received[0]).isdisjoint(received[2])
    assert all(len(p.split()) == 24 for p in received[0])


def test_multistream_sends_each_query_together_and_the_next_after_all_complete(tmp_path):
    out = tmp_path / "run"
    res = run_cli("run", "multistream", "--samples-per-query", "4", "--num-requests", "6", "--duration", "0",
                  "--input-len", "16", "--output-len", "5", "--out", str(out), "--quiet")
    assert res.code == 0, res.output
    by_query = defaultdict(list)
    for r in _records(out):
        by_query[r.query].append(r)
    assert len(by_query) == 6
    queries = sorted(by_query.values(), key=lambda q: q[0].scheduled_ns)
    for q in queries:
        assert len(q) == 4 and all(r.ok for r in q)
        assert len({r.sample for r in q}) == 4
        assert len({r.scheduled_ns for r in q}) == 1  # one issue time for the query
        assert max(r.sent_ns for r in q) - q[0].scheduled_ns < 10_000_000  # sent together (10 ms)
    for prev, nxt in itertools.pairwise(queries):
        done = max(r.end_ns for r in prev)
        assert nxt[0].scheduled_ns >= done  # never before the whole previous query completed
        assert nxt[0].scheduled_ns - done < 20_000_000  # and right after it (closed loop)
    samples = [r.sample for q in queries for r in q]
    assert len(set(samples)) == 24  # no prompt repeats
    report = load_report(out)
    assert report["settings"]["samples_per_query"] == 4
    assert "MultiStream" in (out / "summary.txt").read_text()


def test_constant_rate_sends_query_i_at_i_over_qps(tmp_path):
    out = tmp_path / "run"
    res = run_cli("run", "constant", "--qps", "20", "--duration", "1", "--num-requests", "20",
                  "--output-len", "2", "--out", str(out), "--quiet")
    assert res.code == 0, res.output
    recs = _records(out)
    assert len(recs) == 20 and all(r.ok for r in recs)
    scheduled = sorted(r.scheduled_ns for r in recs)
    assert scheduled == [round(i * 1e9 / 20) for i in range(1, 21)]  # exactly i / qps
    delay_ms = np.array([r.sent_ns - r.scheduled_ns for r in recs]) / 1e6
    assert delay_ms.min() >= 0
    # sent on time; the p99 bound leaves room for a shared CI machine's scheduling noise
    assert np.median(delay_ms) < 1.0 and np.percentile(delay_ms, 99) < 10.0
    gaps_ms = np.diff(sorted(r.sent_ns for r in recs)) / 1e6
    assert abs(np.median(gaps_ms) - 50.0) < 1.0
    assert "ConstantRate" in (out / "summary.txt").read_text()

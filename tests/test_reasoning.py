"""Reasoning models, the Responses API and request-body passthrough, against the simulator over real
sockets: the simulator is told a reasoning length R, an answer length A, TTFT T and ITL I, so the time
to first answer (T + R·I), the TTFT (T) and the token totals (R·n, A·n) are known beforehand."""

from __future__ import annotations

import json
import urllib.request

import orjson
import pytest

from loadgen.client.protocol import Chat, Responses, merge_extra
from loadgen.client.stream import ResponsesState, StreamState, count_output
from loadgen.records import RequestRecord
from loadgen.servers.sim import SimConfig, SimProcess
from tests.conftest import load_report, run_cli

R, A, T, I = 20, 30, 50.0, 10.0  # noqa: E741
N = 16


def _run(url: str, out, *extra: str):
    return run_cli("run", "concurrency", "--url", url, "--concurrency", "4", "--num-requests", str(N),
                   "--duration", "0", "--input-len", "16", "--output-len", str(R + A), "--out", str(out),
                   "--quiet", *extra)


def _bodies(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/sim/bodies", timeout=10) as resp:
        return json.load(resp)["bodies"]


@pytest.fixture(scope="module")
def thinking_sim():
    with SimProcess(SimConfig(ttft_ms=T, itl_ms=I, reasoning_tokens=R, keep_bodies=1000)) as proc:
        yield proc


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_time_to_first_answer_and_token_split_match_the_simulated_reasoning_phase(thinking_sim, tmp_path,
                                                                                  endpoint):
    prom = tmp_path / "final.prom"
    res = _run(thinking_sim.url, tmp_path, "--endpoint", endpoint, "--metrics-textfile", str(prom))
    assert res.code == 0, res.output
    results = load_report(tmp_path)["results"]
    assert results["requests_completed"] == N and results["requests_failed"] == 0
    assert results["ttft_ms"]["p50"] == pytest.approx(T, abs=1.0)
    assert results["time_to_first_answer_ms"]["p50"] == pytest.approx(T + R * I, abs=1.0)
    assert results["reasoning_tokens"] == R * N
    assert results["answer_tokens"] == A * N
    assert results["output_tokens_total"] == (R + A) * N
    # ITL runs over both phases: every gap is one decode step
    assert results["itl_ms"]["p50"] == pytest.approx(I, abs=0.5)
    assert results["itl_ms"]["count"] == (R + A - 1) * N
    row = json.loads((tmp_path / "requests.jsonl").read_text().splitlines()[0])
    assert row["reasoning_tokens"] == R and row["first_answer_ns"] > row["first_token_ns"]
    # every view says it: console, summary.txt, the HTML report, the final Prometheus metrics
    assert "First answer (sent)" in res.stdout and f"{R * N} reasoning + {A * N} answer" in res.stdout
    summary = (tmp_path / "summary.txt").read_text()
    assert f"Reasoning tokens : {R * N}" in summary and "Time to first answer p50 (ms) : 2" in summary
    assert "First answer (from sent)" in (tmp_path / "report.html").read_text()
    count = [line for line in prom.read_text().splitlines()
             if line.startswith("loadgen_time_to_first_answer_seconds_count")]
    assert count and float(count[0].split()[-1]) == N
    le = [line for line in prom.read_text().splitlines()
          if line.startswith("loadgen_time_to_first_answer_seconds_bucket") and 'le="0.2"' in line]
    assert le and float(le[0].split()[-1]) == 0  # every first answer came after 250 ms


def test_non_streaming_reasoning_counts_come_from_usage(thinking_sim, tmp_path):
    res = _run(thinking_sim.url, tmp_path, "--endpoint", "chat", "--no-stream")
    assert res.code == 0, res.output
    results = load_report(tmp_path)["results"]
    assert results["reasoning_tokens"] == R * N and results["answer_tokens"] == A * N
    # no stream: the first answer is seen with the whole body, like the first token
    assert results["time_to_first_answer_ms"]["p50"] == pytest.approx(results["e2e_ms"]["p50"], abs=1e-9)


def test_a_model_that_does_not_think_has_its_first_answer_at_its_first_token(sim, tmp_path):
    res = run_cli("run", "concurrency", "--url", sim.url, "--concurrency", "2", "--num-requests", "6",
                  "--duration", "0", "--output-len", "8", "--endpoint", "chat", "--out", str(tmp_path),
                  "--quiet")
    assert res.code == 0, res.output
    results = load_report(tmp_path)["results"]
    assert results["time_to_first_answer_ms"]["p50"] == results["ttft_ms"]["p50"]
    assert results["reasoning_tokens"] == 0 and results["answer_tokens"] == 6 * 8


@pytest.mark.parametrize("endpoint", ["chat", "completions", "responses"])
def test_extra_body_reaches_every_request_and_run_json(thinking_sim, tmp_path, endpoint):
    before = len(_bodies(thinking_sim.url))
    extra = {"temperature": 0.7, "top_p": 0.9, "chat_template_kwargs": {"enable_thinking": True}}
    res = _run(thinking_sim.url, tmp_path, "--endpoint", endpoint, "--extra-body", json.dumps(extra),
               "--extra-header", "X-Session-ID: s1")
    assert res.code == 0, res.output
    sent = _bodies(thinking_sim.url)[before:]
    assert len(sent) == N
    for body in sent:
        assert body["temperature"] == 0.7 and body["top_p"] == 0.9
        assert body["chat_template_kwargs"] == {"enable_thinking": True}
        assert body["stream"] is True
    settings = json.loads((tmp_path / "run.json").read_text())["settings"]
    assert settings["extra_body"] == extra


def test_a_null_in_extra_body_drops_the_default_field(thinking_sim, tmp_path):
    before = len(_bodies(thinking_sim.url))
    res = _run(thinking_sim.url, tmp_path, "--endpoint", "chat", "--extra-body", '{"max_tokens": null}')
    assert res.code == 0, res.output
    for body in _bodies(thinking_sim.url)[before:]:
        assert "max_tokens" not in body and body["max_completion_tokens"] == R + A


@pytest.mark.parametrize(("value", "named"), [
    ("{temperature: 0.7}", "--extra-body"),
    ("[1, 2]", "--extra-body"),
    ('{"model": "other"}', "extra_body"),
    ('{"max_tokens": 5}', "extra_body"),
])
def test_bad_extra_body_exits_2_naming_the_flag_or_field(tmp_path, value, named):
    res = run_cli("run", "concurrency", "--num-requests", "2", "--extra-body", value, "--out", str(tmp_path))
    assert res.code == 2, res.output
    assert named in res.stderr and "Traceback" not in res.output


# ---- the seams, without a server ----------------------------------------------------------------------


def _feed(state: StreamState, events: list[bytes]) -> None:
    for k, data in enumerate(events):
        assert state.feed(data, 1000 * (k + 1))
    state.finish(1000 * (len(events) + 1))


def test_both_reasoning_spellings_and_tool_calls_are_generated_output():
    rec = RequestRecord(index=0, sample=0, query=0, scheduled_ns=0, sent_ns=0, end_ns=0)
    chunk = b'data: {"choices":[{"index":0,"delta":%b}]}\n\n'
    state = StreamState(rec, Chat.text, False, Chat.thinking)
    _feed(state, [
        chunk % b'{"reasoning_content":"a"}',
        chunk % b'{"reasoning":"b"}',
        chunk % b'{"tool_calls":[{"index":0,"function":{"name":"get_weather","arguments":""}}]}',
        chunk % b'{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":1}"}}]}',
        b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ])
    assert rec.error_class is None
    assert rec.first_token_ns == 1000 and rec.first_answer_ns == 3000  # the tool call is the answer
    assert rec.chunk_ns == [1000, 2000, 3000, 4000, 5000]
    count_output(rec, None, [], state.thought, None)
    assert rec.reasoning_tokens == 2 and rec.output_tokens == 5


def test_responses_events_are_read_and_their_usage_normalised():
    rec = RequestRecord(index=0, sample=0, query=0, scheduled_ns=0, sent_ns=0, end_ns=0)

    def ev(kind, **fields):
        return b"event: %b\ndata: %b\n\n" % (kind.encode(), orjson.dumps({"type": kind, **fields}))

    state = ResponsesState(rec, Responses.text, False, Responses.thinking)
    usage = {"input_tokens": 7, "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 1},
             "input_tokens_details": {"cached_tokens": 4}}
    _feed(state, [ev("response.created", response={"usage": None}),
                  ev("response.reasoning_text.delta", delta="hm"),
                  ev("response.output_text.delta", delta="a") + ev("response.output_text.delta", delta="b"),
                  ev("response.completed", response={"usage": usage})])
    assert rec.error_class is None and rec.first_token_ns == 2000 and rec.first_answer_ns == 3000
    count_output(rec, state.usage, [], state.thought, None)
    assert (rec.output_tokens, rec.reasoning_tokens, rec.prompt_tokens, rec.cached_tokens) == (3, 1, 7, 4)

    failed = RequestRecord(index=0, sample=0, query=0, scheduled_ns=0, sent_ns=0, end_ns=0)
    bad = ResponsesState(failed, Responses.text, False, Responses.thinking)
    assert not bad.feed(ev("response.failed", response={"error": {"message": "boom"}}), 5)
    assert failed.error_class == "server_error" and "boom" in (failed.error or "")


def test_merge_extra_overrides_adds_and_drops():
    body = {"model": "m", "temperature": 0.0, "max_tokens": 5}
    assert merge_extra(body, {"temperature": 0.7, "seed": 1, "max_tokens": None}) == {
        "model": "m", "temperature": 0.7, "seed": 1}


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def test_tool_call_deltas_are_the_answer_timed_and_counted(thinking_sim, tmp_path):
    """With tools offered the simulated model thinks R tokens and then streams a call of the tool (the
    first delta names it, the rest add argument text): the call is the answer, so time to first answer
    is T + R·I and its tokens count as answer tokens."""
    extra = json.dumps({"tools": TOOLS, "tool_choice": "required"})
    res = _run(thinking_sim.url, tmp_path, "--endpoint", "chat", "--extra-body", extra)
    assert res.code == 0, res.output
    results = load_report(tmp_path)["results"]
    assert results["requests_failed"] == 0
    assert results["time_to_first_answer_ms"]["p50"] == pytest.approx(T + R * I, abs=1.0)
    assert (results["reasoning_tokens"], results["answer_tokens"]) == (R * N, A * N)
    assert all(b["tools"] == TOOLS for b in _bodies(thinking_sim.url)[-N:])

    # what the simulator streamed: thinking deltas, then tool-call deltas, the first one naming the call
    req = urllib.request.Request(thinking_sim.url + "/v1/chat/completions", data=json.dumps({
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": R + 3, "stream": True,
        "tools": TOOLS}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        events = [json.loads(line[6:]) for line in resp.read().decode().split("\n\n")
                  if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert len(calls) == 3 and calls[0]["function"]["name"] == "get_weather" and calls[0]["id"]
    assert all("name" not in c["function"] for c in calls[1:])
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert sum("reasoning_content" in d for d in deltas) == R


def test_a_non_streaming_tool_call_comes_back_as_a_message_tool_call(thinking_sim):
    req = urllib.request.Request(thinking_sim.url + "/v1/chat/completions", data=json.dumps({
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": R + 3, "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "lookup"}}}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.load(resp)
    msg = body["choices"][0]["message"]
    assert msg["content"] is None and msg["tool_calls"][0]["function"]["name"] == "lookup"
    assert len(msg["tool_calls"][0]["function"]["arguments"].split()) == 3
    assert body["choices"][0]["finish_reason"] == "tool_calls"

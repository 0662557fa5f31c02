"""Agentic sessions through the real CLI against the simulator: a recorded file replayed turn by turn
(history as the file says, waits kept, one turn in flight per session, the affinity header on every
turn) and generated agent loops (tool results of a known size, salted first messages)."""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from loadgen.servers.sim import SimConfig, SimProcess
from tests.conftest import load_report, run_cli, write_scenario

WAIT_S = 0.15


def _call(cid: str, name: str, args: str) -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def _session(sid: str, n_tools: int) -> dict:
    """A system prompt, a user task, ``n_tools`` tool calls with results (each after WAIT_S of tool
    time), and a final answer: ``n_tools + 1`` turns."""
    msgs = [{"role": "system", "content": "you are an agent"},
            {"role": "user", "content": f"task {sid} " + "word " * 10}]
    for k in range(n_tools):
        cid = f"{sid}-c{k}"
        msgs.append({"role": "assistant", "content": None, "output_tokens": 5,
                     "tool_calls": [_call(cid, "grep", f'{{"q": "x{k}"}}')]})
        msgs.append({"role": "tool", "tool_call_id": cid, "content": "hit " * (20 + k), "wait_s": WAIT_S})
    msgs.append({"role": "assistant", "content": "done " * 7})
    return {"id": sid, "messages": msgs}


@pytest.fixture(scope="module")
def body_sim():
    with SimProcess(SimConfig(ttft_ms=20, itl_ms=2, keep_bodies=1000)) as proc:
        yield proc


def _seen(url: str) -> tuple[list[dict], list[dict]]:
    with urllib.request.urlopen(url + "/sim/bodies", timeout=10) as resp:
        data = json.load(resp)
    return data["bodies"], data["headers"]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines() if line]


def test_a_recorded_agent_file_replays_every_turn_once_in_order_after_its_wait(body_sim, tmp_path):
    sessions = [_session("a", 2), _session("b", 1), _session("c", 3)]
    data = tmp_path / "agents.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in sessions))
    scenario = write_scenario(tmp_path / "agents.yaml", scenario="concurrency", endpoint="chat",
                              url=body_sim.url, num_requests=1, duration_s=0,
                              sessions={"path": str(data), "users": 2, "affinity_header": "X-Session-ID"})
    before = len(_seen(body_sim.url)[0])
    res = run_cli("run", str(scenario), "--out", str(tmp_path / "out"), "--quiet")
    assert res.code == 0, res.output
    bodies, headers = (x[before:] for x in _seen(body_sim.url))
    turns = sum(1 for s in sessions for m in s["messages"] if m["role"] == "assistant")
    assert len(bodies) == turns == 9

    # every turn once, in order, with the history exactly as the file says (loadgen's own keys dropped)
    by_session: dict[str, list[list[dict]]] = defaultdict(list)
    for body, head in zip(bodies, headers, strict=True):
        by_session[head["x-session-id"]].append(body["messages"])
    for s in sessions:
        keep = [{k: v for k, v in m.items() if k not in ("output_tokens", "wait_s")} for m in s["messages"]]
        want = [keep[:i] for i, m in enumerate(s["messages"]) if m["role"] == "assistant"]
        assert by_session[s["id"]] == want

    out = tmp_path / "out"
    recs = sorted(_records(out), key=lambda r: r["index"])
    assert all(r["error_class"] is None for r in recs)
    # input tokens per turn exact: the client's count is the server's usage.prompt_tokens
    assert [r["input_tokens"] for r in recs] == [r["prompt_tokens"] for r in recs]
    # waits kept: a turn after a tool result is due WAIT_S after its session's previous turn ended, and
    # issued on time (p99 <= 1 ms)
    lateness = np.array([r["sent_ns"] - r["scheduled_ns"] for r in recs]) / 1e6
    assert np.percentile(lateness, 99) <= 1.0, lateness
    report = load_report(out)
    assert report["results"]["issue_delay_ms"]["p99"] <= 1.0
    chains = _chains(recs, [len([m for m in s["messages"] if m["role"] == "assistant"]) for s in sessions])
    for chain in chains:
        for prev, nxt in itertools.pairwise(chain):
            gap_ms = (nxt["scheduled_ns"] - prev["end_ns"]) / 1e6
            assert gap_ms == pytest.approx(WAIT_S * 1e3, abs=1e-3), gap_ms
    summary = report["results"]["sessions"]
    assert (summary["sessions"], summary["completed"], summary["failed"], summary["turns"]) == (3, 3, 0, 9)
    assert summary["duration_s"]["p50"] > 0 and summary["parallel"] == 2
    assert set(report["results"]["sessions_by_turn"]) == {"0", "1", "2", "3"}


def _chains(recs: list[dict], lengths: list[int]) -> list[list[dict]]:
    """Split records into sessions: with ``sample`` = turn number, a chain starts at turn 0, and turn k
    joins the chain at turn k - 1 whose end is closest to WAIT_S before it (every wait here is WAIT_S)."""
    open_chains: list[list[dict]] = []
    for r in sorted(recs, key=lambda r: r["scheduled_ns"]):
        if r["sample"] == 0:
            open_chains.append([r])
            continue
        fits = [c for c in open_chains if len(c) == r["sample"] and c[-1]["end_ns"] <= r["scheduled_ns"]]
        fits.sort(key=lambda c: abs(r["scheduled_ns"] - c[-1]["end_ns"] - WAIT_S * 1e9))
        fits[0].append(r)
    assert sorted(len(c) for c in open_chains) == sorted(lengths)
    return open_chains


def test_generated_agents_send_tool_results_of_the_asked_size_and_salt_each_session(body_sim, tmp_path):
    scenario = write_scenario(
        tmp_path / "gen.yaml", scenario="concurrency", endpoint="chat", url=body_sim.url, num_requests=1,
        duration_s=0, output_len=6,
        sessions={"users": 2, "count": 4, "turns": 3, "think_time_s": 0.02, "user_len": 12,
                  "tool_result_len": 30, "salt": True, "affinity_header": "X-Session-ID"})
    before = len(_seen(body_sim.url)[0])
    res = run_cli("run", str(scenario), "--out", str(tmp_path / "out"), "--quiet")
    assert res.code == 0, res.output
    bodies, headers = (x[before:] for x in _seen(body_sim.url))
    assert len(bodies) == 12
    firsts: dict[str, set[str]] = defaultdict(set)
    for body, head in zip(bodies, headers, strict=True):
        msgs = body["messages"]
        turn = (len(msgs) - 1) // 2
        assert len(msgs) == 1 + 2 * turn and body["max_completion_tokens"] == 6
        for tool in msgs[2::2]:
            assert tool["role"] == "tool" and len(tool["content"].split()) == 30
        for call in msgs[1::2]:
            assert call["role"] == "assistant"
            assert call["tool_calls"][0]["function"]["name"].startswith("tool_")
        firsts[head["x-session-id"]].add(msgs[0]["content"].split()[0])
    assert len(firsts) == 4 and all(len(words) == 1 for words in firsts.values())
    assert len({next(iter(w)) for w in firsts.values()}) == 4  # a different salt word per session
    recs = _records(tmp_path / "out")
    assert [r["input_tokens"] for r in recs] == [r["prompt_tokens"] for r in recs]
    assert load_report(tmp_path / "out")["results"]["sessions"]["completed"] == 4


@pytest.mark.parametrize(("line", "says"), [
    ("{not json", "agents.jsonl:1: not JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "agents.jsonl:1: no assistant message"),
    ('{"messages": [{"role": "assistant", "content": "hi"}]}', "nothing before it"),
    ('{"messages": [{"content": "hi"}]}', "needs a role"),
])
def test_a_bad_session_file_exits_2_naming_file_and_line(tmp_path, line, says):
    data = tmp_path / "agents.jsonl"
    data.write_text(line + "\n")
    scenario = write_scenario(tmp_path / "s.yaml", scenario="concurrency", endpoint="chat", num_requests=1,
                              sessions={"path": str(data)})
    res = run_cli("run", str(scenario), "--out", str(tmp_path / "out"), "--quiet")
    assert res.code == 2, res.output
    assert says in res.stderr and "Traceback" not in res.output

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
    # 9 turns cannot pass early stopping; the advice names what adds queries to a session run
    reasons = " ".join(report["validity"]["reasons"])
    assert "459 turns or more" in reasons and "sessions.count" in reasons
    assert "--num-requests 459" not in reasons
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


def test_following_the_advice_more_sessions_makes_the_run_valid(tmp_path):
    """155 generated sessions x 3 turns = 465 turns, above early stopping's 459 at p99: VALID."""
    scenario = write_scenario(
        tmp_path / "many.yaml", scenario="concurrency", endpoint="chat", num_requests=1, duration_s=0,
        output_len=6, sim={"ttft_ms": 20, "itl_ms": 2},
        sessions={"users": 4, "count": 155, "turns": 3, "tool_result_len": 10, "user_len": 10})
    res = run_cli("run", str(scenario), "--out", str(tmp_path / "out"), "--quiet")
    assert res.code == 0, res.output
    report = load_report(tmp_path / "out")
    assert report["results"]["requests_completed"] == 465
    assert report["validity"] == {"valid": True, "reasons": []}


# ---- SLO tiers: the most concurrent sessions each tier allows --------------------------------------------


def test_a_sweep_over_sessions_users_finds_the_most_sessions_each_slo_tier_allows(tmp_path):
    """The simulator decodes 2 sequences at once (TTFT 20 ms, 9 more tokens at 2 ms: 38 ms a turn), so
    up to 2 sessions nothing waits (TTFT ~20 ms), 4 sessions wait one turn (~58 ms), 8 wait three
    (~134 ms): a 30 ms tier allows 2 sessions, an 80 ms tier 4, a 2 s tier all 8."""
    scenario = write_scenario(
        tmp_path / "agents.yaml", scenario="concurrency", endpoint="chat", num_requests=1, duration_s=0,
        output_len=10, issue_delay_limit_ms=5, sim={"ttft_ms": 20, "itl_ms": 2, "max_seqs": 2},
        sessions={"users": 1, "count": 8, "turns": 2, "tool_result_len": 10, "user_len": 10})
    out = tmp_path / "sweep"
    res = run_cli("sweep", str(scenario), "--param", "sessions.users=1,2,4,8", "--tier", "fast:ttft_ms=30",
                  "--tier", "medium:ttft_ms=80,tpot_ms=10", "--tier", "loose:ttft_ms=2000", "--out", str(out),
                  "--quiet")
    assert res.code == 0, res.output
    data = json.loads((out / "sweep.json").read_text())
    assert [p["row"]["concurrency"] for p in data["points"]] == [1, 2, 4, 8]
    got = {t["name"]: t["max"] for t in data["tiers"]}
    assert got == {"fast": 2, "medium": 4, "loose": 8}, [p["row"]["ttft_p99_ms"] for p in data["points"]]
    assert "tier fast (TTFT p99 <= 30 ms): up to sessions.users=2 (point 1)" in res.stdout


def test_a_tier_capacity_ends_at_the_first_point_that_misses_it():
    from loadgen.study.tiers import Tier, tier_capacity

    def point(i, users, ttft, err=0.0):
        return {"index": i, "status": "done", "values": {"sessions.users": users},
                "row": {"ttft_p99_ms": ttft, "error_rate": err, "client_limited": False}}

    points = [point(0, 1, 10), point(1, 2, 50), point(2, 4, 20), point(3, 8, 25, err=0.01)]
    caps = tier_capacity(points, "sessions.users", [Tier("t", ttft_ms=30), Tier("u", ttft_ms=100),
                                                    Tier("none", ttft_ms=5)])
    assert [(c["name"], c["max"]) for c in caps] == [("t", 1), ("u", 4), ("none", None)]


@pytest.mark.parametrize(("tier", "says"), [("fast", "expected NAME:KEY=MS"), ("x:ttft=3", "not a bound"),
                                            ("x:ttft_ms=abc", "not a number"), ("x:ttft_ms=0", "> 0")])
def test_a_bad_tier_exits_2_naming_the_flag(tmp_path, tier, says):
    res = run_cli("sweep", "concurrency", "--param", "concurrency=1,2", "--tier", tier,
                  "--out", str(tmp_path))
    assert res.code == 2 and "--tier" in res.stderr and says in res.stderr, res.output


def test_sweeping_a_field_of_a_missing_block_says_so(tmp_path):
    res = run_cli("sweep", "concurrency", "--param", "sessions.users=1,2", "--out", str(tmp_path))
    assert res.code == 2 and "no `sessions:` block" in res.stderr, res.output
    res = run_cli("sweep", "concurrency", "--param", "sessions.nope=1,2", "--out", str(tmp_path))
    assert res.code == 2 and "no field 'nope'" in res.stderr, res.output


# ---- Ctrl-C from a terminal: the whole process group ---------------------------------------------------


@pytest.mark.parametrize("sessions", [
    {"users": 4, "count": 200, "turns": 4, "think_time_s": 0.2, "user_len": 32, "tool_result_len": 50},
    {"users": 4, "turns": 50, "think_time_s": 0.2, "user_len": 32},  # chat sessions, real replies
], ids=["agentic", "chat"])
def test_ctrl_c_to_the_process_group_ends_a_session_run_with_a_partial_report(tmp_path, sessions):
    """Before: a session run had no issuer to drain, so Ctrl-C cancelled it as if nothing had been
    measured (no report). Now the first Ctrl-C ends every session before its next turn and the
    report keeps every turn measured; exit 130 and nothing of the group left."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.test_interrupts import ctrl_c_group, group_left, lines_of

    scenario = write_scenario(tmp_path / "s.yaml", scenario="concurrency", endpoint="chat", num_requests=1,
                              duration_s=0, output_len=32, sessions=sessions)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "loadgen", "run", str(scenario), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    rc, output = ctrl_c_group(proc, out, seconds=2.0)
    assert rc == 130, output
    assert "SIGINT: stopped issuing; waiting for the requests in flight to finish" in output
    report = load_report(out)
    assert report["interrupted"] is True
    r = report["results"]
    assert r["requests_failed"] == 0 and r["requests_completed"] == len(lines_of(out)) >= 5
    assert group_left(proc.pid) == {}

"""Multi-turn sessions: the history grows by exactly the previous turns and the real replies."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import pytest

from loadgen.client.client import Client, ClientOptions
from loadgen.records import RequestRecord
from loadgen.schedule.trace import seeded_rngs
from loadgen.servers.sim import SimConfig, SimServer
from loadgen.settings import Settings
from loadgen.workload.conversations import client_sender, plan_sessions, run_sessions, turn_summary
from loadgen.workload.tokens import WordCounter

EXACT = WordCounter(exact=True)


def _settings(users=3, turns=4, think=0.0, **kw):
    return Settings(scenario="concurrency", endpoint="chat", input_len=kw.pop("input_len", 10),
                    output_len=kw.pop("output_len", 6),
                    sessions={"users": users, "turns": turns, "think_time_s": think, **kw})


@dataclass
class FakeRecord:
    sent_ns: int
    first_token_ns: int | None
    error_class: str | None = None


def test_history_and_think_times_with_a_fake_server_in_virtual_time():
    s = _settings(users=2, turns=3, think=2.0)
    plan = plan_sessions(s.sessions, s, EXACT, seeded_rngs(1))
    assert plan.think_s[:, 0].tolist() == [0, 0] and (plan.think_s[:, 1:] > 0).all()
    now = [0.0]
    sent: list[list[dict]] = []
    slept: list[float] = []

    async def sleep(dt):
        slept.append(dt)
        now[0] += dt

    async def send(messages, output_len):
        sent.append(messages)
        reply = " ".join(f"r{len(sent)}_{i}" for i in range(output_len))
        return FakeRecord(int(now[0] * 1e9), int(now[0] * 1e9) + 1_000_000), reply

    results = asyncio.run(run_sessions(plan, send, EXACT, sleep=sleep))
    assert len(results) == 6 and sorted(slept) == sorted(plan.think_s[:, 1:].ravel().tolist())
    for u in range(2):
        turns = sorted((r for r in results if r.user == u), key=lambda r: r.turn)
        for k, r in enumerate(turns):
            assert r.messages == 2 * k + 1
            expect = sum(10 + 6 for _ in range(k)) + 10  # earlier user turns and replies, then this one
            assert r.input_tokens == expect
    # the assistant messages sent are the replies received, verbatim
    last = max(sent, key=len)
    replies = {r.reply for r in results}
    assert all(m["content"] in replies for m in last if m["role"] == "assistant")
    assert turn_summary(results)[2]["ttft_ms"]["p50"] == pytest.approx(1.0)


def test_a_failed_turn_ends_that_users_conversation():
    s = _settings(users=2, turns=3)
    plan = plan_sessions(s.sessions, s, EXACT, seeded_rngs(0))
    calls = [0]

    async def send(messages, output_len):
        calls[0] += 1
        bad = len(messages) == 3 and messages[0]["content"] == plan.user_messages[0][0]
        return FakeRecord(0, None if bad else 5, "http_status" if bad else None), "ok"

    results = asyncio.run(run_sessions(plan, send, EXACT))
    assert sorted((r.user, r.turn) for r in results) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    summary = turn_summary(results)
    assert summary[1]["failed"] == 1 and summary[1]["completed"] == 1


class TextClient(Client):
    """Stand-in for the ``fill(..., keep_text=True) -> str`` hook asked of loadgen.client.client: the
    client already collects the text pieces when it has a tokenizer; this keeps them per record."""

    def __init__(self, *args, **kw):
        super().__init__(*args, tokenizer=EXACT, **kw)
        self.texts: dict[int, str] = {}

    def _count_output(self, rec, usage, pieces, *rest):
        self.texts[id(rec)] = "".join(pieces)
        super()._count_output(rec, usage, pieces, *rest)

    async def fill(self, rec, sample, *, keep_text=False):
        await super().fill(rec, sample)
        return self.texts.pop(id(rec), None) if keep_text else None


def test_input_tokens_grow_per_turn_exactly_as_the_history_says_on_the_simulator():
    """Real client, real HTTP, the simulator's chat usage: prompt_tokens = words of every message +
    chat_template_tokens per message. Turn k carries k earlier user turns and k replies."""
    template = 3
    s = _settings(users=3, turns=5, think=0.01, input_len=12, output_len=7,
                  user_len={"kind": "uniform", "min": 5, "max": 15})
    plan = plan_sessions(s.sessions, s, EXACT, seeded_rngs(2))
    records: list[RequestRecord] = []

    async def go():
        async with SimServer(SimConfig(ttft_ms=5, itl_ms=1, chat_template_tokens=template)) as url:
            client = TextClient(None, ClientOptions(base_url=url, model="sim-model", endpoint="chat"))
            client.t0_ns = time.perf_counter_ns()
            try:
                return await run_sessions(plan, client_sender(client, EXACT, records.append), EXACT)
            finally:
                await client.close()

    results = asyncio.run(go())
    assert len(results) == 15 and len(records) == 15 and all(r.record.ok for r in results)
    user_lens = np.array([[len(m.split()) for m in msgs] for msgs in plan.user_messages])
    for u in range(3):
        turns = sorted((r for r in results if r.user == u), key=lambda r: r.turn)
        for k, r in enumerate(turns):
            assert len(r.reply.split()) == 7  # the generated text really came back
            history = int(user_lens[u, : k + 1].sum()) + 7 * k
            assert r.input_tokens == history == r.record.input_tokens
            assert r.record.prompt_tokens == history + template * (2 * k + 1)
            assert r.record.output_tokens == 7
    summary = turn_summary(results)
    means = [summary[k]["input_tokens"]["mean"] for k in range(5)]
    assert np.all(np.diff(means) > 0)
    assert all(summary[k]["completed"] == 3 for k in range(5))

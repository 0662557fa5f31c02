"""Multi-turn chat sessions: virtual users whose conversation history grows turn by turn.

``sessions: {users: U, turns: K, think_time_s: T, user_len: L}``: each of U users runs K turns. Turn k
sends the whole conversation so far — every earlier user message and the assistant's *actual* replies
(the generated text the server streamed back), then the new user message — and waits for the reply. A
user then thinks for an exponential time of mean T (seeded) before the next turn, counted from the end
of the reply. Users run concurrently and independently (a closed loop per user).

Everything random is drawn up front from the run seed: user messages (``prompts`` stream, exactly L
tokens each for the counter in use), output lengths (``lengths``), think times (``schedule``); so the
same seed gives the same conversations up to the server's replies.

A failed turn ends that user's conversation (there is no reply to continue from); it stays in the
results with its error. ``input_tokens`` of a turn is the counter's count of the joined message contents
(chat-template tokens are not included; the server's ``usage.prompt_tokens`` is on the record).

The request itself goes through a ``send(messages, output_len) -> (record, text)`` function, so this
module runs with a fake in unit tests and with the real client through :func:`client_sender`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from loadgen.records import RequestRecord
from loadgen.settings import Settings
from loadgen.specs import SessionSpec
from loadgen.workload.samples import Sample, draw_lengths, word_prompt
from loadgen.workload.tokens import TokenCounter, single_token_words

Message = dict[str, str]


class RecordLike(Protocol):
    sent_ns: int
    first_token_ns: int | None
    error_class: str | None


SendFn = Callable[[list[Message], int], Awaitable[tuple[Any, str]]]
SleepFn = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class SessionPlan:
    """What every user will say, ask for and wait, fixed from the seed before the first request."""

    user_messages: list[list[str]]  # [user][turn] -> text
    output_lens: np.ndarray  # (users, turns) int
    think_s: np.ndarray  # (users, turns) float; entry [u, k] is waited before turn k (0 for k = 0)


def plan_sessions(
    spec: SessionSpec, settings: Settings, counter: TokenCounter, rngs: dict[str, np.random.Generator]
) -> SessionPlan:
    pool, overhead = single_token_words(counter)
    words = np.array(pool)
    n = spec.users * spec.turns
    lens = draw_lengths(spec.user_len or settings.input_len, n, rngs["lengths"]).reshape(
        spec.users, spec.turns)
    outs = draw_lengths(settings.output_len, n, rngs["lengths"]).reshape(spec.users, spec.turns)
    msgs = [[word_prompt(words, max(1, int(lens[u, k]) - overhead), rngs["prompts"])
             for k in range(spec.turns)] for u in range(spec.users)]
    think = np.zeros((spec.users, spec.turns))
    if spec.think_time_s > 0 and spec.turns > 1:
        think[:, 1:] = rngs["schedule"].exponential(spec.think_time_s, size=(spec.users, spec.turns - 1))
    return SessionPlan(msgs, outs, think)


@dataclass
class TurnResult:
    user: int
    turn: int  # 0-based
    messages: int  # messages sent in this turn's request
    input_tokens: int  # counter's count of the joined contents sent
    output_len: int  # asked for
    record: Any  # what send returned (a RequestRecord with the real client)
    reply: str  # generated text; "" when the turn failed


async def run_sessions(
    plan: SessionPlan,
    send: SendFn,
    counter: TokenCounter,
    *,
    sleep: SleepFn = asyncio.sleep,
    on_turn: Callable[[TurnResult], None] | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> list[TurnResult]:
    """Run every user's conversation concurrently; return the turns in completion order.

    ``sleep`` is the think-time wait (inject a virtual clock in tests). ``send`` must not raise for a
    failed request — it returns a record with ``error_class`` set (cancellation propagates and ends
    the whole run, as everywhere in loadgen). ``stopping()`` true ends every conversation before its
    next turn.
    """
    results: list[TurnResult] = []

    async def user(u: int) -> None:
        history: list[Message] = []
        for k, text in enumerate(plan.user_messages[u]):
            if plan.think_s[u, k] > 0:
                await sleep(float(plan.think_s[u, k]))
            if stopping():  # an interrupt: no further turn
                return
            messages = [*history, {"role": "user", "content": text}]
            n_in = counter.count(["\n".join(m["content"] for m in messages)])[0]
            out_len = int(plan.output_lens[u, k])
            record, reply = await send([dict(m) for m in messages], out_len)
            failed = getattr(record, "error_class", None) is not None
            res = TurnResult(u, k, len(messages), n_in, out_len, record, "" if failed else reply)
            results.append(res)
            if on_turn is not None:
                on_turn(res)
            if failed:
                return
            history = [*messages, {"role": "assistant", "content": reply}]

    async with asyncio.TaskGroup() as tg:
        for u in range(len(plan.user_messages)):
            tg.create_task(user(u))
    return results


def turn_summary(results: Sequence[TurnResult]) -> dict[int, dict[str, Any]]:
    """Per turn number (0-based): completed/failed counts, TTFT (ms from send: mean, p50, p90, p99)
    and input tokens (mean, min, max) of the requests sent."""
    out: dict[int, dict[str, Any]] = {}
    for k in sorted({r.turn for r in results}):
        turns = [r for r in results if r.turn == k]
        ok = [r.record for r in turns if r.record.error_class is None and r.record.first_token_ns is not None]
        ttft = np.array([(rec.first_token_ns - rec.sent_ns) / 1e6 for rec in ok])
        ins = np.array([r.input_tokens for r in turns])
        out[k] = {
            "completed": len(ok),
            "failed": len(turns) - len(ok),
            "ttft_ms": None if not len(ttft) else {
                "mean": float(ttft.mean()), **{f"p{p}": float(np.percentile(ttft, p)) for p in (50, 90, 99)}
            },
            "input_tokens": {"mean": float(ins.mean()), "min": int(ins.min()), "max": int(ins.max())},
        }
    return out


# ---- the real client -------------------------------------------------------------------------------------


class TextClient(Protocol):
    """The client hook sessions need: ``fill`` that also returns the generated text."""

    @property
    def t0_ns(self) -> int: ...

    async def fill(self, rec: RequestRecord, sample: Sample, *, keep_text: bool = False) -> str | None: ...


def client_sender(
    client: TextClient,
    counter: TokenCounter | None = None,
    on_record: Callable[[RequestRecord], None] | None = None,
) -> SendFn:
    """A ``send`` over a chat-endpoint client: one RequestRecord per turn, scheduled = issue time
    (a closed loop, as SingleStream); ``input_tokens`` from ``counter`` (joined contents) when given.
    ``on_record`` receives each finished record (the JSONL writer, the exporter)."""
    index = 0

    async def send(messages: list[Message], output_len: int) -> tuple[RequestRecord, str]:
        nonlocal index
        now = time.perf_counter_ns() - client.t0_ns
        rec = RequestRecord(index=index, sample=0, query=index, scheduled_ns=now, sent_ns=0, end_ns=0)
        index += 1
        n_in = counter.count(["\n".join(m["content"] for m in messages)])[0] if counter else 0
        sample = Sample(None, tuple(messages), n_in, output_len)
        text = await client.fill(rec, sample, keep_text=True)
        if on_record is not None:
            on_record(rec)
        return rec, text or ""

    return send

"""Agentic sessions: conversations whose turns carry tool calls, tool results and waits, replayed as
recorded — from a JSONL file or generated from the seed.

A session is a list of OpenAI chat messages. Every ``assistant`` message is one **turn**: loadgen sends
every message before it (the recorded history — earlier assistant messages with their ``tool_calls``,
``tool`` results — exactly as the file says, so each turn's input is known before the run) and asks for
that message's length. A turn is issued only when the previous turn of its session has ended and its
wait has passed (tool execution, a user thinking): one turn in flight per session. A turn with no wait
is issued at once, as a closed loop's next query (scheduled = issued). ``parallel`` sessions
run at once (``sessions.users``); when one ends, the next session starts.

File format (``sessions.path``), one session per line::

    {"id": "s1", "messages": [
      {"role": "system", "content": "You are a coding agent."},
      {"role": "user", "content": "Fix the failing test."},
      {"role": "assistant", "content": null, "output_tokens": 24,
       "tool_calls": [{"id": "c1", "type": "function",
                       "function": {"name": "run_tests", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "1 failed: test_x ...", "wait_s": 1.5},
      {"role": "assistant", "content": "The test failed because ..."}]}

``id`` is optional (default: the line number). ``wait_s`` (on any message after the previous assistant
message, summed) is the wait before the turn, from the end of the previous turn; without one the turn
waits ``sessions.think_time_s``. ``output_tokens`` on an assistant message is the length asked for;
without it, the message's own tokens (content and tool-call arguments). ShareGPT's ``conversations``
(``from``: human/gpt/system/tool, ``value``) is read too.

Synthetic agents (``sessions.tool_result_len``): each of ``sessions.count`` sessions (default
``users``) has ``turns`` turns; turn 0 sends one user message of ``user_len`` tokens, and every later
turn adds the previous turn's reply as an assistant tool call and a tool result of ``tool_result_len``
tokens, after an exponential wait of mean ``think_time_s``. Everything is drawn from the run seed.

``salt``: each session's first message starts with a word unique to the session, so unrelated sessions
never share a cached prefix. ``affinity_header`` (e.g. ``X-Session-ID``) is sent on every turn with the
session's id, for routers that keep a session on one replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen.errors import ConfigError
from loadgen.settings import Settings
from loadgen.specs import SessionSpec
from loadgen.workload.samples import Sample, draw_lengths, word_prompt
from loadgen.workload.tokens import TokenCounter, single_token_words

_KEEP = ("role", "content", "tool_calls", "tool_call_id", "name")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "tool": "tool", "function": "tool", "observation": "tool"}


@dataclass(frozen=True)
class AgentTurn:
    sample: Sample  # the messages sent (sample.messages), their tokens, the length asked for
    wait_s: float  # before this turn, from the end of the previous one (0 for the first)


@dataclass(frozen=True)
class AgentSession:
    id: str
    turns: tuple[AgentTurn, ...]


def _text(msg: dict[str, Any]) -> str:
    """The message's words as a counter sees them: its content and its tool calls' names and arguments."""
    parts = [msg["content"]] if isinstance(msg.get("content"), str) else []
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            parts += [str(fn.get("name") or ""), str(fn.get("arguments") or "")]
    return " ".join(p for p in parts if p)


def _salted(messages: list[dict[str, Any]], sid: str) -> list[dict[str, Any]]:
    first = dict(messages[0])
    word = "s" + hashlib.blake2b(sid.encode(), digest_size=6).hexdigest()
    first["content"] = f"{word} {first.get('content') or ''}".rstrip()
    return [first, *messages[1:]]


def build_session(sid: str, messages: list[dict[str, Any]], counter: TokenCounter, spec: SessionSpec,
                  where: str) -> AgentSession:
    """One session's turns from its messages (see the module docstring); ``where`` names it in errors."""
    if spec.salt and messages:
        messages = _salted(messages, sid)
    turns: list[AgentTurn] = []
    wait: float | None = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant", "tool",
                                                                  "developer"):
            raise ConfigError(f"{where}: message {i} needs a role of system, user, assistant or tool; "
                              f"got {str(msg)[:80]}")
        given = msg.get("wait_s")
        if given is not None:
            if not isinstance(given, int | float) or given < 0:
                raise ConfigError(f"{where}: message {i}: wait_s must be a number of seconds >= 0")
            wait = (wait or 0.0) + float(given)
        if msg["role"] != "assistant":
            continue
        history = tuple({k: m[k] for k in _KEEP if k in m} for m in messages[:i])
        if not history:
            raise ConfigError(f"{where}: message {i} is an assistant message with nothing before it")
        n_out = msg.get("output_tokens")
        if n_out is None:
            n_out = max(1, counter.count([_text(msg)])[0]) if _text(msg) else 1
        if not isinstance(n_out, int) or isinstance(n_out, bool) or n_out < 1:
            raise ConfigError(f"{where}: message {i}: output_tokens must be an integer >= 1")
        n_in = counter.count(["\n".join(_text(m) for m in history)])[0]
        default = spec.think_time_s if turns else 0.0
        turns.append(AgentTurn(Sample(None, history, n_in, n_out), default if wait is None else wait))
        wait = None
    if not turns:
        raise ConfigError(f"{where}: no assistant message, so no turn to send; each assistant message is "
                          "one request (the messages before it are its input)")
    return AgentSession(sid, tuple(turns))


def read_agent_file(path: Path, counter: TokenCounter, spec: SessionSpec) -> list[AgentSession]:
    """The sessions of a JSONL file (module docstring); errors name the file and line."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"sessions.path {path}: cannot read it ({exc.strerror}); give a JSONL file "
                          "of sessions") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from None
        messages = obj.get("messages") if isinstance(obj, dict) else None
        if messages is None and isinstance(obj, dict) and isinstance(obj.get("conversations"), list):
            messages = [{"role": _SHAREGPT_ROLES.get(str(m.get("from")), str(m.get("from"))),
                         "content": m.get("value")} for m in obj["conversations"] if isinstance(m, dict)]
        if not isinstance(messages, list) or not messages:
            raise ConfigError(f"{where}: expected an object with a non-empty `messages` list (OpenAI "
                              "chat messages) or ShareGPT `conversations`")
        out.append(build_session(str(obj.get("id", n)), messages, counter, spec, where))
    if not out:
        raise ConfigError(f"sessions.path {path}: no session in it (one JSON object per line)")
    return out


def synthetic_agents(spec: SessionSpec, settings: Settings, counter: TokenCounter,
                     rngs: dict[str, np.random.Generator]) -> list[AgentSession]:
    """Seeded agent loops: a user message, then per turn a tool call and its result (module docstring)."""
    assert spec.tool_result_len is not None
    pool, overhead = single_token_words(counter)
    words = np.array(pool)
    count, k = spec.count or spec.users, spec.turns
    user_lens = draw_lengths(spec.user_len or settings.input_len, count, rngs["lengths"])
    tool_lens = draw_lengths(spec.tool_result_len, count * k, rngs["lengths"]).reshape(count, k)
    outs = draw_lengths(settings.output_len, count * k, rngs["lengths"]).reshape(count, k)
    waits = (rngs["schedule"].exponential(spec.think_time_s, size=(count, k)) if spec.think_time_s > 0
             else np.zeros((count, k)))
    sessions = []
    for u in range(count):
        first = word_prompt(words, max(1, int(user_lens[u]) - overhead), rngs["prompts"])
        msgs: list[dict[str, Any]] = [{"role": "user", "content": first}]
        for t in range(k):
            reply: dict[str, Any] = {"role": "assistant", "content": None, "output_tokens": int(outs[u, t])}
            msgs.append(reply)
            if t == k - 1:
                break  # the final answer
            call = f"call_{u}_{t}"
            reply["tool_calls"] = [{"id": call, "type": "function",
                                    "function": {"name": f"tool_{t}", "arguments": "{}"}}]
            msgs.append({"role": "tool", "tool_call_id": call, "wait_s": float(waits[u, t + 1]),
                         "content": word_prompt(words, max(1, int(tool_lens[u, t]) - overhead),
                                                rngs["prompts"])})
        sessions.append(build_session(f"agent-{u}", msgs, counter, spec, f"agent {u}"))
    return sessions


# ---- running them --------------------------------------------------------------------------------------


@dataclass
class AgentTurnResult:
    user: int  # the session's position (named as TurnResult's, for conversations.turn_summary)
    turn: int
    input_tokens: int
    record: Any


SendTurn = Callable[[AgentSession, int, int], Awaitable[Any]]  # (session, turn, scheduled_ns) -> record


async def run_agents(sessions: Sequence[AgentSession], send: SendTurn, *, parallel: int,
                     now_ns: Callable[[], int], sleep_until: Callable[[int], Awaitable[None]],
                     stopping: Callable[[], bool] = lambda: False) -> list[AgentTurnResult]:
    """Run the sessions, ``parallel`` at once, each turn after the previous one's end plus its wait
    (at once, as a closed loop, when it has no wait).
    ``send`` returns the finished record (it never raises for a failed request); a failed turn ends its
    session; ``stopping()`` true ends every session before its next turn (an interrupt). Returns the
    turns in completion order."""
    import asyncio

    results: list[AgentTurnResult] = []
    queue = list(enumerate(sessions))[::-1]

    async def lane() -> None:
        while queue and not stopping():
            u, session = queue.pop()
            end = 0
            for t, turn in enumerate(session.turns):
                # a wait counts from the end of the previous reply; a turn with none is issued at once,
                # as a closed loop's next query (its scheduled time is its issue time)
                due = end + round(turn.wait_s * 1e9) if t and turn.wait_s > 0 else now_ns()
                await sleep_until(due)
                if stopping():
                    break
                rec = await send(session, t, due)
                results.append(AgentTurnResult(u, t, turn.sample.input_tokens, rec))
                if getattr(rec, "error_class", None) is not None:
                    break
                end = getattr(rec, "end_ns", 0) or now_ns()

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(parallel, len(sessions))):
            tg.create_task(lane())
    return results


def session_summary(results: Sequence[AgentTurnResult], sessions: Sequence[AgentSession],
                    parallel: int) -> dict[str, Any]:
    """Per session: completed (every turn succeeded) and failed counts, turns, duration (first send to
    last end) and time per turn, in s and ms (mean, p50, p90, p99)."""
    by: dict[int, list[AgentTurnResult]] = {}
    for r in results:
        by.setdefault(r.user, []).append(r)
    done = [u for u, rs in by.items() if len(rs) == len(sessions[u].turns)
            and all(r.record.error_class is None for r in rs)]
    spans = np.array([(max(r.record.end_ns for r in by[u]) - min(r.record.sent_ns for r in by[u])) / 1e9
                      for u in done])
    per_turn = np.array([spans[i] * 1e3 / len(sessions[u].turns) for i, u in enumerate(done)])

    def dist(x: np.ndarray) -> dict[str, float] | None:
        if not len(x):
            return None
        return {"mean": float(x.mean()), **{f"p{p}": float(np.percentile(x, p)) for p in (50, 90, 99)}}

    return {"sessions": len(sessions), "parallel": parallel, "started": len(by), "completed": len(done),
            "failed": len(by) - len(done), "turns": sum(len(s.turns) for s in sessions),
            "duration_s": dist(spans), "time_per_turn_ms": dist(per_turn)}

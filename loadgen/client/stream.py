"""From response bytes to a record: the event-stream state of one request, and the token counts.

:class:`StreamState` reads the ``data:`` events of ``/v1/completions`` and ``/v1/chat/completions``
(``choices[0]`` deltas, a final ``[DONE]``); :class:`ResponsesState` reads the typed events of
``/v1/responses`` (``response.output_text.delta``, ``response.reasoning_text.delta``,
``response.completed``). Both record one (timestamp, tokens) pair per chunk that carried generated
output of any kind — thinking, answer text or a tool call — and the time of the first chunk of the
*answer* (anything but thinking), so a reasoning model's time to first answer is measured beside its
TTFT. :func:`count_output` settles the record's token counts once the response has ended.
"""

from __future__ import annotations

from typing import Any

import orjson

from loadgen.client.sse import SseParser
from loadgen.records import RequestRecord
from loadgen.workload.tokens import TokenCounter


class StreamState:
    """Turns the bytes of one response body into the fields of its record, as they arrive.

    ``feed(data, now)`` is the per-read hot path shared by both transports: find event boundaries,
    parse each event with orjson, append (timestamp, tokens) for chunks that carry generated output.
    It returns False when the stream must stop (a malformed or error event). ``thought`` counts the
    tokens of chunks that carried thinking only, before the answer began.
    """

    __slots__ = (
        "_keep_text", "_parser", "_prev", "_rec", "_text", "_thinking", "done", "finished", "last_ns",
        "pieces", "thought", "usage",
    )

    def __init__(self, rec: RequestRecord, text: Any, keep_text: bool, thinking: Any = None) -> None:
        self._rec = rec
        self._text = text
        self._thinking = thinking
        self._keep_text = keep_text
        self._parser = SseParser()
        self._prev = 0
        self.thought = 0
        self.pieces: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.finished = False
        self.last_ns = 0

    def _bad(self, payload: bytes, obj: Any, now: int) -> None:
        """Fail the record for an event that is not a JSON object, or is an error event."""
        rec = self._rec
        rec.end_ns = now
        if obj is None:
            fail(rec, "malformed", f"event is not JSON: {payload[:80]!r}")
        elif type(obj) is not dict:
            fail(rec, "malformed", f"event is not a JSON object: {payload[:80]!r}")
        else:
            fail(rec, "server_error", f"error event: {error_message(payload)}")

    def _chunk(self, piece: str, k: int, thinking: bool, now: int) -> None:
        """Record a chunk of generated output (the Responses reader's path; feed inlines it)."""
        rec = self._rec
        if rec.first_token_ns is None:
            rec.first_token_ns = now
        if rec.first_answer_ns is None:
            if thinking:
                self.thought += k
            else:
                rec.first_answer_ns = now
        rec.chunk_ns.append(now)
        rec.chunk_tokens.append(k)
        if self._keep_text:
            self.pieces.append(piece)

    def feed(self, data: bytes, now: int) -> bool:  # noqa: PLR0912 - inline on purpose, see below
        # The per-read hot path: everything for a content chunk is inline (no helper calls); whether a
        # chunk is thinking is asked only until the answer has begun.
        self.last_ns = now
        rec = self._rec
        for name, payload in self._parser.feed(data):
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self._bad(payload, None, now)
                return False
            if type(obj) is not dict or name == b"error" or "error" in obj or obj.get("object") == "error":
                self._bad(payload, obj, now)
                return False
            u = obj.get("usage")
            if u:
                self.usage = u
            choices = obj.get("choices")
            if not choices:
                continue
            choice = choices[0]
            piece = self._text(choice)
            if piece:
                k = 1
                done = u.get("completion_tokens") if u else None
                if type(done) is int:  # continuous usage stats: tokens since the last chunk
                    k = max(1, done - self._prev)
                    self._prev = done
                if rec.first_answer_ns is None:
                    if rec.first_token_ns is None:
                        rec.first_token_ns = now
                    if self._thinking is not None and self._thinking(choice):
                        self.thought += k
                    else:
                        rec.first_answer_ns = now
                rec.chunk_ns.append(now)
                rec.chunk_tokens.append(k)
                if self._keep_text:
                    self.pieces.append(piece)
            if choice.get("finish_reason"):
                self.finished = True
        return True

    def finish(self, now: int) -> None:
        rec = self._rec
        if rec.end_ns == 0:
            rec.end_ns = self.last_ns or now
        if rec.error_class is None and not (self.done or self.finished):
            pending = self._parser.pending
            left = f" ({len(pending)} bytes of an unfinished event)" if pending else ""
            fail(rec, "incomplete", f"stream ended without [DONE] or finish_reason{left}")


#: Responses API events that carry generated output: event type -> whether it is thinking.
RESPONSES_DELTAS = {
    "response.output_text.delta": False,
    "response.function_call_arguments.delta": False,
    "response.reasoning_text.delta": True,
    "response.reasoning_summary_text.delta": True,
}
#: Events that end a response (``incomplete``: stopped at ``max_output_tokens``, still a full answer).
RESPONSES_END = ("response.completed", "response.incomplete")


class ResponsesState(StreamState):
    """The typed event stream of ``/v1/responses``: one output event per delta, no ``[DONE]``; the
    final ``response.completed`` carries the usage (normalised to the chat spelling)."""

    __slots__ = ()

    def feed(self, data: bytes, now: int) -> bool:
        self.last_ns = now
        for name, payload in self._parser.feed(data):
            if payload == b"[DONE]":  # not the Responses API's, but a proxy may add it
                self.done = True
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self._bad(payload, None, now)
                return False
            kind = obj.get("type") if type(obj) is dict else None
            if (type(obj) is not dict or name == b"error" or kind in ("error", "response.failed")
                    or ("error" in obj and obj["error"] is not None)):
                self._bad(payload, obj, now)
                return False
            thinking = RESPONSES_DELTAS.get(kind) if type(kind) is str else None
            if thinking is not None:
                piece = obj.get("delta")
                if piece and type(piece) is str:
                    self._chunk(piece, 1, thinking, now)
            elif kind in RESPONSES_END:
                response = obj.get("response")
                if isinstance(response, dict):
                    self.usage = responses_usage(response.get("usage"))
                self.finished = True
        return True


def responses_usage(u: Any) -> dict[str, Any] | None:
    """The Responses API's usage (``input_tokens``, ``output_tokens``, ``*_tokens_details``) in the
    chat spelling the rest of the client reads (``prompt_tokens``, ``completion_tokens`` ...)."""
    if not isinstance(u, dict):
        return None
    out: dict[str, Any] = {"prompt_tokens": u.get("input_tokens"),
                           "completion_tokens": u.get("output_tokens")}
    details = u.get("input_tokens_details")
    if isinstance(details, dict):
        out["prompt_tokens_details"] = {"cached_tokens": details.get("cached_tokens")}
    details = u.get("output_tokens_details")
    if isinstance(details, dict):
        out["completion_tokens_details"] = {"reasoning_tokens": details.get("reasoning_tokens")}
    return out


def count_output(rec: RequestRecord, usage: dict[str, Any] | None, pieces: list[str], thought: int,
                 tokenizer: TokenCounter | None) -> None:
    """Settle ``output_tokens`` (and where it came from), the server's prompt and cached tokens, and
    ``reasoning_tokens``: the server's ``completion_tokens_details.reasoning_tokens`` when it gave one,
    else the tokens of the thinking chunks counted before the answer (None when there were none)."""
    details = usage.get("completion_tokens_details") if usage else None
    said = details.get("reasoning_tokens") if isinstance(details, dict) else None
    rec.reasoning_tokens = said if type(said) is int else (thought or None)
    if usage and "completion_tokens" not in usage and isinstance(usage.get("prompt_tokens"), int):
        rec.prompt_tokens = usage["prompt_tokens"]  # an embeddings answer: input only
    if usage and isinstance(usage.get("completion_tokens"), int):
        rec.output_tokens = usage["completion_tokens"]
        rec.tokens_source = "usage"
        spread_tokens(rec)
        if isinstance(usage.get("prompt_tokens"), int):
            rec.prompt_tokens = usage["prompt_tokens"]
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            rec.cached_tokens = details["cached_tokens"]
    elif tokenizer is not None and pieces:
        rec.output_tokens = tokenizer.count(["".join(pieces)])[0]
        rec.tokens_source = "tokenizer"
    else:
        rec.output_tokens = sum(rec.chunk_tokens)
        rec.tokens_source = "chunks"


def spread_tokens(rec: RequestRecord) -> None:
    """When usage counts more tokens than the chunks said (a server that sends several tokens per
    chunk without per-chunk usage), spread the extra evenly over the chunks after the first, so that
    ITL is per token and not per chunk. Exact when the server gave per-chunk usage (nothing to do)."""
    chunks = rec.chunk_tokens
    extra = rec.output_tokens - sum(chunks)
    if extra <= 0 or len(chunks) < 2:
        return
    per, left = divmod(extra, len(chunks) - 1)
    for i in range(1, len(chunks)):
        chunks[i] += per + (1 if i <= left else 0)


def fail(rec: RequestRecord, cls: str, message: str) -> None:
    """Mark ``rec`` failed with ``cls`` (an ``ERROR_CLASSES`` key) unless it already failed."""
    if rec.error_class is None:
        rec.error_class = cls
        rec.error = message


def error_message(raw: bytes) -> str:
    """The server's error text, from OpenAI/vLLM error JSON when possible."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
        response = obj.get("response")  # a Responses API response.failed event
        if isinstance(response, dict) and isinstance(response.get("error"), dict):
            return str(response["error"].get("message"))[:300]
    return raw[:200].decode("utf-8", "replace")

"""The simulator's ``/v1/responses`` (OpenAI Responses API, as vLLM serves it: typed SSE events or one
JSON response) and the pooling requests ``/v1/embeddings``, ``/v1/rerank`` and ``/v1/score`` (one slot for
the prefill, then the vectors or scores).

A stream is ``response.created``, then one ``response.reasoning_text.delta`` per chunk of the thinking
phase (``SimConfig.reasoning_tokens``) and one ``response.output_text.delta`` per chunk of the answer,
and last ``response.completed`` carrying the response with its usage (``input_tokens``,
``output_tokens``, ``output_tokens_details.reasoning_tokens``). There is no ``[DONE]``. The faults
``disconnect_mid_stream`` and ``error_event`` (an ``error`` event) apply; the others are chat's.
"""

from __future__ import annotations

from typing import Any

import orjson

from loadgen.servers.sim.engine import Seq
from loadgen.servers.sim.sinks import JsonSink, StreamSink, error_body


def _usage(sink: Any, completion: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": sink.n_prompt, "output_tokens": completion,
        "total_tokens": sink.n_prompt + completion,
        "output_tokens_details": {"reasoning_tokens": min(sink.reasoning, completion)},
    }
    if sink.cached >= 0:
        usage["input_tokens_details"] = {"cached_tokens": sink.cached}
    return usage


def _response(sink: Any, hi: int | None) -> dict[str, Any]:
    """The response object: ``in_progress`` with no output (``hi`` None), else ``completed``."""
    app = sink.app
    out: dict[str, Any] = {"id": sink.rid, "object": "response", "created_at": app.created,
                           "model": app.cfg.model, "status": "in_progress", "output": [], "usage": None}
    if hi is None:
        return out
    cut = min(sink.reasoning, hi)
    output: list[dict[str, Any]] = []
    if cut:
        output.append({"type": "reasoning", "id": "rs_" + sink.rid,
                       "content": [{"type": "reasoning_text", "text": app.text(sink.base, 1, cut)}]})
    if cut < hi:
        output.append({"type": "message", "id": "msg_" + sink.rid, "role": "assistant", "status": "completed",
                       "content": [{"type": "output_text", "text": app.text(sink.base, cut + 1, hi),
                                    "annotations": []}]})
    out.update(status="completed", output=output, usage=_usage(sink, hi))
    return out


def _event(kind: str, seq_no: int, **fields: Any) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (kind.encode(), orjson.dumps({"type": kind, "sequence_number": seq_no,
                                                                      **fields}))


class ResponsesStreamSink(StreamSink):
    """Streams a response as the Responses API's typed events."""

    __slots__ = ("n_events",)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.n_events = 0

    def on_chunk(self, seq: Seq, lo: int, hi: int, final: bool) -> bool:
        conn, app, fault = self.conn, self.app, self.fault
        if conn.closed:
            return False
        if fault and seq.chunks == self.after + 1:
            if fault == "disconnect_mid_stream":
                app.count_fault(fault)
                conn.abort()
                return False
            if fault == "error_event":
                app.count_fault(fault)
                err = error_body(500, "Injected fault error_event", "InternalServerError")
                conn.end_stream(_event("error", self._next(), code="500", message=err["message"], param=None))
                return False
        body = b""
        if lo == 1:
            body += _event("response.created", self._next(), response=_response(self, None))
        r = self.reasoning
        if r and lo <= r:
            cut = min(hi, r)
            body += _event("response.reasoning_text.delta", self._next(), item_id="rs_" + self.rid,
                           output_index=0, content_index=0, delta=app.text(self.base, lo, cut))
            lo = cut + 1
        if lo <= hi:
            body += _event("response.output_text.delta", self._next(), item_id="msg_" + self.rid,
                           output_index=1 if r else 0, content_index=0, delta=app.text(self.base, lo, hi),
                           logprobs=[])
        if not final:
            conn.write_chunk(body)
            return True
        conn.end_stream(body + _event("response.completed", self._next(), response=_response(self, hi)))
        app.count("completed")
        return True

    def _next(self) -> int:
        self.n_events += 1
        return self.n_events - 1


class ResponsesJsonSink(JsonSink):
    """One Responses API JSON body at the last token's due time."""

    __slots__ = ()

    def on_chunk(self, seq: Seq, lo: int, hi: int, final: bool) -> bool:
        conn, app, fault = self.conn, self.app, self.fault
        if conn.closed:
            return False
        if fault == "disconnect_mid_stream" and seq.chunks == self.after + 1:
            app.count_fault(fault)
            conn.abort()
            return False
        if not final:
            return True
        conn.send(200, orjson.dumps(_response(self, hi)))
        app.count("completed")
        return True


EMBED_DIM = 8


class EmbeddingSink(JsonSink):
    """A pooling answer when the request's one "token" is due: its latency is the slot wait plus
    ``ttft_ms + prefill_ms_per_token · input tokens``, the prefill a pooling model runs. ``api`` says
    which answer: embeddings (vectors), rerank (results sorted by relevance) or score (one per pair)."""

    __slots__ = ("api", "inputs")

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.inputs = 1
        self.api = "embeddings"

    def on_chunk(self, seq: Seq, lo: int, hi: int, final: bool) -> bool:
        conn, app = self.conn, self.app
        if conn.closed:
            return False
        usage = {"prompt_tokens": self.n_prompt, "total_tokens": self.n_prompt}
        scores = [((self.base + i * 31) % 97) / 97.0 for i in range(self.inputs)]
        answer: dict[str, Any]
        if self.api == "rerank":
            order = sorted(range(self.inputs), key=lambda i: -scores[i])
            answer = {"id": "rerank-" + self.rid[-24:], "model": app.cfg.model, "usage": usage,
                      "results": [{"index": i, "relevance_score": scores[i]} for i in order]}
        elif self.api == "score":
            answer = {"id": "score-" + self.rid[-24:], "object": "list", "created": app.created,
                      "model": app.cfg.model, "usage": {**usage, "completion_tokens": 0},
                      "data": [{"index": i, "object": "score", "score": v} for i, v in enumerate(scores)]}
        else:
            data = [{"object": "embedding", "index": i,
                     "embedding": [((self.base + i * 31 + d * 7) % 97) / 97.0 for d in range(EMBED_DIM)]}
                    for i in range(self.inputs)]
            answer = {"id": "embd-" + self.rid[-24:], "object": "list", "created": app.created,
                      "model": app.cfg.model, "data": data,
                      "usage": {**usage, "completion_tokens": 0, "prompt_tokens_details": None}}
        conn.send(200, orjson.dumps(answer))
        app.count("completed")
        return True

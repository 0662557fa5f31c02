"""Where the engine's tokens go: an SSE stream (``StreamSink``) or one JSON body (``JsonSink``).

Each chunk is assembled from pre-built byte fragments (id, created and model are fixed per request),
so a streamed token costs a few concatenations and one ``transport.write``. Mid-stream faults fire when
chunk ``after_tokens + 1`` is due, i.e. after ``after_tokens`` chunks were sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from loadgen.servers.sim.config import FaultSpec
from loadgen.servers.sim.engine import Seq
from loadgen.servers.sim.http import Conn

if TYPE_CHECKING:
    from loadgen.servers.sim.state import SimState

DONE = b"data: [DONE]\n\n"
MALFORMED = b'data: {"id": "cmpl-malformed", "choices": [{"text": \n\n'


def error_body(status: int, message: str, kind: str) -> dict[str, Any]:
    """vLLM's ErrorResponse shape."""
    return {"object": "error", "message": message, "type": kind, "param": None, "code": status}


class _Sink:
    __slots__ = ("after", "app", "base", "cached", "chat", "conn", "continuous", "fault", "include_usage",
                 "n_prompt", "reasoning", "rid", "tool")

    def __init__(self, app: SimState, conn: Conn, *, chat: bool, options: dict[str, Any], n_prompt: int,
                 fault: FaultSpec | None, tool: str | None = None) -> None:
        self.app, self.conn, self.chat, self.n_prompt = app, conn, chat, n_prompt
        self.tool = tool  # chat with tools offered: the answer is a call of this function
        self.fault = fault.kind if fault is not None else ""
        self.after = fault.after_tokens if fault is not None else 0
        self.include_usage = bool(options.get("include_usage"))
        self.continuous = bool(options.get("continuous_usage_stats")) and self.include_usage
        self.rid = f"{'chatcmpl' if chat else 'cmpl'}-{app._ids.getrandbits(128):032x}"
        self.base = app.requests * 7919
        self.cached = -1  # prefix-cached prompt tokens; -1: the cache is off (no prompt_tokens_details)
        self.reasoning = app.cfg.reasoning_tokens if chat else 0  # the first tokens that are thinking

    def usage(self, completion: int) -> bytes:
        details = b',"prompt_tokens_details":{"cached_tokens":%d}' % self.cached if self.cached >= 0 else b""
        if self.reasoning:
            details += b',"completion_tokens_details":{"reasoning_tokens":%d}' % min(self.reasoning,
                                                                                     completion)
        return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d%b}' % (
            self.n_prompt, self.n_prompt + completion, completion, details)


class StreamSink(_Sink):
    """Server-sent events over chunked transfer encoding, shaped like vLLM's stream generators."""

    __slots__ = ("_usage_head", "fin", "mid", "pre", "rfin", "rmid", "role", "rpre", "tpre")

    def __init__(self, app: SimState, conn: Conn, *, chat: bool, options: dict[str, Any], n_prompt: int,
                 fault: FaultSpec | None, tool: str | None = None) -> None:
        super().__init__(app, conn, chat=chat, options=options, n_prompt=n_prompt, fault=fault, tool=tool)
        head = b'data: {"id":"%b","object":"%b","created":%d,"model":%b,"choices":[' % (
            self.rid.encode(), b"chat.completion.chunk" if chat else b"text_completion", app.created,
            app.model_json)
        self.pre = head + (b'{"index":0,"delta":{"content":"' if chat else b'{"index":0,"text":"')
        self.rpre = head + b'{"index":0,"delta":{"reasoning_content":"'
        close = b'"}' if chat else b'"'
        finish = b"length"
        self.tpre = self.pre
        tail = b'"usage":' if self.continuous else b'"usage":null}\n\n'
        self.rmid = close + b',"logprobs":null,"finish_reason":null,"stop_reason":null}],' + tail  # thinking
        self.rfin = close + b',"logprobs":null,"finish_reason":"length","stop_reason":null}],' + tail
        if tool is not None:  # vLLM's tool parser: the first delta names the call, the rest add arguments
            call = b'{"index":0,"delta":{"tool_calls":[{"index":0,'
            named = b'"id":"call_%b","type":"function","function":{"name":%b,"arguments":"'
            self.tpre = head + call + named % (self.rid[-24:].encode(), orjson.dumps(tool))
            self.pre = head + call + b'"function":{"arguments":"'
            close, finish = b'"}}]}', b"tool_calls"
        self.mid = close + b',"logprobs":null,"finish_reason":null,"stop_reason":null}],' + tail
        self.fin = close + b',"logprobs":null,"finish_reason":"%b","stop_reason":null}],' % finish + tail
        self.role = (head + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
                     b'"finish_reason":null}],' + (b'"usage":%b}\n\n' % self.usage(0) if self.continuous
                                                   else b'"usage":null}\n\n')) if chat else b""
        self._usage_head = head

    def on_chunk(self, seq: Seq, lo: int, hi: int, final: bool) -> bool:
        conn = self.conn
        if conn.closed:
            return False
        app = self.app
        body = self._events(lo, hi, final)
        if lo == 1 and self.role:
            body = self.role + body
        fault = self.fault
        if fault and seq.chunks == self.after + 1:
            if fault == "disconnect_mid_stream":
                app.count_fault(fault)
                conn.abort()
                return False
            if fault == "error_event":
                app.count_fault(fault)
                err = {"error": error_body(500, "Injected fault error_event", "InternalServerError")}
                conn.end_stream(b"data: " + orjson.dumps(err) + b"\n\n" + DONE)
                return False
            if fault == "malformed_sse":
                app.count_fault(fault, terminal=False)
                body = MALFORMED + body
        if not final:
            conn.write_chunk(body)
            return True
        if fault == "truncated_final_chunk":
            app.count_fault(fault)
            conn.write_chunk(body[: len(body) // 2])
            conn.abort()
            return False
        if self.include_usage:
            body += self._usage_head + b'],"usage":' + self.usage(hi) + b"}\n\n"
        conn.end_stream(body + DONE)
        app.count("completed")
        return True


    def _events(self, lo: int, hi: int, final: bool) -> bytes:
        """The events of tokens ``lo..hi``: thinking (``reasoning_content``) up to ``reasoning``, then
        the answer (``content``); a chunk across the boundary is two events."""
        r, text = self.reasoning, self.app.text
        if r and lo <= r:
            cut = min(hi, r)
            end = self.rfin if final and cut == hi else self.rmid
            body = self.rpre + text(self.base, lo, cut).encode() + end
            if self.continuous:
                body += self.usage(cut) + b"}\n\n"
            if cut == hi:
                return body
            lo = cut + 1
        else:
            body = b""
        pre = self.tpre if lo == r + 1 else self.pre
        body += pre + text(self.base, lo, hi).encode() + (self.fin if final else self.mid)
        if self.continuous:
            body += self.usage(hi) + b"}\n\n"
        return body


class JsonSink(_Sink):
    """One JSON response at the last token's due time."""

    __slots__ = ()

    def _choice(self, usage: dict[str, Any], text: str, hi: int) -> dict[str, Any]:
        """The response's one choice (chat: thinking, answer or a tool call; completions: the text)."""
        app = self.app
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text, "tool_calls": []}
            if self.reasoning:
                cut = min(self.reasoning, hi)
                usage["completion_tokens_details"] = {"reasoning_tokens": cut}
                message["reasoning_content"] = app.text(self.base, 1, cut)
                message["content"] = app.text(self.base, cut + 1, hi) if cut < hi else None
            if self.tool is not None:
                message["tool_calls"] = [{"id": "call_" + self.rid[-24:], "type": "function", "function": {
                    "name": self.tool, "arguments": message["content"] or ""}}]
                message["content"] = None
            choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None,
                                      "finish_reason": "tool_calls" if self.tool else "length",
                                      "stop_reason": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                      "stop_reason": None, "prompt_logprobs": None}
        return choice

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
                conn.send_json(500, error_body(500, "Injected fault error_event", "InternalServerError"))
                return False
        if not final:
            return True
        text = app.text(self.base, 1, hi)
        usage: dict[str, Any] = {"prompt_tokens": self.n_prompt, "total_tokens": self.n_prompt + hi,
                                 "completion_tokens": hi}
        if self.cached >= 0:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached}
        choice = self._choice(usage, text, hi)
        body = orjson.dumps({"id": self.rid, "object": "chat.completion" if self.chat else "text_completion",
                             "created": app.created, "model": app.cfg.model, "choices": [choice],
                             "usage": usage})
        if fault == "malformed_sse":
            app.count_fault(fault)
            conn.send(200, body[: len(body) // 3] + b"<<not json>>")
        elif fault == "truncated_final_chunk":
            app.count_fault(fault)
            conn.send(200, body, partial=len(body) // 2)
        else:
            conn.send(200, body)
            app.count("completed")
        return True

"""OpenAI/vLLM protocol of the simulated server: routes, request validation, response shapes, faults.

Shapes follow vLLM's OpenAI-compatible server: streaming chunks carry ``"usage": null`` unless
``continuous_usage_stats`` is asked for, the last content chunk has ``"finish_reason": "length"``, an
``include_usage`` chunk has ``"choices": []``, and ``data: [DONE]`` ends every stream.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from loadgen.servers.sim.config import FaultSpec
from loadgen.servers.sim.engine import Seq
from loadgen.servers.sim.http import Conn, Request
from loadgen.servers.sim.metrics import render_metrics, stats
from loadgen.servers.sim.responses import EmbeddingSink, ResponsesJsonSink, ResponsesStreamSink
from loadgen.servers.sim.sinks import JsonSink, StreamSink, error_body
from loadgen.servers.sim.state import SimState

_err = error_body


_APIS = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/responses": "responses",
         "/v1/embeddings": "embeddings", "/v1/rerank": "rerank", "/rerank": "rerank", "/v2/rerank": "rerank",
         "/v1/score": "score", "/score": "score"}
_POOLING = ("embeddings", "rerank", "score")
FAULT_STATUS = {"http_429": (429, "TooManyRequestsError"), "http_500": (500, "InternalServerError"),
                "http_503": (503, "ServiceUnavailableError")}


def _prompt_words(body: dict[str, Any]) -> list[str]:
    """The prompt's tokens as the prefix cache sees them: its words (chat: every message's, in order;
    token ids as strings)."""
    msgs = body.get("messages", body.get("input"))
    if isinstance(msgs, list):
        out: list[str] = []
        for m in msgs:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                out += c.split()
            elif isinstance(c, list):
                out += [w for p in c if isinstance(p, dict) for w in str(p.get("text", "")).split()]
        return out
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt.split()
    return [str(t) for t in prompt] if isinstance(prompt, list) else []


def _message_words(m: dict[str, Any]) -> int:
    """A message's words: its content and its tool calls' function names and arguments (a chat template
    renders both into the prompt)."""
    n = _words(m.get("content"))
    for call in m.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            n += _words(str(fn.get("name") or "")) + _words(str(fn.get("arguments") or ""))
    return n


def _tool_called(body: dict[str, Any]) -> str | None:
    """The function the simulated model calls: with ``tools`` offered and ``tool_choice`` not "none",
    the named one or the first offered (it always takes a tool when it may)."""
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return str(choice["function"].get("name") or "tool")
    fn = tools[0].get("function") if isinstance(tools[0], dict) else None
    return str(fn.get("name") or "tool") if isinstance(fn, dict) else "tool"


def images_in(body: dict[str, Any]) -> int:
    """Image content parts in a chat or responses body (``image_url``, ``input_image``)."""
    msgs = body.get("messages", body.get("input"))
    if not isinstance(msgs, list):
        return 0
    return sum(1 for m in msgs if isinstance(m, dict) and isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p.get("type") in ("image_url", "input_image"))


def _words(text: Any) -> int:
    if isinstance(text, str):
        return len(text.split())
    if isinstance(text, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return sum(len(p.get("text", "").split()) for p in text if isinstance(p, dict))
    return 0


class SimApp(SimState):
    """Routes requests to handlers; the engine, fault picker and counters are its :class:`SimState`."""

    def stats(self) -> dict[str, Any]:
        return stats(self)

    # -- connection events --------------------------------------------------------------------------

    def on_lost(self, conn: Conn) -> None:
        seq = conn.active
        if seq is not None and not seq.done:
            self.engine.cancel(seq)
            self.count("client_disconnected")

    def handle(self, conn: Conn, req: Request) -> None:
        path = req.path
        if (self.cfg.api_key is not None and path.startswith("/v1/")
                and req.headers.get("authorization", "") != f"Bearer {self.cfg.api_key}"):
            self.count("rejected")
            conn.send_json(401, {"error": "Unauthorized"})
            return
        api = _APIS.get(path)
        if api is not None:
            if req.method != "POST":
                conn.send_json(405, _err(405, "Method Not Allowed", "MethodNotAllowed"))
                return
            (self.embed if api in _POOLING else self.generate)(conn, req, api)
        elif path == "/health":
            conn.send(200, b"")
        elif path == "/metrics":
            conn.send(200, render_metrics(self), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/models":
            # LoRA adapters are listed after the base model, their parent, as vLLM lists them
            conn.send_json(200, {"object": "list", "data": [{
                "id": name, "object": "model", "created": self.created, "owned_by": "loadgen-sim",
                "root": name, "parent": None if name == self.cfg.model else self.cfg.model,
                "max_model_len": self.cfg.max_model_len, "permission": []}
                for name in (self.cfg.model, *self.cfg.lora_adapters)]})
        elif path == "/version":
            conn.send_json(200, {"version": "loadgen-sim-0.1"})
        elif path == "/tokenize" and req.method == "POST":
            self.tokenize(conn, req)
        elif path == "/sim/bodies":
            conn.send_json(200, {"bodies": list(self.bodies), "headers": list(self.headers)})
        elif path == "/sim/stats":
            conn.send_json(200, self.stats())
        elif path == "/sim/stats/reset" and req.method == "POST":
            self.engine.lateness.reset()
            self.engine.first_lateness.reset()
            conn.send_json(200, {"reset": True})
        else:
            conn.send_json(404, _err(404, f"Not Found: {req.method} {path}", "NotFoundError"))

    # -- helpers ------------------------------------------------------------------------------------

    def _body(self, conn: Conn, req: Request) -> dict[str, Any] | None:
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError as exc:
            self.count("rejected")
            conn.send_json(400, _err(400, f"Invalid JSON body: {exc}", "BadRequestError"))
            return None
        if not isinstance(body, dict):
            self.count("rejected")
            conn.send_json(400, _err(400, "The request body must be a JSON object", "BadRequestError"))
            return None
        model = body.get("model") or self.cfg.model
        if model != self.cfg.model and model not in self.cfg.lora_adapters:
            self.count("rejected")
            conn.send_json(404, _err(404, f"The model `{model}` does not exist.", "NotFoundError"))
            return None
        return body

    def _keep(self, body: dict[str, Any], req: Request) -> None:
        """Keep a generation or embeddings body and its headers (not Authorization) for /sim/bodies."""
        if self.bodies.maxlen:
            self.bodies.append(body)
            self.headers.append({k: v for k, v in req.headers.items() if k != "authorization"})

    def _prompt_tokens(self, body: dict[str, Any], chat: bool, api: str = "") -> int | str:
        """Prompt token count, or an error message."""
        if api == "responses" and isinstance(body.get("input"), str):
            return len(body["input"].split())
        if chat or "messages" in body:
            field = "input" if api == "responses" else "messages"
            msgs = body.get(field)
            if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
                return f"`{field}` must be a non-empty list of objects" + (
                    " or a string" if api == "responses" else "")
            words = sum(_message_words(m) + self.cfg.chat_template_tokens for m in msgs)
            return words + self.cfg.image_tokens * images_in(body) if self.cfg.image_tokens else words
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return len(prompt.split())
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        return "`prompt` must be a string, a list of one string, or a list of token ids"

    def tokenize(self, conn: Conn, req: Request) -> None:
        body = self._body(conn, req)
        if body is None:
            return
        n = self._prompt_tokens(body, chat=False)
        if isinstance(n, str):
            conn.send_json(400, _err(400, n, "BadRequestError"))
            return
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, list):  # already token ids
            tokens = [int(t) for t in prompt]
        else:
            text = prompt if isinstance(prompt, str) else " ".join(
                str(m.get("content", "")) for m in body.get("messages", ()))
            # One id per word; chat-template tokens (and content parts) pad with id 1 up to the count.
            tokens = [zlib.crc32(w.encode()) % 32000 for w in text.split()][:n]
            tokens += [1] * (n - len(tokens))
        conn.send_json(200, {"count": len(tokens), "max_model_len": self.cfg.max_model_len,
                             "tokens": tokens, "token_strs": None})

    # -- generation ---------------------------------------------------------------------------------

    def _validate(self, body: dict[str, Any], api: str) -> tuple[int, int, bool, dict[str, Any]] | str:
        """(prompt tokens, max tokens, stream, stream_options), or vLLM's 400 message."""
        chat = api != "completions"
        n_prompt = self._prompt_tokens(body, chat, api)
        if isinstance(n_prompt, str):
            return n_prompt
        max_tokens = body.get("max_output_tokens" if api == "responses" else "max_completion_tokens") \
            if chat else None
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is None:  # vLLM's defaults
            max_tokens = max(self.cfg.max_model_len - n_prompt, 1) if chat else 16
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return f"max_tokens must be at least 1, got {max_tokens!r}"
        stream = bool(body.get("stream", False))
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            return "`stream_options` must be an object"
        if options and not stream:
            return "Stream options can only be defined when `stream=True`."
        total = n_prompt + max_tokens
        if total > self.cfg.max_model_len:
            return (f"This model's maximum context length is {self.cfg.max_model_len} tokens. However,"
                    f" you requested {total} tokens ({n_prompt} in the messages, {max_tokens} in the"
                    " completion). Please reduce the length of the messages or completion.")
        return n_prompt, max_tokens, stream, options

    def embed(self, conn: Conn, req: Request, api: str) -> None:
        """A pooling request (embeddings, rerank, score): one slot for its prefill (ttft_ms + prefill per
        input token; a rerank/score pair is query + document tokens, as a cross-encoder reads it), then
        the vectors or scores; queues like generation when every slot is taken. Status faults apply."""
        arrival = self.engine.clock()
        body = self._body(conn, req)
        if body is None:
            return
        self._keep(body, req)
        sizes = _embed_inputs(body.get("input")) if api == "embeddings" else _pairs(body, api)
        if isinstance(sizes, str) or max(sizes) > self.cfg.max_model_len:
            self.count("rejected")
            why = sizes if isinstance(sizes, str) else (
                f"This model's maximum context length is {self.cfg.max_model_len} tokens")
            conn.send_json(400, _err(400, why, "BadRequestError"))
            return
        self.requests += 1
        fault = self.faults.pick()
        if fault is not None and fault.kind in FAULT_STATUS:
            status, name = FAULT_STATUS[fault.kind]
            self.count_fault(fault.kind)
            conn.send_json(status, _err(status, f"Injected fault {fault.kind}", name))
            return
        sink = EmbeddingSink(self, conn, chat=False, options={}, n_prompt=sum(sizes), fault=None)
        sink.inputs, sink.api = len(sizes), api
        seq = Seq(sink, arrival, sum(sizes), 1)
        conn.active = seq
        self.engine.submit(seq)

    def generate(self, conn: Conn, req: Request, api: str) -> None:
        arrival = self.engine.clock()
        body = self._body(conn, req)
        if body is None:
            return
        self._keep(body, req)
        checked = self._validate(body, api)
        if isinstance(checked, str):
            self.count("rejected")
            conn.send_json(400, _err(400, checked, "BadRequestError"))
            return
        n_prompt, max_tokens, stream, options = checked
        self.requests += 1
        fault = self.faults.pick()
        kind = fault.kind if fault is not None else ""
        if kind in FAULT_STATUS:
            status, name = FAULT_STATUS[kind]
            self.count_fault(kind)
            conn.send_json(status, _err(status, f"Injected fault {kind}", name))
            return
        if kind == "reset_before_headers":
            self.count_fault(kind)
            conn.abort(reset=True)
            return
        if kind == "wrong_content_type":
            self.count_fault(kind)
            conn.send(200, b"<html><body><h1>Service temporarily unavailable</h1></body></html>",
                      "text/html; charset=utf-8")
            return
        tool = _tool_called(body) if api == "chat" else None
        start = _Start(self, conn, api=api, tool=tool, stream=stream, options=options, n_prompt=n_prompt,
                       max_tokens=max_tokens, fault=fault)
        if self.prefix is not None:
            start.cached = max(min(self.prefix.lookup(_prompt_words(body)), n_prompt - 1), 0)
        if api != "completions" and self.cfg.image_prefill_ms:
            start.extra_ns = round(self.cfg.image_prefill_ms * 1e6 * images_in(body))
        if kind == "slow_headers":
            assert fault is not None
            self.count_fault(kind, terminal=False)
            self.loop.call_later(fault.seconds, start.run, None)
        else:
            start.run(arrival)


def _embed_inputs(given: Any) -> list[int] | str:
    """Tokens of each input of an embeddings request (words, or ids), or vLLM's 400 message."""
    if isinstance(given, str):
        given = [given]
    if isinstance(given, list) and given and all(isinstance(t, int) for t in given):
        given = [given]
    if not isinstance(given, list) or not given:
        return "`input` must be a string, a list of strings or a list of token id lists"
    out = []
    for item in given:
        if isinstance(item, str):
            out.append(len(item.split()))
        elif isinstance(item, list) and all(isinstance(t, int) for t in item):
            out.append(len(item))
        else:
            return "`input` must be a string, a list of strings or a list of token id lists"
    return out


def _pairs(body: dict[str, Any], api: str) -> list[int] | str:
    """Tokens of each (query, document) pair of a rerank or score request, or vLLM's 400 message."""
    first, second = ("query", "documents") if api == "rerank" else ("text_1", "text_2")
    query, docs = body.get(first), body.get(second)
    docs = [docs] if isinstance(docs, str) else docs
    if not isinstance(query, str) or not isinstance(docs, list) or not docs \
            or not all(isinstance(d, str) for d in docs):
        return f"`{first}` must be a string and `{second}` a string or a non-empty list of strings"
    q = len(query.split())
    return [q + len(d.split()) for d in docs]


class _Start:
    """Admits a validated generation request (possibly after a ``slow_headers`` delay)."""

    def __init__(self, app: SimApp, conn: Conn, *, api: str, tool: str | None, stream: bool,
                 options: dict[str, Any], n_prompt: int, max_tokens: int, fault: FaultSpec | None) -> None:
        self.app, self.conn, self.api, self.stream, self.tool = app, conn, api, stream, tool
        self.options, self.n_prompt, self.max_tokens, self.fault = options, n_prompt, max_tokens, fault
        self.cached = -1  # prefix-cached prompt tokens (-1: no prefix cache)
        self.extra_ns = 0  # image prefill

    def run(self, arrival: int | None) -> None:
        app, conn, fault = self.app, self.conn, self.fault
        if conn.closed:
            return
        if arrival is None:
            arrival = app.engine.clock()
        stall_after, stall_ns = -1, 0
        if fault is not None and fault.kind == "stall":
            stall_after, stall_ns = fault.after_tokens, round(fault.seconds * 1e9)
            app.count_fault("stall", terminal=False)
        kinds = ((ResponsesStreamSink, ResponsesJsonSink) if self.api == "responses"
                 else (StreamSink, JsonSink))
        sink = kinds[0 if self.stream else 1](app, conn, chat=self.api != "completions",
                                              options=self.options, n_prompt=self.n_prompt, fault=fault,
                                              tool=self.tool)
        sink.cached = self.cached
        seq = Seq(sink, arrival, self.n_prompt, self.max_tokens, stall_after=stall_after, stall_ns=stall_ns,
                  cached_tokens=max(self.cached, 0), extra_ns=self.extra_ns)
        conn.active = seq
        if self.stream:
            conn.start_stream()
        app.engine.submit(seq)

"""The streaming OpenAI client: one request in, one filled-in :class:`RequestRecord` out.

Timestamps are ``time.perf_counter_ns() - t0`` taken when a network read returns, before any parsing,
so parsing cost never shows up as latency. A request never raises into the scheduler: every failure
becomes ``error_class`` + ``error`` on its record (:data:`ERROR_CLASSES`), except cancellation, which
marks the record ``cancelled`` and propagates so the run can stop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from loadgen.datasets import Sample
from loadgen.protocol import PROTOCOLS
from loadgen.records import RequestRecord
from loadgen.sse import SseParser
from loadgen.tokens import TokenCounter

#: Every way a request can fail, as recorded in ``RequestRecord.error_class``.
ERROR_CLASSES: dict[str, str] = {
    "connect": "no response: connection refused or reset before the response head arrived",
    "http_status": "the server answered with a non-200 HTTP status",
    "timeout": "the whole request took longer than request_timeout_s",
    "idle_timeout": "no bytes arrived for idle_timeout_s in the middle of a response",
    "disconnect": "the connection broke after the response had started",
    "malformed": "an event or body that is not valid JSON, or not an OpenAI response",
    "server_error": "the server sent an error event inside the stream",
    "content_type": "the response was neither an event stream nor JSON",
    "incomplete": "the stream ended without [DONE] or a finish_reason (truncated)",
    "cancelled": "the run was stopped while this request was in flight",
}

_READ_BUFSIZE = 1 << 20  # aiohttp's 64 KiB default stalls long responses (vllm#39963)
_ERROR_BODY_LIMIT = 2048


@dataclass(frozen=True)
class ClientOptions:
    base_url: str
    model: str
    endpoint: str = "completions"
    stream: bool = True
    ignore_eos: bool = True
    headers: dict[str, str] = field(default_factory=dict)  # may hold Authorization: never logged
    request_timeout_s: float = 600.0
    idle_timeout_s: float = 120.0
    insecure: bool = False


def make_session(opts: ClientOptions, max_connections: int) -> aiohttp.ClientSession:
    """A session whose connection pool can never make a request wait inside the client.

    ``limit`` is set explicitly to the most requests the scenario can have outstanding (aiohttp's
    default of 100 would silently queue the 101st, and that wait would look like server TTFT).
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=max_connections,
        ssl=not opts.insecure,
        enable_cleanup_closed=False,
        keepalive_timeout=60,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=opts.idle_timeout_s),
        read_bufsize=_READ_BUFSIZE,
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        headers={"User-Agent": "loadgen"},
    )


class Client:
    """Sends one sample per call of :meth:`fill`; ``t0_ns`` is the run's clock origin."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        opts: ClientOptions,
        t0_ns: int = 0,
        tokenizer: TokenCounter | None = None,
    ) -> None:
        self._session = session
        self._opts = opts
        self._proto = PROTOCOLS[opts.endpoint]
        self._url = opts.base_url + self._proto.path
        self._headers = {"Content-Type": "application/json", **opts.headers}
        self._tokenizer = tokenizer
        self.t0_ns = t0_ns

    @property
    def options(self) -> ClientOptions:
        return self._opts

    @property
    def tokenizer(self) -> TokenCounter | None:
        return self._tokenizer

    async def fill(self, rec: RequestRecord, sample: Sample) -> None:
        """Send ``sample`` and fill ``rec`` in place (sent/first/chunks/end/tokens/error).

        Cancellation marks ``rec`` as ``cancelled`` with the data measured so far and re-raises.
        """
        opts = self._opts
        body = orjson.dumps(self._proto.body(sample, opts.model, opts.stream, opts.ignore_eos))
        rec.requested_output_tokens = sample.output_tokens
        rec.input_tokens = sample.input_tokens
        t0 = self.t0_ns
        rec.sent_ns = time.perf_counter_ns() - t0
        try:
            async with (
                asyncio.timeout(opts.request_timeout_s),
                self._session.post(self._url, data=body, headers=self._headers) as resp,
            ):
                rec.status = resp.status
                if resp.status != 200:
                    await self._http_error(rec, resp)
                elif resp.content_type == "text/event-stream":
                    await self._read_stream(rec, resp, t0)
                elif resp.content_type == "application/json":
                    await self._read_json(rec, resp, t0)
                else:
                    _fail(rec, "content_type", f"unexpected Content-Type {resp.content_type!r}")
        except aiohttp.ServerTimeoutError:
            _fail(rec, "idle_timeout", f"no bytes for {opts.idle_timeout_s:g} s")
        except TimeoutError:
            _fail(rec, "timeout", f"request took longer than {opts.request_timeout_s:g} s")
        except aiohttp.ClientPayloadError as exc:
            _fail(rec, "disconnect", f"response broke off: {_short(exc)}")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            cls = "connect" if rec.status is None else "disconnect"
            _fail(rec, cls, f"{type(exc).__name__}: {_short(exc)}")
        except aiohttp.ClientResponseError as exc:
            _fail(rec, "malformed", f"bad HTTP response: {_short(exc)}")
        except aiohttp.ClientError as exc:
            _fail(rec, "connect", f"{type(exc).__name__}: {_short(exc)}")
        except asyncio.CancelledError:
            _fail(rec, "cancelled", "run stopped while in flight")
            rec.end_ns = time.perf_counter_ns() - t0
            raise
        if rec.end_ns == 0:
            rec.end_ns = time.perf_counter_ns() - t0

    async def _http_error(self, rec: RequestRecord, resp: aiohttp.ClientResponse) -> None:
        raw = await resp.content.read(_ERROR_BODY_LIMIT)
        rec.end_ns = time.perf_counter_ns() - self.t0_ns
        _fail(rec, "http_status", f"HTTP {resp.status}: {_error_message(raw)}")

    # The per-chunk hot path stays in one function on purpose: no per-chunk calls beyond the parser.
    async def _read_stream(  # noqa: PLR0912, PLR0915
        self, rec: RequestRecord, resp: aiohttp.ClientResponse, t0: int
    ) -> None:
        parser = SseParser()
        text = self._proto.text
        chunk_ns = rec.chunk_ns
        chunk_tokens = rec.chunk_tokens
        keep_text = self._tokenizer is not None
        pieces: list[str] = []
        usage: dict[str, Any] | None = None
        done = finished = False
        prev_completion = 0
        now = 0
        async for data in resp.content.iter_any():
            now = time.perf_counter_ns() - t0
            for name, payload in parser.feed(data):
                if payload == b"[DONE]":
                    done = True
                    continue
                try:
                    obj = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    rec.end_ns = now
                    _fail(rec, "malformed", f"event is not JSON: {payload[:80]!r}")
                    return
                if not isinstance(obj, dict):
                    rec.end_ns = now
                    _fail(rec, "malformed", f"event is not a JSON object: {payload[:80]!r}")
                    return
                if name == b"error" or "error" in obj or obj.get("object") == "error":
                    rec.end_ns = now
                    _fail(rec, "server_error", f"error event: {_error_message(payload)}")
                    return
                u = obj.get("usage")
                if u:
                    usage = u
                choices = obj.get("choices")
                if not choices:
                    continue
                choice = choices[0]
                piece = text(choice)
                if piece:
                    k = 1
                    if u and isinstance(u.get("completion_tokens"), int):  # continuous usage stats
                        k = max(1, u["completion_tokens"] - prev_completion)
                        prev_completion = u["completion_tokens"]
                    if rec.first_token_ns is None:
                        rec.first_token_ns = now
                    chunk_ns.append(now)
                    chunk_tokens.append(k)
                    if keep_text:
                        pieces.append(piece)
                if choice.get("finish_reason"):
                    finished = True
        rec.end_ns = now or time.perf_counter_ns() - t0
        if not (done or finished):
            left = f" ({len(parser.pending)} bytes of an unfinished event)" if parser.pending else ""
            _fail(rec, "incomplete", f"stream ended without [DONE] or finish_reason{left}")
        self._count_output(rec, usage, pieces)

    async def _read_json(self, rec: RequestRecord, resp: aiohttp.ClientResponse, t0: int) -> None:
        raw = await resp.read()
        rec.end_ns = time.perf_counter_ns() - t0
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            _fail(rec, "malformed", f"body is not JSON: {raw[:80]!r}")
            return
        if not isinstance(obj, dict) or not obj.get("choices"):
            _fail(rec, "malformed", f"no choices in the response: {raw[:80]!r}")
            return
        piece = self._proto.text(obj["choices"][0]) or ""
        # Without streaming the first token is only seen with the last: TTFT equals E2E.
        rec.first_token_ns = rec.end_ns
        self._count_output(rec, obj.get("usage"), [piece])

    def _count_output(self, rec: RequestRecord, usage: dict[str, Any] | None, pieces: list[str]) -> None:
        if usage and isinstance(usage.get("completion_tokens"), int):
            rec.output_tokens = usage["completion_tokens"]
            rec.tokens_source = "usage"
            if isinstance(usage.get("prompt_tokens"), int):
                rec.prompt_tokens = usage["prompt_tokens"]
        elif self._tokenizer is not None and pieces:
            rec.output_tokens = self._tokenizer.count(["".join(pieces)])[0]
            rec.tokens_source = "tokenizer"
        else:
            rec.output_tokens = sum(rec.chunk_tokens)
            rec.tokens_source = "chunks"


def _fail(rec: RequestRecord, cls: str, message: str) -> None:
    if rec.error_class is None:
        rec.error_class = cls
        rec.error = message


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _error_message(raw: bytes) -> str:
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
    return raw[:200].decode("utf-8", "replace")

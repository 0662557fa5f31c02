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

from loadgen.client.http1 import Http1Client, HttpBrokenError, HttpConnectError, Response
from loadgen.client.protocol import PROTOCOLS, Wire, merge_extra
from loadgen.client.stream import StreamState, count_output, error_message, fail
from loadgen.records import RequestRecord
from loadgen.workload.samples import Sample
from loadgen.workload.tokens import TokenCounter

#: Every way a request can fail, as recorded in ``RequestRecord.error_class``.
ERROR_CLASSES: dict[str, str] = {
    "connect": "no response: connection refused or reset before the response head arrived",
    "http_status": "the server answered with a non-200 HTTP status",
    "timeout": "the whole request took longer than request_timeout_s",
    "idle_timeout": "no bytes arrived for idle_timeout_s in the middle of a response",
    "disconnect": "the connection broke after the response had started (a reset, or a close in the "
                  "middle of an HTTP chunk or before the terminating zero-length chunk)",
    "malformed": "an event or body that is not valid JSON, or not an OpenAI response",
    "server_error": "the server sent an error event inside the stream",
    "content_type": "the response was neither an event stream nor JSON",
    "incomplete": "the HTTP response ended cleanly but the event stream lacked [DONE] and a "
                  "finish_reason (the server truncated its own stream)",
    "cancelled": "the run was stopped while this request was in flight",
}

#: Failures that ``--retries`` sends again: nothing reached the model (no connection or response head),
#: or the server said "not now" (429 Too Many Requests, 503 Service Unavailable). A 500, a timeout or
#: anything after the stream started is never retried: the server may have done the work.
RETRY_STATUSES = frozenset({429, 503})
RETRY_BACKOFF_S = 0.05  # first retry after 50 ms, doubling per attempt, at most 1 s

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
    transport: str = "fast"  # "fast" (loadgen.client.http1) or "aiohttp"
    continuous_usage: bool = False  # ask for per-chunk usage (vLLM's continuous_usage_stats)
    retries: int = 0  # extra attempts for retryable failures (see RETRY_STATUSES); 0: never retry
    extra_body: dict[str, Any] = field(default_factory=dict)  # laid over every body (protocol.merge_extra)


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
    """Sends one sample per call of :meth:`fill`; ``t0_ns`` is the run's clock origin.

    Transport: the fast HTTP/1.1 client (:mod:`loadgen.client.http1`) by default, or an aiohttp session
    (``session``) when one is given — a second HTTP/1.1 implementation, kept to cross-check the fast
    one (it also follows redirects). Neither speaks HTTP/2 (aiohttp has no HTTP/2 client) nor uses an
    HTTP proxy (the session does not trust the environment's proxy variables).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        opts: ClientOptions,
        t0_ns: int = 0,
        tokenizer: TokenCounter | None = None,
    ) -> None:
        self._session = session
        self._opts = opts
        self._proto = PROTOCOLS[opts.endpoint]
        self._headers = {"Content-Type": "application/json", **opts.headers}
        self._tokenizer = tokenizer
        self._http = Http1Client(opts.base_url, insecure=opts.insecure) if session is None else None
        self.t0_ns = t0_ns

    @property
    def options(self) -> ClientOptions:
        return self._opts

    @property
    def tokenizer(self) -> TokenCounter | None:
        return self._tokenizer

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def preconnect(self, n: int) -> int:
        """Open ``n`` connections ahead of the run (fast transport only); returns how many are open."""
        if self._http is None or n <= 0:
            return 0
        return await self._http.preconnect(n)

    async def fill(self, rec: RequestRecord, sample: Sample, *, keep_text: bool = False,
                   headers: dict[str, str] | None = None) -> str | None:
        """Send ``sample`` and fill ``rec`` in place (sent/first/chunks/end/tokens/error); with
        ``keep_text`` also return the generated text (multi-turn sessions feed it back as history).

        Cancellation marks ``rec`` as ``cancelled`` with the data measured so far and re-raises.
        With ``retries``, a retryable failure (:func:`retryable`) is sent again after a short backoff;
        ``rec.retries`` counts the extra attempts and the latencies count from the first attempt's send.
        ``headers`` are added to this request's (a session-affinity header, say).
        """
        opts = self._opts
        # a traffic class may name its own endpoint (embeddings beside chat): its protocol, else the run's
        proto = self._proto if sample.endpoint is None else PROTOCOLS[sample.endpoint]
        built = proto.body(sample, sample.model or opts.model, opts.stream, opts.ignore_eos,
                                 opts.continuous_usage)
        body = orjson.dumps(merge_extra(built, opts.extra_body) if opts.extra_body else built)
        sent_headers = {**self._headers, **headers} if headers else self._headers
        generates = getattr(proto, "generates", True)
        rec.requested_output_tokens = sample.output_tokens if generates else None
        rec.input_tokens = sample.input_tokens
        rec.cls = sample.cls
        first_sent = 0
        while True:
            state = proto.state(rec, proto.text, keep_text or self._tokenizer is not None, proto.thinking)
            try:
                if self._http is not None:
                    await self._fill_fast(rec, body, state, sent_headers, proto)
                else:
                    await self._fill_aiohttp(rec, body, state, sent_headers, proto)
                first_sent = first_sent or rec.sent_ns
                if rec.retries >= opts.retries or not retryable(rec):
                    break
                rec.status = rec.error_class = rec.error = None  # forget the failed attempt
                rec.end_ns = 0
                rec.retries += 1
                await asyncio.sleep(min(RETRY_BACKOFF_S * 2 ** (rec.retries - 1), 1.0))
            except asyncio.CancelledError:
                rec.sent_ns = first_sent or rec.sent_ns
                fail(rec, "cancelled", "run stopped while in flight")
                rec.end_ns = time.perf_counter_ns() - self.t0_ns
                raise
        rec.sent_ns = first_sent
        if rec.end_ns == 0:
            rec.end_ns = time.perf_counter_ns() - self.t0_ns
        if rec.error_class is None or rec.error_class == "incomplete":
            self._count_output(rec, state.usage, state.pieces, state.thought)
        return "".join(state.pieces) if keep_text else None

    # ---- fast transport ------------------------------------------------------------------------------
    # The sink closure and the error mapping read best together in one place.
    async def _fill_fast(  # noqa: PLR0915
        self, rec: RequestRecord, body: bytes, state: StreamState, headers: dict[str, str], proto: Wire
    ) -> None:
        opts = self._opts
        t0 = self.t0_ns
        http = self._http
        assert http is not None
        mode = ""
        raw: list[bytes] = []

        def on_sent() -> None:
            rec.sent_ns = time.perf_counter_ns() - t0

        def sink(resp: Response, data: bytes, now: int) -> bool:
            nonlocal mode
            if not mode:
                rec.status = resp.status
                if resp.status != 200:
                    mode = "error"
                elif resp.content_type == "text/event-stream" and opts.stream:
                    mode = "stream"
                elif resp.content_type == "application/json":
                    mode = "json"
                else:
                    rec.end_ns = now - t0
                    fail(rec, "content_type", f"unexpected Content-Type {resp.content_type!r}")
                    return False
            if mode == "stream":
                return state.feed(data, now - t0)
            raw.append(data)
            state.last_ns = now - t0
            return mode != "error" or sum(map(len, raw)) < _ERROR_BODY_LIMIT

        loop = asyncio.get_running_loop()
        idle = False
        try:
            async with asyncio.timeout(opts.request_timeout_s) as deadline:
                watchdog = _IdleWatchdog(loop, opts.idle_timeout_s, state, deadline, t0)
                try:
                    resp = await http.request("POST", proto.path, body, headers, sink,
                                              on_sent=on_sent)
                finally:
                    idle = watchdog.fired
                    watchdog.cancel()
        except TimeoutError:
            if idle:
                fail(rec, "idle_timeout", f"no bytes for {opts.idle_timeout_s:g} s")
            else:
                fail(rec, "timeout", f"request took longer than {opts.request_timeout_s:g} s")
            return
        except HttpConnectError as exc:
            if rec.status is None:
                fail(rec, "connect", str(exc))
            else:
                fail(rec, "disconnect", str(exc))
            return
        except HttpBrokenError as exc:
            state.finish(time.perf_counter_ns() - t0)
            rec.error_class = None if rec.error_class == "incomplete" else rec.error_class
            fail(rec, "disconnect", f"response broke off: {exc}")
            return
        self._conclude(rec, resp, mode, raw, state, proto=proto)

    def _conclude(
        self, rec: RequestRecord, resp: Response, mode: str, raw: list[bytes], state: StreamState, *,
        proto: Wire,
    ) -> None:
        rec.status = resp.status
        end = state.last_ns or time.perf_counter_ns() - self.t0_ns
        if mode == "error" or (not mode and resp.status != 200):
            rec.end_ns = end
            fail(rec, "http_status", f"HTTP {resp.status}: {error_message(b''.join(raw))}")
        elif mode == "stream":
            state.finish(end)
        elif mode == "json":
            rec.end_ns = end
            self._parse_json(rec, b"".join(raw), state, proto)
        elif rec.error_class is None:
            rec.end_ns = end
            fail(rec, "malformed", "empty response body")

    # ---- aiohttp transport ---------------------------------------------------------------------------
    async def _fill_aiohttp(self, rec: RequestRecord, body: bytes, state: StreamState,
                            headers: dict[str, str], proto: Wire) -> None:
        opts = self._opts
        t0 = self.t0_ns
        assert self._session is not None
        rec.sent_ns = time.perf_counter_ns() - t0
        try:
            async with (
                asyncio.timeout(opts.request_timeout_s),
                self._session.post(opts.base_url + proto.path, data=body, headers=headers) as resp,
            ):
                rec.status = resp.status
                if resp.status != 200:
                    raw = await resp.content.read(_ERROR_BODY_LIMIT)
                    rec.end_ns = time.perf_counter_ns() - t0
                    fail(rec, "http_status", f"HTTP {resp.status}: {error_message(raw)}")
                elif resp.content_type == "text/event-stream":
                    async for data in resp.content.iter_any():
                        if not state.feed(data, time.perf_counter_ns() - t0):
                            break
                    state.finish(time.perf_counter_ns() - t0)
                elif resp.content_type == "application/json":
                    raw = await resp.read()
                    rec.end_ns = time.perf_counter_ns() - t0
                    self._parse_json(rec, raw, state, proto)
                else:
                    fail(rec, "content_type", f"unexpected Content-Type {resp.content_type!r}")
        except aiohttp.ServerTimeoutError:
            fail(rec, "idle_timeout", f"no bytes for {opts.idle_timeout_s:g} s")
        except TimeoutError:
            fail(rec, "timeout", f"request took longer than {opts.request_timeout_s:g} s")
        except aiohttp.ClientPayloadError as exc:
            fail(rec, "disconnect", f"response broke off: {_short(exc)}")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            cls = "connect" if rec.status is None else "disconnect"
            fail(rec, cls, f"{type(exc).__name__}: {_short(exc)}")
        except aiohttp.ClientResponseError as exc:
            fail(rec, "malformed", f"bad HTTP response: {_short(exc)}")
        except aiohttp.ClientError as exc:
            fail(rec, "connect", f"{type(exc).__name__}: {_short(exc)}")

    def _parse_json(self, rec: RequestRecord, raw: bytes, state: StreamState, proto: Wire) -> None:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            fail(rec, "malformed", f"body is not JSON: {raw[:80]!r}")
            return
        parsed = proto.parse(obj) if isinstance(obj, dict) else None
        if parsed is None:
            fail(rec, "malformed", f"no output in the response: {raw[:80]!r}")
            return
        state.pieces.append(parsed[0])
        state.usage = parsed[1]
        if getattr(proto, "generates", True):
            # Without streaming the first token is only seen with the last: TTFT equals E2E.
            rec.first_token_ns = rec.first_answer_ns = rec.end_ns

    def _count_output(self, rec: RequestRecord, usage: dict[str, Any] | None, pieces: list[str],
                      thought: int = 0) -> None:
        count_output(rec, usage, pieces, thought, self._tokenizer)


class _IdleWatchdog:
    """Ends a request (through its deadline) when no body bytes arrived for ``idle_s``.

    One timer per request, re-armed from the last arrival time, instead of resetting a timer on
    every chunk.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, idle_s: float, state: StreamState,
        deadline: asyncio.Timeout, t0: int,
    ) -> None:
        self._loop = loop
        self._idle_ns = int(idle_s * 1e9)
        self._state = state
        self._deadline = deadline
        self._t0 = t0
        self._start = time.perf_counter_ns() - t0
        self.fired = False
        self._handle = loop.call_later(idle_s, self._check)

    def _check(self) -> None:
        now = time.perf_counter_ns() - self._t0
        last = max(self._state.last_ns, self._start)
        if now - last >= self._idle_ns:
            self.fired = True
            self._deadline.reschedule(self._loop.time())
        else:
            self._handle = self._loop.call_later((last + self._idle_ns - now) / 1e9, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


def retryable(rec: RequestRecord) -> bool:
    """True for failures that ``--retries`` sends again: ``connect``, and HTTP 429 or 503."""
    return rec.error_class == "connect" or (
        rec.error_class == "http_status" and rec.status in RETRY_STATUSES
    )


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__

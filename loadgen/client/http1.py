"""A minimal HTTP/1.1 client on asyncio protocols: the fast path for streaming responses.

Why not aiohttp here: aiohttp hands each network read to a stream reader and wakes the waiting
coroutine through a future, so a chunk's timestamp is taken one or more event-loop iterations after
its bytes arrived, and each request pays for the machinery (about 1 ms of extra TTFT at low load and
tens of ms at p99 under load, measured by ``benchmarks/client_capacity.py``). This client timestamps a
read in ``data_received`` — the loop's direct callback for that read — and hands the body bytes to the
caller's parser in the same call: no task switch, no buffer copy per chunk.

Scope, on purpose: HTTP/1.1 POST/GET with a JSON body, keep-alive connection reuse, ``Content-Length``,
``chunked`` and read-until-close bodies, TLS via :mod:`ssl`. No proxies, redirects, compression (we do
not send ``Accept-Encoding``) or HTTP/2. aiohttp is still used for the probes before a run.

Errors: :class:`HttpConnectError` (no response head: refused, reset, closed early), and
:class:`HttpBrokenError` (the connection broke after the head). Timeouts are the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

#: Called with (response head, body bytes, arrival ns) for each piece of the body; False stops it.
BodySink = Callable[["Response", bytes, int], bool]

_MAX_HEAD = 64 * 1024


class HttpError(Exception):
    pass


class HttpConnectError(HttpError):
    """No response head arrived (refused, reset or closed before the status line)."""


class HttpBrokenError(HttpError):
    """The connection broke or the framing was violated after the response head."""


class Response:
    """The head of a response; the body goes to the sink passed to :meth:`Http1Client.request`."""

    __slots__ = ("content_type", "head_ns", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: dict[str, str], head_ns: int) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.head_ns = head_ns
        ctype = headers.get("content-type", "")
        self.content_type = ctype.split(";", 1)[0].strip().lower()


class _Exchange:
    """One request/response on a connection: parses the head and the body framing."""

    __slots__ = (
        "_buf", "_chunk_left", "_length_left", "_mode", "_on_head", "_sink", "done", "keep_alive",
        "response",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: BodySink) -> None:
        self._buf = b""
        self._mode = "head"  # head | length | chunk_size | chunk_data | chunk_crlf | trailer | eof | done
        self._length_left = 0
        self._chunk_left = 0
        self._sink = sink
        self.response: Response | None = None
        self.keep_alive = True
        self.done: asyncio.Future[Response] = loop.create_future()

    # Called by the protocol with each read; returns True when the response is complete.
    # One state machine in one function: it runs for every read, so no per-state calls.
    def feed(self, data: bytes, now: int) -> bool:  # noqa: C901, PLR0911, PLR0912, PLR0915
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if self._mode == "chunk_size":
            # The common read of a stream: whole chunks (``<hex>\r\n<payload>\r\n``) and nothing else.
            # Index arithmetic instead of the state machine's slicing; anything else (a partial chunk,
            # an extension, the last chunk) is left to the general loop below from where this stopped.
            pos, n = 0, len(data)
            while True:
                end = data.find(b"\r\n", pos, pos + 18)
                if end <= pos:
                    break
                try:
                    size = int(data[pos:end], 16)
                except ValueError:  # a chunk extension (``;name=value``): the general loop parses it
                    break
                start = end + 2
                stop = start + size
                if size == 0 or stop + 2 > n:
                    break
                if data[stop : stop + 2] != b"\r\n":
                    raise HttpBrokenError("bad chunked encoding (no CRLF after a chunk)")
                if not self._deliver(data[start:stop], now):
                    return True
                pos = stop + 2
                if pos == n:
                    return False
            if pos:
                data = data[pos:]
        while data:
            mode = self._mode
            if mode == "chunk_data":
                n = self._chunk_left
                if len(data) <= n:
                    self._chunk_left = n - len(data)
                    if self._chunk_left == 0:
                        self._mode = "chunk_crlf"
                    # complete only when the sink stopped it; the read merely ended inside the body
                    return not self._deliver(data, now)
                if not self._deliver(data[:n], now):
                    return True
                data = data[n:]
                self._chunk_left = 0
                self._mode = "chunk_crlf"
            elif mode == "chunk_crlf":
                if len(data) < 2:
                    self._buf = data
                    return False
                if data[:2] != b"\r\n":
                    raise HttpBrokenError("bad chunked encoding (no CRLF after a chunk)")
                data = data[2:]
                self._mode = "chunk_size"
            elif mode == "chunk_size":
                end = data.find(b"\r\n")
                if end < 0:
                    self._buf = data
                    return False
                try:
                    size = int(data[:end].split(b";", 1)[0], 16)
                except ValueError:
                    raise HttpBrokenError(f"bad chunk size line {data[:end][:40]!r}") from None
                data = data[end + 2 :]
                if size == 0:
                    self._mode = "trailer"
                else:
                    self._chunk_left = size
                    self._mode = "chunk_data"
            elif mode == "trailer":
                end = data.find(b"\r\n")
                if end < 0:
                    self._buf = data
                    return False
                data = data[end + 2 :]
                if end == 0:
                    return self._finish()
            elif mode == "length":
                n = self._length_left
                if len(data) < n:
                    self._length_left = n - len(data)
                    return not self._deliver(data, now)
                self._length_left = 0
                self._deliver(data[:n], now)
                return self._finish()
            elif mode == "eof":
                return not self._deliver(data, now)
            elif mode == "head":
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    if len(data) > _MAX_HEAD:
                        raise HttpBrokenError("response head larger than 64 KiB")
                    self._buf = data
                    return False
                self._parse_head(data[:end], now)
                data = data[end + 4 :]
                if self._mode == "done":
                    return self._finish()
            else:  # done: bytes after a complete response on a keep-alive connection
                self.keep_alive = False
                return True
        return False

    def _deliver(self, data: bytes, now: int) -> bool:
        assert self.response is not None
        if not self._sink(self.response, data, now):
            self.keep_alive = False
            self._mode = "done"
            self._resolve()
            return False
        return True

    def _parse_head(self, head: bytes, now: int) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpConnectError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise HttpConnectError(f"bad status line {lines[0][:60]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        self.response = Response(status, reason, headers, now)
        if headers.get("connection", "").lower() == "close" or parts[0] == b"HTTP/1.0":
            self.keep_alive = False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode = "chunk_size"
        elif "content-length" in headers:
            self._length_left = int(headers["content-length"])
            self._mode = "length" if self._length_left else "done"
        elif status in (204, 304) or 100 <= status < 200:
            self._mode = "done"
        else:
            self._mode = "eof"
            self.keep_alive = False

    def _finish(self) -> bool:
        self._mode = "done"
        self._resolve()
        return True

    def _resolve(self) -> None:
        if not self.done.done() and self.response is not None:
            self.done.set_result(self.response)

    def lost(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        if self._mode == "eof" and self.response is not None:
            self._finish()
            return
        why = f": {exc}" if exc else ""
        if self.response is None:
            self.done.set_exception(HttpConnectError(f"connection closed before the response head{why}"))
        else:
            self.done.set_exception(HttpBrokenError(f"connection closed mid-response{why}"))

    def fail(self, exc: HttpError) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class _Connection(asyncio.Protocol):
    __slots__ = ("closed", "exchange", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not a TCP socket (e.g. a Unix socket)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()  # the moment the loop handed us these bytes
        ex = self.exchange
        if ex is None:  # unsolicited bytes on an idle connection: it is unusable
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            return
        try:
            finished = ex.feed(data, now)
        except HttpError as exc:
            ex.keep_alive = False
            ex.fail(exc)
            finished = True
        if finished:
            self.exchange = None
            if not ex.keep_alive:
                self.closed = True
                if self.transport is not None:
                    self.transport.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.exchange is not None:
            self.exchange.lost(exc)
            self.exchange = None


class Http1Client:
    """Keep-alive connections to one origin; any number of requests in flight (one per connection).

    There is no connection limit: an open-loop load must never wait for a connection inside the
    client. Closed-loop scenarios bound their own concurrency.
    """

    def __init__(self, base_url: str, *, insecure: bool = False, connect_timeout_s: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        default_port = self._port == (443 if parts.scheme == "https" else 80)
        host_header = self._host if default_port else f"{self._host}:{self._port}"
        if ":" in self._host and not self._host.startswith("["):
            host_header = f"[{self._host}]" if default_port else f"[{self._host}]:{self._port}"
        self._host_header = host_header.encode()
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            ctx = ssl.create_default_context()
            if insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        self._connect_timeout = connect_timeout_s
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self.opened = 0  # connections opened, for the report

    async def _acquire(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, proto = await loop.create_connection(
                    _Connection, self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise HttpConnectError(f"connect timed out after {self._connect_timeout:g} s") from None
        except OSError as exc:
            raise HttpConnectError(f"cannot connect: {exc.strerror or exc}") from None
        self.opened += 1
        self._all.add(proto)
        return proto

    async def preconnect(self, n: int) -> int:
        """Open up to ``n`` idle connections before the clock starts, so the first queries of a run do
        not pay for TCP (and TLS) set-up inside their issue delay. Returns how many are idle now."""
        missing = n - len(self._idle)
        if missing > 0:
            opened = await asyncio.gather(*(self._acquire() for _ in range(missing)),
                                          return_exceptions=True)
            self._idle.extend(c for c in opened if isinstance(c, _Connection))
        return len(self._idle)

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if reusable and not conn.closed:
            self._idle.append(conn)
        else:
            self._all.discard(conn)
            if conn.transport is not None and not conn.closed:
                conn.closed = True
                conn.transport.close()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        sink: BodySink,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> Response:
        """Send one request and feed the body to ``sink`` as it arrives; returns the response head
        once the body is complete (or the sink stopped it). ``on_sent`` runs just before the request
        bytes are written (the client takes its "sent" timestamp there). Cancellation closes the
        connection."""
        conn = await self._acquire()
        loop = asyncio.get_running_loop()
        ex = _Exchange(loop, sink)
        conn.exchange = ex
        head = [
            f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode(),
            b"Host: ", self._host_header, b"\r\n",
            b"Content-Length: ", str(len(body)).encode(), b"\r\n",
        ]
        for name, value in headers.items():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"\r\n")
        if on_sent is not None:
            on_sent()
        assert conn.transport is not None
        conn.transport.write(b"".join(head) + body)
        reusable = False
        try:
            resp = await ex.done
            reusable = ex.keep_alive
            return resp
        finally:
            if conn.exchange is ex:
                conn.exchange = None
            self._release(conn, reusable and ex.done.done() and not ex.done.cancelled())

    async def close(self) -> None:
        for conn in list(self._all):
            if conn.transport is not None and not conn.closed:
                conn.closed = True
                conn.transport.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)

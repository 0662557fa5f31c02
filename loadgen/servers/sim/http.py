"""A small HTTP/1.1 server on ``asyncio.Protocol`` for the simulated server.

Keep-alive by default (``Connection: close`` honoured), requests on one connection served in order,
JSON bodies with ``Content-Length``, SSE with ``Transfer-Encoding: chunked``. Request bodies must carry
``Content-Length`` (chunked uploads get 411). No per-chunk ``await``: the engine's emission pass calls
``transport.write`` directly, which never blocks (the kernel or the transport buffers).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

import orjson

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           411: "Length Required", 413: "Payload Too Large", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class Request:
    __slots__ = ("body", "headers", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body


Handler = Callable[["Conn", Request], None]


class Conn(asyncio.Protocol):
    """One client connection. The handler must end every request with exactly one of
    :meth:`send`, :meth:`end_stream` or :meth:`abort`."""

    def __init__(self, handler: Handler, on_lost: Callable[[Conn], None]) -> None:
        self._handler = handler
        self._on_lost = on_lost
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closed = False
        self.keep_alive = True
        self.active: Any = None  # the engine sequence this connection is streaming, if any

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_lost(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self.busy:
            self._next_request()

    # -- parsing ------------------------------------------------------------------------------------

    def _next_request(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self.send(431, b"", close=True)
            return
        try:
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
        except ValueError:
            self.send(400, b"", close=True)
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.send(411, b"", close=True)
            return
        if length > MAX_BODY or length < 0:
            self.send(413, b"", close=True)
            return
        if len(buf) < end + 4 + length:
            return
        body = bytes(buf[end + 4:end + 4 + length])
        del buf[:end + 4 + length]
        conn_hdr = headers.get("connection", "").lower()
        self.keep_alive = conn_hdr != "close" and not (_version == "HTTP/1.0" and conn_hdr != "keep-alive")
        path, _, query = target.partition("?")
        self.busy = True
        self._handler(self, Request(method, path, query, headers, body))

    def _done(self, close: bool) -> None:
        self.busy = False
        self.active = None
        if close or not self.keep_alive:
            if self.transport is not None:
                self.transport.close()
            return
        if self._buf:
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        if not self.busy and not self.closed:
            self._next_request()

    # -- responses ----------------------------------------------------------------------------------

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", "server: loadgen-sim"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not self.keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(self, status: int, body: bytes, content_type: str = "application/json",
             close: bool = False, partial: int | None = None) -> None:
        """Send a whole response. ``partial`` sends only that many body bytes and then aborts."""
        if close:
            self.keep_alive = False
        if self.closed or self.transport is None:
            return
        head = self._head(status, [("content-type", content_type), ("content-length", str(len(body)))])
        if partial is not None:
            self.transport.write(head + body[:partial])
            self.abort()
            return
        self.transport.write(head + body)
        self._done(close)

    def send_json(self, status: int, obj: Any) -> None:
        self.send(status, orjson.dumps(obj))

    def start_stream(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(self._head(200, [("content-type", "text/event-stream; charset=utf-8"),
                                                  ("transfer-encoding", "chunked"),
                                                  ("cache-control", "no-cache")]))

    def write_chunk(self, payload: bytes) -> None:
        """One HTTP chunk (may hold several SSE events)."""
        if not self.closed and self.transport is not None:
            self.transport.write(b"%x\r\n%b\r\n" % (len(payload), payload))

    def end_stream(self, payload: bytes = b"") -> None:
        if self.closed or self.transport is None:
            return
        if payload:
            self.transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(payload), payload))
        else:
            self.transport.write(b"0\r\n\r\n")
        self._done(False)

    def abort(self, reset: bool = False) -> None:
        """Close now, dropping unsent bytes; ``reset`` sends a TCP RST (SO_LINGER 0)."""
        if self.transport is None or self.closed:
            return
        if reset:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        else:
            self.transport.close()  # flush what was written (e.g. a truncated chunk), then FIN
        self.busy = True  # no further requests on this connection

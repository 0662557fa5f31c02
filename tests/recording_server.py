"""A small OpenAI-compatible server for tests that need to see what loadgen sent.

Unlike the built-in simulator it has no ``/tokenize`` and no ``/version`` (so loadgen can only
approximate input token counts, as against an unknown endpoint), it records the prompt of every
generation request in arrival order, and ``models_status`` makes ``GET /v1/models`` answer with a
fixed HTTP status (401, 403, ...). Completions and chat, streaming (chunked SSE, one word per chunk,
a usage event when asked) and not, over a real socket on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RecordingServer:
    def __init__(self, *, model: str = "rec-model", models_status: int = 200) -> None:
        self.model = model
        self.models_status = models_status
        self.prompts: list[str] = []  # prompt text (chat: the message contents joined by newlines)
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def __enter__(self) -> RecordingServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    if server.models_status != 200:
                        self._json(server.models_status, {"error": {"message": "denied"}})
                    else:
                        self._json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path not in ("/v1/completions", "/v1/chat/completions"):
                    self._json(404, {"error": {"message": "not found"}})
                    return
                chat = self.path.endswith("chat/completions")
                text = ("\n".join(m["content"] for m in body["messages"]) if chat else body["prompt"])
                with server._lock:
                    server.prompts.append(text)
                    server.paths.append(self.path)
                n_out = int(body.get("max_tokens") or 16)
                usage = {"prompt_tokens": len(text.split()), "completion_tokens": n_out,
                         "total_tokens": len(text.split()) + n_out}
                if body.get("stream"):
                    self._stream(chat, n_out, usage if body.get("stream_options") else None)
                elif chat:
                    self._json(200, {"choices": [{"index": 0, "finish_reason": "length", "message": {
                        "role": "assistant", "content": " ".join(["tok"] * n_out)}}], "usage": usage})
                else:
                    self._json(200, {"choices": [{"index": 0, "finish_reason": "length",
                                                  "text": " ".join(["tok"] * n_out)}], "usage": usage})

            def _json(self, status: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, chat: bool, n_out: int, usage: dict[str, int] | None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in _events(chat, n_out, usage):
                    data = f"data: {event}\n\n".encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def take(self) -> list[str]:
        """The prompts received so far, and forget them."""
        with self._lock:
            got, self.prompts = self.prompts, []
            self.paths = []
        return got


def _events(chat: bool, n_out: int, usage: dict[str, int] | None) -> Iterator[str]:
    for i in range(n_out):
        finish = "length" if i == n_out - 1 else None
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["delta"] = {"content": "tok "}
        else:
            choice["text"] = "tok "
        yield json.dumps({"choices": [choice]})
    if usage is not None:
        yield json.dumps({"choices": [], "usage": usage})
    yield "[DONE]"

"""``loadgen sim`` itself (the typer command, not ``python -m loadgen.servers.sim``): started as a
subprocess on a
free port, it serves /health, /v1/models and a stream with the configured TTFT, and stops on SIGTERM."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time

from tests.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready_line(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf and time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=0.5):
                buf += os.read(proc.stdout.fileno(), 4096)
    return buf.decode()


def _check_endpoints(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    health = conn.getresponse()
    health.read()
    assert health.status == 200
    conn.request("GET", "/v1/models")
    models = json.loads(conn.getresponse().read())
    assert [m["id"] for m in models["data"]] == ["cli-model"]

    body = json.dumps({"model": "cli-model", "prompt": "one two three", "max_tokens": 6, "stream": True,
                       "stream_options": {"include_usage": True}, "ignore_eos": True})
    sent = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/event-stream")
    arrivals, events = [], []
    while True:
        raw = resp.readline()
        if not raw:
            break
        if raw.startswith(b"data: "):
            payload = raw[6:].strip()
            events.append(payload)
            if payload != b"[DONE]" and json.loads(payload)["choices"]:
                arrivals.append(time.perf_counter())
    conn.close()
    assert events[-1] == b"[DONE]"
    assert len(arrivals) == 6
    usage = json.loads(events[-2])["usage"]
    assert usage["completion_tokens"] == 6 and usage["prompt_tokens"] == 3
    ttft_ms = (arrivals[0] - sent) * 1000
    assert 79.0 <= ttft_ms < 92.0, ttft_ms  # 80 ms configured (+ one local HTTP round trip)
    gaps_ms = [1000 * (b - a) for a, b in itertools.pairwise(arrivals)]
    assert abs(sorted(gaps_ms)[len(gaps_ms) // 2] - 5.0) < 1.0, gaps_ms  # 5 ms steps
    assert abs(sum(gaps_ms) - 25.0) < 4.0, gaps_ms


def test_loadgen_sim_command_serves_and_streams_with_the_configured_ttft():
    port = _free_port()
    cmd = [sys.executable, "-m", "loadgen", "sim", "--port", str(port), "--ttft-ms", "80", "--itl-ms", "5",
           "--model", "cli-model"]
    with tempfile.TemporaryFile() as err, subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            line = _ready_line(proc)
            err.seek(0)
            assert f"listening on http://127.0.0.1:{port}" in line, (line, err.read())
            _check_endpoints(port)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            code = proc.wait(timeout=10)
    assert code == 0  # a clean stop
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more

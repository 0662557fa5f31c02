"""The API key never leaves the request headers: not in any output file, the console, or the live
metrics — with every output enabled, with failing requests, and with a wrong key. TLS is verified by
default; ``--insecure`` says loudly that it is not."""

from __future__ import annotations

import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.servers.sim import FaultSpec, SimConfig, SimProcess
from tests.conftest import ROOT, run_cli

KEY = "sk-canary-8f3a" + secrets.token_hex(12)
WRONG = "sk-canary-wrong-" + secrets.token_hex(12)
HEADER_SECRET = "hdr-canary-" + secrets.token_hex(8)
CANARIES = (KEY, WRONG, HEADER_SECRET, KEY[-16:])


@pytest.fixture(scope="module")
def keyed() -> Iterator[SimProcess]:
    faults = (FaultSpec("http_500", every=5), FaultSpec("error_event", every=7),
              FaultSpec("http_429", every=11))
    with SimProcess(SimConfig(api_key=KEY, ttft_ms=20, itl_ms=5, faults=faults)) as proc:
        yield proc


def assert_no_secret(where: str, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    for canary in CANARIES:
        assert canary.encode() not in data, f"a secret leaked into {where}"


def assert_tree_clean(folder: Path) -> list[str]:
    names = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            assert_no_secret(str(path), path.read_bytes())
            names.append(path.name)
    return names


def test_the_key_appears_in_no_output(tmp_path, keyed):
    out = tmp_path / "run"
    textfile = tmp_path / "metrics.prom"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOADGEN_TEST_KEY": KEY}
    cmd = [sys.executable, "-m", "loadgen", "run", "server", "--url", keyed.url, "--api-key-env",
           "LOADGEN_TEST_KEY", "--qps", "15", "--duration", "3", "--num-requests", "45", "--output-len",
           "8", "--warmup", "3", "--metrics-port", "0", "--metrics-textfile", str(textfile),
           "--header", f"X-Api-Key: {HEADER_SECRET}", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    scraped = []
    try:
        assert proc.stderr is not None
        stderr_lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the exporter's address is printed before the run starts
            line = proc.stderr.readline()
            if not line:
                break
            stderr_lines.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+/metrics)", line)
            if m:
                time.sleep(1.5)  # mid-run
                with urllib.request.urlopen(m.group(1), timeout=10) as resp:
                    scraped.append(resp.read().decode())
                break
        stdout, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    console = "".join(stderr_lines) + rest + stdout
    assert proc.returncode == 0, console
    assert scraped and "loadgen_" in scraped[0]
    assert_no_secret("the scraped metrics", scraped[0])
    assert_no_secret("the console", console)
    assert "failed" in console and "http_status" in console  # the failing requests were there
    names = assert_tree_clean(out)
    assert {"report.json", "summary.txt", "requests.jsonl", "run.json", "warmup.jsonl",
            "report.html"} <= set(names), names
    assert_no_secret("the textfile", textfile.read_bytes())
    assert "loadgen_" in textfile.read_text()
    assert '"X-Api-Key": "***"' in (out / "run.json").read_text()


def test_a_wrong_key_is_reported_without_either_key(tmp_path, keyed):
    out = tmp_path / "run"
    res = run_cli("run", "server", "--url", keyed.url, "--api-key-env", "LOADGEN_TEST_KEY", "--qps", "5",
                  "--out", str(out), env={"LOADGEN_TEST_KEY": WRONG})
    assert res.code == 2 and "authentication failed" in res.stderr and "LOADGEN_TEST_KEY" in res.stderr
    assert_no_secret("the console", res.output)
    if out.exists():
        assert_tree_clean(out)


# ---- TLS ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_port(tmp_path_factory) -> Iterator[int]:
    """A TLS listener with a self-signed certificate that answers nothing after the handshake."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "k.pem"),
                    "-out", str(d / "c.pem"), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "c.pem", d / "k.pem")
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(2)
                    tls.recv(4096)
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()
    thread.join(timeout=5)


def test_tls_certificates_are_verified_by_default(tls_port):
    res = run_cli("run", "server", "--url", f"https://127.0.0.1:{tls_port}", "--qps", "5", timeout=60)
    assert res.code == 2, res.output
    assert "certificate" in res.stderr.lower(), res.stderr
    assert "WARNING" not in res.stderr


def test_insecure_skips_verification_and_says_so(tls_port):
    res = run_cli("run", "server", "--url", f"https://127.0.0.1:{tls_port}", "--qps", "5", "--insecure",
                  timeout=60)
    assert "WARNING: --insecure: TLS certificates are NOT verified" in res.stderr
    assert res.code == 2  # the listener answers nothing; but the handshake was accepted:
    assert "certificate verify failed" not in res.stderr.lower(), res.stderr

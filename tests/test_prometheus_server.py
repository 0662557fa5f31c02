"""A real Prometheus scrapes the exporter; a real Pushgateway receives a push (Debian's binaries).

Skipped when ``/usr/bin/prometheus`` is missing, unless ``LOADGEN_REQUIRE_PROMETHEUS=1`` (then failed).
``scripts/setup-prometheus.sh`` installs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadgen.exporter import Exporter
from loadgen.records import RequestRecord

pytestmark = pytest.mark.prometheus

PROMETHEUS = "/usr/bin/prometheus"
PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
MS = 1_000_000


def _require(binary: str) -> None:
    if Path(binary).is_file():
        return
    message = f"{binary} is not installed (run scripts/setup-prometheus.sh as root)"
    if os.environ.get("LOADGEN_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(message + "; LOADGEN_REQUIRE_PROMETHEUS=1 makes this a failure")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            http_get(url, timeout=1)
            return
        time.sleep(0.2)
    pytest.fail(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Fed:
    """What a metrics source exposes once ``done`` is set: its port and the totals it was given."""

    port: int
    requests_by_status: dict[str, int]
    ttft_count: int
    done: threading.Event


@contextlib.contextmanager
def fed_exporter(seconds: float = 4.0) -> Iterator[Fed]:
    """An Exporter on a free port fed with hand-made records over ``seconds`` from a thread.

    To test a real run instead, yield a ``Fed`` for a ``loadgen run ... --metrics-port PORT``
    subprocess against the simulated server (``done`` set when it exits, counts from its report).
    """
    exp = Exporter("prom-it", "server", "sim")
    port = exp.start_http(port=0)
    statuses = ["ok"] * 9 + ["http_5xx"]
    n = 40
    expected: dict[str, int] = {}
    for i in range(n):
        expected[statuses[i % 10]] = expected.get(statuses[i % 10], 0) + 1
    done = threading.Event()

    def feed() -> None:
        for i in range(n):
            status = statuses[i % 10]
            exp.request_started()
            first = (20 + i) * MS
            exp.request_finished(RequestRecord(
                index=i, sample=i, query=i, scheduled_ns=0, sent_ns=0, end_ns=first + 50 * MS,
                first_token_ns=None if status != "ok" else first,
                chunk_ns=[] if status != "ok" else [first, first + 25 * MS, first + 50 * MS],
                chunk_tokens=[] if status != "ok" else [1, 1, 1], output_tokens=3 if status == "ok" else 0,
                input_tokens=10, error_class=None if status == "ok" else status,
            ))
            time.sleep(seconds / n)
        done.set()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield Fed(port=port, requests_by_status=expected, ttft_count=expected["ok"], done=done)
    finally:
        feeder.join()
        exp.stop()


def query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = json.loads(http_get(url))
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(base: str, promql: str, expected: dict, key: str | None, timeout: float = 20) -> list:
    """Poll until the query's values (by label ``key``) equal ``expected``; return the last result."""
    deadline = time.monotonic() + timeout
    got: dict = {}
    while time.monotonic() < deadline:
        result = query(base, promql)
        got = {(r["metric"].get(key) if key else None): float(r["value"][1]) for r in result}
        if got == expected:
            return result
        time.sleep(0.5)
    pytest.fail(f"{promql}: Prometheus has {got}, expected {expected}")


def test_prometheus_scrapes_the_exporter(tmp_path: Path) -> None:
    _require(PROMETHEUS)
    prom_port = free_port()
    with fed_exporter() as fed:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: loadgen\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{fed.port}']\n"
        )
        args = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"]
        with process(args, tmp_path / "prometheus.log") as proc:
            base = f"http://127.0.0.1:{prom_port}"
            wait_ready(f"{base}/-/ready", proc, tmp_path / "prometheus.log")
            assert fed.done.wait(timeout=30)
            result = wait_for(base, "loadgen_requests_total", {s: float(n) for s, n in
                                                                fed.requests_by_status.items()}, "status")
            labels = result[0]["metric"]
            assert (labels["run_id"], labels["scenario"], labels["model"]) == ("prom-it", "server", "sim")
            assert labels["job"] == "loadgen"
            wait_for(base, "loadgen_ttft_seconds_count", {None: float(fed.ttft_count)}, None)
            # the histogram is usable as PromQL: every fed TTFT lies in (20, 60] ms
            p50 = query(base, "histogram_quantile(0.5, sum by (le) (loadgen_ttft_seconds_bucket))")
            assert 0.02 <= float(p50[0]["value"][1]) <= 0.06
    assert proc.poll() is not None  # stopped by PID on the way out


def test_pushgateway_receives_a_push(tmp_path: Path) -> None:
    _require(PUSHGATEWAY)
    port = free_port()
    exp = Exporter("push-it", "offline", "sim")
    for i in range(7):
        exp.request_finished(RequestRecord(
            index=i, sample=i, query=i, scheduled_ns=0, sent_ns=0, first_token_ns=30 * MS, end_ns=80 * MS,
            chunk_ns=[30 * MS, 55 * MS, 80 * MS], chunk_tokens=[1, 1, 1], output_tokens=3,
        ))
    exp.request_finished(RequestRecord(index=7, sample=7, query=7, scheduled_ns=0, sent_ns=0, end_ns=MS,
                                       error_class="connect"))
    log = tmp_path / "pushgateway.log"
    with process([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/-/ready", proc, log)
        assert exp.push(base, job="loadgen-test") is True
        values = {}
        for fam in text_string_to_metric_families(http_get(f"{base}/metrics").decode()):
            for s in fam.samples:
                if s.labels.get("job") == "loadgen-test":
                    assert s.labels["run_id"] == "push-it"
                    values[(s.name, s.labels.get("status"))] = s.value
        assert values[("loadgen_requests_total", "ok")] == 7
        assert values[("loadgen_requests_total", "connect")] == 1
        assert values[("loadgen_ttft_seconds_count", None)] == 7
        assert values[("loadgen_itl_seconds_count", None)] == 14
        assert values[("loadgen_output_tokens_total", None)] == 21

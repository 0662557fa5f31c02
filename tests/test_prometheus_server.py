"""A real Prometheus scrapes a real ``loadgen run --metrics-port``; a real Pushgateway receives
``loadgen run --pushgateway`` (Debian's binaries); both are read back and compared with the report.

Skipped when the binaries are missing, unless ``LOADGEN_REQUIRE_PROMETHEUS=1`` (then failed).
``scripts/setup-prometheus.sh`` installs them.

Holding the final state. The exporter stops when the run ends, about 0.3 s after the last request
finished on this machine: a 1 s scrape interval would miss the final counts about two times in three,
so the run keeps serving them for :data:`LINGER_S` with ``--metrics-linger-s``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import load_report, run_cli, write_scenario

pytestmark = pytest.mark.prometheus

PROMETHEUS = "/usr/bin/prometheus"
PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
#: How long the exporter keeps serving after the run (> 2 Prometheus scrape intervals).
LINGER_S = 2.5


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


def sim_scenario(path: Path, **fields: object) -> Path:
    """A closed loop against the simulated server with 1 request in 10 failing with HTTP 500."""
    return write_scenario(
        path, scenario="concurrency", concurrency=4, input_len=32, output_len=16, seed=7,
        sim={"faults": ["http_500:0.1"]}, **fields,
    )


def counts_from_report(report: dict) -> tuple[dict[str, float], int]:
    """(finished requests by status, as the exporter labels them; completed requests)."""
    res = report["results"]
    by_status = {"ok": float(res["requests_completed"])}
    for cls, n in res["errors_by_class"].items():
        by_status[cls] = by_status.get(cls, 0.0) + float(n)
    return by_status, int(res["requests_completed"])


def query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = json.loads(http_get(url))
    assert body["status"] == "success", body
    return body["data"]["result"]


def values_by(result: list[dict], key: str | None) -> dict:
    return {(r["metric"].get(key) if key else None): float(r["value"][1]) for r in result}


def test_prometheus_scrapes_a_real_run(tmp_path: Path) -> None:
    _require(PROMETHEUS)
    prom_port, metrics_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: loadgen\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    args = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"]
    log = tmp_path / "prometheus.log"
    out = tmp_path / "run"
    with process(args, log) as proc:
        base = f"http://127.0.0.1:{prom_port}"
        wait_ready(f"{base}/-/ready", proc, log)
        result = run_cli(
            "run", str(sim_scenario(tmp_path / "s.yaml", duration_s=7, num_requests=20)),
            "--metrics-port", str(metrics_port), "--metrics-linger-s", str(LINGER_S),
            "--out", str(out), "--quiet", timeout=90,
        )
        assert result.code == 0, result.output
        assert f"Prometheus metrics on http://127.0.0.1:{metrics_port}/metrics" in result.stderr
        report = load_report(out)
        by_status, completed = counts_from_report(report)
        assert completed >= 40 and by_status.get("http_status", 0) >= 1, by_status

        # The target is down now, so Prometheus has marked its series stale: read the last sample
        # (a range selector skips staleness markers).
        def last(metric: str) -> list[dict]:
            return query(base, f"last_over_time({metric}[5m])")

        deadline = time.monotonic() + 10  # the final scrape may still be on its way into the TSDB
        while time.monotonic() < deadline:
            if values_by(last("loadgen_requests_total"), "status") == by_status:
                break
            time.sleep(0.5)
        requests = last("loadgen_requests_total")
        assert values_by(requests, "status") == by_status
        labels = requests[0]["metric"]
        assert (labels["run_id"], labels["scenario"], labels["model"], labels["job"]) == (
            report["run_id"], "concurrency", "sim-model", "loadgen")
        assert values_by(last("loadgen_ttft_seconds_count"), None) == {None: float(completed)}
        assert values_by(last("loadgen_output_tokens_total"), None) == {
            None: float(report["results"]["output_tokens_total"])}
        # Several scrapes during the run, not one lucky one.
        scrapes = values_by(query(base, "count_over_time(loadgen_requests_total{status='ok'}[5m])"), None)
        assert scrapes[None] >= 5, scrapes
        # The histogram is usable as PromQL: the simulated server's TTFT is 50 ms at this load.
        promql = "histogram_quantile(0.5, sum by (le) (last_over_time(loadgen_ttft_seconds_bucket[5m])))"
        p50 = query(base, promql)
        assert 0.04 <= float(p50[0]["value"][1]) <= 0.1
    assert proc.poll() is not None  # stopped by PID on the way out


def test_pushgateway_receives_a_real_run(tmp_path: Path) -> None:
    _require(PUSHGATEWAY)
    port = free_port()
    log = tmp_path / "pushgateway.log"
    out = tmp_path / "run"
    # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: keep this one's own.
    args = [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            f"--persistence.file={tmp_path / 'pushgateway.data'}"]
    with process(args, log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/-/ready", proc, log)
        result = run_cli(
            "run", str(sim_scenario(tmp_path / "s.yaml", duration_s=2, num_requests=30)),
            "--pushgateway", base, "--out", str(out), "--quiet", timeout=60,
        )
        assert result.code == 0, result.output
        assert f"pushed final metrics to the Pushgateway at {base}" in result.stderr
        report = load_report(out)
        by_status, completed = counts_from_report(report)
        assert by_status.get("http_status", 0) >= 1, by_status
        requests: dict[str, float] = {}
        values: dict[str, float] = {}
        for fam in text_string_to_metric_families(http_get(f"{base}/metrics").decode()):
            for s in fam.samples:
                if s.labels.get("job") != "loadgen" or not s.name.startswith("loadgen_"):
                    continue  # the gateway's own push_time_seconds etc.
                assert (s.labels["run_id"], s.labels["scenario"]) == (report["run_id"], "concurrency")
                if s.name == "loadgen_requests_total":
                    requests[s.labels["status"]] = s.value
                else:
                    values[s.name] = s.value
        assert requests == by_status
        assert values["loadgen_ttft_seconds_count"] == completed
        assert values["loadgen_output_tokens_total"] == report["results"]["output_tokens_total"]
        assert values["loadgen_in_flight"] == 0

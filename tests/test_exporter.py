"""The Prometheus exporter: hand-made records in, parsed exposition text out; and a real
``loadgen run --metrics-port`` with worker processes, scraped over HTTP while it runs."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import prometheus_client
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loadgen.client.client import ERROR_CLASSES
from loadgen.observe.exporter import Exporter
from loadgen.records import RequestRecord

MS = 1_000_000
LABELS = {"run_id": "r1", "scenario": "server", "model": "tiny"}


def rec(**kw) -> RequestRecord:
    base = {"index": 0, "sample": 0, "query": 0, "scheduled_ns": 0, "sent_ns": 0, "end_ns": 0}
    return RequestRecord(**{**base, **kw})


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert {k: s.labels[k] for k in LABELS} == LABELS, s  # constant labels everywhere
            extra = tuple(sorted((k, v) for k, v in s.labels.items() if k not in LABELS))
            out[(s.name, extra)] = s.value
    return out


def scrape(exp: Exporter) -> dict:
    return samples(generate_latest(exp.registry).decode())


def bucket(values: dict, name: str, le: str) -> float:
    return values[(f"{name}_bucket", (("le", le),))]


@pytest.fixture
def fed() -> Exporter:
    exp = Exporter("r1", "server", "tiny")
    records = [
        # ok: TTFT 25 ms; chunks at 25, 37, 85 ms carrying 1, 1, 4 tokens → ITL 12 ms ×1 and 48/4 = 12 ms ×4;
        # TPOT (85 − 25) / (6 − 1) = 12 ms; E2E 90 ms. Sent 3 ms late.
        rec(scheduled_ns=7 * MS, sent_ns=10 * MS, first_token_ns=35 * MS, end_ns=100 * MS,
            chunk_ns=[35 * MS, 47 * MS, 95 * MS], chunk_tokens=[1, 1, 4], input_tokens=100, output_tokens=6),
        # ok: one chunk, TTFT 2.5 s, E2E 2.6 s, no ITL, no TPOT (one token)
        rec(sent_ns=0, first_token_ns=2500 * MS, end_ns=2600 * MS, chunk_ns=[2500 * MS], chunk_tokens=[1],
            input_tokens=50, output_tokens=1),
        rec(sent_ns=0, end_ns=5 * MS, error_class="http_status", status=503, input_tokens=20),
        rec(sent_ns=0, end_ns=30_000 * MS, error_class="timeout", input_tokens=20),
        rec(sent_ns=0, end_ns=6 * MS, error_class="http_status", status=500, input_tokens=20),
        # warm-up: not counted anywhere but in-flight
        rec(sent_ns=-900 * MS, first_token_ns=-800 * MS, end_ns=-700 * MS, chunk_ns=[-800 * MS],
            chunk_tokens=[1], output_tokens=1, input_tokens=7, warmup=True),
    ]
    for _ in range(len(records) + 2):  # two still in flight at the end
        exp.request_started()
    for r in records:
        exp.request_finished(r)
    return exp


def test_fixture_uses_real_error_classes(fed: Exporter) -> None:
    statuses = {labels[0][1] for name, labels in scrape(fed) if name == "loadgen_requests_total"}
    assert statuses - {"ok"} <= set(ERROR_CLASSES)
    assert statuses == {"ok", "http_status", "timeout"}


def test_counters_and_gauges(fed: Exporter) -> None:
    v = scrape(fed)
    assert v[("loadgen_requests_total", (("status", "ok"),))] == 2
    assert v[("loadgen_requests_total", (("status", "http_status"),))] == 2
    assert v[("loadgen_requests_total", (("status", "timeout"),))] == 1
    assert v[("loadgen_input_tokens_total", ())] == 210
    assert v[("loadgen_output_tokens_total", ())] == 7
    assert v[("loadgen_in_flight", ())] == 2
    assert v[("loadgen_issue_delay_seconds", ())] == pytest.approx(0.003)


def test_histograms_counts_sums_and_buckets(fed: Exporter) -> None:
    v = scrape(fed)
    ttft = "loadgen_ttft_seconds"
    assert v[(f"{ttft}_count", ())] == 2
    assert v[(f"{ttft}_sum", ())] == pytest.approx(2.525)
    assert bucket(v, ttft, "0.02") == 0
    assert bucket(v, ttft, "0.03") == 1  # 25 ms
    assert bucket(v, ttft, "2.0") == 1
    assert bucket(v, ttft, "3.0") == 2  # 2.5 s
    assert bucket(v, ttft, "+Inf") == 2

    itl = "loadgen_itl_seconds"
    assert v[(f"{itl}_count", ())] == 5  # 1 + 4 tokens after the first chunk
    assert v[(f"{itl}_sum", ())] == pytest.approx(0.060)  # the gaps add up to last − first chunk
    assert bucket(v, itl, "0.01") == 0
    assert bucket(v, itl, "0.015") == 5

    tpot = "loadgen_tpot_seconds"
    assert v[(f"{tpot}_count", ())] == 1
    assert v[(f"{tpot}_sum", ())] == pytest.approx(0.012)

    e2e = "loadgen_e2e_seconds"
    assert v[(f"{e2e}_count", ())] == 2  # completed requests only
    assert v[(f"{e2e}_sum", ())] == pytest.approx(2.69)
    assert bucket(v, e2e, "0.075") == 0
    assert bucket(v, e2e, "0.1") == 1
    assert bucket(v, e2e, "3.0") == 2
    assert bucket(v, e2e, "0.001") == 0
    assert bucket(v, e2e, "60.0") == 2


def test_bucket_bounds_cover_1ms_to_60s() -> None:
    exp = Exporter("r1", "server", "tiny")
    exp.request_finished(rec(sent_ns=0, first_token_ns=MS, end_ns=120_000 * MS, chunk_ns=[MS]))
    v = scrape(exp)
    assert bucket(v, "loadgen_ttft_seconds", "0.001") == 1  # exactly 1 ms lands in le=0.001
    assert bucket(v, "loadgen_e2e_seconds", "60.0") == 0  # 120 s only in +Inf
    assert bucket(v, "loadgen_e2e_seconds", "+Inf") == 1


def test_issue_delay_is_a_recent_max() -> None:
    now = [100.0]
    exp = Exporter("r1", "server", "tiny", issue_delay_window_s=5.0, clock=lambda: now[0])

    def gauge() -> float:
        return scrape(exp)[("loadgen_issue_delay_seconds", ())]

    exp.observe_issue_delay(0.2)
    exp.observe_issue_delay(0.05)
    assert gauge() == 0.2
    now[0] = 106.0  # next window: the previous window's max still shows
    exp.observe_issue_delay(0.01)
    assert gauge() == 0.2
    now[0] = 111.0
    assert gauge() == 0.01
    now[0] = 130.0  # quiet for a long time: nothing recent
    assert gauge() == 0.0


def test_gpu_metrics_and_joules_per_token() -> None:
    exp = Exporter("r1", "server", "tiny")
    v = scrape(exp)
    assert not any(name.startswith("loadgen_gpu") for name, _ in v)
    assert ("loadgen_joules_per_output_token", ()) not in v
    assert ("loadgen_output_tokens_per_joule", ()) not in v
    exp.set_gpu(0, power_watts=350.0, energy_joules=1000.0)
    exp.gpu_callback()([("1", 150.0, 500.0)])
    exp.request_finished(rec(sent_ns=0, end_ns=MS, output_tokens=300))
    v = scrape(exp)
    assert v[("loadgen_gpu_power_watts", (("gpu", "0"),))] == 350
    assert v[("loadgen_gpu_energy_joules_total", (("gpu", "1"),))] == 500
    assert v[("loadgen_joules_per_output_token", ())] == pytest.approx(1500 / 300)
    assert v[("loadgen_output_tokens_per_joule", ())] == pytest.approx(300 / 1500)
    assert v[("loadgen_gpu_power_peak_watts", (("gpu", "0"),))] == 350
    assert "loadgen_gpu_energy_joules_total" in exp.metric_names()


def test_gpu_gauges_fed_by_the_real_sampler_over_fake_nvml() -> None:
    """GpuSampler's on_sample through NVML's fake seam: 2 GPUs at 100 + 10 t W for 10 s, energy counter
    the exact integral (1,500 J each); 1,500 output tokens."""
    from loadgen.observe.gpu import GpuSampler
    from tests.test_telemetry import FakeClock, FakeNvml

    clock = FakeClock()
    exp = Exporter("r1", "server", "tiny", clock=lambda: clock.ns / 1e9)
    sampler = GpuSampler(FakeNvml(clock), interval_s=1e6, clock=clock, env={}, on_sample=exp.gpu_callback())
    assert sampler.start()
    for _ in range(100):
        clock.advance(0.1)
        sampler.sample_now()
    sampler.stop()
    exp.request_finished(rec(sent_ns=0, end_ns=MS, output_tokens=1500))
    v = scrape(exp)
    for gpu in ("0", "1"):
        assert v[("loadgen_gpu_power_watts", (("gpu", gpu),))] == pytest.approx(200.0)
        assert v[("loadgen_gpu_power_peak_watts", (("gpu", gpu),))] == pytest.approx(200.0)
        assert v[("loadgen_gpu_power_mean_watts", (("gpu", gpu),))] == pytest.approx(150.0)
        assert v[("loadgen_gpu_energy_joules_total", (("gpu", gpu),))] == pytest.approx(1500.0)
    assert v[("loadgen_joules_per_output_token", ())] == pytest.approx(2.0)
    assert v[("loadgen_output_tokens_per_joule", ())] == pytest.approx(0.5)


def test_own_registry_and_no_credentials_in_labels() -> None:
    exp = Exporter("r1", "server", "https://user:s3cret@example.com/model")
    exp.request_finished(rec(sent_ns=0, end_ns=MS))
    text = generate_latest(exp.registry).decode()
    assert "s3cret" not in text and "user" not in text
    assert 'model="https://example.com/model"' in text
    assert not any(m.name.startswith("loadgen") for m in prometheus_client.REGISTRY.collect())


def test_textfile(fed: Exporter, tmp_path) -> None:
    path = tmp_path / "loadgen.prom"
    fed.write_textfile(path)
    v = samples(path.read_text())
    assert v[("loadgen_ttft_seconds_count", ())] == 2
    assert v[("loadgen_requests_total", (("status", "ok"),))] == 2
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_http_port_zero(fed: Exporter) -> None:
    port = fed.start_http(port=0)
    try:
        assert port > 0 and fed.port == port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            v = samples(resp.read().decode())
        assert v[("loadgen_e2e_seconds_count", ())] == 2
        with pytest.raises(RuntimeError):
            fed.start_http(port=0)
    finally:
        fed.stop()
    assert fed.port is None
    fed.stop()  # idempotent


def test_push_failure_is_a_warning_without_credentials(fed: Exporter, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="loadgen.observe.exporter"):
        assert fed.push("http://bob:hunter2@127.0.0.1:1", timeout=2) is False
    assert "Pushgateway" in caplog.text and "127.0.0.1:1" in caplog.text
    assert "hunter2" not in caplog.text and "bob" not in caplog.text


def test_histogram_values_are_finite_for_zero_gaps() -> None:
    exp = Exporter("r1", "server", "tiny")
    exp.request_finished(rec(sent_ns=0, first_token_ns=MS, end_ns=MS, chunk_ns=[MS, MS], chunk_tokens=[1, 0],
                             output_tokens=2))
    v = scrape(exp)
    assert v[("loadgen_itl_seconds_count", ())] == 1  # a 0-token chunk counts as one token
    assert bucket(v, "loadgen_itl_seconds", "0.001") == 1
    assert math.isfinite(v[("loadgen_tpot_seconds_sum", ())])


# ---- a real run with worker processes ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape_url(url: str) -> dict[tuple[str, str], float] | None:
    """{(sample name, status label or ""): value}, or None while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return {(smp.name, smp.labels.get("status", "")): smp.value
            for fam in text_string_to_metric_families(text) for smp in fam.samples}


def scrape_while_running(cmd: list[str], port: int, env: dict[str, str], timeout_s: float) -> list[dict]:
    """Run ``cmd`` (a loadgen run with ``--metrics-port port``), scraping every 50 ms until it exits;
    asserts it exited 0 and returns the scrapes."""
    from tests.conftest import ROOT

    scrapes = []
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}) as proc:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            got = _scrape_url(f"http://127.0.0.1:{port}/metrics")
            if got is not None:
                scrapes.append(got)
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0].decode()
    assert proc.returncode == 0, output
    return scrapes


def test_in_flight_with_worker_processes(tmp_path) -> None:
    """--workers 2: the workers issue, the parent exports. In flight is never negative nor above the
    concurrency, is seen above zero while the run goes, and ends at 0 with every request counted."""

    port, out, concurrency = _free_port(), tmp_path / "run", 8
    cmd = [sys.executable, "-m", "loadgen", "run", "concurrency", "--concurrency", str(concurrency),
           "--workers", "2", "--num-requests", "60", "--duration", "3", "--input-len", "16",
           "--output-len", "8", "--no-gpu-telemetry", "--server-metrics-url", "none",
           "--metrics-port", str(port), "--metrics-linger-s", "1.5", "--out", str(out), "--quiet"]
    scrapes = scrape_while_running(cmd, port, {}, 90)
    report = json.loads((out / "report.json").read_text())
    res = report["results"]
    assert report["client_workers"] == 2
    assert res["requests_failed"] == 0 and res["requests_completed"] >= 60
    in_flight = [s[("loadgen_in_flight", "")] for s in scrapes]
    assert len(in_flight) >= 20, len(in_flight)
    assert min(in_flight) >= 0, in_flight
    assert max(in_flight) <= concurrency, in_flight
    assert max(in_flight) > 0, in_flight  # starts are counted, not only ends
    final = scrapes[-1]  # served during --metrics-linger-s, after the last request
    assert final[("loadgen_in_flight", "")] == 0
    assert final[("loadgen_requests_total", "ok")] == res["requests_completed"]
    assert final[("loadgen_output_tokens_total", "")] == res["output_tokens_total"]


def test_in_flight_returns_to_zero_after_multi_turn_sessions(tmp_path) -> None:
    """Multi-turn sessions send each turn themselves; their starts count too (the final in-flight is 0,
    not minus the number of turns)."""
    from tests.conftest import load_report, run_cli, write_scenario

    f = write_scenario(tmp_path / "s.yaml", scenario="concurrency", endpoint="chat", concurrency=3,
                       output_len=4, sessions={"users": 3, "turns": 2, "think_time_s": 0.01, "user_len": 8})
    out, prom = tmp_path / "run", tmp_path / "final.prom"
    res = run_cli("run", str(f), "--metrics-textfile", str(prom), "--no-gpu-telemetry",
                  "--server-metrics-url", "none", "--out", str(out), "--quiet")
    assert res.code == 0, res.output
    report = load_report(out)
    assert report["results"]["requests_completed"] == 6  # 3 users x 2 turns
    final = {(smp.name, smp.labels.get("status", "")): smp.value
             for fam in text_string_to_metric_families(prom.read_text()) for smp in fam.samples}
    assert final[("loadgen_in_flight", "")] == 0
    assert final[("loadgen_requests_total", "ok")] == 6

"""A real Prometheus (Debian's binary) scrapes two simulator replicas and a DCGM-format exporter of
known power; ``loadgen run --prometheus-url`` reads them back with PromQL over the run's window.

Known values: the client's own counts (every completed request's prompt and output tokens were served
by one replica or the other), and the exporter's constant power (energy = Σ power × window).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import load_report, run_cli, write_scenario
from tests.fleet_helpers import dcgm_exporter, free_port, replicas
from tests.test_prometheus_server import PROMETHEUS, _require, http_get, process, wait_ready

pytestmark = pytest.mark.prometheus

INPUT, OUTPUT = 32, 16
POWER = [250.0, 400.0]


def _hostport(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def _scraped_twice(base: str, jobs: int) -> bool:
    q = urllib.parse.urlencode({"query": "count_over_time(up[1m]) >= 2"})
    body = json.loads(http_get(f"{base}/api/v1/query?{q}"))
    return len(body["data"]["result"]) >= jobs


def test_promql_source_gives_fleet_replicas_and_known_energy(tmp_path: Path) -> None:
    _require(PROMETHEUS)
    prom_port = free_port()
    with replicas(2, ttft_ms=20, itl_ms=5, prefix_cache_blocks=256, prefix_block_tokens=8) as reps, \
            dcgm_exporter(POWER) as (dcgm, _):
        targets = ", ".join(f"'{_hostport(r.admin_url)}'" for r in reps)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: llm\n    static_configs:\n      - targets: [{targets}]\n"
            f"  - job_name: dcgm\n    static_configs:\n      - targets: ['{_hostport(dcgm)}']\n")
        args = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"]
        log = tmp_path / "prometheus.log"
        with process(args, log) as proc:
            base = f"http://127.0.0.1:{prom_port}"
            wait_ready(f"{base}/-/ready", proc, log)
            deadline = time.monotonic() + 30
            while not _scraped_twice(base, 3) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _scraped_twice(base, 3), log.read_text()[-2000:]
            scenario = write_scenario(tmp_path / "s.yaml", scenario="concurrency", concurrency=8,
                                      input_len=INPUT, output_len=OUTPUT, duration_s=4, num_requests=20,
                                      seed=5)
            out = tmp_path / "run"
            res = run_cli("run", str(scenario), "--url", reps[0].url, "--prometheus-url", base,
                          "--out", str(out),
                          "--quiet", "--no-gpu-telemetry", timeout=180)
            assert res.code == 0, res.output
    report = load_report(out)
    r = report["results"]
    n = r["requests_completed"]
    sm = report["server_metrics"]
    assert sm["source"] == "prometheus" and sm["server_kind"] == "vllm", json.dumps(sm)[:2000]
    assert sm["replica_count"] == 2
    gen, prompt = "vllm:generation_tokens_total", "vllm:prompt_tokens_total"
    assert sm["deltas"][gen] == r["output_tokens_total"] == n * OUTPUT, json.dumps(sm, indent=1)[:3000]
    assert sm["deltas"][prompt] == n * INPUT
    per = {x["instance"]: x["deltas"] for x in sm["replicas"]}
    assert set(per) == {_hostport(x.admin_url) for x in reps}
    assert sum(d[gen] for d in per.values()) == sm["deltas"][gen]
    assert all(d[gen] > 0 for d in per.values()), per
    assert sm["histograms"]["time_to_first_token"]["count"] == n
    cc = sm["cross_check"]
    assert cc["server_ttft_p50_ms"] is not None and cc["client_ttft_p50_ms"] >= cc["server_bucket_ms"][0]
    # the server's prefix cache hit rate (hits / look-ups) beside the client's from usage.cached_tokens
    cached = report["results"]["cached_prompt_tokens"]
    assert sm["deltas"]["vllm:prefix_cache_hits_total"] == cached["total"]
    assert cached["hit_rate"] == pytest.approx(sm["prefix_cache_hit_rate"], rel=1e-9)
    fe = report["fleet_energy"]
    assert fe["source"] == "prometheus" and fe["gpu_count"] == 2
    assert fe["energy_method"] == "counter"
    known = sum(POWER) * r["duration_s"]
    assert fe["energy_j"] == pytest.approx(known, rel=0.01)
    assert fe["joules_per_output_token"] == pytest.approx(known / r["output_tokens_total"], rel=0.01)
    assert fe["joules_per_output_token"] * fe["output_tokens_per_joule"] == pytest.approx(1.0)
    per_gpu = sorted(g["power_mean_w"] for g in fe["gpus"].values())
    assert per_gpu == pytest.approx(sorted(POWER), rel=0.01)

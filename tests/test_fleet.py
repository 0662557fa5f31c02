"""Several replicas' /metrics and a DCGM exporter scraped directly: fleet sums, per-replica sections,
remote GPU energy and J per output token, through the real CLI over 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_report, run_cli, write_scenario
from tests.fleet_helpers import dcgm_exporter, replicas

INPUT, OUTPUT = 32, 16


@pytest.mark.parametrize("kind", ["vllm", "sglang", "trtllm"])
def test_two_replicas_sum_to_the_fleet_and_dcgm_energy_is_the_known_integral(tmp_path: Path, kind: str
                                                                               ) -> None:
    power = [300.0, 450.0]
    with replicas(2, ttft_ms=20, itl_ms=5, metrics_flavour=kind) as reps, dcgm_exporter(power) as (dcgm, _):
        # 16 connections, hashed by the kernel over two SO_REUSEPORT listeners: all on one replica has
        # probability 2 / 2**16 (with 8 it was 0.8% a run, and CI saw it once)
        scenario = write_scenario(tmp_path / "s.yaml", scenario="concurrency", concurrency=16,
                                  input_len=INPUT, output_len=OUTPUT, duration_s=2, num_requests=20, seed=3)
        args = ["run", str(scenario), "--url", reps[0].url, "--out", str(tmp_path / "run"), "--quiet",
                "--no-gpu-telemetry", "--dcgm-url", dcgm]
        for r in reps:
            args += ["--metrics-url", r.admin_url]
        res = run_cli(*args, timeout=180)
        assert res.code == 0, res.output
    report = load_report(tmp_path / "run")
    sm = report["server_metrics"]
    assert sm["server_kind"] == [kind]
    assert sm["replica_count"] == 2
    gen = "vllm:generation_tokens_total"
    # every request the client completed was served by one replica or the other
    n = report["results"]["requests_completed"]
    assert n >= 20 and report["results"]["requests_failed"] == 0
    assert sm["deltas"][gen] == n * OUTPUT == report["results"]["output_tokens_total"], \
        json.dumps(sm, indent=1)[:3000]
    assert sm["deltas"]["vllm:prompt_tokens_total"] == n * INPUT
    per = [r["deltas"][gen] for r in sm["replicas"]]
    assert sum(per) == sm["deltas"][gen]
    assert all(p > 0 for p in per), per  # the kernel spread the connections over both replicas
    assert sm["histograms"]["time_to_first_token"]["count"] == n
    # energy: two GPUs of constant known power over the measured window
    fe = report["fleet_energy"]
    window = report["results"]["duration_s"]
    known = sum(power) * window
    assert fe["gpu_count"] == 2
    assert fe["energy_method"] == "counter"
    assert fe["energy_j"] == pytest.approx(known, rel=0.01)
    tokens = report["results"]["output_tokens_total"]
    assert fe["joules_per_output_token"] == pytest.approx(fe["energy_j"] / tokens, rel=1e-9)
    assert fe["output_tokens_per_joule"] == pytest.approx(tokens / fe["energy_j"], rel=1e-9)
    summary = (tmp_path / "run" / "summary.txt").read_text()
    assert "Fleet GPU joules per output token" in summary


def test_a_bad_dcgm_url_is_refused_naming_the_flag(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path / "s.yaml", scenario="concurrency", concurrency=1, duration_s=1,
                              num_requests=2)
    res = run_cli("run", str(scenario), "--out", str(tmp_path / "r"), "--quiet", "--dcgm-url", "ftp://x",
                  timeout=60)
    assert res.code == 2
    assert "--dcgm-url" in res.output and "Traceback" not in res.output


def test_sweeps_and_plans_prefer_the_fleets_joules_per_token() -> None:
    from loadgen.study.rows import joules_per_output_token

    local = {"telemetry": {"available": True, "total": {"joules_per_output_token": 5.0}},
             "results": {"output_tokens_total": 100}}
    assert joules_per_output_token(local) == 5.0
    fleet = {**local, "fleet_energy": {"joules_per_output_token": 0.5, "energy_j": 50.0}}
    assert joules_per_output_token(fleet) == 0.5
    unknown = {**local, "fleet_energy": {"joules_per_output_token": None, "energy_j": None}}
    assert joules_per_output_token(unknown) == 5.0


def test_cached_tokens_survive_the_record_table_and_give_the_client_hit_rate() -> None:
    from loadgen.metrics.cached import cached_prompt_tokens
    from loadgen.metrics.gaps import RecordTable
    from loadgen.records import RequestRecord

    recs = [RequestRecord(index=i, sample=i, query=i, scheduled_ns=0, sent_ns=0, end_ns=1, prompt_tokens=100,
                          cached_tokens=c) for i, c in enumerate([0, 64, None, 96])]
    table = RecordTable()
    for r in recs:
        table.append(r)
    back = list(table)
    assert [r.cached_tokens for r in back] == [0, 64, None, 96]
    cached = cached_prompt_tokens(back, server_hit_rate=0.5)
    assert cached == {"requests_reporting": 3, "requests_hit": 2, "total": 160, "prompt_tokens": 300,
                      "hit_rate": 160 / 300, "server_hit_rate": 0.5}


def test_an_unreachable_prometheus_is_a_note_and_the_run_is_kept(tmp_path: Path) -> None:
    from tests.fleet_helpers import free_port

    scenario = write_scenario(tmp_path / "s.yaml", scenario="concurrency", concurrency=2, duration_s=1,
                              num_requests=5, prometheus_settle_s=0)
    port = free_port()  # nothing listens there
    res = run_cli("run", str(scenario), "--out", str(tmp_path / "r"), "--quiet", "--no-gpu-telemetry",
                  "--prometheus-url", f"http://127.0.0.1:{port}", timeout=90)
    assert res.code == 0, res.output
    report = load_report(tmp_path / "r")
    assert report["results"]["requests_completed"] >= 5
    note = report["server_metrics"]["note"]
    assert f"Prometheus at http://127.0.0.1:{port} did not answer" in note
    assert "fleet_energy" not in report


def test_a_bad_prometheus_url_is_refused_naming_the_flag(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path / "s.yaml", scenario="concurrency", concurrency=1, duration_s=1,
                              num_requests=2)
    res = run_cli("run", str(scenario), "--out", str(tmp_path / "r"), "--quiet", "--prometheus-url",
                  "prometheus:9090", timeout=60)
    assert res.code == 2, res.output
    assert "--prometheus-url" in res.output and "http://prometheus:9090" in res.output

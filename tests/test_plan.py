"""Capacity plan on a hand-written sweep.json, every expected number worked out by hand below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.errors import ConfigError
from loadgen.study.plan import PlanInputs, interpolate, load_source, make_plan, render

# Five concurrency points. Output tokens/s = requests/s × 128 (so 128 output tokens per request).
# Point 3 meets the SLO but is INVALID (too few queries, say); point 4 misses the TTFT bound.
ROWS = [  # requests/s, TTFT p99, TPOT p99, valid, J/token
    (10.0, 50.0, 10.0, True, 0.9),
    (20.0, 60.0, 12.0, True, 0.5),
    (30.0, 100.0, 15.0, True, 0.3),
    (31.0, 150.0, 18.0, False, 0.29),
    (32.0, 400.0, 30.0, True, 0.28),
]


def write_sweep(folder: Path, *, telemetry: bool = True) -> Path:
    points = []
    for i, (rps, ttft, tpot, valid, jpt) in enumerate(ROWS):
        row = {
            "offered_qps": None, "concurrency": 2 ** i, "requests_per_s": rps,
            "output_tokens_per_s": rps * 128, "goodput_requests_per_s": rps,
            "ttft_p50_ms": ttft / 2, "ttft_p99_ms": ttft, "itl_p50_ms": tpot, "itl_p99_ms": tpot,
            "tpot_p50_ms": tpot / 2, "tpot_p99_ms": tpot, "e2e_p50_ms": None, "e2e_p99_ms": None,
            "error_rate": 0.0, "valid": valid, "client_limited": False,
            "joules_per_output_token": jpt if telemetry else None, "server_args": None,
        }
        points.append({"index": i, "values": {"concurrency": 2 ** i}, "seed": i, "out_dir": f"point-{i}",
                       "status": "done", "error": None, "row": row})
    sweep = {
        "schema_version": 1, "kind": "sweep", "scenario": "concurrency", "parameters": ["concurrency"],
        "slo": {"ttft_ms": 200.0, "tpot_ms": 20.0}, "points": points, "knee": None,
        "length_mix": {"input_len": {"kind": "fixed", "mean": 128},
                       "output_len": {"kind": "fixed", "mean": 128}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.json").write_text(json.dumps(sweep))
    return folder


def test_plan_hand_computed(tmp_path: Path) -> None:
    src = load_source(write_sweep(tmp_path / "sw"))
    plan = make_plan(src, PlanInputs(peak_qps=100, headroom=0.2, gpu_hour_usd=2.0, gpus_per_replica=2))
    # Usable: points 0-2 (point 3 INVALID, point 4 over the 200 ms TTFT bound) -> sustainable 30 req/s.
    assert plan["sustainable"]["requests_per_s"] == 30.0
    # replicas = ceil(100 × 1.2 / 30) = ceil(4.0) = 4; per replica at peak: 100 / 4 = 25 req/s.
    assert plan["replicas"] == 4
    assert plan["per_replica_qps"] == pytest.approx(25.0)
    # 25 req/s lies halfway between point 1 (20) and point 2 (30): TTFT p99 (60 + 100) / 2 = 80 ms,
    # TPOT p99 (12 + 15) / 2 = 13.5 ms, J/token (0.5 + 0.3) / 2 = 0.4 -> 400 J per 1k output tokens.
    assert plan["expected"]["ttft_p99_ms"] == pytest.approx(80.0)
    assert plan["expected"]["tpot_p99_ms"] == pytest.approx(13.5)
    assert "between point 1" in plan["expected"]["method"]
    assert plan["energy_per_1k_output_tokens_j"] == pytest.approx(400.0)
    # 25 req/s × 128 tokens / 2 GPUs = 1600 output tokens per GPU-second.
    assert plan["output_tokens_per_gpu_s"] == pytest.approx(1600.0)
    # $2 × 2 GPUs × 4 replicas = $16/h for 100 × 128 × 3600 = 46.08 M tokens/h -> $0.347222 per M.
    assert plan["cost_per_million_output_tokens_usd"] == pytest.approx(16 / 46.08)
    assert plan["warnings"] == []
    text = render(plan)
    assert "assumes traffic with the sweep's length mix: 128 in / 128 out" in text
    names = [f["name"] for f in plan["figures"]]
    assert names[:3] == ["sustainable_qps_per_replica", "replicas", "load_per_replica_at_peak"]
    assert all(f["assumption"] for f in plan["figures"])


def test_plan_allow_invalid_and_mix_warning(tmp_path: Path) -> None:
    src = load_source(write_sweep(tmp_path / "sw", telemetry=False) / "sweep.json")
    plan = make_plan(src, PlanInputs(peak_qps=100, headroom=0.0, require_valid=False, input_len=512,
                                     output_len=128))
    # Point 3 (31 req/s, within the SLO) now counts: replicas = ceil(100 / 31) = 4.
    assert plan["sustainable"]["requests_per_s"] == 31.0
    assert plan["replicas"] == 4
    assert plan["cost_per_million_output_tokens_usd"] is None
    assert plan["energy_per_1k_output_tokens_j"] is None
    assert any("512 in / 128 out" in w and "128 in / 128 out" in w for w in plan["warnings"])
    # A tighter SLO given on the command line: only points 0 and 1 (TTFT p99 <= 60 ms) -> 20 req/s.
    tight = make_plan(src, PlanInputs(peak_qps=100, ttft_ms=60))
    assert tight["sustainable"]["requests_per_s"] == 20.0
    assert tight["replicas"] == 6  # ceil(120 / 20)
    with pytest.raises(ConfigError, match="no point"):
        make_plan(src, PlanInputs(peak_qps=100, ttft_ms=10))


def test_interpolate_edges() -> None:
    pts = [{"label": "a", "requests_per_s": 10.0, "v": 1.0}, {"label": "b", "requests_per_s": 20.0, "v": 3.0}]
    assert interpolate(pts, 5.0, "v")[0] == 1.0  # below the lightest point: its value
    assert interpolate(pts, 12.5, "v")[0] == pytest.approx(1.5)
    assert interpolate(pts, 20.0, "v")[0] == 3.0
    assert interpolate(pts, 1.0, "missing") == (None, "not measured")


def test_plan_from_peak_json(tmp_path: Path) -> None:
    peak = {
        "schema_version": 1, "kind": "peak", "peak_qps": 40.0, "bracket": [40.0, 45.0],
        "slo": {"ttft_ms": 500.0, "tpot_ms": 50.0}, "preset": None,
        "length_mix": {"input_len": {"mean": 64}, "output_len": {"mean": 32}},
        "runs": [
            {"qps": 20.0, "valid": True, "reasons": [], "out_dir": "run-000", "ttft_p99_ms": 100.0,
             "tpot_p99_ms": 10.0, "requests_per_s": 19.5, "output_tokens_per_s": 19.5 * 32},
            {"qps": 40.0, "valid": True, "reasons": [], "out_dir": "run-001", "ttft_p99_ms": 300.0,
             "tpot_p99_ms": 20.0, "requests_per_s": 39.0, "output_tokens_per_s": 39.0 * 32},
            {"qps": 45.0, "valid": False, "reasons": ["x"], "out_dir": "run-002", "ttft_p99_ms": 900.0,
             "tpot_p99_ms": 30.0, "requests_per_s": 42.0, "output_tokens_per_s": 42.0 * 32},
        ],
    }
    (tmp_path / "peak.json").write_text(json.dumps(peak))
    plan = make_plan(load_source(tmp_path), PlanInputs(peak_qps=117, headroom=0.0))
    assert plan["sustainable"]["requests_per_s"] == 39.0
    assert plan["replicas"] == 3  # ceil(117 / 39)
    assert plan["output_tokens_per_request"] == pytest.approx(32.0)
    assert plan["expected"]["ttft_p99_ms"] == pytest.approx(300.0)  # 39 req/s per replica: run 1 itself


def test_plan_cli_writes_plan_json(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from loadgen.cli.study import register

    app = typer.Typer()
    app.command("noop")(lambda: None)
    register(app)
    folder = write_sweep(tmp_path / "sw")
    res = CliRunner().invoke(app, ["plan", str(folder), "--peak-qps", "100", "--gpu-hour-usd", "2",
                                   "--gpus-per-replica", "2", "--input-len", "512"])
    assert res.exit_code == 0, res.output
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["replicas"] == 4 and plan["kind"] == "plan"
    assert "WARNING: you asked about 512 in / 128 out" in res.output
    assert "replicas" in res.output and "ceil(100 × (1 + 0.2) / 30)" in res.output
    bad = CliRunner().invoke(app, ["plan", str(tmp_path), "--peak-qps", "1"])
    assert bad.exit_code == 2 and "neither sweep.json nor peak.json" in bad.output

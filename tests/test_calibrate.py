"""Calibrate, predict, confirm — against the simulator with parameters the test draws and hides.

The simulator serves with hidden prefill, decode step, batch slope and slot count. Four short runs
(two input lengths at one user, a light concurrency and a saturating one) go through the real CLI,
``loadgen calibrate`` fits them, and the fit must recover every parameter within 10% (the slot count
exactly). ``loadgen predict --confirm`` then forecasts loads and a length mix the fit never saw and
runs them: every figure must land within its band, the TTFT p99 within 10%, and the predicted capacity
(the knee) within 10% of the throughput a saturated run measures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadgen.servers.sim import SimConfig, SimProcess
from loadgen.study.servemodel import ServingModel, replay
from tests.conftest import run_cli, write_scenario

pytestmark = pytest.mark.slow

RNG = np.random.default_rng(20261207)
HIDDEN = {"ttft_ms": float(RNG.uniform(20, 50)), "prefill_ms_per_token": float(RNG.uniform(0.05, 0.2)),
          "itl_ms": float(RNG.uniform(3, 8)), "itl_slope": float(RNG.uniform(0.03, 0.1)),
          "max_seqs": int(RNG.integers(4, 9))}
OUT = 32
POINTS = [(1, 32, 10), (1, 512, 10), (3, 128, 30), (32, 128, 96)]  # (users, input tokens, requests)


def _run(url: str, out: Path, users: int, inp: int | str, n: int):
    return run_cli("run", "concurrency", "--url", url, "--concurrency", str(users), "--input-len", str(inp),
                   "--output-len", str(OUT), "--num-requests", str(n), "--duration", "0", "--out", str(out),
                   "--quiet", timeout=300)


@pytest.fixture(scope="module")
def hidden_sim():
    with SimProcess(SimConfig(**HIDDEN)) as proc:
        yield proc


@pytest.fixture(scope="module")
def model_file(hidden_sim, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calibration")
    for users, inp, n in POINTS:
        res = _run(hidden_sim.url, root / f"c{users}-i{inp}", users, inp, n)
        assert res.code == 0, res.output
    path = root / "model.json"
    res = run_cli("calibrate", *(str(root / f"c{u}-i{i}") for u, i, _ in POINTS), "--out", str(path))
    assert res.code == 0, res.output
    assert "max_seqs" in res.stdout and f"model: {path}" in res.stdout
    return path


def test_calibration_recovers_the_hidden_parameters_within_ten_percent(model_file):
    fitted = json.loads(model_file.read_text())
    params = fitted["parameters"]
    for name in ("ttft_ms", "prefill_ms_per_token", "itl_ms", "itl_slope"):
        assert params[name] == pytest.approx(HIDDEN[name], rel=0.10), (name, params[name], HIDDEN)
        assert params["sigma"][name] >= 0
    assert params["max_seqs"] == HIDDEN["max_seqs"]
    assert fitted["fit_error_max"] is not None and fitted["fit_error_max"] < 0.05
    assert fitted["notes"] == []


@pytest.mark.parametrize("case", [(6, 256, 48), (16, 128, 96), (4, "uniform", 48)])
def test_predictions_at_unseen_loads_and_mixes_are_confirmed_by_a_run(model_file, hidden_sim, tmp_path, case):
    users, inp, n = case
    if inp == "uniform":  # an unseen length mix: uniform prompts of 64-512 tokens
        scenario = write_scenario(tmp_path / "mix.yaml", scenario="concurrency", concurrency=users,
                                  num_requests=n, duration_s=0, output_len=OUT,
                                  input_len={"kind": "uniform", "mean": 288, "min": 64, "max": 512})
        args = [str(scenario)]
    else:
        args = ["concurrency", "--concurrency", str(users), "--input-len", str(inp), "--output-len", str(OUT),
                "--num-requests", str(n), "--duration", "0"]
    out = tmp_path / "pred"
    res = run_cli("predict", str(model_file), *args, "--confirm", "--url", hidden_sim.url, "--out", str(out),
                  timeout=300)
    assert res.code == 0, res.output
    assert "confirmation: CONFIRMED" in res.stdout
    pred = json.loads((out / "prediction.json").read_text())
    rows = {r["name"]: r for r in pred["confirmation"]["rows"]}
    assert abs(rows["ttft_p99_ms"]["error"]) <= 0.10, rows["ttft_p99_ms"]
    if users > HIDDEN["max_seqs"]:  # saturated: the measured throughput is the knee
        measured = rows["requests_per_s"]["measured"]
        assert pred["capacity_rps"] == pytest.approx(measured, rel=0.10)
        assert pred["capacity_concurrency"] == HIDDEN["max_seqs"]


def test_a_prediction_against_another_deployment_is_not_confirmed(model_file, tmp_path):
    """The same scenario against a server twice as slow per token: the run lands outside the bands."""
    slower = {**HIDDEN, "itl_ms": HIDDEN["itl_ms"] * 2}
    with SimProcess(SimConfig(**slower)) as other:
        res = run_cli("predict", str(model_file), "concurrency", "--concurrency", "2", "--input-len", "64",
                      "--output-len", str(OUT), "--num-requests", "12", "--duration", "0", "--confirm",
                      "--url", other.url, timeout=300)
    assert res.code == 1, res.output
    assert "NOT CONFIRMED" in res.stdout and "OUTSIDE" in res.stdout


def test_the_built_in_simulator_serves_the_fitted_model(model_file, tmp_path):
    """No --url: --confirm runs against the built-in simulator timed by model.json (what-if questions
    without the deployment), so the prediction must hold there too."""
    res = run_cli("predict", str(model_file), "concurrency", "--concurrency", "8", "--input-len", "300",
                  "--output-len", str(OUT), "--num-requests", "48", "--duration", "0", "--confirm",
                  timeout=300)
    assert res.code == 0, res.output
    assert "the built-in simulator serving the model" in res.stderr
    assert "confirmation: CONFIRMED" in res.stdout


def test_replay_matches_the_simulators_own_formulas():
    """Virtual time against the analytic service time and capacity (no server needed)."""
    m = ServingModel(30.0, 0.1, 5.0, 0.05, 4)
    one = replay(m, [200] * 5, [20] * 5, concurrency=1)
    assert one.ttft_ms() == pytest.approx([30 + 0.1 * 200] * 5)
    assert one.tpot_ms() == pytest.approx([5.0] * 5)
    full = replay(m, [100] * 400, [20] * 400, concurrency=16)
    assert full.throughput_rps() == pytest.approx(m.capacity_rps(100, 20), rel=0.01)
    assert np.median(full.tpot_ms()) == pytest.approx(m.step_ms(4))


def test_replicas_carry_the_most_qps_the_slo_allows_never_above_capacity():
    from loadgen.settings import Scenario, load_settings
    from loadgen.study.predict import max_load, replicas
    from loadgen.study.tiers import Tier

    m = ServingModel(30.0, 0.1, 6.0, 0.05, 8)
    s = load_settings("concurrency", {"input_len": 256, "output_len": 32, "num_requests": 200,
                                      "duration_s": 0, "slo": {"ttft_ms": 5000}})
    cap = m.capacity_rps(256, 32)
    plan = replicas(m, s, 100.0, headroom=0.2, gpu_hour_usd=2.0)
    assert plan["sustainable_qps_per_replica"] <= cap
    assert plan["replicas"] == int(np.ceil(120 / plan["sustainable_qps_per_replica"]))
    assert plan["usd_per_million_output_tokens"] == pytest.approx(
        2.0 * plan["replicas"] / (100 * 32 * 3600) * 1e6)
    tight = load_settings("concurrency", {"input_len": 256, "output_len": 32, "slo": {"ttft_ms": 50}})
    with pytest.raises(Exception, match="at no rate"):  # the unqueued TTFT alone is 55.6 ms
        replicas(m, tight, 10.0)
    assert max_load(m, s, Tier("t", ttft_ms=50))["max"] is None
    # users: up to max_seqs nobody queues (TTFT 55.6 ms); one more and a TTFT waits a whole request
    assert max_load(m, s, Tier("t", ttft_ms=60))["max"] == 8
    # a lax tier: a closed loop never has more users than requests, an open loop never beats capacity
    lax = max_load(m, s, Tier("t", ttft_ms=1e7))
    assert lax["max"] == 200 and "200 requests are all in flight" in lax["limit"]
    server = s.model_copy(update={"scenario": Scenario.SERVER, "qps": 1.0})
    lax = max_load(m, server, Tier("t", ttft_ms=1e7))
    assert lax["max"] == pytest.approx(cap, rel=1e-3) and lax["limit"].startswith("capacity")
    assert max_load(m, s, Tier("t", ttft_ms=60))["limit"] is None


def test_bad_model_files_exit_2_naming_the_file(tmp_path):
    bad = tmp_path / "model.json"
    bad.write_text('{"parameters": {"ttft_ms": 1}}')
    res = run_cli("predict", str(bad), "concurrency")
    assert res.code == 2 and str(bad) in res.stderr and "loadgen calibrate" in res.stderr, res.output
    res = run_cli("calibrate", str(tmp_path), "--out", str(tmp_path / "m.json"))
    assert res.code == 2 and "neither a run folder" in res.stderr, res.output


def test_a_median_on_a_cliff_carries_the_range_a_run_may_land_in():
    """Six users on four slots, equal lengths: in the replay four start, two wait a whole service time,
    and so on in lockstep, so the TTFT splits into two groups (26 unqueued, 22 queued of 48) and the
    median sits at the edge of the first; a real run's jitter dephases the slots and lands between."""
    from loadgen.settings import load_settings
    from loadgen.study.predict import confirm, predict, render

    m = ServingModel(30.0, 0.1, 5.0, 0.05, 4)
    s = load_settings("concurrency", {"concurrency": 6, "input_len": 200, "output_len": 20,
                                      "num_requests": 48, "duration_s": 0})
    pred = predict(m, s)
    fig = {f["name"]: f for f in pred["figures"]}
    unqueued = 30 + 0.1 * 200
    queued = unqueued + m.service_s(200, 20, 4) * 1000
    assert fig["ttft_p50_ms"]["value"] == pytest.approx(unqueued)
    assert fig["ttft_p50_ms"]["range"] == pytest.approx([unqueued, queued])
    assert "range" not in fig["tpot_p50_ms"] and fig["ttft_p50_ms"]["band"] == 0.05

    def run(p50: float) -> dict:
        return {"results": {"ttft_ms": {"p50": p50}}, "validity": {"valid": True}}

    assert confirm(pred, run((unqueued + queued) / 2))["rows"][0]["within"]
    assert confirm(pred, run(queued * 1.04))["rows"][0]["within"]
    assert not confirm(pred, run(unqueued * 0.9))["rows"][0]["within"]
    assert not confirm(pred, run(queued * 1.1))["rows"][0]["within"]
    assert "on a cliff: 50.00 to" in render(pred) and "has a cliff at ttft_p50_ms" in render(pred)
    # below the slot count nobody waits: no cliff, the plain band
    two = predict(m, s.model_copy(update={"concurrency": 2}))
    assert all("range" not in f for f in two["figures"])

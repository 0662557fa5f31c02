"""Embeddings (``--endpoint embeddings``) against the simulator's known costs and against real vLLM.

The simulator runs a pooling request as one slot held for ``ttft_ms + prefill_ms_per_token × input
tokens`` (no decode), so its latency and throughput are known beforehand: unqueued, latency L = 40 +
0.1 × 200 = 60 ms and a closed loop of 4 users completes 4 / L = 66.7 requests/s; with 2 slots and 8
users every request waits three others ahead of it (4 L) and the server completes 2 / L = 33.3/s.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from loadgen.servers.sim import SimConfig, SimProcess
from loadgen.servers.vllm import VllmLauncher
from tests.conftest import load_report, run_cli
from tests.conftest_vllm import VLLM_ARGS, require_vllm, tiny_vllm_spec
from tests.tiny_model import write_tiny_model

TTFT, PREFILL, INPUT = 40.0, 0.1, 200
L = TTFT + PREFILL * INPUT


def _run(url, out, users, n):
    return run_cli("run", "concurrency", "--url", url, "--endpoint", "embeddings", "--concurrency",
                   str(users), "--num-requests", str(n), "--duration", "0", "--input-len", str(INPUT),
                   "--out", str(out))


@pytest.mark.parametrize(("slots", "users", "latency", "rate"), [
    (256, 4, L, 4 / L * 1e3),          # nobody waits
    (2, 8, 4 * L, 2 / L * 1e3),        # saturated: the capacity
])
def test_latency_and_throughput_match_the_simulators_analytic_values(tmp_path, slots, users, latency, rate):
    cfg = SimConfig(ttft_ms=TTFT, prefill_ms_per_token=PREFILL, max_seqs=slots, keep_bodies=10)
    with SimProcess(cfg) as sim:
        res = _run(sim.url, tmp_path, users, 160)
        with urllib.request.urlopen(sim.url + "/sim/bodies", timeout=10) as resp:
            body = json.load(resp)["bodies"][-1]
    assert res.code == 0, res.output
    r = load_report(tmp_path)["results"]
    assert r["requests_completed"] == 160 and r["requests_failed"] == 0
    assert r["e2e_ms"]["p50"] == pytest.approx(latency, rel=0.02)
    assert r["requests_per_s"] == pytest.approx(rate, rel=0.02)
    assert r["input_tokens_per_s"] == pytest.approx(rate * INPUT, rel=0.02)
    assert r["ttft_ms"]["count"] == 0 and r["output_tokens_total"] == 0  # no TTFT, and it is said
    assert "embeddings: no TTFT, ITL or TPOT" in res.stdout and "Latency (from sent)" in res.stdout
    assert set(body) == {"model", "input", "encoding_format"} and len(body["input"].split()) == INPUT
    rec = json.loads((tmp_path / "requests.jsonl").read_text().splitlines()[0])
    assert rec["prompt_tokens"] == INPUT and rec["first_token_ns"] is None
    assert rec["requested_output_tokens"] is None


def test_the_simulator_rejects_a_bad_embeddings_input_and_loadgen_records_it(tmp_path):
    with SimProcess(SimConfig()) as sim:
        req = urllib.request.Request(sim.url + "/v1/embeddings", data=b'{"input": {"x": 1}}',
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and "`input` must be" in err.value.read().decode()


@pytest.mark.vllm
def test_embeddings_on_vllm_cpu_with_a_pooling_tiny_model(tmp_path):
    """The tiny model with dummy weights served as an embedding model (--runner pooling --convert
    embed): every request answered, vLLM's usage counting the prompt exactly, also four inputs per
    request (``--inputs-per-request``)."""
    require_vllm()
    spec = tiny_vllm_spec(write_tiny_model(tmp_path / "model"),
                          args=(*VLLM_ARGS, "--runner", "pooling", "--convert", "embed"))
    with VllmLauncher(spec, log_path=tmp_path / "server.log") as vllm:
        res = run_cli("run", "concurrency", "--url", vllm.base_url, "--endpoint", "embeddings",
                      "--concurrency", "4", "--num-requests", "40", "--duration", "0", "--input-len", "64",
                      "--out", str(tmp_path / "run"), timeout=300)
        batched = run_cli("run", "concurrency", "--url", vllm.base_url, "--endpoint", "embeddings",
                          "--concurrency", "4", "--num-requests", "20", "--duration", "0", "--input-len",
                          "32", "--inputs-per-request", "4", "--out", str(tmp_path / "batched"), timeout=300)
    assert res.code == 0, res.output
    assert batched.code == 0, batched.output
    b = load_report(tmp_path / "batched")["results"]
    assert b["requests_completed"] == 20 and b["requests_failed"] == 0 and b["inputs_per_request"] == 4
    lines = (tmp_path / "batched" / "requests.jsonl").read_text().splitlines()
    assert all(json.loads(x)["prompt_tokens"] == 4 * 32 for x in lines)  # vLLM counted all four inputs
    r = load_report(tmp_path / "run")["results"]
    assert r["requests_completed"] == 40 and r["requests_failed"] == 0
    recs = [json.loads(x) for x in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    assert all(x["prompt_tokens"] == x["input_tokens"] == 64 for x in recs), recs[0]
    assert r["e2e_ms"]["p50"] > 0 and r["ttft_ms"]["count"] == 0

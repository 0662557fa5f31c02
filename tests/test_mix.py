"""Traffic mixes against the simulator over real sockets. The simulator's TTFT is T + P·input tokens
with no queueing (256 slots, 4 users), so each class's TTFT is known beforehand: interactive (32 in)
T + 32·P = 21.6 ms, batch (1000 in) T + 1000·P = 70 ms. Shares are binomial around what was asked."""

from __future__ import annotations

import json
import math
import urllib.request

import numpy as np
import pytest
import yaml

from loadgen.errors import ConfigError
from loadgen.schedule.trace import build_trace, seeded_rngs
from loadgen.servers.sim import SimConfig, SimProcess
from loadgen.servers.vllm import VllmLauncher
from loadgen.settings import Settings, build_settings
from loadgen.workload.sources import load_dataset
from loadgen.workload.tokens import WordCounter
from tests.conftest import load_report, run_cli
from tests.conftest_vllm import VLLM_ARGS, require_vllm, tiny_vllm_spec
from tests.tiny_model import write_lora_adapter, write_tiny_model

T, P, N = 20.0, 0.05, 400
SHARE_BATCH = 0.2


@pytest.fixture(scope="module")
def mix_sim():
    with SimProcess(SimConfig(ttft_ms=T, prefill_ms_per_token=P, itl_ms=2.0, keep_bodies=N,
                              lora_adapters=("adapter-a", "adapter-b"))) as proc:
        yield proc


def _scenario(path, interactive_slo, batch_slo):
    path.write_text(yaml.safe_dump({
        "scenario": "concurrency", "concurrency": 4, "num_requests": N, "duration_s": 0, "seed": 5,
        "endpoint": "chat",
        "classes": [
            {"name": "interactive", "share": 1 - SHARE_BATCH, "input_len": 32, "output_len": 8,
             "model": "adapter-a", "slo": interactive_slo},
            {"name": "batch", "share": SHARE_BATCH, "input_len": 1000, "output_len": 8, "model": "adapter-b",
             "slo": batch_slo},
        ]}))
    return path


def _run(sim, tmp_path, interactive_slo, batch_slo, *more):
    scen = _scenario(tmp_path / "mix.yaml", interactive_slo, batch_slo)
    res = run_cli("run", str(scen), "--url", sim.url, "--out", str(tmp_path / "run"), "--quiet", *more)
    assert res.code == 0, res.output
    return res, load_report(tmp_path / "run")


def test_each_class_gets_its_share_its_model_and_its_own_latency(mix_sim, tmp_path):
    res, report = _run(mix_sim, tmp_path, {"ttft_ms": 30}, {"ttft_ms": 100},
                       "--metrics-textfile", str(tmp_path / "run.prom"))
    classes = report["results"]["classes"]
    n_batch = classes["batch"]["requests_completed"]
    assert n_batch + classes["interactive"]["requests_completed"] == N
    sigma = math.sqrt(N * SHARE_BATCH * (1 - SHARE_BATCH))
    assert abs(n_batch - N * SHARE_BATCH) <= 3 * sigma, n_batch
    assert classes["batch"]["share"] == pytest.approx(n_batch / N)
    assert classes["interactive"]["ttft_ms"]["p50"] == pytest.approx(T + 32 * P, abs=1.0)
    assert classes["batch"]["ttft_ms"]["p50"] == pytest.approx(T + 1000 * P, abs=1.0)
    assert classes["batch"]["ttft_ms"]["p99"] == pytest.approx(T + 1000 * P, abs=2.0)
    assert classes["interactive"]["slo_met"] is True and classes["batch"]["slo_met"] is True
    # every request names its class in requests.jsonl, and its class's model reached the server
    rows = [json.loads(x) for x in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    assert sorted({r["cls"] for r in rows}) == ["batch", "interactive"]
    assert sum(r["cls"] == "batch" for r in rows) == n_batch
    with urllib.request.urlopen(mix_sim.url + "/sim/bodies", timeout=10) as resp:
        bodies = json.load(resp)["bodies"][-N:]
    assert sum(b["model"] == "adapter-b" for b in bodies) == n_batch
    assert sum(b["model"] == "adapter-a" for b in bodies) == N - n_batch
    assert "class batch:" in res.stdout and "SLO met (TTFT p99 <= 100 ms)" in res.stdout
    assert not any(x.startswith("class ") for x in report["validity"]["reasons"])
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Traffic classes" in html and "<td class='l'>batch</td>" in html
    # Prometheus: the class label on the request counter, the token counters and the histograms
    series = _prom_series((tmp_path / "run.prom").read_text())
    for name, want in classes.items():
        ins = sum(r["input_tokens"] for r in rows if r["cls"] == name)
        assert series[("loadgen_requests_total", name, "ok")] == want["requests_completed"]
        assert series[("loadgen_ttft_seconds_count", name, None)] == want["requests_completed"]
        assert series[("loadgen_input_tokens_total", name, None)] == ins
    bucket = {k: v for k, v in series.items() if k[0] == "loadgen_ttft_seconds_bucket"}
    assert bucket[("loadgen_ttft_seconds_bucket", "interactive", "0.03")] == classes["interactive"][
        "requests_completed"]  # every 21.6 ms TTFT is at most 30 ms, ...
    assert bucket[("loadgen_ttft_seconds_bucket", "batch", "0.05")] == 0  # ... and no 70 ms one at 50 ms


def _prom_series(text):
    """(name, class, status or le) -> value of a textfile's samples that carry a class label."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if "class" in s.labels:
                out[(s.name, s.labels["class"], s.labels.get("status", s.labels.get("le")))] = s.value
    return out


@pytest.mark.parametrize(("interactive_slo", "batch_slo", "binds"), [
    ({"ttft_ms": 30}, {"ttft_ms": 50}, "batch"),  # batch's 70 ms TTFT misses 50 ms
    ({"ttft_ms": 10}, {"ttft_ms": 100}, "interactive"),  # interactive's 21.6 ms misses 10 ms
])
def test_the_class_whose_slo_binds_makes_the_run_invalid_and_is_named(mix_sim, tmp_path, interactive_slo,
                                                                       batch_slo, binds):
    _, report = _run(mix_sim, tmp_path, interactive_slo, batch_slo)
    other = {"batch": "interactive", "interactive": "batch"}[binds]
    reasons = report["validity"]["reasons"]
    assert any(r.startswith(f"class {binds}: TTFT p99") for r in reasons), reasons
    assert not any(r.startswith(f"class {other}:") for r in reasons), reasons
    assert report["validity"]["valid"] is False
    c = report["results"]["classes"]
    assert c[binds]["slo_met"] is False and c[other]["slo_met"] is True
    summary = (tmp_path / "run" / "summary.txt").read_text()
    assert "Every class met its SLO : NO" in summary


def test_bad_mixes_exit_2_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"scenario": "concurrency", "classes": [
        {"name": "a", "share": 1}, {"name": "a", "share": 2}]}))
    res = run_cli("run", str(bad), "--out", str(tmp_path / "r"), "--quiet")
    assert res.code == 2 and "distinct names" in res.stderr, res.output
    bad.write_text(yaml.safe_dump({"scenario": "concurrency", "classes": [{"name": "a", "share": 0}]}))
    res = run_cli("run", str(bad), "--out", str(tmp_path / "r"), "--quiet")
    assert res.code == 2 and "classes.0.share" in res.stderr, res.output


def test_a_class_with_its_own_endpoint_embeddings_beside_chat(mix_sim, tmp_path):
    """70% chat, 30% embeddings of 4 x 200 tokens (``endpoint:`` per class, ``pooling:``): each class's
    requests reach its own route with its own body, and each has its analytic latency: chat TTFT
    T + 32·P = 21.6 ms; an embeddings request holds a slot for T + 800·P = 60 ms and has no TTFT."""
    scen = tmp_path / "mix.yaml"
    scen.write_text(yaml.safe_dump({
        "scenario": "concurrency", "concurrency": 4, "num_requests": 200, "duration_s": 0, "seed": 2,
        "endpoint": "chat", "pooling": {"inputs": 4},
        "classes": [
            {"name": "chat", "share": 0.7, "input_len": 32, "output_len": 8, "slo": {"ttft_ms": 30}},
            {"name": "embed", "share": 0.3, "input_len": 200, "endpoint": "embeddings",
             "slo": {"e2e_ms": 80}},
        ]}))
    res = run_cli("run", str(scen), "--url", mix_sim.url, "--out", str(tmp_path / "run"), "--quiet")
    assert res.code == 0, res.output
    report = load_report(tmp_path / "run")
    c = report["results"]["classes"]
    n_embed = c["embed"]["requests_completed"]
    assert n_embed + c["chat"]["requests_completed"] == 200 and report["results"]["requests_failed"] == 0
    assert c["chat"]["ttft_ms"]["p50"] == pytest.approx(T + 32 * P, abs=1.0)
    assert c["embed"]["ttft_ms"]["count"] == 0 and c["embed"]["output_tokens_total"] == 0
    assert c["embed"]["e2e_ms"]["p50"] == pytest.approx(T + 800 * P, abs=1.5)
    assert c["embed"]["endpoint"] == "embeddings" and c["chat"]["slo_met"] and c["embed"]["slo_met"]
    with urllib.request.urlopen(mix_sim.url + "/sim/bodies", timeout=10) as resp:
        bodies = json.load(resp)["bodies"][-200:]
    embeds = [b for b in bodies if "input" in b]
    assert len(embeds) == n_embed and all(len(b["input"]) == 4 for b in embeds)
    assert all("messages" in b for b in bodies if "input" not in b)
    rows = [json.loads(x) for x in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    assert all(r["prompt_tokens"] == r["input_tokens"] == (800 if r["cls"] == "embed" else 32) for r in rows)
    reasons = report["validity"]["reasons"]
    assert not any(x.startswith("class ") for x in reasons), reasons
    assert not any("fewer than 2 output tokens" in x for x in reasons), reasons  # nothing was asked for
    assert report["mlperf"]["token_errors"] == 0
    assert "class embed:" in res.stdout and "embeddings latency p50" in res.stdout


def test_a_pooling_class_cannot_bound_a_ttft(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"scenario": "concurrency", "endpoint": "chat", "classes": [
        {"name": "chat", "share": 1}, {"name": "embed", "share": 1, "endpoint": "embeddings",
                                       "slo": {"ttft_ms": 50}}]}))
    res = run_cli("run", str(bad), "--out", str(tmp_path / "r"), "--quiet")
    assert res.code == 2, res.output
    assert "embed sends to embeddings, which generates nothing, so it has no TTFT; bound its slo.e2e_ms" \
        in res.stderr


@pytest.fixture(scope="module")
def queueing_sim():
    """8 slots: a mean request holds one ~45 ms, so waits grow with load well below ~176 req/s."""
    with SimProcess(SimConfig(ttft_ms=T, prefill_ms_per_token=P, itl_ms=2.0, max_seqs=8)) as proc:
        yield proc


@pytest.mark.parametrize(("binds", "interactive_ttft", "batch_ttft"), [
    ("interactive", 25.0, 1000.0),  # 3.4 ms of slack over its unqueued 21.6 ms; batch has ~930 ms
    ("batch", 1000.0, 75.0),  # 5 ms of slack over its unqueued 70 ms
])
def test_find_peak_over_a_mix_stops_where_the_binding_class_misses(queueing_sim, tmp_path, binds,
                                                                   interactive_ttft, batch_ttft):
    scen = tmp_path / "mix.yaml"
    scen.write_text(yaml.safe_dump({
        "scenario": "server", "qps": 60, "duration_s": 0, "seed": 9,
        "classes": [
            {"name": "interactive", "share": 0.8, "input_len": 32, "output_len": 8,
             "slo": {"ttft_ms": interactive_ttft}},
            {"name": "batch", "share": 0.2, "input_len": 1000, "output_len": 8,
             "slo": {"ttft_ms": batch_ttft}},
        ]}))
    res = run_cli("find-peak", str(scen), "--url", queueing_sim.url, "--start-qps", "60", "--precision",
                  "20", "--repeats", "0", "--max-runs", "5", "--out", str(tmp_path / "peak"), "--quiet",
                  timeout=400)
    assert res.code == 0, res.output
    peak = json.loads((tmp_path / "peak" / "peak.json").read_text())
    failed = [r for r in peak["runs"] if not r["valid"]]
    assert peak["peak_qps"] is not None and failed, peak["runs"]
    other = {"batch": "interactive", "interactive": "batch"}[binds]
    for run in failed:  # every run above the peak failed on the binding class's SLO, never the other's
        named = [x for x in run["reasons"] if x.startswith("class ")]
        assert any(x.startswith(f"class {binds}: TTFT p99") for x in named), run
        assert not any(x.startswith(f"class {other}:") for x in named), run
    assert all(r["valid"] for r in peak["runs"] if r["qps"] <= peak["peak_qps"])
    assert f"class {binds}: TTFT p99 <= " in res.stdout


def test_a_sweep_over_a_mix_names_the_classes_that_missed(mix_sim, tmp_path):
    """Batch's unqueued 70 ms TTFT always misses a 50 ms bound and interactive's 21.6 ms meets 30 ms: the
    sweep's table and sweep.json say so per point."""
    scen = tmp_path / "mix.yaml"
    scen.write_text(yaml.safe_dump({
        "scenario": "server", "qps": 20, "duration_s": 0, "num_requests": 30, "seed": 4, "classes": [
            {"name": "interactive", "share": 0.7, "input_len": 32, "output_len": 8, "slo": {"ttft_ms": 30}},
            {"name": "batch", "share": 0.3, "input_len": 1000, "output_len": 8, "slo": {"ttft_ms": 50}}]}))
    res = run_cli("sweep", str(scen), "--url", mix_sim.url, "--param", "qps=10,20", "--out",
                  str(tmp_path / "sweep"), "--quiet", timeout=300)
    assert res.code == 0, res.output
    rows = [p["row"] for p in json.loads((tmp_path / "sweep" / "sweep.json").read_text())["points"]]
    assert [r["classes_missed"] for r in rows] == ["batch", "batch"]
    assert res.stdout.count("batch missed") == 2 and "classes" in res.stdout


def _own_arrivals(batch_qps=10.0, **more):
    return Settings(scenario="server", duration_s=40, num_requests=10, seed=3, classes=[
        {"name": "interactive", "qps": 40, "input_len": 32, "output_len": 8},
        {"name": "batch", "qps": batch_qps, "burstiness": 0.25, "input_len": 64, "output_len": 8}], **more)


def _merged(settings):
    rngs = seeded_rngs(settings.seed)
    ds = load_dataset(settings, WordCounter(exact=True), rngs)
    return ds, build_trace(settings, len(ds), rngs, ds)


def test_classes_with_their_own_arrival_processes_keep_their_own_shape():
    """Interactive Poisson at 40/s and a bursty batch class (gamma gaps, shape 0.25: CV 2) at 10/s over
    40 s: each class's count is within Poisson-like error of rate × duration, each keeps its own gap
    CV (1 and 2), every query carries a prompt of its own class, and changing batch's rate leaves the
    interactive arrivals exactly where they were."""
    s = _own_arrivals()
    assert s.qps == 50 and s.class_shares() == [0.8, 0.2] and s.class_rates() == [40, 10]
    ds, trace = _merged(s)
    offsets = trace.offsets_ns / 1e9
    assert np.all(np.diff(offsets) >= 0)
    cls = np.array([ds.samples[i].cls for i in trace.order[:, 0]])
    for name, rate, cv in (("interactive", 40, 1.0), ("batch", 10, 2.0)):
        t = offsets[cls == name]
        n = len(t)
        # gamma renewal counts: variance ~ rate·T·CV²
        assert abs(n - rate * 40) <= 4 * math.sqrt(rate * 40) * cv, (name, n)
        gaps = np.diff(t)
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.25 if cv > 1 else 0.1), name
    faster = _merged(_own_arrivals(batch_qps=20))
    f_offsets = faster[1].offsets_ns
    f_cls = np.array([faster[0].samples[i].cls for i in faster[1].order[:, 0]])
    assert np.array_equal(f_offsets[f_cls == "interactive"], trace.offsets_ns[cls == "interactive"])
    # a run-level qps (find-peak, a qps sweep) scales every class by one factor
    assert _own_arrivals(qps=100).class_rates() == [80, 20]


def test_own_arrivals_end_to_end_through_the_cli(mix_sim, tmp_path):
    scen = tmp_path / "arrivals.yaml"
    scen.write_text(yaml.safe_dump({
        "scenario": "server", "duration_s": 4, "num_requests": 10, "seed": 1, "endpoint": "chat",
        "classes": [
            {"name": "interactive", "qps": 30, "input_len": 32, "output_len": 8, "slo": {"ttft_ms": 40}},
            {"name": "batch", "qps": 10, "burstiness": 0.5, "input_len": 200, "output_len": 8}]}))
    res = run_cli("run", str(scen), "--url", mix_sim.url, "--out", str(tmp_path / "run"), "--quiet")
    assert res.code == 0, res.output
    report = load_report(tmp_path / "run")
    c = report["results"]["classes"]
    assert c["interactive"]["qps_asked"] == 30 and c["batch"]["qps_asked"] == 10
    assert c["batch"]["burstiness"] == 0.5
    assert abs(c["interactive"]["requests_completed"] - 120) <= 4 * math.sqrt(120)
    assert report["results"]["requests_failed"] == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    assert all(r["input_tokens"] == (32 if r["cls"] == "interactive" else 200) for r in rows)


@pytest.mark.parametrize(("classes", "says"), [
    ([{"name": "a", "qps": 5}, {"name": "b", "share": 1}], "give every class a qps"),
    ([{"name": "a", "share": 1, "burstiness": 2}], "burstiness shapes the class's own arrivals"),
    ([{"name": "a"}], "give its share of the queries, or its own qps"),
])
def test_mixed_up_class_rates_are_refused(classes, says):
    with pytest.raises(ConfigError, match=says):
        build_settings({"scenario": "server", "qps": 5, "classes": classes}, "test")


def test_own_arrivals_need_the_server_scenario():
    with pytest.raises(ConfigError, match="use scenario: server"):
        build_settings({"scenario": "concurrency", "classes": [{"name": "a", "qps": 5}]}, "test")


@pytest.mark.vllm
def test_a_two_lora_mix_on_vllm_cpu(tmp_path):
    """The tiny model serving two LoRA adapters (written here, random weights): an 80/20 mix naming them
    completes every request with vLLM's prompt_tokens equal to loadgen's; a class naming an adapter
    vLLM does not serve fails with its 404, so the adapter names did reach vLLM."""
    require_vllm()
    a, b = write_lora_adapter(tmp_path / "lora-a", 1), write_lora_adapter(tmp_path / "lora-b", 2)
    args = (*VLLM_ARGS, "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2",
            "--lora-modules", f"adapter-a={a}", f"adapter-b={b}")
    spec = tiny_vllm_spec(write_tiny_model(tmp_path / "model"), args=args)

    def mix(path, batch_model):
        path.write_text(yaml.safe_dump({
            "scenario": "concurrency", "concurrency": 4, "num_requests": 40, "duration_s": 0, "seed": 5,
            "classes": [
                {"name": "interactive", "share": 0.8, "input_len": 32, "output_len": 8, "model": "adapter-a"},
                {"name": "batch", "share": 0.2, "input_len": 256, "output_len": 16, "model": batch_model}]}))
        return path

    with VllmLauncher(spec, log_path=tmp_path / "server.log") as vllm:
        good = run_cli("run", str(mix(tmp_path / "good.yaml", "adapter-b")), "--url", vllm.base_url,
                       "--out", str(tmp_path / "good"), "--quiet", timeout=300)
        bad = run_cli("run", str(mix(tmp_path / "bad.yaml", "adapter-c")), "--url", vllm.base_url,
                      "--out", str(tmp_path / "bad"), "--quiet", timeout=300)
    assert good.code == 0, good.output
    c = load_report(tmp_path / "good")["results"]["classes"]
    assert c["interactive"]["requests_completed"] + c["batch"]["requests_completed"] == 40
    assert c["batch"]["requests_completed"] > 0 and c["interactive"]["requests_failed"] == 0
    assert c["batch"]["requests_failed"] == 0
    rows = [json.loads(x) for x in (tmp_path / "good" / "requests.jsonl").read_text().splitlines()]
    assert all(r["prompt_tokens"] == r["input_tokens"] == (32 if r["cls"] == "interactive" else 256)
               for r in rows)
    assert all(r["output_tokens"] == (8 if r["cls"] == "interactive" else 16) for r in rows)
    assert bad.code == 0, bad.output
    cb = load_report(tmp_path / "bad")["results"]["classes"]
    assert cb["batch"]["requests_completed"] == 0 and cb["batch"]["requests_failed"] > 0
    assert cb["interactive"]["requests_failed"] == 0
    bad_rows = [json.loads(x) for x in (tmp_path / "bad" / "requests.jsonl").read_text().splitlines()]
    assert {r["status"] for r in bad_rows if r["cls"] == "batch"} == {404}

"""Server kinds: each table's names against a fixture in that server's own format
(tests/fixtures/metrics/KIND.prom, written from the sources cited in loadgen/observe/flavours.py), and
the simulator speaking each kind over real HTTP."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from loadgen.observe.dcgm import DCGM_ENERGY, DCGM_POWER, parse_dcgm
from loadgen.observe.flavours import FLAVOURS, FlavourParser, detect, parse_flavour
from loadgen.observe.promtext import parse_exposition
from loadgen.servers.sim import SimConfig, SimProcess
from loadgen.servers.sim.prefix import PrefixCache
from tests.conftest import run_cli, write_scenario

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
SERVER_KINDS = ["vllm", "vllm-v0", "sglang", "tgi", "trtllm"]
#: What every fixture holds, by canonical name (each server's own series designed to these numbers).
KNOWN = {
    "vllm:num_requests_running": 3.0, "vllm:num_requests_waiting": 1.0, "vllm:kv_cache_usage_perc": 0.25,
    "vllm:num_preemptions_total": 2.0, "vllm:prompt_tokens_total": 4096.0,
    "vllm:generation_tokens_total": 1280.0, "vllm:request_success_total": 10.0,
    "vllm:prefix_cache_queries_total": 4096.0, "vllm:prefix_cache_hits_total": 1024.0,
}


def _text(kind: str) -> str:
    return (FIXTURES / f"{kind}.prom").read_text()


def _types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


@pytest.mark.parametrize("kind", [*SERVER_KINDS, "dcgm"])
def test_detect_names_the_kind_of_each_fixture(kind: str) -> None:
    assert detect(_text(kind)) == kind


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_every_table_entry_is_found_in_the_servers_format_with_the_known_value(kind: str) -> None:
    text = _text(kind)
    snap = parse_flavour(text, kind)
    fl = FLAVOURS[kind]
    for canon in fl.scalars:
        assert snap.scalars.get(canon) == KNOWN[canon], canon
    if fl.queries_are_prompt_tokens:
        assert snap.scalars["vllm:prefix_cache_queries_total"] == KNOWN["vllm:prefix_cache_queries_total"]
    for canon in fl.histograms:
        assert canon in snap.histograms, canon
    if "vllm:time_to_first_token_seconds" in fl.histograms:
        ttft = snap.histograms["vllm:time_to_first_token_seconds"]
        assert ttft.count == 10 and ttft.buckets[:3] == ((0.02, 2.0), (0.04, 8.0), (0.06, 10.0))
    # the same sums from prometheus_client's full parser (an independent reading of the text)
    # (it names an untyped-suffix counter NAME_total, and keeps a histogram's _sum in the histogram)
    full = parse_exposition(text)
    for canon, src in fl.scalars.items():
        if src.labels:
            continue
        if src.name.endswith("_sum"):
            value = full.histograms[src.name[:-4]].sum
        else:
            value = full.scalars.get(src.name, full.scalars.get(src.name + "_total"))
        assert value == snap.scalars[canon], src.name


def test_a_kind_without_a_series_reports_none_not_a_guess() -> None:
    snap = parse_flavour(_text("tgi"), "tgi")
    assert "vllm:kv_cache_usage_perc" not in snap.scalars
    assert "vllm:time_to_first_token_seconds" not in snap.histograms
    v0 = parse_flavour(_text("vllm-v0"), "vllm-v0")
    assert "vllm:prefix_cache_hits_total" not in v0.scalars


def test_dcgm_fixture_parses_per_gpu() -> None:
    gpus = parse_dcgm(_text("dcgm"))
    assert set(gpus) == {"node-1/gpu0", "node-1/gpu1"}
    assert gpus["node-1/gpu0"][DCGM_POWER] == 431.5
    assert gpus["node-1/gpu1"][DCGM_ENERGY] == 23456789


def _complete(url: str, prompt: str, max_tokens: int) -> dict:
    body = json.dumps({"model": "sim-model", "prompt": prompt, "max_tokens": max_tokens}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_the_simulator_speaks_each_kind(kind: str) -> None:
    fixture_types = _types(_text(kind))
    cfg = SimConfig(ttft_ms=1, itl_ms=1, metrics_flavour=kind, prefix_cache_blocks=64, prefix_block_tokens=4)
    words = " ".join(f"w{i}" for i in range(10))
    with SimProcess(cfg) as sim:
        usages = [_complete(sim.url, words, 5)["usage"] for _ in range(3)]
        with urllib.request.urlopen(sim.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
    # the prefix cache: blocks of 4 tokens; the first request finds nothing, the next two 2 blocks
    assert [u["prompt_tokens_details"]["cached_tokens"] for u in usages] == [0, 8, 8]
    assert detect(text) == kind
    sim_types = _types(text)
    fl = FLAVOURS[kind]
    families = {re.sub(r"_(sum|count|bucket)$", "", s.name) for s in fl.scalars.values()}
    families |= set(fl.histograms.values())
    for fam in families:  # the same names, with the same types, as the server's own format
        assert sim_types.get(fam) == fixture_types.get(fam) is not None, fam
    snap = parse_flavour(text, kind)
    expect = {"vllm:prompt_tokens_total": 30.0, "vllm:generation_tokens_total": 15.0,
              "vllm:request_success_total": 3.0, "vllm:prefix_cache_hits_total": 16.0,
              "vllm:prefix_cache_queries_total": 30.0}
    for canon, value in expect.items():
        derived = canon == "vllm:prefix_cache_queries_total" and fl.queries_are_prompt_tokens
        if canon in fl.scalars or derived:
            assert snap.scalars[canon] == value, canon


def test_prefix_cache_blocks_are_keyed_by_the_whole_prefix_and_evicted_lru() -> None:
    cache = PrefixCache(capacity_blocks=2, block_tokens=2)
    assert cache.lookup(list("abcd")) == 0
    assert cache.lookup(list("abcdef")) == 4  # a,b | c,d cached; e,f new (evicts a,b: LRU of 2)
    assert cache.lookup(list("xbcd")) == 0  # the same second block after another first: no hit
    assert cache.lookup(list("ab")) == 0  # never the whole prompt; also evicted
    assert cache.lookup(list("abx")) == 2


def test_an_unknown_server_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        FlavourParser("nginx")


def test_cli_refuses_an_unknown_server_kind(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path / "s.yaml", scenario="concurrency", concurrency=1, duration_s=1,
                              num_requests=2)
    res = run_cli("run", str(scenario), "--out", str(tmp_path / "r"), "--quiet", "--server-kind", "nginx",
                  timeout=60)
    assert res.code == 2, res.output
    assert "server_kind" in res.output and "sglang" in res.output and "Traceback" not in res.output

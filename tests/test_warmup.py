"""Warm-up prompts are never the measured ones (a prefix cache must not flatter the first queries), and
``--warmup`` leaves the measured trace of a seed unchanged."""

from __future__ import annotations

import json

import pytest

from loadgen.engine.warmup import warmup_dataset
from loadgen.records import read_records
from loadgen.schedule.trace import build_trace, seeded_rngs
from loadgen.settings import Settings
from loadgen.workload.sources import load_dataset
from loadgen.workload.tokens import WordCounter
from tests.conftest import load_report, run_cli
from tests.recording_server import RecordingServer

EXACT = WordCounter(exact=True)


def _prepared(**kw):
    settings = Settings(scenario="offline", num_requests=10, output_len=4, **kw)
    rngs = seeded_rngs(settings.seed)
    dataset = load_dataset(settings, EXACT, rngs)
    trace = build_trace(settings, len(dataset), rngs, dataset)
    sent = [dataset.samples[i].as_prompt() for i in trace.order.ravel()]
    return settings, dataset, trace, sent


def _jsonl(path, n):
    lines = (json.dumps({"prompt": f"prompt number {i} " + "x " * (i % 5)}) for i in range(n))
    path.write_text("\n".join(lines))
    return path


def test_synthetic_warmup_prompts_are_apart_and_leave_the_trace_alone():
    settings, dataset, trace, sent = _prepared(warmup=6, seed=5, input_len=32)
    _, _, trace0, sent0 = _prepared(seed=5, input_len=32)
    assert sent == sent0 and (trace.order == trace0.order).all()  # same measured trace without warm-up
    warm, info = warmup_dataset(settings, dataset, trace, EXACT)
    prompts = [s.as_prompt() for s in warm.samples]
    assert len(prompts) == 6 and len(set(prompts)) == 6
    assert set(prompts).isdisjoint(sent)
    assert all(s.input_tokens == 32 == len(s.as_prompt().split()) for s in warm.samples)
    assert info == {"requests": 6, "source": "synthetic", "repeated": 0}
    again, _ = warmup_dataset(settings, dataset, trace, EXACT)
    assert [s.as_prompt() for s in again.samples] == prompts  # seeded too


def test_shared_prefix_runs_warm_up_without_the_prefixes():
    settings, dataset, trace, sent = _prepared(warmup=4, prefix={"groups": 2, "length": 16}, input_len=8)
    warm, _ = warmup_dataset(settings, dataset, trace, EXACT)
    prefixes = {" ".join(p.split()[:16]) for p in sent}
    assert not any(" ".join(s.as_prompt().split()[:16]) in prefixes for s in warm.samples)


def test_prompt_file_larger_than_the_run_warms_up_with_unused_prompts(tmp_path):
    settings, dataset, trace, sent = _prepared(warmup=5, prompts_file=_jsonl(tmp_path / "p.jsonl", 30))
    assert len(dataset) == 30 and len(set(sent)) == 10
    warm, info = warmup_dataset(settings, dataset, trace, EXACT)
    prompts = [s.as_prompt() for s in warm.samples]
    assert len(set(prompts)) == 5 and set(prompts).isdisjoint(sent)
    assert set(prompts) <= {s.as_prompt() for s in dataset.samples}
    assert info["repeated"] == 0 and info["source"] == "file"


def test_dataset_file_warms_up_with_entries_outside_the_loaded_set(tmp_path):
    spec = {"format": "jsonl", "path": str(_jsonl(tmp_path / "d.jsonl", 40)), "num_samples": 10}
    settings, dataset, trace, sent = _prepared(warmup=8, dataset=spec)
    assert len(dataset) == 10
    warm, info = warmup_dataset(settings, dataset, trace, EXACT)
    prompts = [s.as_prompt() for s in warm.samples]
    assert len(set(prompts)) == 8 and set(prompts).isdisjoint(sent)
    assert info["repeated"] == 0


def test_prompt_file_with_nothing_else_repeats_the_prompts_sent_last(tmp_path):
    settings, dataset, trace, sent = _prepared(warmup=3, prompts_file=_jsonl(tmp_path / "p.jsonl", 10))
    warm, info = warmup_dataset(settings, dataset, trace, EXACT)
    assert [s.as_prompt() for s in warm.samples] == sent[::-1][:3]  # not the first measured ones
    assert info["repeated"] == 3


@pytest.fixture
def endpoint():
    with RecordingServer() as srv:
        yield srv


def test_cli_warmup_sends_other_prompts_and_the_measured_trace_is_unchanged(tmp_path, endpoint):
    """Through the real CLI against a server that records what it receives: SingleStream, so the order
    of arrival is the order of sending; the warm-up goes first."""
    common = ("run", "singlestream", "--url", endpoint.url, "--num-requests", "12", "--duration", "0",
              "--input-len", "16", "--output-len", "3", "--seed", "21", "--quiet")
    res = run_cli(*common, "--warmup", "4", "--out", str(tmp_path / "warm"))
    assert res.code == 0, res.output
    received = endpoint.take()
    warm, measured = received[:4], received[4:]
    assert len(measured) == 12
    assert set(warm).isdisjoint(measured)
    res = run_cli(*common, "--out", str(tmp_path / "cold"))
    assert res.code == 0, res.output
    assert endpoint.take() == measured  # identical measured prompts, in the same order
    with_w = sorted(read_records(tmp_path / "warm" / "requests.jsonl"), key=lambda r: r.index)
    without = sorted(read_records(tmp_path / "cold" / "requests.jsonl"), key=lambda r: r.index)
    assert [(r.sample, r.input_tokens) for r in with_w] == [(r.sample, r.input_tokens) for r in without]
    warm_recs = read_records(tmp_path / "warm" / "warmup.jsonl")
    assert len(warm_recs) == 4 and all(r.warmup and r.ok for r in warm_recs)
    assert load_report(tmp_path / "warm")["warmup"] == {"requests": 4, "source": "synthetic", "repeated": 0}
    assert load_report(tmp_path / "warm")["results"]["requests_completed"] == 12

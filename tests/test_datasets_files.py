"""Prompt files (ShareGPT, JSONL, CSV) into samples with exact token counts, bounds and seeded sampling."""

from __future__ import annotations

import json

import pytest

from loadgen.dataset_files import load_dataset, load_file
from loadgen.errors import ConfigError
from loadgen.scenarios import seeded_rngs
from loadgen.settings import DatasetSpec, Settings, build_settings
from loadgen.tokens import LocalTokenizer, WordCounter
from tests.tiny_model import prompt_of, write_tiny_model

EXACT = WordCounter(exact=True)


def _settings(**kw):
    return Settings(scenario="offline", num_requests=10, **kw)


def _sharegpt(path, n=6):
    data = []
    for i in range(n):
        data.append({"conversations": [
            {"from": "human", "value": prompt_of(5 + i, offset=i)},
            {"from": "gpt", "value": prompt_of(20 + 3 * i)},
            {"from": "human", "value": "ignored follow-up"},
        ]})
    data.append({"conversations": [{"from": "human", "value": "no reply, skipped"}]})
    data.append({"conversations": [{"from": "gpt", "value": "starts with gpt"},
                                   {"from": "human", "value": "unanswered"}]})
    path.write_text(json.dumps(data))
    return path


def test_sharegpt_first_human_turn_is_the_prompt_and_the_reply_length_the_output(tmp_path):
    spec = DatasetSpec(format="sharegpt", path=_sharegpt(tmp_path / "sg.json"))
    ds = load_file(spec, _settings(), EXACT, seeded_rngs(0)["lengths"])
    assert len(ds) == 6  # the two entries without a human→gpt pair are skipped
    pairs = sorted((s.input_tokens, s.output_tokens) for s in ds.samples)
    assert pairs == [(5 + i, 20 + 3 * i) for i in range(6)]
    assert all(s.input_tokens == len(s.prompt.split()) for s in ds.samples)
    assert ds.exact


def test_sharegpt_counts_with_the_real_tiny_tokenizer(tmp_path):
    tok = LocalTokenizer(str(write_tiny_model(tmp_path / "tiny")))
    spec = DatasetSpec(format="sharegpt", path=_sharegpt(tmp_path / "sg.json"), max_input=8)
    ds = load_file(spec, _settings(), tok, seeded_rngs(0)["lengths"])
    assert sorted(s.input_tokens for s in ds.samples) == [5, 6, 7, 8]  # max_input drops 9 and 10
    assert sorted(s.output_tokens for s in ds.samples) == [20, 23, 26, 29]


def test_jsonl_prompts_messages_output_len_and_timestamps(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(o) for o in [
        {"prompt": prompt_of(4), "output_len": 7, "timestamp": 100.5},
        {"messages": [{"role": "system", "content": prompt_of(3)}, {"role": "user", "content": prompt_of(2)}],
         "output_len": 9, "timestamp": 101.0},
        {"prompt": prompt_of(12), "timestamp": 100.0},  # no output_len: drawn from output_len (fixed 33)
    ]) + "\n")
    spec = DatasetSpec(format="jsonl", path=f)
    ds = load_file(spec, _settings(output_len=33), EXACT, seeded_rngs(1)["lengths"])
    got = sorted((s.input_tokens, s.output_tokens, s.arrival_ns) for s in ds.samples)
    assert got == [(4, 7, 500_000_000), (5, 9, 1_000_000_000), (12, 33, 0)]
    msg = next(s for s in ds.samples if s.messages is not None)
    assert [m["role"] for m in msg.messages] == ["system", "user"]


def test_csv_columns_and_bounds(tmp_path):
    f = tmp_path / "p.csv"
    rows = ["prompt,output_len,timestamp"] + [f'"{prompt_of(n)}",{n * 2},{n / 10}' for n in range(1, 21)]
    f.write_text("\n".join(rows) + "\n")
    spec = DatasetSpec(format="csv", path=f, min_input=5, max_input=15, max_output=20)
    ds = load_file(spec, _settings(), EXACT, seeded_rngs(0)["lengths"])
    assert sorted(s.input_tokens for s in ds.samples) == list(range(5, 11))  # output <= 20 ⇒ input <= 10
    assert all(s.output_tokens == 2 * s.input_tokens for s in ds.samples)


def test_sampling_is_seeded_and_stops_at_num_samples(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": prompt_of(1 + i % 50, i), "output_len": 4}) + "\n"
                         for i in range(2000)))
    spec = DatasetSpec(format="jsonl", path=f, num_samples=30)
    a = load_file(spec, _settings(), EXACT, seeded_rngs(3)["lengths"])
    b = load_file(spec, _settings(), EXACT, seeded_rngs(3)["lengths"])
    c = load_file(spec, _settings(), EXACT, seeded_rngs(4)["lengths"])
    assert len(a) == 30 and [s.prompt for s in a.samples] == [s.prompt for s in b.samples]
    assert [s.prompt for s in a.samples] != [s.prompt for s in c.samples]


def test_load_dataset_dispatch_and_prompts_file_shorthand(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": prompt_of(6), "output_len": 3}) + "\n")
    ds = load_dataset(_settings(prompts_file=f), EXACT, seeded_rngs(0))
    assert [(s.input_tokens, s.output_tokens) for s in ds.samples] == [(6, 3)]
    ds = load_dataset(_settings(dataset={"format": "jsonl", "path": str(f)}), EXACT, seeded_rngs(0))
    assert [(s.input_tokens, s.output_tokens) for s in ds.samples] == [(6, 3)]
    ds = load_dataset(_settings(input_len=9, dataset_size=4), EXACT, seeded_rngs(0))  # synthetic
    assert [s.input_tokens for s in ds.samples] == [9] * 4


def test_file_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "a b"}\n{"prompt": 3}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl, line 2"):
        load_file(DatasetSpec(format="jsonl", path=f), _settings(), EXACT, seeded_rngs(0)["lengths"])
    c = tmp_path / "bad.csv"
    c.write_text("text,output_len\nhello,3\n")
    with pytest.raises(ConfigError, match="prompt"):
        load_file(DatasetSpec(format="csv", path=c), _settings(), EXACT, seeded_rngs(0)["lengths"])
    c.write_text("prompt,output_len\nhello,three\n")
    with pytest.raises(ConfigError, match=r"bad.csv, line 2.*output_len"):
        load_file(DatasetSpec(format="csv", path=c), _settings(), EXACT, seeded_rngs(0)["lengths"])
    c.write_text("prompt,output_len\nhello,3\n")
    with pytest.raises(ConfigError, match="length bounds"):
        load_file(DatasetSpec(format="csv", path=c, min_input=5), _settings(), EXACT,
                  seeded_rngs(0)["lengths"])


@pytest.mark.parametrize(("data", "where"), [
    ({"dataset": {"format": "parquet", "path": "x"}}, "dataset.format"),
    ({"dataset": {"format": "csv", "path": "x", "min_input": 10, "max_input": 5}}, "dataset"),
    ({"dataset": {"format": "csv"}}, "dataset.path"),
    ({"prefix": {"groups": 0, "length": 5}}, "prefix.groups"),
    ({"prefix": {"groups": 2, "length": 5, "suffix_len": {"kind": "uniform"}}}, "prefix.suffix_len"),
    ({"endpoint": "chat", "sessions": {"turns": 0}}, "sessions.turns"),
    ({"scenario": "server", "qps": 5, "arrival": {"burstiness": 0}}, "arrival.burstiness"),
    ({"scenario": "server", "qps": 5, "arrival": {"ramp": {"start_qps": 1}}}, "arrival.ramp.duration_s"),
    ({"scenario": "replay", "replay": {"format": "azure", "path": "t.csv", "speedup": -1}}, "replay.speedup"),
    ({"scenario": "replay", "replay": {"format": "azure"}}, "replay"),
])
def test_invalid_blocks_are_reported_with_their_path(data, where):
    with pytest.raises(ConfigError) as exc:
        build_settings({"scenario": "offline", **data}, "test")
    assert f"  - {where}:" in str(exc.value), str(exc.value)


@pytest.mark.parametrize(("data", "needle"), [
    ({"scenario": "replay"}, "replay scenario needs a trace"),
    ({"scenario": "offline", "replay": {"format": "azure", "path": "t.csv"}}, "only to scenario: replay"),
    ({"scenario": "offline", "arrival": {"burstiness": 2}}, "only to scenario: server"),
    ({"scenario": "concurrency", "sessions": {"turns": 2}}, "endpoint: chat"),
    ({"scenario": "offline", "prompts_file": "a", "prefix": {"groups": 1, "length": 3}}, "one prompt source"),
    ({"scenario": "server", "qps": 2, "arrival": {"ramp": {"start_qps": 5, "duration_s": 3}}}, "above qps"),
])
def test_cross_field_rules(data, needle):
    with pytest.raises(ConfigError, match=needle):
        build_settings(data, "test")


@pytest.mark.parametrize("name", ["sharegpt", "prompts_csv", "replay_azure", "replay_mooncake",
                                  "prefix_cache", "bursty", "ramp", "chat_sessions"])
def test_example_scenario_files_validate(name):
    from pathlib import Path

    from loadgen.settings import load_settings

    path = Path(__file__).resolve().parents[1] / "scenarios" / f"{name}.yaml"
    assert load_settings(str(path)).scenario.value in ("server", "offline", "replay", "concurrency")

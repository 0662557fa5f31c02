"""Prompt files (ShareGPT, JSONL, CSV) into samples with exact token counts, bounds and seeded sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.errors import ConfigError
from loadgen.schedule.trace import seeded_rngs
from loadgen.settings import Settings, build_settings
from loadgen.specs import DatasetSpec
from loadgen.workload.files import load_file
from loadgen.workload.sources import load_dataset
from loadgen.workload.tokens import LocalTokenizer, WordCounter
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
    ({"dataset": {"format": "xlsx", "path": "x"}}, "dataset.format"),
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


@pytest.mark.parametrize("name", ["sharegpt", "prompts_csv", "prompts_jsonl", "replay_azure",
                                  "replay_burstgpt", "hf_parquet", "replay_mooncake", "prefix_cache",
                                  "bursty", "ramp", "chat_sessions"])
def test_example_scenario_files_validate(name):
    from loadgen.settings import load_settings

    path = Path(__file__).resolve().parents[1] / "scenarios" / f"{name}.yaml"
    assert load_settings(str(path)).scenario.value in ("server", "offline", "replay", "concurrency")


def test_the_jsonl_scenario_file_end_to_end_on_the_simulator(tmp_path):
    """``loadgen run scenarios/prompts_jsonl.yaml`` (the real CLI, the built-in simulator, chat) over a
    JSONL file it finds at its ``data/prompts.jsonl``: the six rows within the bounds are each sent
    twice in 12 requests (whole passes over the prompts), with their word counts as input tokens (the
    simulator's usage agrees) and their ``output_len`` (the row without one: --output-len 5); the row
    over max_input (2,100 tokens) and the one over max_output (1,500) are never sent."""
    from tests.conftest import run_cli

    rows = [
        ({"prompt": prompt_of(5), "output_len": 3}, (5, 3)),
        ({"prompt": prompt_of(9, 50), "output_len": 2}, (9, 2)),
        ({"messages": [{"role": "system", "content": prompt_of(4, 100)},
                       {"role": "user", "content": prompt_of(6, 200)}], "output_len": 4}, (10, 4)),
        ({"messages": [{"role": "user", "content": prompt_of(7, 300)}]}, (7, 5)),
        ({"prompt": prompt_of(12, 400), "output_len": 6, "timestamp": 3.5}, (12, 6)),
        ({"prompt": prompt_of(2100, 500), "output_len": 2}, None),
        ({"prompt": prompt_of(20, 600), "output_len": 1500}, None),
        ({"prompt": prompt_of(15, 700), "output_len": 2}, (15, 2)),
    ]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r, _ in rows))
    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "prompts_jsonl.yaml"
    res = run_cli("run", str(scenario), "--num-requests", "12", "--duration", "0", "--qps", "40",
                  "--output-len", "5", "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert res.code == 0, res.output
    recs = [json.loads(x) for x in (tmp_path / "out" / "requests.jsonl").read_text().splitlines()]
    assert len(recs) == 12 and all(r["error_class"] is None for r in recs)
    sent = sorted((r["input_tokens"], r["output_tokens"]) for r in recs)
    assert sent == sorted(2 * [e for _, e in rows if e is not None])
    assert all(r["prompt_tokens"] == r["input_tokens"] for r in recs)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["endpoint"] == "chat" and report["settings"]["dataset"]["format"] == "jsonl"


def _wordpiece_model(directory):
    """A tokenizer whose tokens are not words: WordPiece over ``ab ##cd ##ef x ##yz w0000..w0009``,
    so ``abcdef`` is 3 tokens (ab, ##cd, ##ef), ``xyz`` 2, ``w0001`` 1 and an unknown word 1 ([UNK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[UNK]", "ab", "##cd", "##ef", "x", "##yz",
                                         *(f"w{i:04d}" for i in range(10))])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    return LocalTokenizer(str(directory))


def test_lengths_are_token_counts_of_the_tokenizer_in_use_not_word_counts(tmp_path):
    """The same files counted with a sub-word tokenizer: every input and output length is the
    tokenizer's count (by hand from its vocabulary), different from the word count, and the length
    bounds apply to tokens."""
    tok = _wordpiece_model(tmp_path / "wp")
    assert tok.count(["abcdef xyz w0001", "abcd zzz", "xyz xyz xyz xyz"]) == [6, 3, 8]
    # text -> (words, tokens): ab|cd|ef + x|yz + w0001 = 6; ab|cd + [UNK] = 3; 4 x (x|yz) = 8
    prompts = {"abcdef xyz w0001": 6, "abcd zzz": 3, "xyz xyz xyz xyz": 8}
    sg = tmp_path / "sg.json"
    sg.write_text(json.dumps([{"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": r}]}
                              for p, r in zip(prompts, ("abcdef abcdef", "w0001", "xyz"), strict=True)]))
    ds = load_file(DatasetSpec(format="sharegpt", path=sg), _settings(), tok, seeded_rngs(0)["lengths"])
    assert sorted((s.prompt, s.input_tokens, s.output_tokens) for s in ds.samples) == sorted([
        ("abcdef xyz w0001", 6, 6), ("abcd zzz", 3, 1), ("xyz xyz xyz xyz", 8, 2)])
    assert all(s.input_tokens != len(s.prompt.split()) for s in ds.samples)
    jl = tmp_path / "p.jsonl"
    jl.write_text("".join(json.dumps({"prompt": p, "output_len": 2}) + "\n" for p in prompts)
                  + json.dumps({"messages": [{"role": "user", "content": "abcdef"},
                                             {"role": "user", "content": "xyz"}], "output_len": 2}) + "\n")
    ds = load_file(DatasetSpec(format="jsonl", path=jl), _settings(), tok, seeded_rngs(0)["lengths"])
    assert sorted(s.input_tokens for s in ds.samples) == [3, 5, 6, 8]  # messages: 3 + 2
    # max_input 5 keeps 3- and 5-token prompts; by words (2 to 4 words each) all four would pass
    ds = load_file(DatasetSpec(format="jsonl", path=jl, max_input=5), _settings(), tok,
                   seeded_rngs(0)["lengths"])
    assert sorted(s.input_tokens for s in ds.samples) == [3, 5]
    cv = tmp_path / "p.csv"
    cv.write_text("prompt,output_len\n" + "".join(f"{p},3\n" for p in prompts))
    ds = load_file(DatasetSpec(format="csv", path=cv, min_input=4), _settings(), tok,
                   seeded_rngs(0)["lengths"])
    assert sorted(s.input_tokens for s in ds.samples) == [6, 8] and ds.exact

"""BurstGPT traces and local Hugging Face dataset files (Parquet, Arrow, JSONL) with a field mapping.

The tests write small files in the layouts the real ones have (BurstGPT's CSV header; a hub snapshot's
``data/train-*.parquet``; ``Dataset.save_to_disk``'s Arrow IPC streams) and check each row against what
reached the simulator: the prompt text, its token count, the output length asked for, the send time.
"""

from __future__ import annotations

import json
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from loadgen.errors import ConfigError
from loadgen.schedule.trace import seeded_rngs
from loadgen.servers.sim import SimConfig, SimProcess
from loadgen.settings import Settings
from loadgen.workload.sources import load_dataset
from loadgen.workload.tokens import WordCounter
from loadgen.workload.traces import read_burstgpt
from tests.conftest import load_report, run_cli

EXACT = WordCounter(exact=True)

BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
45.5,GPT-4,417,276,693,API log
118,ChatGPT,1360,111,1471,Conversation log
7,GPT-4,30,2,32,API log
"""


def test_burstgpt_rows_in_time_order_without_the_failed_ones(tmp_path):
    f = tmp_path / "BurstGPT_1.csv"
    f.write_text(BURSTGPT)
    rows = read_burstgpt(f)
    assert rows.times_s.tolist() == [0.0, 2.0, 40.5, 113.0]  # from the first row; 45 s failed (0 out)
    assert rows.input_tokens.tolist() == [472, 30, 417, 1360]
    assert rows.output_tokens.tolist() == [18, 2, 276, 111]
    s = Settings(scenario="replay", replay={"format": "burstgpt", "path": str(f), "speedup": 10})
    ds = load_dataset(s, EXACT, seeded_rngs(0))
    assert [x.input_tokens for x in ds.samples] == [472, 30, 417, 1360]
    assert [len(x.prompt.split()) for x in ds.samples] == [472, 30, 417, 1360]
    assert [x.arrival_ns for x in ds.samples] == [0, 200_000_000, 4_050_000_000, 11_300_000_000]


@pytest.mark.parametrize(("text", "says"), [
    ("Time,Model\n1,x\n", "the BurstGPT header needs Timestamp, Request tokens, Response tokens"),
    ("Timestamp,Request tokens,Response tokens\n1,ten,3\n", "line 2: expected seconds and two token counts"),
])
def test_a_bad_burstgpt_file_is_named_with_its_line(tmp_path, text, says):
    f = tmp_path / "b.csv"
    f.write_text(text)
    with pytest.raises(ConfigError, match=says):
        read_burstgpt(f)


def test_burstgpt_replay_through_loadgen_run_sends_each_row_at_its_time(tmp_path):
    f = tmp_path / "BurstGPT_1.csv"
    f.write_text(BURSTGPT)
    scen = tmp_path / "burst.yaml"
    scen.write_text(yaml.safe_dump({"scenario": "replay", "replay": {"format": "burstgpt", "path": str(f),
                                                                     "speedup": 100}}))
    with SimProcess(SimConfig(ttft_ms=5, itl_ms=1)) as sim:
        res = run_cli("run", str(scen), "--url", sim.url, "--out", str(tmp_path / "run"), "--quiet")
    assert res.code == 0, res.output
    report = load_report(tmp_path / "run")
    r = report["results"]
    assert r["requests_completed"] == 4 and r["requests_failed"] == 0
    # 4 queries cannot pass early stopping; the advice is what fixes a replay, not --num-requests
    reasons = " ".join(report["validity"]["reasons"])
    assert "widen the window (replay.duration_s" in reasons and "(--num-requests" not in reasons
    recs = sorted((json.loads(x) for x in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()),
                  key=lambda x: x["scheduled_ns"])
    assert [x["scheduled_ns"] for x in recs] == [0, 20_000_000, 405_000_000, 1_130_000_000]
    assert [(x["prompt_tokens"], x["output_tokens"]) for x in recs] == [(472, 18), (30, 2), (417, 276),
                                                                        (1360, 111)]


QUESTIONS = ["what is the capital of france", "name three colours", "how far is the moon from the earth",
             "say hello", "count to five please"]
ANSWERS = ["paris", "red green blue", "about three hundred eighty thousand kilometres", "hello",
           "one two three four five"]


def _table():
    return pa.table({"id": list(range(5)), "question": QUESTIONS, "answer": ANSWERS})


def _bodies(url):
    with urllib.request.urlopen(url + "/sim/bodies", timeout=10) as resp:
        return json.load(resp)["bodies"]


@pytest.mark.parametrize("layout", ["parquet-folder", "arrow-save-to-disk", "jsonl"])
def test_a_local_hf_dataset_with_mapped_columns_is_sent_row_for_row(tmp_path, layout):
    """Every row is sent once; its prompt is the `question` column, its output length the tokens of the
    `answer` column (the reference reply), counted exactly by the simulator."""
    if layout == "parquet-folder":  # a hub snapshot: data/train-0000K-of-00002.parquet
        (tmp_path / "ds" / "data").mkdir(parents=True)
        t = _table()
        pq.write_table(t.slice(0, 3), tmp_path / "ds" / "data" / "train-00000-of-00002.parquet")
        pq.write_table(t.slice(3), tmp_path / "ds" / "data" / "train-00001-of-00002.parquet")
        spec = {"format": "parquet", "path": str(tmp_path / "ds")}
    elif layout == "arrow-save-to-disk":  # Dataset.save_to_disk: Arrow IPC stream files + json metadata
        (tmp_path / "ds").mkdir()
        (tmp_path / "ds" / "state.json").write_text("{}")
        with pa.OSFile(str(tmp_path / "ds" / "data-00000-of-00001.arrow"), "wb") as sink, \
                pa.ipc.new_stream(sink, _table().schema) as writer:
            writer.write_table(_table())
        spec = {"format": "arrow", "path": str(tmp_path / "ds")}
    else:
        f = tmp_path / "ds.jsonl"
        pairs = zip(QUESTIONS, ANSWERS, strict=True)
        f.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs))
        spec = {"format": "jsonl", "path": str(f)}
    spec["fields"] = {"prompt": "question", "reply": "answer"}
    scen = tmp_path / "hf.yaml"
    scen.write_text(yaml.safe_dump({"scenario": "concurrency", "concurrency": 1, "num_requests": 5,
                                    "duration_s": 0, "dataset": spec}))
    with SimProcess(SimConfig(ttft_ms=2, itl_ms=1, keep_bodies=10)) as sim:
        res = run_cli("run", str(scen), "--url", sim.url, "--out", str(tmp_path / "run"), "--quiet")
        bodies = _bodies(sim.url)
    assert res.code == 0, res.output
    sent = sorted((b["prompt"], b["max_tokens"]) for b in bodies)
    assert sent == sorted((q, len(a.split())) for q, a in zip(QUESTIONS, ANSWERS, strict=True))
    recs = [json.loads(x) for x in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    assert sorted(x["prompt_tokens"] for x in recs) == sorted(len(q.split()) for q in QUESTIONS)


def test_sharegpt_style_messages_in_a_parquet_column(tmp_path):
    conv = [[{"from": "human", "value": q}] for q in QUESTIONS[:2]]
    pq.write_table(pa.table({"conversations": conv, "n": [3, 4]}), tmp_path / "c.parquet")
    s = Settings(scenario="concurrency", endpoint="chat", dataset={
        "format": "parquet", "path": str(tmp_path / "c.parquet"),
        "fields": {"messages": "conversations", "output_len": "n"}})
    ds = load_dataset(s, EXACT, seeded_rngs(0))
    got = sorted(((x.output_tokens, x.messages) for x in ds.samples), key=lambda g: g[0])
    assert got == [(3, ({"role": "user", "content": QUESTIONS[0]},)),
                   (4, ({"role": "user", "content": QUESTIONS[1]},))]
    assert [x.input_tokens for x in sorted(ds.samples, key=lambda x: x.output_tokens)] == [6, 3]


@pytest.mark.parametrize(("dataset", "says"), [
    ({"format": "parquet", "fields": {"prompt": "Question"}},
     "dataset.fields.prompt names the column `Question`, which is not there; its columns are id, question, "
     "answer"),
    ({"format": "parquet", "fields": {"answer": "answer"}}, "fields: answer is not one of prompt, messages"),
    ({"format": "sharegpt", "fields": {"prompt": "q"}}, "a ShareGPT file has its own layout"),
    ({"format": "arrow"}, "holds no *.arrow file"),
])
def test_bad_dataset_mappings_exit_2_naming_the_column_or_field(tmp_path, dataset, says):
    (tmp_path / "ds").mkdir()
    pq.write_table(_table(), tmp_path / "ds" / "train.parquet")
    scen = tmp_path / "bad.yaml"
    scen.write_text(yaml.safe_dump({"scenario": "concurrency", "num_requests": 2, "duration_s": 0,
                                    "dataset": {**dataset, "path": str(tmp_path / "ds")}}))
    res = run_cli("run", str(scen), "--out", str(tmp_path / "run"), "--quiet")
    assert res.code == 2, res.output
    assert says in res.stderr and "Traceback" not in res.output

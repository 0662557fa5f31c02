"""`vllm bench serve`'s flags on `loadgen run`, through the real CLI: the aliases set the same settings
as loadgen's own options, and the others stop with one line naming loadgen's equivalent (exit 2)."""

from __future__ import annotations

import pytest

from loadgen.records import read_records
from tests.conftest import load_report, run_cli

SIM = ("--output-len", "3")  # the default simulator; short replies keep the runs to a second or two


def test_the_aliases_set_the_same_settings_as_loadgens_options(tmp_path):
    out = tmp_path / "run"
    res = run_cli("run", "server", "--request-rate", "40", "--num-prompts", "24", "--duration", "0.2",
                  "--random-input-len", "10", "--random-output-len", "3", "--endpoint",
                  "/v1/chat/completions", "--max-concurrency", "8", "--out", str(out), "--quiet", timeout=120)
    assert res.code == 0, res.output
    s = load_report(out)["settings"]
    assert (s["scenario"], s["qps"], s["num_requests"], s["endpoint"], s["max_concurrency"]) == (
        "server", 40, 24, "chat", 8)
    assert s["input_len"]["mean"] == 10 and s["output_len"]["mean"] == 3
    recs = read_records(out / "requests.jsonl")
    assert len(recs) >= 24 and all(r.ok for r in recs)
    assert {r.input_tokens for r in recs} == {10} and {r.output_tokens for r in recs} == {3}
    # the schedule is the --qps schedule (same seed, same rate): the alias is the option itself
    twin = tmp_path / "twin"
    res = run_cli("run", "server", "--qps", "40", "--num-requests", "24", "--duration", "0.2",
                  "--input-len", "10", "--output-len", "3", "--endpoint", "chat", "--max-concurrency", "8",
                  "--out", str(twin), "--quiet", timeout=120)
    assert res.code == 0, res.output
    assert sorted(r.scheduled_ns for r in recs) == sorted(
        r.scheduled_ns for r in read_records(twin / "requests.jsonl"))


def test_request_rate_inf_runs_offline_as_vllm_does(tmp_path):
    out = tmp_path / "run"
    res = run_cli("run", "server", "--request-rate", "inf", "--num-prompts", "30", *SIM, "--out", str(out),
                  "--quiet", timeout=120)
    assert res.code == 0, res.output
    assert "--request-rate inf sends every request at once: running the Offline scenario" in res.stderr
    report = load_report(out)
    assert report["settings"]["scenario"] == "offline" and report["settings"]["duration_s"] == 0
    recs = read_records(out / "requests.jsonl")
    assert len(recs) == 30 and {r.scheduled_ns for r in recs} == {0}
    assert report["mlperf"]["checks"]["min_duration"] is True  # the server scenario's 30 s is not kept


@pytest.mark.parametrize(("args", "needle"), [
    (("--percentile-metrics", "ttft,tpot,itl"), "--percentile-metrics is a `vllm bench serve` option"),
    (("--metric-percentiles=50,90,99",), "p50, p90, p99 and p99.9 on the console"),
    (("--burstiness", "0.5"), "use arrival: {burstiness: K}"),
    (("--base-url", "http://127.0.0.1:8000"), "use --url URL"),
    (("--dataset-name", "sharegpt"), "dataset: {format: sharegpt|jsonl|csv"),
    (("--num-requests", "5", "--num-prompts", "6"), "--num-requests 5 and --num-prompts 6 say different"),
    (("--qps", "5", "--request-rate", "6"), "--qps 5.0 and --request-rate 6.0 say different things"),
    (("--output-len", "5", "--random-output-len", "6"), "--output-len 5 and --random-output-len 6"),
    (("--request-rate", "0"), "--request-rate 0: give a rate above 0"),
    (("--endpoint", "/v1/classify"), "give --endpoint completions, chat, responses, embeddings, rerank"),
], ids=["percentile-metrics", "metric-percentiles", "burstiness", "base-url", "dataset-name",
        "num-prompts-conflict", "request-rate-conflict", "output-len-conflict", "rate-0", "endpoint-path"])
def test_flags_without_a_loadgen_meaning_exit_2_with_one_line(args, needle):
    res = run_cli("run", "server", *args, "--quiet", timeout=60)
    assert res.code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("loadgen: error: "), res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.output


def test_request_rate_on_a_closed_loop_points_to_concurrency():
    res = run_cli("run", "concurrency", "--request-rate", "4", "--quiet", timeout=60)
    assert res.code == 2 and "its load is set by --concurrency" in res.stderr


def test_help_lists_the_vllm_names():
    res = run_cli("run", "--help", timeout=60, env={"COLUMNS": "200"})
    assert res.code == 0
    for flag in ("--num-prompts", "--request-rate", "--max-concurrency", "--random-input-len",
                 "--random-output-len", "--max-duration"):
        assert flag in res.stdout, flag


def test_other_commands_keep_their_own_options_of_those_names():
    from loadgen.cli.aliases import unsupported_vllm_flag

    assert unsupported_vllm_flag(["sim", "--port", "0"]) is None
    assert unsupported_vllm_flag(["run", "server", "--port", "8000"]) is not None
    assert unsupported_vllm_flag(["run", "server", "--", "--port"]) is None

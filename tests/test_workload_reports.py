"""Per-workload breakdowns in report.json, through a real ``loadgen run`` on the simulated server.

The simulator's first token comes ``ttft_ms + prefill_ms_per_token × prompt_tokens`` after admission
(``servers/sim_config.py``), so with a prefill cost the TTFT of each request says how long the prompt
the server received was: the expectations below follow from the configured lengths alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_report, run_cli, write_scenario


def test_ttft_by_prefix_group_through_loadgen_run(tmp_path: Path) -> None:
    """3 prefix groups of 50 tokens + 10-token suffixes, 24 prompts sent once each (whole passes over
    24 samples), prompt k in group k mod 3: every group has 8 requests, and each request's TTFT is
    5 + 0.2 × 60 = 17 ms (the simulator has no prefix cache, so the first of a group is no slower)."""
    scen = write_scenario(tmp_path / "p.yaml", scenario="concurrency", concurrency=4, num_requests=24,
                          duration_s=0, dataset_size=24, output_len=2,
                          prefix={"groups": 3, "length": 50, "suffix_len": 10},
                          sim={"ttft_ms": 5, "itl_ms": 1, "prefill_ms_per_token": 0.2})
    out = tmp_path / "out"
    res = run_cli("run", str(scen), "--out", str(out), "--quiet")
    assert res.code == 0, res.output
    report = load_report(out)
    assert report["results"]["requests_completed"] == 24
    groups = report["results"]["ttft_by_prefix_group"]
    assert sorted(groups) == ["0", "1", "2"]
    for g in groups.values():
        assert g["count"] == 8
        assert g["first_ms"] == pytest.approx(17.0, abs=3.0)
        assert g["rest"]["p50"] == pytest.approx(17.0, abs=1.5)
        assert g["rest"]["p50"] >= 17.0 - 0.1  # never faster than the server's own timing
    assert report["results"]["input_tokens_total"] == 24 * 60


def test_sessions_by_turn_through_loadgen_run(tmp_path: Path) -> None:
    """3 chat users, 4 turns of 10-token messages, 6-token replies. Turn k resends k earlier messages
    and k replies: input tokens (joined contents) = 10(k + 1) + 6k = 10, 26, 42, 58 for every user.
    The simulator adds 2 template tokens per message (2k + 1 messages) and prefills at 0.5 ms a token,
    so TTFT at turn k = 5 + 0.5 × (16k + 10 + 2(2k + 1)) = 11, 21, 31, 41 ms."""
    scen = write_scenario(tmp_path / "c.yaml", scenario="concurrency", endpoint="chat", output_len=6,
                          sessions={"users": 3, "turns": 4, "think_time_s": 0, "user_len": 10},
                          sim={"ttft_ms": 5, "itl_ms": 1, "prefill_ms_per_token": 0.5,
                               "chat_template_tokens": 2})
    out = tmp_path / "out"
    res = run_cli("run", str(scen), "--out", str(out), "--quiet")
    assert res.code == 0, res.output
    report = load_report(out)
    turns = report["results"]["sessions_by_turn"]
    assert sorted(turns, key=int) == ["0", "1", "2", "3"]
    for k in range(4):
        t = turns[str(k)]
        tokens = 10 * (k + 1) + 6 * k
        assert (t["completed"], t["failed"]) == (3, 0)
        assert t["input_tokens"] == {"mean": tokens, "min": tokens, "max": tokens}
        ttft = 5 + 0.5 * (tokens + 2 * (2 * k + 1))
        assert t["ttft_ms"]["p50"] == pytest.approx(ttft, abs=1.5)
        assert t["ttft_ms"]["p50"] >= ttft - 0.1
    assert report["results"]["requests_completed"] == 12

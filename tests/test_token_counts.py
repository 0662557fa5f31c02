"""Input token counts: exact only when something that knows the tokenizer counted them, and the console
says so when they are not."""

from __future__ import annotations

import socket

from loadgen.engine.target import token_counter
from loadgen.settings import Settings
from tests.conftest import load_report, run_cli
from tests.recording_server import RecordingServer


def _closed_port_url() -> str:
    with socket.socket() as s:  # nothing listens here: no /tokenize to ask
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_word_counts_are_exact_only_for_the_simulator_loadgen_started():
    settings = Settings(scenario="offline")
    url = _closed_port_url()
    sim = token_counter(settings, url, "m", {}, {"launched": "loadgen-sim", "config": {}})
    assert (sim.name, sim.exact) == ("words", True)
    vllm = token_counter(settings, url, "m", {}, {"launched": "vllm", "startup_s": 1.0})
    assert (vllm.name, vllm.exact) == ("words", False)  # a launched vLLM does not count words
    remote = token_counter(settings, url, "m", {}, None)
    assert (remote.name, remote.exact) == ("words", False)


def test_console_says_input_counts_are_approximate_without_tokenizer_or_tokenize(tmp_path):
    out = tmp_path / "run"
    with RecordingServer() as srv:  # answers completions, has no /tokenize
        res = run_cli("run", "offline", "--url", srv.url, "--num-requests", "5", "--duration", "0",
                      "--input-len", "12", "--output-len", "2", "--out", str(out), "--quiet")
    assert res.code == 0, res.output
    assert "input tokens: APPROXIMATE" in res.stdout and "--tokenizer" in res.stdout
    assert load_report(out)["dataset"]["input_tokens_exact"] is False
    rerendered = run_cli("report", str(out))
    assert "input tokens: APPROXIMATE" in rerendered.stdout


def test_console_is_silent_about_counts_when_they_are_exact(tmp_path):
    out = tmp_path / "run"  # the built-in simulator answers /tokenize
    res = run_cli("run", "offline", "--num-requests", "5", "--duration", "0", "--input-len", "12",
                  "--output-len", "2", "--out", str(out), "--quiet")
    assert res.code == 0, res.output
    assert load_report(out)["dataset"]["input_tokens_exact"] is True
    assert "APPROXIMATE" not in res.stdout

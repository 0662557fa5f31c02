"""The README's Python example runs as written (a user copies it), and the API behaves as documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import loadgen

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    marker = text.index("<!-- python-api-example")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    report = json.loads((tmp_path / "runs/py-run/report.json").read_text())
    assert lines[0] == f"{report['validity']['valid']} {report['validity']['reasons']}"
    completed = report["results"]["requests_completed"]
    assert completed >= 500 and report["results"]["requests_failed"] == 0
    assert lines[1].split()[0] == str(completed)
    sweep = json.loads((tmp_path / "runs/py-sweep/sweep.json").read_text())
    assert [p["status"] for p in sweep["points"]] == ["done", "done"]
    jsonl = (tmp_path / "runs/py-run/requests.jsonl").read_bytes()
    assert lines[3].split()[0] == str(jsonl.count(b"\n"))
    # the simulator's first token comes after its configured TTFT (50 ms by default)
    assert float(lines[3].split()[1]) >= 50.0


def test_load_settings_names_the_bad_field():
    with pytest.raises(loadgen.ConfigError, match="qps"):
        loadgen.load_settings("server", qps=-1)


def test_handle_signals_off_the_main_thread_is_refused_with_advice():
    settings = loadgen.load_settings("singlestream", num_requests=1, duration_s=0, output_len=2)
    caught: list[BaseException] = []

    def call() -> None:
        try:
            loadgen.run(settings, handle_signals=True)
        except loadgen.ConfigError as exc:
            caught.append(exc)

    t = threading.Thread(target=call)
    t.start()
    t.join(30)
    assert caught and "handle_signals=False" in str(caught[0])


def test_a_run_off_the_main_thread_works_without_signal_handlers(tmp_path):
    settings = loadgen.load_settings("singlestream", num_requests=3, duration_s=0, output_len=4,
                                     out=str(tmp_path / "r"), progress=False)
    results: list[loadgen.RunResult] = []
    t = threading.Thread(target=lambda: results.append(loadgen.run(settings)))
    t.start()
    t.join(120)
    assert results and results[0].report["results"]["requests_completed"] == 3
    assert (tmp_path / "r" / "report.json").exists()

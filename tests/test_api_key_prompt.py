"""``--api-key-prompt``: the key is typed at a terminal (never echoed, stored or printed); without a
terminal it is a clear error (exit 2), so a pipe or CI job cannot hang on a prompt."""

from __future__ import annotations

import os
import secrets
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.servers.sim import SimConfig, SimProcess
from tests.conftest import ROOT

KEY = "sk-typed-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def keyed() -> Iterator[SimProcess]:
    with SimProcess(SimConfig(api_key=KEY, ttft_ms=5, itl_ms=1)) as proc:
        yield proc


def _cmd(url: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "loadgen", "run", "offline", "--url", url, "--api-key-prompt",
            "--num-requests", "3", "--duration", "0", "--output-len", "2", "--out", str(out), "--quiet",
            *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_without_a_terminal_it_is_a_clear_error_and_reads_nothing(tmp_path, keyed):
    proc = subprocess.run(_cmd(keyed.url, tmp_path / "run"), input=KEY + "\n", capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=_env(), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--api-key-prompt needs a terminal" in proc.stderr and "--api-key-env" in proc.stderr
    assert KEY not in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "requests.jsonl").exists()  # nothing was sent


def test_prompt_and_env_variable_together_are_refused(tmp_path, keyed):
    proc = subprocess.run(_cmd(keyed.url, tmp_path / "run", "--api-key-env", "K"), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**_env(), "K": KEY}, check=False)
    assert proc.returncode == 2 and "not both" in proc.stderr, proc.stderr


def _run_on_a_terminal(cmd: list[str], typed: str) -> tuple[int, str, str]:
    """Run ``cmd`` with a pseudo-terminal as stdin (and no controlling terminal, so getpass reads it),
    type ``typed`` once the prompt shows on stderr, and return (exit code, stdout, stderr)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env=_env(), start_new_session=True)
    os.close(slave)
    assert proc.stderr is not None and proc.stdout is not None
    err = b""
    try:
        deadline = time.monotonic() + 60
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            while b"API key" not in err and time.monotonic() < deadline and proc.poll() is None:
                if sel.select(timeout=0.5):
                    err += os.read(proc.stderr.fileno(), 4096)
        assert b"API key" in err, err.decode()
        time.sleep(0.2)  # getpass turns echo off (flushing pending input) right before it reads
        os.write(master, typed.encode() + b"\n")
        out, rest = proc.communicate(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(), (err + rest).decode()


def test_the_typed_key_is_used_and_never_written(tmp_path, keyed):
    out = tmp_path / "run"
    code, stdout, stderr = _run_on_a_terminal(_cmd(keyed.url, out), KEY)
    assert code == 0, stderr
    report = (out / "report.json").read_text()
    assert '"requests_completed": 3' in report and '"requests_failed": 0' in report
    assert KEY not in stdout + stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_a_wrong_typed_key_says_authentication_failed_and_where_the_key_came_from(tmp_path, keyed):
    wrong = "sk-wrong-" + secrets.token_hex(8)
    code, stdout, stderr = _run_on_a_terminal(_cmd(keyed.url, tmp_path / "run"), wrong)
    assert code == 2, stderr
    assert "authentication failed" in stderr and "typed at the prompt" in stderr
    assert wrong not in stdout + stderr and "Traceback" not in stderr

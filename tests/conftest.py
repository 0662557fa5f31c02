"""Shared fixtures: the real CLI as a subprocess, and the simulated server in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from loadgen.servers.sim import SimConfig, SimProcess

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
            ) -> CliResult:
    """``python -m loadgen ARGS`` in a subprocess: the real CLI, exit code and all."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen", *args], capture_output=True, text=True, timeout=timeout,
        env=full_env, cwd=cwd or ROOT, check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def write_scenario(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def load_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    """A default simulated server (TTFT 50 ms, ITL 10 ms) in its own process."""
    with SimProcess(SimConfig()) as proc:
        yield proc

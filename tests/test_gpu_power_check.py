"""benchmarks/gpu_power_check.py: runs from a plain checkout, and its PASS/FAIL verdict on energy counter
vs integrated power, over NVML's fake seam (the real GPU run is on the GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import loadgen.observe.gpu
from tests.conftest import ROOT
from tests.test_telemetry import FakeNvml, RealClock

SCRIPT = ROOT / "benchmarks" / "gpu_power_check.py"


def test_runs_without_loadgen_installed_or_on_the_path(tmp_path: Path) -> None:
    """``python benchmarks/gpu_power_check.py OUT`` needs only the dependencies: here they come from
    PYTHONPATH=site-packages with ``-S`` (so the editable install's .pth is not read and loadgen is
    importable only through the script's own sys.path entry), from another working directory."""
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    proc = subprocess.run([sys.executable, "-S", str(SCRIPT), str(out), "--idle", "0.3", "--load", "0.3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert "ModuleNotFoundError" not in proc.stderr, proc.stderr
    report = json.loads(out.read_text())
    if not report["available"]:  # no GPU here: a message and exit 0
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("no GPU: ")
    else:
        assert proc.returncode in (0, 1) and ("PASS" in proc.stdout or "FAIL" in proc.stdout)


@pytest.fixture
def check(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_power_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "torch", None)  # no PyTorch: the load phase is skipped
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def run(fake: FakeNvml, out: Path) -> tuple[int, dict]:
        monkeypatch.setattr(loadgen.observe.gpu, "PynvmlBackend", lambda: fake)
        code = module.main([str(out), "--idle", "0.6", "--interval", "0.05"])
        return code, json.loads(out.read_text())

    return run


def test_pass_when_counter_and_integral_agree(check, tmp_path: Path, capsys) -> None:
    fake = FakeNvml(RealClock(), count=1, power=lambda g, t: 250.0, energy=lambda g, t: 250.0 * t)
    code, report = check(fake, tmp_path / "o.json")
    assert code == 0
    assert report["verdict"]["result"] == "PASS"
    idle = report["idle"]["gpus"][0]
    assert idle["counter_over_integral"] == pytest.approx(1.0, abs=1e-3)
    assert idle["mean_w"] == pytest.approx(250.0, rel=1e-3)
    assert report["load"] == {"skipped": "import of torch halted; None in sys.modules"}
    out = capsys.readouterr().out
    assert "PyTorch with CUDA is needed for the load phase, skipped" in out
    assert "PASS: energy counter vs integrated power" in out


@pytest.mark.parametrize(("counter_watts", "expected"), [
    (262.0, ("PASS", 0)),  # 4.8% above the sampled power
    (263.0, ("FAIL", 1)),  # 5.2%
    (200.0, ("FAIL", 1)),  # a power reading that overstates by 25%
])
def test_fail_beyond_five_percent(check, tmp_path: Path, capsys, counter_watts, expected) -> None:
    fake = FakeNvml(RealClock(), count=1, power=lambda g, t: 250.0, energy=lambda g, t: counter_watts * t)
    code, report = check(fake, tmp_path / "o.json")
    result = expected[0]
    assert (report["verdict"]["result"], code) == expected
    assert f"{result}: energy counter vs integrated power" in capsys.readouterr().out


def test_skip_without_an_energy_counter(check, tmp_path: Path, capsys) -> None:
    fake = FakeNvml(RealClock(), count=1, power=lambda g, t: 250.0, energy_supported=False)
    code, report = check(fake, tmp_path / "o.json")
    assert code == 0 and report["verdict"]["result"] == "SKIP"
    assert "SKIP: no phase has both" in capsys.readouterr().out

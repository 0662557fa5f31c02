"""``pip install .`` into a fresh virtual environment gives a working ``loadgen`` that runs a built-in
scenario from any directory (the scenario YAMLs and the simulator are in the wheel, not only the repo).

To stay fast and offline for the runtime dependencies, the fresh environment sees the test
environment's site-packages through a ``.pth`` line (a plain path: the editable install there is not
activated), so pip finds them already satisfied; the wheel itself is built from a copy of the working
tree with pip's normal build isolation (setuptools from the index or pip's cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.tiny_model import write_tiny_model


def _copy_tree(dest: Path) -> None:
    """The files git knows (tracked, or new and not ignored): no build outputs, no virtualenvs."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, names):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (dest / src.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.relative_to(ROOT))


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_runs_a_builtin_scenario_elsewhere(tmp_path):
    src, venv, elsewhere = tmp_path / "src", tmp_path / "venv", tmp_path / "elsewhere"
    _copy_tree(src)
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-input",
                          "--disable-pip-version-check", str(src)],
                         capture_output=True, text=True, timeout=300, env=env, check=False)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]

    where = subprocess.run([str(py), "-c", "import loadgen, loadgen.servers.sim; print(loadgen.__file__); "
                            "print(loadgen.servers.sim.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env, check=True).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where  # the installed copy, not the repo
    # one top-level package: the simulator and the vLLM launcher live inside loadgen
    tops = sorted(p.name for p in site.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert "servers" not in tops and "loadgen" in tops, tops

    res = subprocess.run([str(venv / "bin" / "loadgen"), "run", "server", "--duration", "1", "--num-requests",
                          "20", "--qps", "20", "--output-len", "8", "--out", "out", "--quiet"],
                         capture_output=True, text=True, timeout=120, cwd=elsewhere, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Result is :" in res.stdout
    report = json.loads((elsewhere / "out" / "report.json").read_text())
    assert report["settings"]["scenario"] == "server" and report["settings"]["qps"] == 20
    assert report["results"]["requests_completed"] >= 20 and report["results"]["requests_failed"] == 0

    # --tokenizer works after a plain install: `tokenizers` is a runtime dependency, not an extra
    requires = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.requires('loadgen'))"],
                              capture_output=True, text=True, cwd=elsewhere, env=env, check=True).stdout
    assert "tokenizers" in requires and "extra ==" not in requires.split("tokenizers")[1].split(",")[0]
    tok = write_tiny_model(tmp_path / "tiny")
    res = subprocess.run([str(venv / "bin" / "loadgen"), "run", "singlestream", "--tokenizer", str(tok),
                          "--num-requests", "3", "--duration", "0", "--input-len", "12", "--output-len", "2",
                          "--out", "tok", "--quiet"],
                         capture_output=True, text=True, timeout=120, cwd=elsewhere, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    dataset = json.loads((elsewhere / "tok" / "report.json").read_text())["dataset"]
    assert dataset["input_tokens_exact"] is True and dataset["token_counter"].startswith("tokenizer:")

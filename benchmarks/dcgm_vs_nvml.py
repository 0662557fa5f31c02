"""J per token two ways on a GPU machine: the DCGM-style remote path vs the local NVML sampler.

One command does it all (for one device call)::

    python3 benchmarks/dcgm_vs_nvml.py --out $OUT/dcgm_vs_nvml.json [--seconds 40]

* A GPU load (torch matmuls in phases of different intensity, so power moves) runs for ``--seconds``;
  its "tokens" are the matmul steps it completed (the same count feeds both paths, so the J/token
  ratio is the energy ratio over the same window).
* Path A, local: :class:`loadgen.observe.gpu.GpuSampler` (NVML, every 0.1 s, energy counter
  interpolated at the window's edges), as ``loadgen run`` measures a local GPU.
* Path B, remote: ``python -m loadgen.servers.dcgm_exporter --nvml`` (NVML sampled into
  dcgm-exporter's format) scraped over HTTP on 127.0.0.1 every ``--scrape-s`` (1 s, as a Prometheus
  would) by :class:`loadgen.observe.dcgm.DcgmScraper`, energy from ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``
  interpolated at the edges; also from ``DCGM_FI_DEV_POWER_USAGE`` alone (the trapezoid of 1 s power
  samples: what a fleet without the counter gets).

The JSON holds both energies, J/token, the relative differences and the pass/fail of the 2 % bar.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadgen.observe.dcgm import DCGM_ENERGY, DcgmScraper, fleet_energy  # noqa: E402
from loadgen.observe.gpu import GpuSampler  # noqa: E402


def gpu_load(seconds: float, stop: threading.Event, steps: list[int]) -> None:
    """Phases: 30 % light (small matmuls with sleeps), 40 % full (large bf16 matmuls), 30 % medium."""
    import torch

    dev = torch.device("cuda")
    big = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    small = torch.randn(2048, 2048, device=dev, dtype=torch.bfloat16)
    t0 = time.monotonic()
    n = 0
    while not stop.is_set():
        frac = (time.monotonic() - t0) / seconds
        if frac >= 1:
            break
        if frac < 0.3:
            small @ small
            torch.cuda.synchronize()
            time.sleep(0.002)
        elif frac < 0.7:
            for _ in range(4):
                big @ big
            torch.cuda.synchronize()
        else:
            for _ in range(2):
                big @ big
            torch.cuda.synchronize()
            time.sleep(0.01)
        n += 1
    steps.append(n)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    # Started (and its ready line read) before anything is measured: blocking here costs nothing.
    exporter = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "loadgen.servers.dcgm_exporter", "--nvml", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert exporter.stdout is not None
        line = exporter.stdout.readline()
        if not line:
            raise SystemExit(f"exporter did not start: {exporter.stderr.read() if exporter.stderr else ''}")
        url = json.loads(line)["url"]
        sampler = GpuSampler(interval_s=0.1)
        if not sampler.start():
            raise SystemExit(f"NVML sampler unavailable: {sampler.reason}")
        scraper = DcgmScraper([url], interval_s=args.scrape_s)
        async with aiohttp.ClientSession() as session:
            await scraper.baseline(session)
            await asyncio.sleep(args.scrape_s * 1.5)  # a sample before the window, as a fleet has
            stop_load, steps = threading.Event(), []
            stop_scrape = asyncio.Event()
            scrape_task = asyncio.create_task(scraper.run(session, stop_scrape))
            start_ns = time.perf_counter_ns()
            await asyncio.to_thread(gpu_load, args.seconds, stop_load, steps)
            end_ns = time.perf_counter_ns()
            await asyncio.sleep(args.scrape_s * 1.5)  # the exporter's next sample after the window
            stop_scrape.set()
            await scrape_task
        sampler.sample_now()
        sampler.stop()
        tokens = steps[0]
        local = sampler.result(window_start_ns=start_ns, window_end_ns=end_ns, output_tokens=tokens)
        remote = scraper.result(start_ns, end_ns, tokens)
        # The same remote samples without the energy counter: power samples only.
        no_counter = {k: {f: v for f, v in s.items() if f != DCGM_ENERGY} for k, s in scraper.gpus.items()}
        remote_power = fleet_energy(no_counter, start_ns / 1e9, end_ns / 1e9, output_tokens=tokens,
                                    source="dcgm (power only)")
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
    lj = local["total"]["joules_per_output_token"]
    rj = remote["joules_per_output_token"]
    pj = remote_power["joules_per_output_token"]
    return {
        "machine": platform.node(),
        "gpus": [d.get("name") for d in sampler.devices],
        "window_s": (end_ns - start_ns) / 1e9,
        "tokens": tokens,
        "scrape_interval_s": args.scrape_s,
        "local_nvml": {"energy_j": local["total"]["energy_j"], "method": local["total"]["energy_method"],
                       "j_per_token": lj, "power_mean_w": local["total"]["power_w"]["mean"],
                       "samples": local["sample_count"]},
        "dcgm_counter": {"energy_j": remote["energy_j"], "method": remote["energy_method"], "j_per_token": rj,
                         "power_mean_w": remote["power_mean_w"], "scrapes": remote["scrapes"],
                         "note": remote["note"]},
        "dcgm_power_only": {"energy_j": remote_power["energy_j"], "method": remote_power["energy_method"],
                            "j_per_token": pj},
        "rel_diff_counter": (rj - lj) / lj if lj and rj else None,
        "rel_diff_power_only": (pj - lj) / lj if lj and pj else None,
        "within_2pct": bool(lj and rj and abs(rj - lj) / lj <= 0.02),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--scrape-s", type=float, default=1.0)
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["within_2pct"] else 1


if __name__ == "__main__":
    sys.exit(main())

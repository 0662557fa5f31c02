"""Check loadgen's GPU telemetry on a real GPU: idle vs loaded power, energy counter vs integrated power.

    python benchmarks/gpu_power_check.py OUT.json [--idle 10] [--load 30] [--interval 0.1] [--gpu 0]

(from the repository root; no install or PYTHONPATH needed). Samples at 10 Hz for ``--idle`` seconds
with nothing running, then while a PyTorch bf16 matmul loop keeps GPU ``--gpu`` busy for ``--load``
seconds. Prints, for each phase, mean and peak power and the energy from NVML's counter next to the
trapezoidal integral of sampled power (their ratio should be close to 1; a large gap means the power
reading is averaged or lags), then PASS when they agree within 5% in every phase, else FAIL. Writes
everything (both phase results, the matmul rate, the verdict) as JSON to OUT.json.

Exit status: 0 on PASS; 1 on FAIL; 0 with a message where there is nothing to check (no GPU, or a GPU
without an energy counter); without PyTorch/CUDA the load phase is skipped with a message and the idle
phase alone is judged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.observe.gpu import GpuSampler  # noqa: E402

#: Largest accepted |counter − integral| / integral in a phase.
TOLERANCE = 0.05


def phase_summary(name: str, res: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for gpu in res["gpus"]:
        counter, integral = gpu["energy_counter_j"], gpu["energy_integral_j"]
        ratio = counter / integral if counter is not None and integral else None
        rows.append({"gpu": gpu["index"], "name": gpu["name"], "mean_w": gpu["power_w"]["mean"],
                     "peak_w": gpu["power_w"]["peak"], "counter_j": counter, "integral_j": integral,
                     "counter_over_integral": ratio, "util_mean_pct": gpu["util_pct"]["mean"],
                     "sm_clock_mean_mhz": gpu["sm_clock_mhz"]["mean"], "temp_max_c": gpu["temp_c"]["max"]})
    for r in rows:
        fmt = lambda x, spec=".1f": "n/a" if x is None else format(x, spec)  # noqa: E731
        print(f"{name:>6} gpu{r['gpu']} {r['name']}: mean {fmt(r['mean_w'])} W, peak {fmt(r['peak_w'])} W, "
              f"counter {fmt(r['counter_j'])} J vs integral {fmt(r['integral_j'])} J "
              f"(ratio {fmt(r['counter_over_integral'], '.4f')}), util {fmt(r['util_mean_pct'])} %, "
              f"SM {fmt(r['sm_clock_mean_mhz'], '.0f')} MHz, max {fmt(r['temp_max_c'], '.0f')} °C")
    return {"covered_s": res["covered_s"], "samples": res["sample_count"], "gpus": rows}


def verdict(phases: dict[str, dict[str, Any]], tolerance: float = TOLERANCE) -> tuple[str, list[str]]:
    """``("PASS" | "FAIL" | "SKIP", lines)``: each GPU of each phase whose counter and integral are
    both known must agree within ``tolerance``; SKIP when no phase has both (no energy counter)."""
    lines, checked, failed = [], 0, 0
    for name, phase in phases.items():
        for row in phase.get("gpus", []):
            counter, integral = row["counter_j"], row["integral_j"]
            if counter is None or not integral:
                lines.append(f"{name} gpu{row['gpu']}: no energy counter (or no power samples): not checked")
                continue
            gap = abs(counter - integral) / integral
            checked += 1
            ok = gap <= tolerance
            failed += not ok
            lines.append(f"{name} gpu{row['gpu']}: counter {counter:.1f} J vs integral {integral:.1f} J, "
                         f"{gap:.2%} apart ({'within' if ok else 'MORE than'} {tolerance:.0%})")
    if not checked:
        return "SKIP", lines
    return ("FAIL" if failed else "PASS"), lines


def matmul_load(gpu: int, seconds: float) -> dict[str, Any]:
    import torch

    dev = torch.device(f"cuda:{gpu}")
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    torch.cuda.synchronize(dev)
    iters = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            torch.matmul(a, b)
        torch.cuda.synchronize(dev)  # keeps the queue short, so the loop ends on time
        iters += 20
    elapsed = time.perf_counter() - t0
    return {"matmuls": iters, "seconds": elapsed, "tflops": 2 * n**3 * iters / elapsed / 1e12, "n": n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU to load (and sample)")
    args = ap.parse_args(argv)

    sampler = GpuSampler(interval_s=args.interval, gpus=[args.gpu])
    if not sampler.start():
        print(f"no GPU: {sampler.reason}; nothing to check")
        args.out.write_text(json.dumps({"available": False, "reason": sampler.reason}, indent=2))
        return 0
    report: dict[str, Any] = {"available": True, "devices": sampler.devices, "interval_s": args.interval}
    try:
        t_idle = time.perf_counter_ns()
        time.sleep(args.idle)
        sampler.sample_now()
        t_load = time.perf_counter_ns()
        report["idle"] = phase_summary("idle", sampler.result(t_idle, t_load))
        try:
            import torch

            if not torch.cuda.is_available():
                raise ImportError("torch.cuda.is_available() is False")
        except ImportError as exc:
            print(f"PyTorch with CUDA is needed for the load phase, skipped: {exc}")
            report["load"] = {"skipped": str(exc)}
        else:
            t_load = time.perf_counter_ns()
            sampler.sample_now()
            report["matmul"] = matmul_load(args.gpu, args.load)
            sampler.sample_now()
            t_end = time.perf_counter_ns()
            loaded = sampler.result(t_load, t_end)
            report["load"] = phase_summary("load", loaded)
            report["load_series"] = loaded["gpus"][0]["samples"]
            idle_w = report["idle"]["gpus"][0]["mean_w"]
            load_w = report["load"]["gpus"][0]["mean_w"]
            print(f"matmul: {report['matmul']['tflops']:.0f} TFLOP/s bf16")
            if idle_w and load_w:
                print(f"loaded / idle power: {load_w:.0f} / {idle_w:.0f} W = {load_w / idle_w:.2f}x")
    finally:
        sampler.stop()
    report["sampler_errors"] = sampler.errors
    result, lines = verdict({k: report[k] for k in ("idle", "load") if "gpus" in report.get(k, {})})
    for line in lines:
        print(line)
    report["verdict"] = {"result": result, "tolerance": TOLERANCE, "lines": lines}
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    if result == "SKIP":
        print("SKIP: no phase has both an energy counter delta and integrated power; nothing to compare")
        return 0
    print(f"{result}: energy counter vs integrated power, tolerance {TOLERANCE:.0%}")
    return 1 if result == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())

"""What does the live dashboard cost the measurement? The same load with and without it, in a terminal.

    .venv/bin/python benchmarks/dashboard_overhead.py [--variant open|closed|both] [--duration 10]
        [--reps 3] [--qps 40] [--concurrency 64] [--out F.json]

The method of ``benchmarks/exporter_overhead.py``: two loads, each run ``--reps`` times with
``--dashboard`` and ``--reps`` times with ``--no-dashboard`` (the progress line), alternating (off, on,
off, on, ...) so that drift in the machine's load hits both alike. Every run has a pseudo-terminal
(120 x 40) as its stdin, stdout and stderr, so the dashboard really draws; this script reads and
discards what it writes. Server-metrics scraping and GPU telemetry are off in both.

- ``open``: Poisson arrivals at ``--qps`` against a simulated server (TTFT 50 ms, ITL 10 ms, 128/128
  tokens, nothing queues): the offered rate is fixed, so the dashboard's cost shows in the measuring
  process's CPU (report ``client.process_cpu_cores``), in issue delay and in TTFT/ITL.
- ``closed``: ``concurrency`` at ``--concurrency``, one worker, against TTFT 1 ms / ITL 1 ms, 16/16
  tokens: the client is the limit, so the achieved request rate is its capacity and the ratio on/off
  of requests/s is the figure (1.00 = no overhead). Client-limited (INVALID) on purpose. With two or more
  cores the simulator is pinned to CPU 0 and loadgen (with its drawing process) to CPU 1.

Also printed: ``all_cpu_s``, the CPU seconds of loadgen *and* its drawing process (this script's
children's rusage; the simulator is started here, not by loadgen, so it is not counted), which is
what the dashboard costs the machine rather than the measurement. On a shared machine expect a few
per cent of noise between repetitions: read a difference smaller than that spread as "no measurable
overhead".
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.servers.sim import SimConfig, SimProcess  # noqa: E402

FIELDS = ("req_per_s", "cpu_cores", "all_cpu_s", "issue_p99", "ttft_p50", "ttft_p99", "itl_p99")
SERVERS = {
    "open": SimConfig(ttft_ms=50.0, itl_ms=10.0, max_seqs=4096),
    "closed": SimConfig(ttft_ms=1.0, itl_ms=1.0, max_seqs=4096),
}


def load_args(variant: str, args: argparse.Namespace) -> list[str]:
    if variant == "open":
        return ["server", "--qps", str(args.qps), "--duration", str(args.duration), "--num-requests", "1",
                "--input-len", "128", "--output-len", "128"]
    return ["concurrency", "--concurrency", str(args.concurrency), "--workers", "1",
            "--duration", str(args.duration), "--num-requests", "1", "--input-len", "16",
            "--output-len", "16"]


def _drain(fd: int, seen: list[int]) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the terminal's other side closed: the run is over
            return
        if not data:
            return
        seen[0] += len(data)


def one_run(url: str, variant: str, args: argparse.Namespace, *, dashboard: bool, out: Path,
            client_cpu: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "loadgen", "run", *load_args(variant, args), "--url", url, "--seed", "1",
           "--server-metrics-url", "none", "--no-gpu-telemetry", "--out", str(out),
           "--dashboard" if dashboard else "--no-dashboard"]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    seen = [0]
    reader = threading.Thread(target=_drain, args=(master, seen), daemon=True)
    reader.start()

    def pin() -> None:
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, check=False,
                              preexec_fn=pin, env={**env, "TERM": "xterm-256color"},
                              timeout=args.duration * 10 + 120)
    finally:
        os.close(slave)
        reader.join(timeout=5)
        os.close(master)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"loadgen failed ({proc.returncode}); see {out}")
    report = json.loads((out / "report.json").read_text())
    res = report["results"]
    return {
        "variant": variant, "dashboard": dashboard, "terminal_bytes": seen[0],
        "req_per_s": res["requests_per_s"], "cpu_cores": report["client"]["process_cpu_cores"],
        "all_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "issue_p99": res["issue_delay_ms"]["p99"],
        "ttft_p50": res["ttft_ms"]["p50"], "ttft_p99": res["ttft_ms"]["p99"], "itl_p99": res["itl_ms"]["p99"],
        "completed": res["requests_completed"], "failed": res["requests_failed"],
    }


def row(label: str, values: dict[str, float]) -> str:
    return f"{label:<12}" + "".join(f"{values[f]:>12.3f}" for f in FIELDS)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    medians = {name: {f: statistics.median(r[f] for r in runs if r["dashboard"] == on) for f in FIELDS}
               for name, on in (("off", False), ("on", True))}
    off, on = medians["off"], medians["on"]
    rel = {f: (on[f] - off[f]) / off[f] * 100 if off[f] else float("nan") for f in FIELDS}
    spread = {name: (max(r["req_per_s"] for r in runs if r["dashboard"] == flag)
                     - min(r["req_per_s"] for r in runs if r["dashboard"] == flag)) / off["req_per_s"] * 100
              for name, flag in (("off", False), ("on", True))}
    return {"medians": medians, "relative_pct": rel, "req_per_s_spread_pct": spread,
            "throughput_ratio_on_off": on["req_per_s"] / off["req_per_s"]}


def run_variant(variant: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    print(f"\n[{variant}] " + (f"Poisson {args.qps:g} QPS, 128/128 tokens" if variant == "open" else
                             f"concurrency {args.concurrency}, 1 worker, 16/16 tokens, TTFT/ITL 1 ms")
          + f", {args.duration:g} s; {args.reps} repetitions per mode, alternating off/on"
          + (" (simulator on CPU 0, loadgen on CPU 1)" if pin else ""))
    print(f"{'run':<12}" + "".join(f"{f:>12}" for f in FIELDS))
    runs = []
    with SimProcess(SERVERS[variant], cpu=0 if pin else None) as sim:
        for rep in range(args.reps):
            for dashboard in (False, True):
                label = f"{'on' if dashboard else 'off'} #{rep + 1}"
                r = one_run(sim.url, variant, args, dashboard=dashboard,
                            out=tmp / f"{variant}-{label.replace(' #', '-')}", client_cpu=1 if pin else None)
                runs.append(r)
                print(row(label, r) + f"   ({r['terminal_bytes']:,} bytes drawn)", flush=True)
    summary = summarize(runs)
    print("medians")
    print(row("off", summary["medians"]["off"]))
    print(row("on", summary["medians"]["on"]))
    print(f"{'on-off (%)':<12}" + "".join(f"{summary['relative_pct'][f]:>+11.1f}%" for f in FIELDS))
    sp = summary["req_per_s_spread_pct"]
    print(f"[{variant}] throughput ratio on/off: {summary['throughput_ratio_on_off']:.3f}; spread between "
          f"repetitions: off {sp['off']:.1f}%, on {sp['on']:.1f}%")
    return {"runs": runs, **summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=("open", "closed", "both"), default="both")
    parser.add_argument("--qps", type=float, default=40.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    variants = ("open", "closed") if args.variant == "both" else (args.variant,)
    results = {}
    with tempfile.TemporaryDirectory(prefix="dashboard-overhead-") as tmp:
        for variant in variants:
            results[variant] = run_variant(variant, args, Path(tmp))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""What does the live Prometheus exporter cost the client? The same load with and without it.

    .venv/bin/python benchmarks/exporter_overhead.py [--variant open|closed|both] [--duration 15]
        [--reps 3] [--qps 40] [--concurrency 64] [--out F.json]

Two loads, each run ``--reps`` times with ``--metrics-port`` and ``--reps`` times without, alternating
(off, on, off, on, ...) so that drift in the machine's load hits both alike. While the exporter is on,
this script scrapes its ``/metrics`` once a second, as Prometheus would, so the scrape's cost is counted
too. Server-metrics scraping and GPU telemetry are off in both.

- ``open``: ``loadgen run server``, Poisson arrivals at ``--qps`` (same seed every time) against a
  simulated server with TTFT 50 ms, then a token every 10 ms, 128/128 tokens and enough slots that
  nothing queues. The offered rate is fixed, so throughput cannot differ: this shows the exporter's
  cost in client CPU and in latency (TTFT/ITL) at a realistic load.
- ``closed``: ``loadgen run concurrency`` at ``--concurrency`` (one worker process) against a
  simulated server with TTFT 1 ms and a token every 1 ms, 16/16 tokens: the server answers faster than
  one client process can issue and read, so the client's CPU is the limit and the achieved request
  rate *is* the client's capacity. Here the exporter's cost shows as lost throughput; the
  printed ratio on/off of requests/s is the figure (1.00 = no overhead). These runs are client-limited
  (INVALID) on purpose. With two or more cores the simulator is pinned to CPU 0 and loadgen to CPU 1
  (``--no-pin`` leaves both to the scheduler).

Printed per run and as medians per variant and mode: achieved requests/s and output tokens/s, the
client's CPU (report ``client.process_cpu_cores``: the whole process), TTFT and ITL p50/p99 (ms),
and the relative difference on − off. On a shared machine expect a few per cent of noise between
repetitions: read a difference smaller than the spread of the repetitions as "no measurable overhead".
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.servers.sim import SimConfig, SimProcess  # noqa: E402

FIELDS = ("req_per_s", "out_tok_per_s", "cpu_cores", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99")
#: The simulated servers of the two variants (see the module docstring).
SERVERS = {
    "open": SimConfig(ttft_ms=50.0, itl_ms=10.0, max_seqs=4096),
    "closed": SimConfig(ttft_ms=1.0, itl_ms=1.0, max_seqs=4096),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_every_second(port: int, stop: threading.Event, counter: list[int]) -> None:
    """Poll the exporter like a Prometheus with a 1 s scrape interval (failures: not up yet / gone)."""
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                resp.read()
            counter[0] += 1
        except OSError:
            pass


def load_args(variant: str, args: argparse.Namespace) -> list[str]:
    """``loadgen run`` arguments of one variant's load (identical for exporter on and off)."""
    if variant == "open":
        return ["server", "--qps", str(args.qps), "--duration", str(args.duration), "--num-requests", "1",
                "--input-len", "128", "--output-len", "128"]
    return ["concurrency", "--concurrency", str(args.concurrency), "--workers", "1",
            "--duration", str(args.duration), "--num-requests", "1", "--input-len", "16",
            "--output-len", "16"]


def one_run(url: str, variant: str, args: argparse.Namespace, *, exporter: bool, out: Path,
            client_cpu: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "loadgen", "run", *load_args(variant, args), "--url", url, "--seed", "1",
           "--server-metrics-url", "none", "--no-gpu-telemetry", "--out", str(out), "--quiet"]
    stop, scrapes = threading.Event(), [0]
    scraper = None
    if exporter:
        port = free_port()
        cmd += ["--metrics-port", str(port)]
        scraper = threading.Thread(target=scrape_every_second, args=(port, stop, scrapes), daemon=True)
        scraper.start()

    def pin() -> None:
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False, preexec_fn=pin,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=args.duration * 10 + 120)
    finally:
        stop.set()
        if scraper is not None:
            scraper.join()
    if proc.returncode != 0:
        raise SystemExit(f"loadgen failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    res = report["results"]
    return {
        "variant": variant,
        "exporter": exporter,
        "scrapes": scrapes[0],
        "req_per_s": res["requests_per_s"],
        "out_tok_per_s": res["output_tokens_per_s"],
        "cpu_cores": report["client"]["process_cpu_cores"],
        "ttft_p50": res["ttft_ms"]["p50"],
        "ttft_p99": res["ttft_ms"]["p99"],
        "itl_p50": res["itl_ms"]["p50"],
        "itl_p99": res["itl_ms"]["p99"],
        "failed": res["requests_failed"],
        "completed": res["requests_completed"],
    }


def row(label: str, values: dict[str, float]) -> str:
    return f"{label:<14}" + "".join(f"{values[f]:>14.3f}" for f in FIELDS)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per mode (off/on), the relative difference on − off (%) and the throughput ratio."""
    medians = {
        name: {f: statistics.median(r[f] for r in runs if r["exporter"] == on) for f in FIELDS}
        for name, on in (("off", False), ("on", True))
    }
    off, on = medians["off"], medians["on"]
    rel = {f: (on[f] - off[f]) / off[f] * 100 if off[f] else float("nan") for f in FIELDS}
    ratio = on["req_per_s"] / off["req_per_s"] if off["req_per_s"] else float("nan")
    spread = {
        name: (max(r["req_per_s"] for r in runs if r["exporter"] == flag)
               - min(r["req_per_s"] for r in runs if r["exporter"] == flag)) / off["req_per_s"] * 100
        for name, flag in (("off", False), ("on", True))
    } if off["req_per_s"] else {}
    return {"medians": medians, "relative_pct": rel, "throughput_ratio_on_off": ratio,
            "req_per_s_spread_pct": spread}


def run_variant(variant: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    if variant == "open":
        print(f"\n[open] server scenario, Poisson {args.qps:g} QPS for {args.duration:g} s, 128/128 tokens")
    else:
        print(f"\n[closed] concurrency {args.concurrency}, 1 worker, {args.duration:g} s, 16/16 tokens, "
              "simulated TTFT 1 ms / ITL 1 ms: the client is the limit"
              + (" (simulator on CPU 0, loadgen on CPU 1)" if pin else ""))
    print(f"{args.reps} repetitions per mode, alternating off/on")
    print(f"{'run':<14}" + "".join(f"{f:>14}" for f in FIELDS))
    runs: list[dict[str, Any]] = []
    with SimProcess(SERVERS[variant], cpu=0 if pin else None) as sim:
        for rep in range(args.reps):
            for exporter in (False, True):
                label = f"{'on' if exporter else 'off'} #{rep + 1}"
                r = one_run(sim.url, variant, args, exporter=exporter,
                            out=tmp / f"{variant}-{label.replace(' #', '-')}", client_cpu=1 if pin else None)
                runs.append(r)
                print(row(label, r) + (f"   ({r['scrapes']} scrapes)" if exporter else "")
                      + (f"   {r['failed']} FAILED" if r["failed"] else ""), flush=True)
    summary = summarize(runs)
    print("medians")
    print(row("off", summary["medians"]["off"]))
    print(row("on", summary["medians"]["on"]))
    print(f"{'on-off (%)':<14}" + "".join(f"{summary['relative_pct'][f]:>+13.1f}%" for f in FIELDS))
    spread = summary["req_per_s_spread_pct"]
    noise = f"; spread between repetitions: off {spread['off']:.1f}%, on {spread['on']:.1f}%" if spread \
        else ""
    print(f"[{variant}] throughput ratio on/off (req/s medians): "
          f"{summary['throughput_ratio_on_off']:.3f}{noise}")
    return {"runs": runs, **summary}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=("open", "closed", "both"), default="both")
    parser.add_argument("--qps", type=float, default=40.0, help="open: Poisson rate")
    parser.add_argument("--concurrency", type=int, default=64, help="closed: virtual users")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true", help="closed/open: do not pin server and client")
    parser.add_argument("--out", type=Path, help="write every run and the medians as JSON")
    args = parser.parse_args()

    variants = ("open", "closed") if args.variant == "both" else (args.variant,)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="exporter-overhead-") as tmp:
        for variant in variants:
            results[variant] = run_variant(variant, args, Path(tmp))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""What does the live Prometheus exporter cost the client? The same load with and without it.

    .venv/bin/python benchmarks/exporter_overhead.py [--qps 40] [--duration 15] [--reps 3] [--out F.json]

One built-in simulated server (TTFT 50 ms, then one token every 10 ms; 128 input / 128 output tokens;
enough slots that nothing queues) serves every run. ``loadgen run server`` (Poisson arrivals at
``--qps``, same seed every time) runs against it ``--reps`` times with ``--metrics-port`` and ``--reps``
times without, alternating (off, on, off, on, ...) so that drift in the machine's load hits both alike.
While the exporter is on, this script scrapes its ``/metrics`` once a second, as Prometheus would, so the
scrape's cost is counted too. Server-metrics scraping and GPU telemetry are off in both variants.

Printed per run and as medians per variant: achieved requests/s and output tokens/s, the client's CPU
(report ``client.cpu_cores``, all client processes), TTFT and ITL p50/p99 (ms), and the relative
difference on − off. On a shared 2-core machine expect a few per cent of noise between repetitions:
read a difference smaller than the spread of the repetitions as "no measurable overhead".
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

from servers.sim import SimConfig, SimProcess  # noqa: E402

FIELDS = ("req_per_s", "out_tok_per_s", "cpu_cores", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99")


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


def one_run(url: str, args: argparse.Namespace, exporter: bool, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "loadgen", "run", "server", "--url", url, "--qps", str(args.qps),
           "--duration", str(args.duration), "--num-requests", "1", "--input-len", "128",
           "--output-len", "128", "--seed", "1", "--server-metrics-url", "none", "--no-gpu-telemetry",
           "--out", str(out), "--quiet"]
    stop, scrapes = threading.Event(), [0]
    scraper = None
    if exporter:
        port = free_port()
        cmd += ["--metrics-port", str(port)]
        scraper = threading.Thread(target=scrape_every_second, args=(port, stop, scrapes), daemon=True)
        scraper.start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False,
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
        "exporter": exporter,
        "scrapes": scrapes[0],
        "req_per_s": res["requests_per_s"],
        "out_tok_per_s": res["output_tokens_per_s"],
        "cpu_cores": report["client"]["cpu_cores"],
        "ttft_p50": res["ttft_ms"]["p50"],
        "ttft_p99": res["ttft_ms"]["p99"],
        "itl_p50": res["itl_ms"]["p50"],
        "itl_p99": res["itl_ms"]["p99"],
        "failed": res["requests_failed"],
    }


def row(label: str, values: dict[str, float]) -> str:
    return f"{label:<14}" + "".join(f"{values[f]:>14.3f}" for f in FIELDS)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qps", type=float, default=40.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write every run and the medians as JSON")
    args = parser.parse_args()

    runs: list[dict[str, Any]] = []
    print(f"server scenario, Poisson {args.qps:g} QPS for {args.duration:g} s, 128/128 tokens, "
          f"{args.reps} repetitions per variant, alternating")
    print(f"{'run':<14}" + "".join(f"{f:>14}" for f in FIELDS))
    with SimProcess(SimConfig(ttft_ms=50.0, itl_ms=10.0, max_seqs=4096)) as sim, \
            tempfile.TemporaryDirectory(prefix="exporter-overhead-") as tmp:
        for rep in range(args.reps):
            for exporter in (False, True):
                label = f"{'on' if exporter else 'off'} #{rep + 1}"
                r = one_run(sim.url, args, exporter, Path(tmp) / label.replace(" #", "-"))
                runs.append(r)
                print(row(label, r) + (f"   ({r['scrapes']} scrapes)" if exporter else "")
                      + (f"   {r['failed']} FAILED" if r["failed"] else ""), flush=True)

    medians = {
        name: {f: statistics.median(r[f] for r in runs if r["exporter"] == on) for f in FIELDS}
        for name, on in (("off", False), ("on", True))
    }
    rel = {f: (medians["on"][f] - medians["off"][f]) / medians["off"][f] * 100 if medians["off"][f] else
           float("nan") for f in FIELDS}
    print("\nmedians")
    print(row("off", medians["off"]))
    print(row("on", medians["on"]))
    print(f"{'on-off (%)':<14}" + "".join(f"{rel[f]:>+13.1f}%" for f in FIELDS))
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "medians": medians, "relative_pct": rel}, indent=2))


if __name__ == "__main__":
    main()

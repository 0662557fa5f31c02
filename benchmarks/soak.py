"""Soak: a long run at a high rate against the simulated server, watching loadgen for leaks.

Starts the simulator in its own process, runs ``loadgen run constant`` (open loop, one worker, so the
loadgen process is the one measured) for ``--minutes``, and samples that process's RSS and open file
descriptors every ``--every`` seconds from /proc. Prints the samples, the first- vs last-minute means
and the run's outcome. Not a test: run it by hand, e.g.::

    python benchmarks/soak.py --minutes 10 --qps 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.servers.sim import SimConfig, SimProcess  # noqa: E402


def sample(pid: int) -> tuple[float, int] | None:
    """(RSS MiB, open descriptors) of ``pid``; None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss_kb / 1024, fds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--qps", type=float, default=200.0)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    args = ap.parse_args()
    duration = args.minutes * 60
    out = args.out or Path(tempfile.mkdtemp(prefix="loadgen-soak-")) / "run"
    with SimProcess(SimConfig(ttft_ms=20, itl_ms=5, max_seqs=4096)) as sim:
        cmd = [sys.executable, "-m", "loadgen", "run", "constant", "--url", sim.url, "--qps", str(args.qps),
               "--duration", str(duration), "--num-requests", "1", "--output-len", str(args.output_len),
               "--input-len", "32", "--workers", "1", "--quiet", "--no-gpu-telemetry", "--out", str(out)]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        samples: list[tuple[float, float, int]] = []
        measuring: list[bool] = []  # requests.jsonl grew since the previous sample: the clock runs
        jsonl, last_size = out / "requests.jsonl", 0
        print(f"soak: {args.minutes:g} min at {args.qps:g} req/s, {args.output_len} tokens each; "
              f"pid {proc.pid}")
        print(f"{'t (s)':>8} {'RSS (MiB)':>10} {'fds':>6}")
        limit = duration + 300  # bounded: the run plus five minutes for start-up and the report
        while proc.poll() is None and time.monotonic() - t0 < limit:
            s = sample(proc.pid)
            if s is not None:
                t = time.monotonic() - t0
                samples.append((t, *s))
                size = jsonl.stat().st_size if jsonl.exists() else 0
                measuring.append(size > last_size)
                last_size = size
                print(f"{t:8.0f} {s[0]:10.1f} {s[1]:6d}", flush=True)
            time.sleep(args.every)
        if proc.poll() is None:
            proc.kill()
        output, _ = proc.communicate()
    print(output[-1500:])
    if len(samples) < 4:
        print("soak: too few samples")
        return 1
    # The measured window: from the first to the last sample at which requests were still being
    # written; before it is start-up, after it the report is built (a transient peak, shown apart).
    run = [s for s, m in zip(samples, measuring, strict=True) if m] or samples
    start, end = run[0][0], run[-1][0]
    first = [s for s in run if s[0] - start < 60]
    last = [s for s in run if s[0] > end - 60]
    mean = lambda xs, i: sum(x[i] for x in xs) / len(xs)  # noqa: E731
    rss0, rss1 = mean(first, 1), mean(last, 1)
    fd0, fd1 = mean(first, 2), mean(last, 2)
    after = [s[1] for s in samples if s[0] > end]
    print(f"measured window {start:.0f}-{end:.0f} s: RSS first minute {rss0:.1f} MiB, last minute "
          f"{rss1:.1f} MiB: growth {rss1 - rss0:+.1f} MiB ({(rss1 / rss0 - 1) * 100:+.1f}%), max "
          f"{max(s[1] for s in run):.1f} MiB; while the report was built: max "
          f"{max(after) if after else float('nan'):.1f} MiB")
    print(f"open fds first minute {fd0:.1f}, last minute {fd1:.1f}: growth {fd1 - fd0:+.1f}, "
          f"max {max(s[2] for s in samples)}")
    report = out / "report.json"
    if report.exists():
        r = json.loads(report.read_text())["results"]
        n = r["requests_issued"]
        print(f"requests: {n} issued, {r['requests_completed']} completed, {r['requests_failed']} failed; "
              f"{len((out / 'requests.jsonl').read_bytes().splitlines())} lines in requests.jsonl; "
              f"TTFT p99 {r['ttft_ms']['p99']:.1f} ms")
        print(f"RSS growth per 1,000 requests: {(rss1 - rss0) / max(n, 1) * 1000:.3f} MiB")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

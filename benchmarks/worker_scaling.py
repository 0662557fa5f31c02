"""Does clean-measurement capacity scale with worker processes?

    python benchmarks/worker_scaling.py [--workers 1,2,4,8] [--engines workers,ray] [--out scaling.json]

Needs a machine with many cores (the GPU machine has 16; no GPU is used). Half the physical cores
(with their SMT siblings) run the simulated server — several processes sharing one port through
SO_REUSEPORT, so the server is never the limit — and the other half run loadgen. For each worker
count N, a ladder of Poisson rates (×1.3 per step) is run; the clean-measurement capacity is the
highest rate at which the run was not client-limited (issue delay p99 ≤ 1 ms, event-loop lag p99
≤ 2 ms, no worker's event loop above 0.9 of a core) and achieved ≥ 99% of the offered rate. It
prints capacity(N) and capacity(N) / (N × capacity(1)): the target is ≥ 0.8.

``--engines workers,ray`` runs the ladder with worker processes and with Ray actors (``--ray``: one
Ray head started here with ``ray start --head``, pinned to loadgen's cores and with as many CPUs,
every process on 127.0.0.1, workers at niceness 0), side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.servers.sim import SimConfig, SimProcess  # noqa: E402

OUT_LEN, IN_LEN, STEP_S = 8, 32, 4.0
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_worker_niceness": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(32).hex()}


@contextlib.contextmanager
def ray_head(cpus: set[int], work: Path):
    """A Ray head on ``cpus`` (its processes and so its actors inherit the affinity), in its own
    session, stopped by that process group."""
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    beside = Path(sys.executable).with_name("ray")
    ray_cli = str(beside) if beside.exists() else shutil.which("ray") or "ray"
    log = (work / "ray.log").open("ab")
    proc = subprocess.Popen([ray_cli, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", str(len(cpus)), "--include-dashboard",
                             "false", "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, **RAY_ENV},
                            preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        time.sleep(3)  # the raylet registers after the GCS listens
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _clean(report: dict, offered: float) -> tuple[bool, str]:
    c = report["client"]
    recs = report["results"]
    achieved = recs["requests_issued"] / max(recs["duration_s"], 1e-9)
    if c["client_limited"]:
        return False, "; ".join(c["reasons"])[:120]
    if recs["requests_failed"]:
        return False, f"{recs['requests_failed']} failed"
    if report["results"]["requests_issued"] < 0.99 * offered * STEP_S:
        return False, f"issued {report['results']['requests_issued']} < 99% of offered"
    return True, f"achieved ~{achieved:.0f}/s"


def run_level(url: str, rate: float, workers: int, cpus: set[int], work: Path, *, ray: str | None = None
              ) -> dict:
    out = work / f"{'ray' if ray else 'w'}{workers}-r{rate:.0f}"
    cmd = [sys.executable, "-m", "loadgen", "run", "server", "--url", url, "--qps", f"{rate:.1f}",
           "--duration", str(STEP_S), "--num-requests", "1", "--input-len", str(IN_LEN),
           "--output-len", str(OUT_LEN), "--workers", str(workers), "--out", str(out), "--quiet",
           "--no-gpu-telemetry", "--server-metrics-url", "none", *(("--ray", ray) if ray else ())]
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
                          preexec_fn=lambda: os.sched_setaffinity(0, cpus), env={**os.environ, **RAY_ENV})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # loadgen's own CPU seconds: with --workers its worker processes too; with --ray the driver only
    # (the actors are the Ray head's children)
    loadgen_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        return {"rate": rate, "clean": False, "why": proc.stderr[-300:]}
    report = json.loads((out / "report.json").read_text())
    ok, why = _clean(report, rate)
    c = report["client"]
    return {"rate": rate, "clean": ok, "why": why, "issue_delay_p99_ms": c["issue_delay_ms"]["p99"],
            "loop_lag_p99_ms": c["loop_lag_ms"]["p99"], "cpu_per_worker": c["cpu_cores_per_worker"],
            "process_cpu_cores": c.get("process_cpu_cores"),
            "loadgen_cpu_s": round(loadgen_cpu_s, 2),
            "ttft_p99_ms": report["results"]["ttft_ms"]["p99"]}


def _ladder(url: str, n: int, cpus: set[int], work: Path, *, ray: str | None, args: argparse.Namespace,
            base: float) -> dict:
    start = max(args.start, 0.5 * n * base) if n > 1 else args.start
    rate, best, ladder = start, 0.0, []
    while rate <= args.max_rate:
        row = run_level(url, rate, n, cpus, work, ray=ray)
        if not row["clean"]:  # one retry: a single late burst on a shared host is not capacity
            ladder.append(row)
            row = run_level(url, rate, n, cpus, work, ray=ray)
        ladder.append(row)
        print(f"{'ray' if ray else 'workers'} {n:>2}  rate {rate:>8.0f}/s  "
              f"{'clean' if row['clean'] else 'NOT clean'}  {row['why']}", flush=True)
        if not row["clean"]:
            break
        best = rate
        rate *= 1.3
    return {"capacity_rps": best, "ladder": ladder}


def split_cores(cores: list[int]) -> tuple[list[int], list[int]]:
    """Half the physical cores for the server, half for loadgen, each with its SMT siblings, so that
    no loadgen thread shares a physical core with a server process (on a host with SMT, logical CPUs
    i and i + n/2 are usually siblings: a plain halving would pair every loadgen CPU with a server
    one)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for cpu in cores:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            key = ((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip())
        except OSError:
            key = ("?", str(cpu))
        groups.setdefault(key, []).append(cpu)
    physical = sorted(groups.values())
    half = len(physical) // 2
    if half == 0:
        return cores[: len(cores) // 2], cores[len(cores) // 2:]
    return sorted(c for g in physical[:half] for c in g), sorted(c for g in physical[half:] for c in g)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--start", type=float, default=200.0)
    ap.add_argument("--max-rate", type=float, default=60_000.0)
    ap.add_argument("--engines", default="workers", help="workers, ray, or both: workers,ray")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server_list, client_list = split_cores(cores)
    server_cpus, client_cpus = server_list, set(client_list)
    counts = [int(x) for x in args.workers.split(",") if int(x) <= len(client_cpus)]
    print(f"{len(cores)} cores: server on {server_cpus}, loadgen on {sorted(client_cpus)}")
    cfg = SimConfig(ttft_ms=20.0, itl_ms=5.0, max_seqs=100_000)
    engines = [e for e in args.engines.split(",") if e]
    results: dict[str, dict[int, dict]] = {e: {} for e in engines}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        first = stack.enter_context(SimProcess(cfg, cpu=server_cpus[0], reuse_port=True))
        port = int(first.url.rsplit(":", 1)[1])
        for cpu in server_cpus[1:]:
            stack.enter_context(SimProcess(cfg, port=port, cpu=cpu, reuse_port=True))
        for engine in engines:
            ray = stack.enter_context(ray_head(client_cpus, Path(tmp))) if engine == "ray" else None
            for n in counts:
                results[engine][n] = _ladder(first.url, n, client_cpus, Path(tmp), ray=ray, args=args,
                                             base=results[engine].get(1, {}).get("capacity_rps") or 0)
                if args.out:  # after every ladder: a run cut short keeps what it measured
                    args.out.write_text(json.dumps(results, indent=1))
    for engine, rows in results.items():
        base = rows.get(1, {}).get("capacity_rps") or 0
        print(f"\n{engine}: workers  clean capacity (req/s)  speed-up  efficiency (target >= 0.8)")
        for n, r in rows.items():
            cap = r["capacity_rps"]
            eff = cap / (n * base) if base else float("nan")
            print(f"{n:>15}  {cap:>22.0f}  {cap / base if base else float('nan'):>8.2f}  {eff:>10.2f}")
            r["efficiency"] = eff
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

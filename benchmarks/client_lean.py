"""How lean is the client? CPU per streamed chunk against a raw-socket floor, and peak RSS of a long run.

    .venv/bin/python benchmarks/client_lean.py [--qps 100] [--duration 20] [--output-len 128]
        [--rss-requests 200000] [--rss-qps 1000] [--rss-output-len 16] [--skip-rss] [--out F.json]

Part 1, CPU per chunk. The simulated server (TTFT 50 ms, a decode step every 10 ms that writes every
due token in the same tick, as vLLM does per step) runs pinned to CPU 0, each client pinned to CPU 1
(with two or more cores), one after the other against the same server, at the same Poisson rate
(same seed) and lengths:

- ``reference``: this file's own raw-socket client (``--reference``): asyncio protocols, HTTP/1.1
  keep-alive, the request bytes prebuilt, the response only counted (``data: {`` markers), no JSON
  parsing, no timestamps, no records: the floor any client that reads the stream pays;
- ``loadgen``: ``loadgen run server`` with its defaults (fast transport, one worker, records, report).

Each prints its CPU seconds over the measured window (loadgen: the report's
``client.process_cpu_cores`` × ``duration_s``; the reference: ``process_time`` from the first send to
the last byte) divided by the chunks received: µs per chunk, and the ratio loadgen / reference (the
issue's target: ≤ 1.5).

Part 2, peak RSS: ``loadgen run server`` for ``--rss-requests`` requests at ``--rss-qps`` (short replies,
so the run is about the record count), its peak RSS from ``wait4`` (the whole process: measuring,
then building and writing the reports); then ``loadgen report requests.jsonl`` (the report rebuilt
from the records file alone) for the report build's own peak. Target: ≤ 150 MB for 200,000 requests.

``vllm bench serve`` is not run here (see ``benchmarks/client_capacity.py`` for it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.servers.sim import SimConfig, SimProcess  # noqa: E402

MARK = b"data: {"


class _Conn(asyncio.Protocol):
    """One keep-alive connection; counts chunks; a response ends with ``[DONE]`` and the last chunk."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.chunks = 0
        self._tail = b""
        self._ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        view = self._tail + data
        self.chunks += view.count(MARK)
        self._ended = self._ended or b"[DONE]" in view
        self._tail = view[-(len(MARK) - 1):]
        if self._ended and view.endswith(b"0\r\n\r\n") and self.done is not None and not self.done.done():
            self._ended = False
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("closed"))


async def _reference(url: str, qps: float, duration: float, *, input_len: int, output_len: int,
                     seed: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "sim-model", "prompt": " ".join(["hello"] * input_len),
                       "max_tokens": output_len, "stream": True, "ignore_eos": True}).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    rng = np.random.default_rng(seed)
    n = max(int(qps * duration), 1)
    offsets = np.cumsum(rng.exponential(1.0 / qps, n))
    loop = asyncio.get_running_loop()
    free: list[_Conn] = []
    total = [0, 0]

    async def one() -> None:
        conn = free.pop() if free else (await loop.create_connection(_Conn, host, int(port)))[1]
        conn.done = loop.create_future()
        before = conn.chunks
        assert conn.transport is not None
        conn.transport.write(request)
        await conn.done
        total[0] += conn.chunks - before
        total[1] += 1
        free.append(conn)

    cpu0, t0 = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for off in offsets.tolist():
            delay = t0 + off - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(one())
    wall = time.perf_counter() - t0
    return {"chunks": total[0], "requests": total[1], "cpu_s": time.process_time() - cpu0, "wall_s": wall}


def _pin(cpu: int | None) -> Any:
    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
    return pin


def _wait_rss(cmd: list[str], cpu: int | None) -> tuple[int, int, str]:
    """Run ``cmd``; its exit code, its own peak RSS (KiB, from wait4: this child only) and stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True, preexec_fn=_pin(cpu),
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.stderr.write(err.read()[-3000:])
        return proc.returncode, usage.ru_maxrss, out.read()


def _loadgen_cmd(url: str, out: Path, qps: float, *, duration: float | None = None, n: int | None = None,
                 input_len: int, output_len: int) -> list[str]:
    cmd = [sys.executable, "-m", "loadgen", "run", "server", "--url", url, "--qps", str(qps),
           "--seed", "1", "--input-len", str(input_len), "--output-len", str(output_len),
           "--out", str(out), "--quiet", "--no-dashboard", "--server-metrics-url", "none",
           "--no-gpu-telemetry"]
    if n is not None:
        cmd += ["--num-requests", str(n), "--duration", "1"]
    else:
        cmd += ["--duration", str(duration), "--num-requests", "1"]
    return cmd


def cpu_per_chunk(args: argparse.Namespace, tmp: Path, server_cpu: int | None, client_cpu: int | None
                  ) -> dict[str, Any]:
    cfg = SimConfig(ttft_ms=50.0, itl_ms=10.0, max_seqs=4096)
    rows: dict[str, Any] = {}
    with SimProcess(cfg, cpu=server_cpu) as sim:
        ref = subprocess.run([sys.executable, __file__, "--reference", "--url", sim.url,
                              "--qps", str(args.qps), "--duration", str(args.duration), "--input-len", "128",
                              "--output-len", str(args.output_len)],
                             capture_output=True, text=True, check=True, preexec_fn=_pin(client_cpu))
        rows["reference"] = json.loads(ref.stdout)
        out = tmp / "cpu"
        cmd = _loadgen_cmd(sim.url, out, args.qps, duration=args.duration, input_len=128,
                           output_len=args.output_len)
        code, _, _ = _wait_rss(cmd, client_cpu)
        if code != 0:
            raise SystemExit(f"loadgen failed ({code})")
        rep = json.loads((out / "report.json").read_text())
        res, client = rep["results"], rep["client"]
        rows["loadgen"] = {"chunks": res["output_tokens_total"], "requests": res["requests_completed"],
                           "cpu_s": client["process_cpu_cores"] * res["duration_s"],
                           "wall_s": res["duration_s"],
                           "client_limited": client["client_limited"],
                           "issue_delay_p99_ms": res["issue_delay_ms"]["p99"]}
    for r in rows.values():
        r["us_per_chunk"] = r["cpu_s"] / max(r["chunks"], 1) * 1e6
        r["cores"] = r["cpu_s"] / r["wall_s"]
    ratio = rows["loadgen"]["us_per_chunk"] / rows["reference"]["us_per_chunk"]
    print(f"\n[cpu per chunk] Poisson {args.qps:g}/s for {args.duration:g} s, 128/{args.output_len} tokens, "
          "TTFT 50 ms, ITL 10 ms" + (" (server CPU 0, client CPU 1)" if client_cpu is not None else ""))
    print(f"{'client':<12}{'requests':>10}{'chunks':>10}{'cpu s':>9}{'cores':>8}{'us/chunk':>10}")
    for name, r in rows.items():
        print(f"{name:<12}{r['requests']:>10}{r['chunks']:>10}{r['cpu_s']:>9.2f}{r['cores']:>8.3f}"
              f"{r['us_per_chunk']:>10.2f}")
    lg = rows["loadgen"]
    print(f"loadgen / reference CPU per chunk: {ratio:.2f}x (target <= 1.5); loadgen client-limited: "
          f"{lg['client_limited']} (issue delay p99 {lg['issue_delay_p99_ms']:.2f} ms)")
    return {"rows": rows, "ratio": ratio}


def peak_rss(args: argparse.Namespace, tmp: Path, server_cpu: int | None, client_cpu: int | None
             ) -> dict[str, Any]:
    cfg = SimConfig(ttft_ms=5.0, itl_ms=2.0, max_seqs=4096)
    out = tmp / "rss"
    with SimProcess(cfg, cpu=server_cpu) as sim:
        t = time.perf_counter()
        cmd = _loadgen_cmd(sim.url, out, args.rss_qps, n=args.rss_requests, input_len=16,
                           output_len=args.rss_output_len)
        code, rss_run, _ = _wait_rss(cmd, client_cpu)
        wall = time.perf_counter() - t
    if code != 0:
        raise SystemExit(f"loadgen failed ({code})")
    rep = json.loads((out / "report.json").read_text())
    code, rss_build, _ = _wait_rss([sys.executable, "-m", "loadgen", "report", str(out / "requests.jsonl")],
                                   client_cpu)
    done = rep["results"]["requests_completed"]
    print(f"\n[peak RSS] {done:,} requests at {args.rss_qps:g}/s, 16/{args.rss_output_len} tokens "
          f"({wall:.0f} s)")
    print(f"loadgen run (measuring + reports): peak RSS {rss_run / 1024:.0f} MiB (target <= 150 MB = "
          f"{150e6 / 2**20:.0f} MiB)")
    print(f"loadgen report requests.jsonl (the report build alone): peak RSS {rss_build / 1024:.0f} MiB"
          + ("" if code == 0 else f" (exit {code})"))
    return {"requests": done, "run_peak_rss_mib": rss_run / 1024,
            "report_build_peak_rss_mib": rss_build / 1024, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url")
    parser.add_argument("--qps", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rss-requests", type=int, default=200_000)
    parser.add_argument("--rss-qps", type=float, default=1000.0)
    parser.add_argument("--rss-output-len", type=int, default=16)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.reference:
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        print(json.dumps(runner(_reference(args.url, args.qps, args.duration, input_len=args.input_len,
                                           output_len=args.output_len, seed=1))))
        return
    pin = len(os.sched_getaffinity(0)) >= 2
    server_cpu, client_cpu = (0, 1) if pin else (None, None)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="client-lean-") as tmp:
        if not args.skip_cpu:
            results["cpu_per_chunk"] = cpu_per_chunk(args, Path(tmp), server_cpu, client_cpu)
        if not args.skip_rss:
            results["peak_rss"] = peak_rss(args, Path(tmp), server_cpu, client_cpu)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

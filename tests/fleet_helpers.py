"""Processes for the remote-fleet tests: simulator replicas sharing one port (SO_REUSEPORT, the kernel
spreads connections) each with its own admin port for /metrics, and the DCGM-format exporter."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    url: str
    admin_url: str
    proc: subprocess.Popen


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()


@contextlib.contextmanager
def replicas(n: int, **cfg: object) -> Iterator[list[Replica]]:
    """``n`` simulator processes on one shared port, each also on its own admin port."""
    port = free_port()
    procs: list[subprocess.Popen] = []
    out: list[Replica] = []
    try:
        for _ in range(n):
            p = subprocess.Popen(
                [sys.executable, "-m", "loadgen.servers.sim", "--config-json", json.dumps(cfg),
                 "--port", str(port),
                 "--reuse-port", "--admin-port", "0", "--exit-on-stdin-eof"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
            procs.append(p)
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"sim replica did not start: {p.stderr.read() if p.stderr else ''}")
            info = json.loads(line)
            out.append(Replica(info["url"], info["admin_url"], p))
        yield out
    finally:
        _stop(procs)


@contextlib.contextmanager
def dcgm_exporter(power_w: list[float], port: int = 0) -> Iterator[tuple[str, float]]:
    """The synthetic exporter: (url, its start time on the monotonic clock)."""
    p = subprocess.Popen([sys.executable, "-m", "loadgen.servers.dcgm_exporter", "--port", str(port),
                          "--power-w", ",".join(map(str, power_w))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"dcgm exporter did not start: {p.stderr.read() if p.stderr else ''}")
        info = json.loads(line)
        yield info["url"], info["t0_monotonic"]
    finally:
        _stop([p])

"""The built-in simulated LLM server: OpenAI/vLLM streaming protocol, continuous-batching timing model,
fault injection. A real HTTP/1.1 server on 127.0.0.1 whose latencies are known in advance.

Public API::

    SimConfig, FaultSpec, parse_fault(text)             settings (loadgen.servers.sim.config)
    capacity_rps(cfg, I, O), service_time_s(cfg, I, O, b)   the analytical truth the server obeys
    async with SimServer(cfg, host, port) as base_url   in the caller's event loop
    serve(cfg, host, port, *, ready=None)               blocking; SIGINT/SIGTERM stop it
    with SimProcess(cfg) as sim: sim.url                a subprocess: ``python -m loadgen.servers.sim``
    python -m loadgen.servers.sim --config-json JSON [--host H] [--port P] [--cpu N] [--exit-on-stdin-eof]

A :class:`SimProcess` runs in its own session, so the SIGINT a terminal sends to its foreground process
group on Ctrl-C reaches only the program that started it (which drains its requests in flight against a
server that is still there), and it exits when that program dies in any way, ``kill -9`` included: its
stdin is a pipe from the parent, and end-of-file on it stops the server (``--exit-on-stdin-eof``).

Timing model (details and chunking rule in :mod:`loadgen.servers.sim.config`)::

    step(b)        = itl_ms · (1 + itl_slope · (b − 1))        b = sequences holding a slot
    first token    = admission + ttft_ms + prefill_ms_per_token · prompt_tokens
    next token     = previous token + step(b)
    service_time_s = (ttft_ms + prefill_ms_per_token · I + (O − 1) · step(b)) / 1000
    capacity_rps   = max_seqs / service_time_s(I, O, max_seqs)

At most ``max_seqs`` sequences hold a slot; the rest wait FIFO and are admitted when a slot frees (at the
due time of the freeing sequence's last token). Prompt tokens = whitespace-separated words (chat: words of
each message's content + ``chat_template_tokens`` per message); output tokens = ``max_tokens``.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``POST /v1/responses`` (typed events),
``POST /v1/embeddings``, ``/v1/rerank`` and ``/v1/score`` (a slot for the prefill only),
``GET /sim/bodies`` (with ``keep_bodies``), ``GET /v1/models``, ``GET /health``,
``GET /version``, ``POST /tokenize``, ``GET /metrics`` (vLLM names + ``loadgen_sim_emit_lateness_seconds``),
``GET /sim/stats`` (lateness percentiles, chunks, outcomes, faults, running/waiting),
``POST /sim/stats/reset`` (restarts the lateness window).

Emission is driven by a precise timer thread (see :mod:`loadgen.servers.sim.engine`); every chunk's lateness
(send − due) is recorded, so a benchmark can tell when the simulator itself was late.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from loadgen.errors import LaunchError
from loadgen.limits import ensure_descriptors
from loadgen.servers.sim.config import (
    FAULT_KINDS,
    FaultSpec,
    SimConfig,
    capacity_rps,
    parse_fault,
    service_time_s,
)
from loadgen.servers.sim.http import Conn
from loadgen.servers.sim.openai import SimApp

__all__ = ["FAULT_KINDS", "FaultSpec", "SimConfig", "SimLaunchError", "SimProcess", "SimServer",
           "capacity_rps", "main", "parse_fault", "serve", "service_time_s"]


class SimLaunchError(LaunchError, RuntimeError):
    """The simulated server subprocess did not come up (message carries its stderr tail)."""


class SimServer:
    """The simulated server inside the running event loop.

    ``async with SimServer(cfg) as base_url`` listens on ``host:port`` (0 = any free port) and yields
    ``"http://HOST:PORT"``; on exit it stops listening, drops open connections and stops the timer
    thread. It shares the caller's loop: for measurements where the client must not delay the server,
    use :class:`SimProcess`.
    """

    def __init__(self, cfg: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                 reuse_port: bool = False, admin_port: int | None = None) -> None:
        self.cfg = cfg or SimConfig()
        # A second listener on its own port serving the same app: with several processes sharing
        # ``port`` (reuse_port, the kernel spreads connections), each replica's /metrics stays addressable.
        self.admin_port = admin_port
        self.admin_url = ""
        self._admin: asyncio.AbstractServer | None = None
        self.host = host
        self.port = port
        self.reuse_port = reuse_port  # several processes on one port (SO_REUSEPORT), for more cores
        self.url = ""
        self._app: SimApp | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[Conn] = set()

    def _protocol(self) -> Conn:
        app = self._app
        assert app is not None

        def lost(conn: Conn) -> None:
            self._conns.discard(conn)
            app.on_lost(conn)

        conn = Conn(app.handle, lost)
        self._conns.add(conn)
        return conn

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._app = SimApp(self.cfg, loop)
        try:
            self._server = await loop.create_server(self._protocol, self.host, self.port, backlog=4096,
                                                    reuse_port=self.reuse_port or None)
        except BaseException:
            self._app.close()
            raise
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        if self.admin_port is not None:
            self._admin = await loop.create_server(self._protocol, self.host, self.admin_port)
            self.admin_url = f"http://{self.host}:{self._admin.sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            await self._admin.wait_closed()
            self._admin = None
        if self._server is not None:
            self._server.close()
            for conn in list(self._conns):
                conn.abort()
            await self._server.wait_closed()
            self._server = None
        if self._app is not None:
            self._app.close()

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def stats(self) -> dict[str, Any]:
        """Same JSON as ``GET /sim/stats``."""
        if self._app is None:
            raise RuntimeError("SimServer is not started")
        return self._app.stats()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(cfg: SimConfig, host: str = "127.0.0.1", port: int = 0, *,
          ready: Callable[[str], None] | None = None, reuse_port: bool = False,
          stop_on_eof: int | None = None, admin_port: int | None = None,
          admin_ready: Callable[[str], None] | None = None) -> None:
    """Run the simulated server until SIGINT or SIGTERM (main thread only) or, with ``stop_on_eof`` (a
    pipe's file descriptor), until end-of-file on it; ``ready(base_url)`` is called once it listens. Uses
    uvloop when importable."""

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if stop_on_eof is not None:
            fd = stop_on_eof

            def readable() -> None:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    data = b""
                if not data:  # every writer is gone: the parent exited, however it died
                    loop.remove_reader(fd)
                    stop.set()

            loop.add_reader(fd, readable)
        server = SimServer(cfg, host, port, reuse_port=reuse_port, admin_port=admin_port)
        async with server as url:
            if admin_ready is not None:
                admin_ready(server.admin_url)
            if ready is not None:
                ready(url)
            await stop.wait()

    # The timer thread must get the GIL promptly when it wakes (default switch interval is 5 ms).
    sys.setswitchinterval(0.0002)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_main())


def main(argv: list[str] | None = None) -> int:
    """``python -m loadgen.servers.sim``: print ``{"url", "pid"}`` as one JSON line once listening."""
    parser = argparse.ArgumentParser(prog="python -m loadgen.servers.sim", description=__doc__.split("\n")[0])
    parser.add_argument("--config-json", default="{}", help="JSON of SimConfig.to_dict()")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (os.sched_setaffinity)")
    parser.add_argument("--reuse-port", action="store_true", help="share the port with other processes")
    parser.add_argument("--admin-port", type=int, default=None,
                        help="also listen here (0: any free port), e.g. one replica's /metrics beside a "
                             "shared --reuse-port; printed as admin_url")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="stop when stdin reaches end-of-file (stdin: a pipe from the parent process)")
    args = parser.parse_args(argv)
    try:
        cfg = SimConfig.from_dict(json.loads(args.config_json))
    except (ValueError, TypeError) as exc:
        print(f"loadgen.servers.sim: bad --config-json: {exc}", file=sys.stderr)
        return 2
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    # One descriptor per client connection: a soft limit of 1,024 (many distributions' default) would
    # refuse connections beyond it, which the client would report as the server's failures.
    ensure_descriptors(None)

    admin: list[str] = []

    def ready(url: str) -> None:
        line: dict[str, Any] = {"url": url, "pid": os.getpid()}
        if admin:
            line["admin_url"] = admin[0]
        print(json.dumps(line), flush=True)

    serve(cfg, args.host, args.port, ready=ready, reuse_port=args.reuse_port,
          stop_on_eof=sys.stdin.fileno() if args.exit_on_stdin_eof else None, admin_port=args.admin_port,
          admin_ready=admin.append)
    return 0


class SimProcess:
    """Run the simulated server in a subprocess (``sys.executable -m loadgen.servers.sim``).

    ``with SimProcess(cfg) as sim: sim.url``. Entering waits up to ``start_timeout`` s for the ready line
    and raises :class:`SimLaunchError` (a ``RuntimeError``) with the stderr tail if it does not come.
    Leaving always sends SIGTERM, waits 5 s, then SIGKILL.

    The server leads a new session (out of reach of the terminal's Ctrl-C, which the parent handles) and
    holds the read end of a pipe whose write end only this process has (``O_CLOEXEC``: no other child
    inherits it); when this process dies, even by SIGKILL, the server sees end-of-file and stops.
    """

    def __init__(self, cfg: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                 cpu: int | None = None, start_timeout: float = 15.0, *, reuse_port: bool = False) -> None:
        self.cfg = cfg or SimConfig()
        self.host, self.port, self.cpu, self.start_timeout = host, port, cpu, start_timeout
        self.reuse_port = reuse_port
        self.url = ""
        self.pid = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None

    def __enter__(self) -> SimProcess:
        cmd = [sys.executable, "-m", "loadgen.servers.sim", "--config-json", json.dumps(self.cfg.to_dict()),
               "--host", self.host, "--port", str(self.port)]
        if self.cpu is not None:
            cmd += ["--cpu", str(self.cpu)]
        if self.reuse_port:
            cmd += ["--reuse-port"]
        cmd += ["--exit-on-stdin-eof"]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env, start_new_session=True)
        try:
            line = self._read_ready_line()
            info = json.loads(line)
            self.url, self.pid = info["url"], info["pid"]
        except BaseException as exc:
            self._stop()
            if isinstance(exc, Exception) and not isinstance(exc, SimLaunchError):
                raise SimLaunchError(f"simulated server sent a bad ready line: {exc}") from exc
            raise
        return self

    def _read_ready_line(self) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SimLaunchError(f"simulated server not ready after {self.start_timeout:.0f} s; "
                                         f"stderr tail:\n{self._stderr_tail()}")
                if sel.select(timeout=min(left, 0.5)):
                    data = os.read(self.proc.stdout.fileno(), 4096)
                    if not data:
                        self.proc.wait(timeout=2)
                        raise SimLaunchError(f"simulated server exited with code {self.proc.returncode} "
                                             f"before it was ready; stderr tail:\n{self._stderr_tail()}")
                    buf += data
        return buf.split(b"\n", 1)[0]

    def _stderr_tail(self, limit: int = 4000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-limit:]

    def _stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()

    def stderr_tail(self) -> str:
        return self._stderr_tail()

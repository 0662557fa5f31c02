"""Start a real vLLM OpenAI-compatible server, wait until it is healthy, and tear it down completely.

Lifecycle. The server runs in a new session (``start_new_session=True``), so a Ctrl-C in the terminal
reaches loadgen only, and so the whole tree (the API server and its EngineCore child) is one process
group. Entry polls ``GET /health`` until it answers 200, reporting progress about every 5 s through the
``progress`` callback; if the process exits first, or ``startup_timeout_s`` passes, the group is killed
and :class:`loadgen.errors.LaunchError` carries the command line and the last 30 log lines. Exit (normal,
exception, KeyboardInterrupt) tears the group down (:mod:`loadgen.servers.proc`: SIGTERM to the group
and to every descendant seen at that moment, up to ``term_timeout_s``, then SIGKILL). When the
launching process dies without that teardown (``kill -9``, the OOM killer, a terminal's hang-up), a
watcher in its own session (:class:`loadgen.servers.guard.GroupGuard`) sees its pipe close and does the
same to the group.

Zombies. On Linux the launching process makes itself a child subreaper (set once, at the first
launch), so orphans of the server tree are reaped by teardown (:func:`loadgen.servers.proc.alive`).
After exit, ``os.killpg(pgid, 0)`` raises ProcessLookupError. An interpreter exit that skips
``__exit__`` still kills the group (``atexit``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from loadgen.errors import LaunchError
from loadgen.servers.guard import GroupGuard
from loadgen.servers.proc import (
    alive,
    become_subreaper,
    descendants,
    free_port,
    kill_hard,
    port_busy,
    signal_all,
    wait_gone,
)
from loadgen.servers.vllm.probe import get_json, health_ok, local_gpu_names
from loadgen.servers.vllm.spec import VllmLaunchSpec

LOG_TAIL_LINES = 30
_PROGRESS_EVERY_S = 5.0
_POLL_S = 0.5


class VllmLauncher:
    """Context manager that starts vLLM from a :class:`VllmLaunchSpec` and stops its whole process group.

    ``log_path`` receives the server's stdout and stderr (appended: relaunches keep earlier logs, each
    after a ``=== loadgen: launch ...`` header); None writes to a temporary file. ``progress`` receives
    human-readable lines during startup (every ``progress_every_s``) and teardown (None: silent).

    Entry blocks until ``GET /health`` is 200 and raises :class:`LaunchError` otherwise (nothing is left
    running). Entry and exit are synchronous; ``async with`` runs them in a worker thread.
    """

    def __init__(
        self,
        spec: VllmLaunchSpec,
        *,
        log_path: Path | None = None,
        progress: Callable[[str], None] | None = None,
        progress_every_s: float = _PROGRESS_EVERY_S,
    ) -> None:
        self.spec = spec
        self.log_path = log_path
        self.progress_every_s = progress_every_s
        self._progress = progress or (lambda _line: None)
        self._proc: subprocess.Popen[bytes] | None = None
        self._guard: GroupGuard | None = None
        self._last_pid: int | None = None
        self._log: BinaryIO | None = None
        self._log_start = 0
        self._abort = threading.Event()
        self.command_line: list[str] = []
        self.base_url = ""
        self.port: int | None = None
        self.startup_s: float | None = None
        self.teardown_s: float | None = None
        #: Set when teardown had to SIGKILL, or found processes it could not kill.
        self.teardown_note: str | None = None

    # -- public surface -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The server's pid (after exit: the last one, for reports)."""
        if self._last_pid is None:
            raise RuntimeError("VllmLauncher: never started")
        return self._last_pid

    @property
    def pgid(self) -> int:
        """The process group of the server tree (equal to :attr:`pid`: it leads a new session)."""
        return self.pid

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last ``lines`` lines this launch wrote to the log."""
        path = self._log_file()
        try:
            with path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = max(self._log_start, size - 256 * 1024)
                f.seek(start)
                data = f.read()
        except OSError:
            return []
        text = data.decode("utf-8", "replace").replace("\r", "\n")
        return [ln for ln in text.splitlines() if ln.strip()][-lines:]

    def identity(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """What was launched, for the report: server version and models, command, local GPU model.

        ``launched_model`` is the spec's model (a path or hub name); the name requests must use is in
        ``models`` (``served_model_name`` when set). There is deliberately no ``model`` key: the runner
        merges this dict over its probe result, whose ``model`` is the served name the run sends.
        Missing pieces are None (never raises for an unreachable endpoint or a machine without a GPU).
        """
        models = get_json(self.base_url + "/v1/models", timeout_s) if self.base_url else None
        model_ids = None
        if isinstance(models, dict) and isinstance(models.get("data"), list):
            model_ids = [m.get("id") for m in models["data"] if isinstance(m, dict)]
        version = get_json(self.base_url + "/version", timeout_s) if self.base_url else None
        gpus = local_gpu_names()
        return {
            "server": "vllm",
            "base_url": self.base_url or None,
            "version": version.get("version") if isinstance(version, dict) else None,
            "models": model_ids,
            "launched_model": self.spec.model,
            "served_model_name": self.spec.served_model_name,
            "command_line": list(self.command_line),
            "command": list(self.spec.command),
            "args": list(self.spec.args),
            "gpu": gpus[0] if gpus else None,
            "gpus": gpus,
            "startup_s": self.startup_s,
        }

    # -- context manager --------------------------------------------------------------------------------

    def __enter__(self) -> VllmLauncher:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> VllmLauncher:
        fut = asyncio.ensure_future(asyncio.to_thread(self.start))
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The thread cannot be cancelled; tell it to give up, and wait for its teardown.
            self._abort.set()
            with contextlib.suppress(Exception):
                await fut
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Shielded: a cancelled caller must not leave the server half torn down; the thread finishes.
        await asyncio.shield(asyncio.to_thread(self.stop))

    # -- start ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Launch and wait for ``/health`` == 200; raises :class:`LaunchError` (nothing left running)."""
        if self._proc is not None:
            raise RuntimeError("VllmLauncher: already running; exit it before entering again")
        self._abort.clear()
        self.startup_s = self.teardown_s = None
        self.teardown_note = None
        self.port = self.spec.port if self.spec.port is not None else free_port(self.spec.host)
        self.command_line = self.spec.command_line(self.port)
        host = self.spec.host if ":" not in self.spec.host else f"[{self.spec.host}]"
        self.base_url = f"http://{host}:{self.port}"
        if port_busy(self.spec.host, self.port):
            # Otherwise another server's /health could pass for ours.
            raise LaunchError(
                f"cannot launch vLLM on {self.spec.host}:{self.port}: something already listens there "
                f"(choose another port, or port=None for a free one)\ncommand: {self.command_text}"
            )

        path = self._log_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log = path.open("ab")
        self._log_start = self._log.seek(0, os.SEEK_END)
        header = f"=== loadgen: launch {time.strftime('%Y-%m-%dT%H:%M:%S')}: {self.command_text} ===\n"
        self._log.write(header.encode())
        self._log.flush()
        self._log_start += len(header.encode())

        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env}
        become_subreaper()
        t0 = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self.command_line,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            self._close_log()
            raise LaunchError(f"could not start vLLM: {e}\ncommand: {self.command_text}") from e
        self._last_pid = self._proc.pid
        atexit.register(self._atexit_kill)
        try:
            self._guard = GroupGuard.start(self._proc.pid, self.spec.term_timeout_s)
            self._wait_healthy(t0)
        except BaseException:
            # LaunchError, KeyboardInterrupt, anything: never leave a half-started server behind.
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        self._progress(f"vLLM ready at {self.base_url} after {self.startup_s:.0f} s (pid {self.pid})")

    @property
    def command_text(self) -> str:
        return shlex.join(self.command_line)

    def _wait_healthy(self, t0: float) -> None:
        assert self._proc is not None
        deadline = t0 + self.spec.startup_timeout_s
        next_report = t0 + self.progress_every_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self._launch_error(f"vLLM exited with code {code} before /health answered 200")
            if health_ok(self.base_url + "/health"):
                return
            now = time.monotonic()
            if self._abort.is_set():
                raise self._launch_error("vLLM startup was cancelled")
            if now >= deadline:
                raise self._launch_error(
                    f"vLLM did not answer /health with 200 within {self.spec.startup_timeout_s:g} s"
                )
            if now >= next_report:
                tail = self.log_tail(1)
                last = tail[-1][:200] if tail else "(nothing yet)"
                self._progress(f"waiting for vLLM /health: {now - t0:.0f} s, last log line: {last}")
                next_report += self.progress_every_s
            time.sleep(_POLL_S)

    def _launch_error(self, what: str) -> LaunchError:
        tail = self.log_tail()
        return LaunchError(
            f"{what}.\ncommand: {self.command_text}\nlog: {self._log_file()}\n"
            f"last {len(tail)} log lines:\n" + "\n".join(f"  | {ln}" for ln in tail)
        )

    # -- stop -------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM the group (and stray descendants), wait ``term_timeout_s``, SIGKILL what is left.

        Idempotent. A KeyboardInterrupt during the wait skips straight to SIGKILL and is re-raised.
        """
        proc = self._proc
        if proc is None:
            return
        t0 = time.monotonic()
        pgid = proc.pid
        # Snapshot the tree before signalling: once the leader dies its children are re-parented
        # and can no longer be found through it.
        strays = descendants(proc.pid)
        try:
            signal_all(pgid, strays, signal.SIGTERM)
            wait_gone(proc, pgid, strays, self.spec.term_timeout_s)
        except KeyboardInterrupt:
            self._kill_hard(proc, pgid, strays)
            raise
        finally:
            if alive(proc, pgid, strays):
                self._kill_hard(proc, pgid, strays)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
            if self._guard is not None:
                self._guard.dismiss()
                self._guard = None
            self._proc = None
            self._close_log()
            with contextlib.suppress(Exception):
                atexit.unregister(self._atexit_kill)
            self.teardown_s = time.monotonic() - t0
        self._progress(f"vLLM stopped in {self.teardown_s:.1f} s" + (f" ({self.teardown_note})"
                                                                      if self.teardown_note else ""))

    def _kill_hard(self, proc: subprocess.Popen[bytes], pgid: int, strays: dict[int, int]) -> None:
        self.teardown_note = kill_hard(proc, pgid, strays)

    def _atexit_kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)

    def _log_file(self) -> Path:
        if self.log_path is None:
            self.log_path = Path(_tempdir()) / "vllm-server.log"
        return self.log_path

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


_TEMPDIR: str | None = None


def _tempdir() -> str:
    global _TEMPDIR  # noqa: PLW0603 - one lazily created directory per process for default log files
    if _TEMPDIR is None:
        import tempfile

        _TEMPDIR = tempfile.mkdtemp(prefix="loadgen-vllm-")
    return _TEMPDIR

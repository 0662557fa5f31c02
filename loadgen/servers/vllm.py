"""Start a real vLLM OpenAI-compatible server, wait until it is healthy, and tear it down completely.

Public API::

    spec = VllmLaunchSpec(model, args=(...), command=("vllm", "serve"), env={...}, port=None, ...)
    spec.with_args("--enforce-eager")            a new spec with extra flags appended
    spec.with_flag("--max-num-seqs", 64)         a new spec with that flag set (earlier values removed)
    with VllmLauncher(spec, log_path=OUT / "server.log", progress=print) as vllm:
        vllm.base_url, vllm.pid, vllm.pgid, vllm.command_line, vllm.startup_s, vllm.identity()
    async with VllmLauncher(spec) as vllm: ...   the same, the blocking parts run in a worker thread

A launcher can be entered again after it exited (a sweep relaunches with other flags by building a new
spec, or reuses one launcher for the same spec); each entry starts a fresh process on a fresh port when
``port`` is None.

Command line (a list, never a shell)::

    [*command, MODEL, ...]           when the command's last word is "serve" (``vllm serve``)
    [*command, "--model", MODEL, ...] otherwise (``python -m vllm.entrypoints.openai.api_server``,
                                      a container image whose entrypoint is that module, ...)
    ... --host HOST --port PORT [--served-model-name NAME] *args

A container prefix (``docker run --rm --network host IMAGE``) gets the ``--model`` form unless it ends
with ``serve``. The launcher signals the *local* process group it started: with docker that is the
docker client, which forwards SIGTERM to the container (``--sig-proxy`` is on by default for attached
runs); add ``--init --rm`` so the container does not outlive it.

Lifecycle. The server runs in a new session (``start_new_session=True``), so a Ctrl-C in the terminal
reaches loadgen only, and so the whole tree (the API server and its EngineCore child) is one process
group. Entry polls ``GET /health`` until it answers 200, reporting progress about every 5 s through the
``progress`` callback; if the process exits first, or ``startup_timeout_s`` passes, the group is killed
and :class:`loadgen.errors.LaunchError` carries the command line and the last 30 log lines. Exit (normal,
exception, KeyboardInterrupt) sends SIGTERM to the group and to every descendant seen at that moment
(one that called setsid would have left the group), waits up to ``term_timeout_s`` for all of them to
be gone, then SIGKILLs what is left. "Gone" means no such process, or a zombie. When the launching
process dies without that teardown (``kill -9``, the OOM killer, a terminal's hang-up), a watcher in
its own session (:class:`loadgen.servers.guard.GroupGuard`) sees its pipe close and does the same to the
group.

Zombies. vLLM's children outlive the API server by a moment and are re-parented; on machines whose
PID 1 does not reap (containers, micro-VMs) they would stay in the process table, in the group, for
ever. So on Linux the launching process makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``, set
once, at the first launch): orphans of the server tree are re-parented to it, and teardown reaps exactly
those of the server's group (``waitpid`` by pid, so ``subprocess``/asyncio child watchers are not
disturbed). After exit, ``os.killpg(pgid, 0)`` raises ProcessLookupError. An interpreter exit that skips
``__exit__`` still kills the group (``atexit``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from loadgen.errors import ConfigError, LaunchError
from loadgen.servers.guard import GroupGuard

__all__ = ["LOG_TAIL_LINES", "VllmLaunchSpec", "VllmLauncher", "local_gpu_names"]

LOG_TAIL_LINES = 30
_PROGRESS_EVERY_S = 5.0
_POLL_S = 0.5
# Flags the launcher owns: passing them in ``args`` would make two sources of truth for the URL/model.
_OWNED_FLAGS = ("--host", "--port", "--model", "--served-model-name")


@dataclass(frozen=True)
class VllmLaunchSpec:
    """What to start. Immutable: derive variants with :meth:`with_args`, :meth:`with_flag` or
    :func:`dataclasses.replace`.

    ``env`` is added on top of the current environment. ``port=None`` picks a free port at each
    launch. ``startup_timeout_s`` bounds the wait for ``/health`` (first starts compile and warm up;
    about 80 s for a tiny model on 2 CPU cores).
    """

    model: str
    args: tuple[str, ...] = ()
    command: tuple[str, ...] = ("vllm", "serve")
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = None
    startup_timeout_s: float = 600.0
    served_model_name: str | None = None
    term_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if not self.command:
            raise ConfigError("vLLM launch: `command` is empty; use e.g. ('vllm', 'serve')")
        object.__setattr__(self, "args", tuple(str(a) for a in self.args))
        for arg in self.args:
            name = arg.split("=", 1)[0]
            if name in _OWNED_FLAGS:
                raise ConfigError(
                    f"vLLM launch: {name} is set by loadgen from the launch spec "
                    f"(model, host, port, served_model_name); remove it from the extra arguments"
                )

    @property
    def model_position(self) -> str:
        """``"positional"`` for ``... serve MODEL``, ``"--model"`` for every other command prefix."""
        return "positional" if self.command[-1] == "serve" else "--model"

    def command_line(self, port: int) -> list[str]:
        """The argument list for a launch on ``port``."""
        cmd = list(self.command)
        cmd += [self.model] if self.model_position == "positional" else ["--model", self.model]
        cmd += ["--host", self.host, "--port", str(port)]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        return cmd + list(self.args)

    def with_args(self, *args: str) -> VllmLaunchSpec:
        """A new spec with ``args`` appended to the extra flags."""
        return dataclasses.replace(self, args=(*self.args, *args))

    def with_flag(self, name: str, value: object | None = None) -> VllmLaunchSpec:
        """A new spec where flag ``name`` appears once: earlier ``name V`` / ``name=V`` are removed, then
        ``name value`` (or the bare switch when ``value`` is None) is appended. Assumes every earlier
        occurrence of ``name`` took one value unless written ``name=V`` or followed by another flag."""
        kept: list[str] = []
        args = list(self.args)
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == name:
                has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
                i += 2 if has_value else 1
                continue
            if not arg.startswith(name + "="):
                kept.append(arg)
            i += 1
        kept += [name] if value is None else [name, str(value)]
        return dataclasses.replace(self, args=tuple(kept))


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
        models = _get_json(self.base_url + "/v1/models", timeout_s) if self.base_url else None
        model_ids = None
        if isinstance(models, dict) and isinstance(models.get("data"), list):
            model_ids = [m.get("id") for m in models["data"] if isinstance(m, dict)]
        version = _get_json(self.base_url + "/version", timeout_s) if self.base_url else None
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
        self.port = self.spec.port if self.spec.port is not None else _free_port(self.spec.host)
        self.command_line = self.spec.command_line(self.port)
        host = self.spec.host if ":" not in self.spec.host else f"[{self.spec.host}]"
        self.base_url = f"http://{host}:{self.port}"
        if _port_busy(self.spec.host, self.port):
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
        _become_subreaper()
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
            if _health_ok(self.base_url + "/health"):
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
        strays = _descendants(proc.pid)
        try:
            self._signal_all(pgid, strays, signal.SIGTERM)
            self._wait_gone(proc, pgid, strays, self.spec.term_timeout_s)
        except KeyboardInterrupt:
            self._kill_hard(proc, pgid, strays)
            raise
        finally:
            if _alive(proc, pgid, strays):
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
        self._signal_all(pgid, strays, signal.SIGKILL)
        self._wait_gone(proc, pgid, strays, 5.0)
        left = _alive(proc, pgid, strays)
        self.teardown_note = "SIGKILLed after SIGTERM timeout" + (
            f"; still alive: {sorted(left)}" if left else ""
        )

    @staticmethod
    def _signal_all(pgid: int, strays: dict[int, int], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        for pid, start in strays.items():
            if _start_time(pid) == start:  # same process, not a recycled pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)

    @staticmethod
    def _wait_gone(proc: subprocess.Popen[bytes], pgid: int, strays: dict[int, int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while _alive(proc, pgid, strays) and time.monotonic() < deadline:
            time.sleep(0.1)

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


# -- processes (Linux /proc; elsewhere only the group is checked) ---------------------------------------


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start time in clock ticks) of ``pid``, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name in parentheses may contain spaces
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _start_time(pid: int) -> int | None:
    st = _stat(pid)
    return st[3] if st is not None and st[0] != "Z" else None


def _table() -> dict[int, tuple[str, int, int, int]]:
    table = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            table[int(entry)] = st
    return table


def _descendants(root: int) -> dict[int, int]:
    """Live descendants of ``root`` (and root) → start time."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (_state, ppid, _pgid, _start) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in table and table[pid][0] != "Z":
            found[pid] = table[pid][3]
        todo += children.get(pid, [])
    return found


def _alive(proc: subprocess.Popen[bytes], pgid: int, strays: dict[int, int]) -> set[int]:
    """Pids of the group or the snapshot that still run, or that are zombies we can still reap."""
    proc.poll()  # reap the leader if it exited, so it does not linger as our zombie
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return set()
        return {pgid}
    me = os.getpid()
    left = set()
    for pid, (state, ppid, group, _start) in _table().items():
        if group != pgid:
            continue
        if state == "Z" and ppid == me:
            # Re-parented to us (subreaper): reap it by pid; it is gone after this.
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # someone else reaped it first
                continue
            left.add(pid)  # looked at again on the next poll
        elif state != "Z":
            left.add(pid)
    left |= {pid for pid, start in strays.items() if _start_time(pid) == start}
    return left


_SUBREAPER_DONE = False


def _become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (Linux; elsewhere a no-op)."""
    global _SUBREAPER_DONE  # noqa: PLW0603 - a process-wide setting, applied once
    if _SUBREAPER_DONE or not os.path.isdir("/proc"):
        return
    _SUBREAPER_DONE = True
    import ctypes
    import ctypes.util

    pr_set_child_subreaper = 36
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)


# -- small helpers --------------------------------------------------------------------------------------

_TEMPDIR: str | None = None


def _tempdir() -> str:
    global _TEMPDIR  # noqa: PLW0603 - one lazily created directory per process for default log files
    if _TEMPDIR is None:
        import tempfile

        _TEMPDIR = tempfile.mkdtemp(prefix="loadgen-vllm-")
    return _TEMPDIR


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_busy(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


# Local URLs only: a proxy from the environment must never sit between loadgen and its own server.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _health_ok(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _get_json(url: str, timeout_s: float) -> Any:
    try:
        with _OPENER.open(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def local_gpu_names() -> list[str]:
    """Names of the local NVIDIA GPUs (NVML, else ``nvidia-smi``); empty when there are none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            names = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                names.append(name.decode() if isinstance(name, bytes) else str(name))
            return names
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML raises its own error tree, or ImportError: "no GPU" either way
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln.strip() for ln in out.splitlines() if ln.strip()]

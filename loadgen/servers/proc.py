"""Processes loadgen starts and must stop completely: process-group teardown, the child subreaper, ports.

A server loadgen starts leads a new session, so its whole tree is one process group. Teardown sends
SIGTERM to the group and to every descendant seen at that moment (one that called setsid would have left
the group), waits for all of them to be gone, then SIGKILLs what is left. "Gone" means no such process,
or a zombie. Linux ``/proc`` is read to find them; elsewhere only the group is checked.

Zombies: on machines whose PID 1 does not reap (containers, micro-VMs) the re-parented children of a
server would stay in the process table, in the group, for ever. :func:`become_subreaper` makes the
launching process their reaper (``PR_SET_CHILD_SUBREAPER``), and :func:`alive` reaps exactly those of
the server's group (``waitpid`` by pid, so ``subprocess``/asyncio child watchers are not disturbed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start time in clock ticks) of ``pid``, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name in parentheses may contain spaces
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def start_time(pid: int) -> int | None:
    st = _stat(pid)
    return st[3] if st is not None and st[0] != "Z" else None


def _table() -> dict[int, tuple[str, int, int, int]]:
    table = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            table[int(entry)] = st
    return table


def descendants(root: int) -> dict[int, int]:
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


def alive(proc: subprocess.Popen[bytes], pgid: int, strays: dict[int, int]) -> set[int]:
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
    left |= {pid for pid, start in strays.items() if start_time(pid) == start}
    return left


_SUBREAPER_DONE = False


def become_subreaper() -> None:
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


def signal_all(pgid: int, strays: dict[int, int], sig: signal.Signals) -> None:
    """Send ``sig`` to the group and to each stray (pid → start time) that is still the same process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid, start in strays.items():
        if start_time(pid) == start:  # same process, not a recycled pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def wait_gone(proc: subprocess.Popen[bytes], pgid: int, strays: dict[int, int], timeout: float) -> None:
    """Poll (every 0.1 s) until nothing of the group or the strays runs, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while alive(proc, pgid, strays) and time.monotonic() < deadline:
        time.sleep(0.1)


def kill_hard(proc: subprocess.Popen[bytes], pgid: int, strays: dict[int, int]) -> str:
    """SIGKILL the group and the strays, wait up to 5 s; returns a note for the teardown report."""
    signal_all(pgid, strays, signal.SIGKILL)
    wait_gone(proc, pgid, strays, 5.0)
    left = alive(proc, pgid, strays)
    return "SIGKILLed after SIGTERM timeout" + (f"; still alive: {sorted(left)}" if left else "")


# -- ports ----------------------------------------------------------------------------------------------


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_busy(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0

"""Kill a process group when the process that started it dies, however it dies (``kill -9`` included).

Public API::

    guard = GroupGuard.start(pgid, term_timeout_s=10)   a watcher process in its own session
    guard.dismiss()                                     the owner tore the group down itself: it exits

Why: a server loadgen launches leads its own session, so that the SIGINT a terminal sends to its
foreground process group on Ctrl-C reaches loadgen only (which drains the requests in flight against a
server that is still there). Out of the terminal's group, nothing stops it when loadgen dies without
running its teardown (SIGKILL, the OOM killer, a hang-up of the terminal).

How: the watcher (``python -I -c SOURCE PGID TIMEOUT``) blocks reading a pipe whose write end only the
owner holds (``O_CLOEXEC``: no other child inherits it). End-of-file with no word first means the owner
is gone: SIGTERM to the group, up to TIMEOUT s for every member to exit, then SIGKILL. The watcher leads
its own session and ignores SIGINT and SIGHUP, so neither a Ctrl-C nor a hang-up (both sent to the
owner's process group) ends it before the owner's death does. A member that called ``setsid`` has left
the group and is out of its reach (the owner's own teardown snapshots the tree for those).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

_SOURCE = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
pgid, grace = int(sys.argv[1]), float(sys.argv[2])
if sys.stdin.buffer.read():  # blocks until end-of-file; a word first: dismissed
    sys.exit(0)

def alive():
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # zombies answer signal 0 too: only members still running count
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
        return False
    except OSError:  # no /proc
        return True

for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        break
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not alive():
        break
"""


class GroupGuard:
    """A watcher that kills process group ``pgid`` once this process is gone (see the module doc)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, pgid: int, term_timeout_s: float = 10.0) -> GroupGuard:
        """Raises OSError when the watcher cannot be started."""
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _SOURCE, str(pgid), f"{term_timeout_s:g}"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def dismiss(self) -> None:
        """The owner stopped the group itself: the watcher exits without signalling anything."""
        stdin = self.proc.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.write(b"dismissed")
            with contextlib.suppress(OSError):
                stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

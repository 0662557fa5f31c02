"""RunControl: how a signal stops a run (the first interrupt drains, the second aborts)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadgen.engine.issuer import Issuer, IssueStats
from loadgen.engine.workers import WorkerPool

DRAIN_GRACE_S = 30.0


class SessionLanes:
    """What an interrupt stops in a session run, offered to :class:`RunControl` as an issuer is:
    ``stop`` ends every session before its next turn, ``abort`` also cancels the turns in flight
    (their records say ``cancelled``). The session loops ask :attr:`stopping` before each turn and
    send through :meth:`send`."""

    def __init__(self, stats: IssueStats) -> None:
        self.stats = stats
        self.aborted = False
        self._stopped = False
        self._tasks: set[asyncio.Future[Any]] = set()

    def stopping(self) -> bool:
        return self._stopped

    def stop(self, reason: str) -> None:
        if not self._stopped:
            self._stopped = True
            self.stats.stopped_early = reason

    def abort(self, reason: str) -> None:
        self.stop(reason)
        self.aborted = True
        for task in list(self._tasks):
            task.cancel()

    async def send(self, request: Any) -> Any:
        """Await ``request`` (a coroutine of one turn) as a task that :meth:`abort` may cancel; after an
        abort its cancellation ends the turn (the record holds it) instead of the run."""
        task = asyncio.ensure_future(request)
        self._tasks.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if not (self.aborted and task.cancelled()):
                raise
            return None
        finally:
            self._tasks.discard(task)


@dataclass
class RunControl:
    """Lets a signal handler stop a run: the first interrupt drains, the second aborts.

    Before the clock starts (the target starting, prompts, warm-up, workers starting) an interrupt
    cancels the run: nothing was measured. Afterwards the first one stops issuing and lets the requests
    in flight finish, for at most ``grace_s``; the second cancels them (recorded as ``cancelled``). Each
    step is announced through ``log`` (the CLI's stderr), and the report's reason says what happened.
    """

    grace_s: float = DRAIN_GRACE_S
    interrupts: int = 0
    signal_name: str | None = None
    log: Callable[[str], None] | None = None
    _issuer: Issuer | WorkerPool | SessionLanes | None = field(default=None, repr=False)
    _main: asyncio.Task[Any] | None = field(default=None, repr=False)
    _reason: str | None = field(default=None, repr=False)

    def attach(self, main: asyncio.Task[Any] | None, log: Callable[[str], None] | None) -> None:
        """The run's task (cancelled by an interrupt before measuring), and ``log`` unless one is set."""
        self._main = main
        self.log = self.log or log

    def measuring(self, issuer: Issuer | WorkerPool | SessionLanes | None) -> None:
        """What issues the measured load from now on (None: it has ended). While an issuer is set, an
        interrupt drains it instead of cancelling the run (a worker pool: once its clock started)."""
        self._issuer = issuer

    def interrupt(self, signal_name: str = "SIGINT") -> None:
        self.interrupts += 1
        self.signal_name = self.signal_name or signal_name
        issuer = self._issuer
        if issuer is None or (isinstance(issuer, WorkerPool) and not issuer.measuring):
            # Not measuring yet: nothing to keep, stop the preparation.
            if self._main is not None:
                self._main.cancel()
            return
        again = "Ctrl-C" if signal_name == "SIGINT" else signal_name
        if self.interrupts == 1:
            self._reason = f"interrupted by {signal_name}: stopped issuing; the requests in flight finished"
            issuer.stop(self._reason)
            self._tell(f"{signal_name}: stopped issuing; waiting for the requests in flight to finish (at "
                       f"most {self.grace_s:g} s). {again} again cancels them.")
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_later(self.grace_s, self._grace_ended, issuer, signal_name)
        else:
            self._abort(issuer, f"interrupted by {signal_name} twice: stopped issuing, then cancelled the "
                                "requests in flight")
            self._tell(f"{signal_name} again: cancelling the requests in flight")

    def _grace_ended(self, issuer: Issuer | WorkerPool | SessionLanes, signal_name: str) -> None:
        if self._issuer is not issuer:  # that run is over
            return
        self._abort(issuer, f"interrupted by {signal_name}: stopped issuing; the requests still in flight "
                            f"after {self.grace_s:g} s were cancelled")
        self._tell(f"the requests in flight did not finish within {self.grace_s:g} s: cancelling them")

    def _abort(self, issuer: Issuer | WorkerPool | SessionLanes, reason: str) -> None:
        issuer.abort(reason)
        if issuer.stats.stopped_early == self._reason:  # replace our own earlier reason, nothing else
            issuer.stats.stopped_early = self._reason = reason

    def _tell(self, message: str) -> None:
        if self.log is None:
            return
        if sys.stderr.isatty():
            sys.stderr.write("\n")  # off the progress line (and the terminal's "^C")
        self.log(message)

    def stop(self, reason: str) -> None:
        if self._issuer is not None:
            self._issuer.stop(reason)

"""The live progress line: completed / in flight / errors / output tokens per second.

On a terminal the line is redrawn in place once a second; otherwise (CI logs, pipes) a plain line is
printed every ``plain_every_s`` seconds so logs stay readable.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar, cast

from loadgen.engine.issuer import IssueStats

T = TypeVar("T")


class Progress:
    def __init__(
        self,
        stats: IssueStats,
        planned: int | None,
        duration_s: float,
        stream: TextIO | None = None,
        *,
        plain_every_s: float = 5.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``stream`` defaults to stderr; ``clock`` (seconds, monotonic) is injectable for tests."""
        self._stats = stats
        self._planned = planned
        self._duration = duration_s
        self._out = stream or sys.stderr
        self._tty = self._out.isatty()
        self._every = 1.0 if self._tty else plain_every_s
        self._clock = clock
        self._t0 = clock()
        self._last_tokens = 0
        self._last_t = self._t0

    def line(self) -> str:
        """The current line; the token rate is over the time since the previous line."""
        st = self._stats
        now = self._clock()
        dt = max(now - self._last_t, 1e-9)
        rate = (st.output_tokens - self._last_tokens) / dt
        self._last_tokens, self._last_t = st.output_tokens, now
        elapsed = now - self._t0
        total = f"/{self._planned}" if self._planned else ""
        return (
            f"[{elapsed:6.1f}s] completed {st.completed}{total} | in flight {st.in_flight} | "
            f"errors {st.failed} | {rate:,.0f} output tok/s"
        )

    async def run(self) -> None:
        """Print until cancelled (the runner cancels it when the run ends)."""
        try:
            while True:
                await asyncio.sleep(self._every)
                self._print(self.line())
        finally:
            if self._tty:
                self._out.write("\n")
                self._out.flush()

    def _print(self, text: str) -> None:
        if self._tty:
            self._out.write("\r\x1b[2K" + text)
        else:
            self._out.write(text + "\n")
        self._out.flush()


def live_view(
    settings: Any, stats: IssueStats, planned: int | None, observers: Sequence[object],
    records: Path | None = None,
) -> Coroutine[Any, Any, None] | None:
    """What shows the measured window live: an observer's ``live(stats, planned, records)`` coroutine
    (the dashboard, loadgen.observe.dashboard; ``records``: the run's requests.jsonl), else the
    progress line unless ``settings.progress`` is off. The runner cancels it when the run ends."""
    for obs in observers:
        live = getattr(obs, "live", None)
        if live is not None:
            return cast(Coroutine[Any, Any, None], live(stats, planned, records))
    if settings.progress:
        return Progress(stats, planned, settings.duration_s).run()
    return None


def attach_sources(observers: tuple[T, ...], **sources: object) -> tuple[T, ...]:
    """Hand the run's sidecars (server scraper, GPU sampler) to the observers that show them; returns
    ``observers``."""
    for obs in observers:
        attach = getattr(obs, "attach", None)
        if attach is not None:
            attach(**sources)
    return observers

"""RecordSink: the one place a measured record goes once its request has finished.

Every way of issuing (the issuer, worker processes, multi-turn sessions) feeds the same sink, which in
turn: appends the record to ``requests.jsonl`` (unless worker processes wrote it already), counts it
(only where no issuer counts: sessions), tells the observers, feeds ``--max-error-rate``'s guard, the
inter-token gap store and the bounded in-memory :class:`~loadgen.metrics.gaps.RecordTable` the report is
built from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from loadgen.engine.issuer import ErrorRateGuard, IssueStats
from loadgen.metrics.gaps import GapStore, RecordTable
from loadgen.metrics.rows import Columns
from loadgen.records import RecordWriter, RequestRecord


class RunObserver(Protocol):
    """Something that watches requests live (the Prometheus exporter, for one).

    With worker processes the starts happen in the workers: ``request_started`` is not called, and an
    observer that also has ``set_in_flight(n: int)`` gets the workers' in-flight count every tick.
    """

    def request_started(self) -> None: ...

    def request_finished(self, record: RequestRecord) -> None: ...


class RecordSink:
    """Where finished measured records go; see the module docstring.

    ``path``: the JSONL file to append to (None: someone else writes it, e.g. worker processes).
    ``count``: stats to account each record in (None: the issuer counts its own). ``max_error_rate``
    and ``stop``: when the guard trips, ``stop(reason)`` is called once (it should stop issuing).
    """

    def __init__(
        self,
        path: Path | None,
        *,
        observers: tuple[RunObserver, ...] = (),
        gaps: GapStore,
        max_error_rate: float | None = None,
        stop: Callable[[str], None] | None = None,
        count: IssueStats | None = None,
    ) -> None:
        self.observers = observers
        self.gaps = gaps
        self.table = RecordTable()  # bounded: rows of numpy columns while the clock runs
        self.count = count
        self._writer = RecordWriter(path) if path is not None else None
        self._guard = ErrorRateGuard(max_error_rate) if max_error_rate is not None else None
        self._stop = stop

    def record(self, rec: RequestRecord) -> None:
        """A finished request: write it (if this sink writes), then :meth:`keep` it."""
        if self._writer is not None:
            self._writer.write(rec)
        self.keep(rec)

    def keep(self, rec: RequestRecord) -> None:
        """Account a record written in full already; in memory only what the report needs."""
        if (st := self.count) is not None:
            st.issued += 1
            if rec.ok:
                st.completed += 1
                st.output_tokens += rec.output_tokens
            else:
                st.failed += 1
        for obs in self.observers:
            obs.request_finished(rec)
        if self._guard is not None and (reason := self._guard.add(rec)) is not None and self._stop:
            self._stop(reason)
        self.gaps.add_record(rec)
        self.table.append(rec)

    def started(self) -> None:
        """A request was sent (not called with worker processes: their starts happen there)."""
        for obs in self.observers:
            obs.request_started()

    @property
    def on_start(self) -> Callable[[], None] | None:
        """:meth:`started`, or None when nobody listens (the issuer then skips the call)."""
        return self.started if self.observers else None

    def in_flight_setters(self) -> list[Callable[[int], None]]:
        """The observers' ``set_in_flight`` (worker processes report their in-flight counts)."""
        return [f for obs in self.observers if (f := getattr(obs, "set_in_flight", None)) is not None]

    def records(self) -> list[RequestRecord]:
        return self.table.to_list()

    def columns(self) -> Columns:
        """The finished records as the table's flat columns (no Python object per record)."""
        return self.table.columns()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

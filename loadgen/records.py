"""Per-request records: what the client measured for one request, and their JSONL file.

Clock: every ``*_ns`` field is integer nanoseconds of ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on
Linux, shared by every process on the host) **relative to the run's start** (``t0``), the instant the
measured trace began. Warm-up requests run before ``t0`` and have negative times and ``warmup=True``.

A record is written to ``requests.jsonl`` as soon as its request ends (see :class:`RecordWriter`), so
a crash, ``kill -9`` or Ctrl-C never loses a measured request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from loadgen.errors import ReportError

#: Where a record's ``output_tokens`` came from, best first.
TOKEN_SOURCES = ("usage", "tokenizer", "chunks")


@dataclass(slots=True)
class RequestRecord:
    """One request's timeline and outcome.

    ``scheduled_ns`` is when the scenario wanted the request sent: for open-loop scenarios (Server,
    Offline, constant rate, trace replay) the pre-generated target; for closed-loop ones (SingleStream,
    MultiStream, concurrency) the instant the previous query completed, i.e. the issue time. Latencies
    are measured from it, so client lateness can never hide inside a latency (coordinated omission);
    ``issue_delay_ns = sent_ns - scheduled_ns`` is kept separately.
    """

    index: int  # position in the issued trace (0-based; warm-up requests count separately)
    sample: int  # index of the sample (prompt) in the dataset
    query: int  # query id; MultiStream sends several samples as one query
    scheduled_ns: int
    sent_ns: int  # just before the request bytes were handed to the connection
    end_ns: int  # stream end, response end, or the moment the error was seen
    first_token_ns: int | None = None  # first chunk that carried generated content
    chunk_ns: list[int] = field(default_factory=list)  # arrival of each content chunk
    chunk_tokens: list[int] = field(default_factory=list)  # tokens carried by each content chunk
    input_tokens: int = 0  # prompt tokens as the client knows them (exact when a tokenizer was used)
    output_tokens: int = 0  # best known count, see ``tokens_source``
    tokens_source: str = "chunks"  # one of TOKEN_SOURCES
    prompt_tokens: int | None = None  # the server's usage.prompt_tokens
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens (prefix-cache hits)
    requested_output_tokens: int | None = None  # max_tokens sent
    status: int | None = None  # HTTP status, None when no response head arrived
    error_class: str | None = None  # see loadgen.client.client.ERROR_CLASSES; None for success
    error: str | None = None  # human-readable detail (never contains credentials)
    worker: int = 0
    retries: int = 0
    warmup: bool = False
    last_chunk_ns: int | None = None  # set when the chunk lists were dropped (loadgen.metrics.gaps.compact)
    # Reasoning models: the first chunk of the answer (content or tool calls, after any thinking), and
    # the thinking tokens (usage.completion_tokens_details.reasoning_tokens, else counted from chunks).
    first_answer_ns: int | None = None
    reasoning_tokens: int | None = None
    cls: str | None = None  # the traffic class of its prompt (loadgen.workload.mix); None: no mix

    @property
    def ok(self) -> bool:
        return self.error_class is None

    @property
    def issue_delay_ns(self) -> int:
        return self.sent_ns - self.scheduled_ns

    def to_json(self) -> bytes:
        # orjson serialises (slotted) dataclasses natively in field order: ~3 µs for a 128-chunk
        # record, where dataclasses.asdict's recursive deep copy took ~200 µs on the completion path.
        return orjson.dumps(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class RecordWriter:
    """Appends records to a JSONL file as they complete.

    Flush policy: each record is one ``write()`` of a complete line to an unbuffered file descriptor
    opened with ``O_APPEND``, so the line is in the kernel's page cache when ``write`` returns and
    survives ``kill -9`` of loadgen (not a power loss; :meth:`close` fsyncs). A partial last line can
    only come from a power loss or a full disk, and :func:`read_records` skips it with a warning.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.count = 0

    def write(self, record: RequestRecord) -> None:
        os.write(self._fd, record.to_json() + b"\n")
        self.count += 1

    def write_many(self, records: list[RequestRecord]) -> None:
        if records:
            os.write(self._fd, b"".join(r.to_json() + b"\n" for r in records))
            self.count += len(records)

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_records(path: Path) -> Iterator[RequestRecord]:
    """Yield the records of a ``requests.jsonl`` one line at a time (bounded memory); a torn last
    line (a crash mid-write) is skipped."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ReportError(
            f"cannot read {path}: {exc.strerror}. Give a report folder or a requests.jsonl."
        ) from exc
    with f:
        lineno = 0
        pending: bytes | None = None
        for line in f:
            if pending is not None:
                yield _parse_line(pending, path, lineno, last=False)
            lineno += 1
            pending = line if line.strip() else None
            if pending is None:
                continue
        if pending is not None:
            try:
                yield _parse_line(pending, path, lineno, last=True)
            except _TornLine:
                return


class _TornLine(Exception):
    pass


def _parse_line(line: bytes, path: Path, lineno: int, *, last: bool) -> RequestRecord:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if last:  # torn final line after a crash: everything before it is intact
            raise _TornLine from exc
        raise ReportError(f"{path}:{lineno} is not valid JSON ({exc}); the file is damaged.") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path}:{lineno} is not a request record (expected a JSON object).")
    try:
        return RequestRecord.from_dict(data)
    except TypeError as exc:
        raise ReportError(f"{path}:{lineno} is missing request fields ({exc}).") from exc


def read_records(path: Path) -> list[RequestRecord]:
    """Every record of a ``requests.jsonl`` (see :func:`iter_records` for what a torn last line does)."""
    return list(iter_records(path))

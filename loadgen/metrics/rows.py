"""Finished records read straight from a :class:`~loadgen.metrics.gaps.RecordTable`'s columns.

When the clock stops, the report needs every finished record — a list, iterated a few dozen times
(percentiles, the MLPerf checks, classes, the verdict). Turning 200,000 table rows back into
:class:`~loadgen.records.RequestRecord` objects cost ~500 bytes each (the object and a fresh Python int
for every timestamp): 100 MB, the largest part of a long run's peak memory. A :class:`RowRecord` is
two references (the columns and its row number) and reads each field from one flat column
(``array.array``, 4 or 8 bytes a value) when asked: memray put 200,000 of them at 15 MB. It has every
field and property of a compacted record (:func:`loadgen.metrics.gaps.compact`: no chunk lists) and is
read-only.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DROPPED: list[int] = []  # a compacted record's chunk lists: shared by all, never appended to

# A table row (see RecordTable). Timestamps are int64; counts, ids and the status are int32 (4 bytes a
# row each rather than 8: 44 bytes a row, 8.8 MB at 200,000 records by arithmetic). A
# nullable integer field holds its column's sentinel (no real count or timestamp is that negative).
NONE = -(1 << 62)
NONE32 = -(1 << 31)
INT_FIELDS = ("index", "sample", "query", "scheduled_ns", "sent_ns", "end_ns", "first_token_ns",
              "last_chunk_ns", "input_tokens", "output_tokens", "prompt_tokens", "requested_output_tokens",
              "status", "worker", "retries", "first_answer_ns", "reasoning_tokens")
WIDE_FIELDS = frozenset(f for f in INT_FIELDS if f.endswith("_ns"))
SENTINEL = {f: NONE if f in WIDE_FIELDS else NONE32 for f in INT_FIELDS}
SENTINELS = tuple(SENTINEL[f] for f in INT_FIELDS)
# cached_tokens (prefix-cache hits, None when the server did not say): int32, -1 for None.
ROW = np.dtype([*((f, np.int64 if f in WIDE_FIELDS else np.int32) for f in INT_FIELDS),
                ("warmup", np.bool_), ("source", np.int8), ("error_class", np.int16),
                ("cached_tokens", np.int32), ("cls", np.int16)])


class Columns:
    """The table's rows as one flat column per field (built once, when the run has ended)."""

    __slots__ = ("cached", "cls", "error_class", "errors", "ints", "names", "source", "warmup")

    def __init__(self, blocks: list[np.ndarray | None], n: int, block: int, names: list[str | None],
                 errors: dict[int, str]) -> None:
        """Consumes ``blocks`` (each is let go once copied, so the copy never doubles the memory)."""
        self.ints = {f: array("q" if f in WIDE_FIELDS else "i") for f in INT_FIELDS}
        self.warmup, self.source, self.cached = array("b"), array("b"), array("i")
        self.error_class, self.cls = array("h"), array("h")
        small = {"warmup": self.warmup, "source": self.source, "error_class": self.error_class,
                 "cached_tokens": self.cached, "cls": self.cls}
        for k, whole in enumerate(blocks):
            assert whole is not None
            rows = whole[: min(block, n - k * block)]
            for f, col in (*self.ints.items(), *small.items()):
                col.frombytes(np.ascontiguousarray(rows[f], dtype=_NUMPY[col.typecode]).tobytes())
            blocks[k] = None
        self.names = names
        self.errors = errors

    def column(self, name: str, rows: np.ndarray | None = None, none: int | None = None) -> np.ndarray:
        """Field ``name`` (an integer field, or ``warmup``, ``error_class``) as a numpy array of the
        ``rows`` asked (None: all, without a copy), the sentinel replaced by ``none`` when given."""
        col = self.ints.get(name)
        if col is None:
            col = {"warmup": self.warmup, "error_class": self.error_class}[name]
        a = np.frombuffer(col, dtype=_NUMPY[col.typecode]) if len(col) else np.empty(0, _NUMPY[col.typecode])
        if rows is not None:
            a = a[rows]
        if none is not None and name in SENTINEL:
            a = np.where(a == SENTINEL[name], none, a)
        return a

    def __len__(self) -> int:
        return len(self.warmup)


_NUMPY = {"q": np.int64, "i": np.int32, "h": np.int16, "b": np.int8}


class RowRecord:
    """Row ``i`` of :class:`Columns`, with the attributes of a compacted ``RequestRecord``."""

    __slots__ = ("_c", "_i")

    def __init__(self, columns: Columns, i: int) -> None:
        self._c = columns
        self._i = i

    chunk_ns = DROPPED
    chunk_tokens = DROPPED

    @property
    def warmup(self) -> bool:
        return bool(self._c.warmup[self._i])

    @property
    def tokens_source(self) -> str:
        return self._c.names[self._c.source[self._i]] or "chunks"

    @property
    def error_class(self) -> str | None:
        return self._c.names[self._c.error_class[self._i]]

    @property
    def cls(self) -> str | None:
        return self._c.names[self._c.cls[self._i]]

    @property
    def cached_tokens(self) -> int | None:
        v = self._c.cached[self._i]
        return None if v < 0 else v

    @property
    def error(self) -> str | None:
        return self._c.errors.get(self._i)

    @property
    def ok(self) -> bool:
        return self._c.error_class[self._i] == 0  # code 0 is None: no error

    @property
    def issue_delay_ns(self) -> int:
        ints = self._c.ints
        return ints["sent_ns"][self._i] - ints["scheduled_ns"][self._i]

    def __repr__(self) -> str:
        return f"RowRecord(index={self._c.ints['index'][self._i]})"


def _int_field(name: str) -> property:
    none = SENTINEL[name]

    def get(self: RowRecord) -> int | None:
        v = self._c.ints[name][self._i]
        return None if v == none else v

    return property(get)


for _f in INT_FIELDS:
    setattr(RowRecord, _f, _int_field(_f))


def rows_of(columns: Columns) -> list[Any]:
    """Every row as a :class:`RowRecord`, in table order."""
    make: Callable[[Columns, int], RowRecord] = RowRecord
    return [make(columns, i) for i in range(len(columns.warmup))]


def columns_of(records: Sequence[Any]) -> tuple[Columns, np.ndarray | None] | None:
    """The :class:`Columns` that every one of ``records`` is a view of, and which rows they are, in
    their order (None: all rows, in table order): the report reads such a list's fields as numpy
    columns straight away. None when the records are not all views of one table."""
    if type(records) is not list or not records or type(records[0]) is not RowRecord:
        return None
    c = records[0]._c
    if not all(type(r) is RowRecord and r._c is c for r in records):
        return None
    rows = np.fromiter((r._i for r in records), dtype=np.int64, count=len(records))
    if len(rows) == len(c) and np.array_equal(rows, np.arange(len(c))):
        return c, None
    return c, rows


class FieldReader:
    """Integer fields of a list of records as int64 arrays, one array per field: read from the table's
    columns when the records are its views (:func:`columns_of`), else one record at a time."""

    def __init__(self, records: Sequence[Any] | Columns) -> None:
        if isinstance(records, Columns):
            self._records: Sequence[Any] = ()
            self._found: tuple[Columns, np.ndarray | None] | None = (records, None)
        else:
            self._records = records
            self._found = columns_of(records)

    def get(self, name: str, none: int = 0) -> np.ndarray:
        """Field ``name`` of every record, ``none`` where it is None."""
        if self._found is not None:
            c, rows = self._found
            return c.column(name, rows, none=none).astype(np.int64, copy=False)
        return np.fromiter((none if (v := getattr(r, name)) is None else v for r in self._records),
                           dtype=np.int64, count=len(self._records))

    def no_error(self) -> np.ndarray:
        """Whether each record has no error class (it completed)."""
        if self._found is not None:
            c, rows = self._found
            return c.column("error_class", rows) == 0
        return np.fromiter((r.error_class is None for r in self._records), dtype=bool,
                           count=len(self._records))

"""Inter-token gaps in bounded memory, and compact in-memory records.

A run of 200,000 requests × 128 tokens has 25 million inter-token gaps; keeping each record's chunk
timestamps as Python ints would take gigabytes. So, as each record completes (after it is written in
full to ``requests.jsonl``):

- its gaps go into a :class:`GapStore`: kept **exactly** (float64, copied into fixed blocks of ``BLOCK``
  samples, 2 MB each, so a request's few gaps cost 8 bytes each, not a numpy array's ~100-byte header on
  top) up to ``EXACT_LIMIT`` samples (16 MB), and all along also counted in a log-bucketed histogram (a
  fixed numpy array) whose buckets are ``RELATIVE_ERROR`` wide (relative), so every percentile it
  reports is within ±0.5% of the exact one. Past the limit the exact blocks are dropped and the
  histogram answers (the report says which mode was used). Counting as records arrive (``np.add.at``, ~6
  µs a record) means no pause at the switch: converting 5 million kept samples at once had stalled the
  event loop for 1.7 s in the middle of a soak run;
- the record keeps only its last chunk time (for TPOT) — :func:`compact` — and, during a run, lives
  in a :class:`RecordTable`: one row of fixed-size numpy columns (about 100 bytes) instead of a Python
  object of about 420, so a 200,000-request run holds 26 MB of records, not 84 (the report turns the
  table back into records once the clock has stopped).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from loadgen.metrics.latency import PERCENTILES, distribution, percentile_key, request_itl_ns
from loadgen.metrics.rows import DROPPED as _DROPPED
from loadgen.metrics.rows import INT_FIELDS as _INT_FIELDS
from loadgen.metrics.rows import ROW as _ROW
from loadgen.metrics.rows import SENTINELS as _SENTINELS
from loadgen.metrics.rows import Columns, rows_of
from loadgen.records import RequestRecord

EXACT_LIMIT = 2_000_000  # 16 MB of float64 gaps
BLOCK = 1 << 18  # samples per exact block (2 MB)
RELATIVE_ERROR = 0.005
_LOG_BASE = math.log1p(2 * RELATIVE_ERROR)  # bucket i covers [b^i, b^(i+1)); midpoint error ≤ 0.5%
_BUCKETS = 3200  # b^3200 ns ≈ 17 hours: gaps beyond go to the last bucket (and max stays exact)


class GapStore:
    """Pooled inter-token gaps (ns) of completed requests; exact below ``exact_limit`` samples."""

    def __init__(self, exact_limit: int = EXACT_LIMIT) -> None:
        self._limit = exact_limit
        self._blocks: list[np.ndarray] | None = []  # full blocks, then the one filling; None past the limit
        self._fill = 0  # samples in the last block
        self._block = max(1, min(BLOCK, exact_limit))
        self._count = 0
        self._hist = np.zeros(_BUCKETS, dtype=np.int64)  # counts per log bucket, always kept
        self._zeros = 0  # gaps of 0 ns (several chunks in one read) have no log bucket
        self._sum = 0.0
        self._sumsq = 0.0
        self._min = math.inf
        self._max = -math.inf

    @property
    def exact(self) -> bool:
        return self._blocks is not None

    def add_record(self, record: RequestRecord) -> None:
        if record.ok and not record.warmup:
            self.add(request_itl_ns(record))

    def add(self, gaps_ns: np.ndarray) -> None:
        if gaps_ns.size == 0:
            return
        self._count += int(gaps_ns.size)
        self._sum += float(gaps_ns.sum())
        self._sumsq += float(np.square(gaps_ns).sum())
        self._min = min(self._min, float(gaps_ns.min()))
        self._max = max(self._max, float(gaps_ns.max()))
        gaps = np.asarray(gaps_ns, dtype=np.float64)
        positive = gaps[gaps > 0]
        self._zeros += int(gaps.size - positive.size)
        idx = np.minimum(np.floor(np.log(positive) / _LOG_BASE), _BUCKETS - 1).astype(np.int64)
        np.add.at(self._hist, np.maximum(idx, 0), 1)  # gaps under 1 ns (none in practice) in bucket 0
        if self._blocks is None:
            return
        if self._count > self._limit:
            self._blocks = None  # the histogram, counted all along, answers from now on
            return
        done = 0
        while done < gaps.size:
            if not self._blocks or self._fill == self._block:
                self._blocks.append(np.empty(self._block, dtype=np.float64))
                self._fill = 0
            take = min(gaps.size - done, self._block - self._fill)
            self._blocks[-1][self._fill:self._fill + take] = gaps[done:done + take]
            self._fill += take
            done += take

    def values(self) -> np.ndarray:
        """The exact samples (only while :attr:`exact`)."""
        if not self._blocks:
            return np.empty(0, dtype=np.float64)
        return np.concatenate([*self._blocks[:-1], self._blocks[-1][: self._fill]])

    def distribution(self) -> dict[str, Any]:
        """Same keys as :func:`loadgen.metrics.latency.distribution` (ms), plus ``exact`` and the error
        bound."""
        if self._blocks is not None:
            exact = distribution(self.values())
            exact["exact"] = True
            return exact
        n = self._count
        mean = self._sum / n
        var = max(self._sumsq / n - mean * mean, 0.0)
        keys = np.nonzero(self._hist)[0]
        counts = self._hist[keys].astype(np.float64)
        mids = np.exp((keys.astype(np.float64) + 0.5) * _LOG_BASE)
        cum = np.concatenate([[self._zeros], self._zeros + np.cumsum(counts)])
        out: dict[str, Any] = {
            "count": n, "mean": mean / 1e6, "std": math.sqrt(var) / 1e6,
            "min": self._min / 1e6, "max": self._max / 1e6,
        }
        for p in PERCENTILES:
            rank = p / 100 * (n - 1)  # the sample a linear-interpolated percentile sits at
            i = int(np.searchsorted(cum, rank, side="right")) - 1
            value = 0.0 if i < 0 else float(mids[min(i, len(mids) - 1)])
            out[percentile_key(p)] = min(max(value, self._min), self._max) / 1e6
        out["exact"] = False
        out["relative_error"] = RELATIVE_ERROR
        return out




def compact(record: RequestRecord) -> RequestRecord:
    """Drop a record's per-chunk lists, keeping the last chunk time (all that TPOT needs).

    Only for the in-memory copy: the full record is already in ``requests.jsonl``.
    """
    if record.chunk_ns:
        record.last_chunk_ns = record.chunk_ns[-1]
    record.chunk_ns = _DROPPED
    record.chunk_tokens = _DROPPED
    if record.error is not None and len(record.error) > 200:
        record.error = record.error[:200]
    return record


class RecordTable:
    """Finished records of a run in columnar blocks: what :func:`compact` keeps, in bounded space.

    ``append`` copies a record's scalar fields into the next row (the chunk lists are not kept: the
    record is in ``requests.jsonl`` in full and its gaps are in the :class:`GapStore`); iterating gives
    compact :class:`~loadgen.records.RequestRecord` objects back, equal to ``compact(record)``. Strings
    are interned in small tables (token sources, error classes) or kept sparsely (error messages, which
    only failed requests have). Loop thread only.
    """

    BLOCK = 8192

    def __init__(self) -> None:
        self._blocks: list[np.ndarray] = []
        self._n = 0
        self._codes: dict[str | None, int] = {None: 0}
        self._names: list[str | None] = [None]
        self._errors: dict[int, str] = {}
        self._columns: Columns | None = None

    def __len__(self) -> int:
        return self._n

    def _code(self, name: str | None) -> int:
        code = self._codes.get(name)
        if code is None:
            code = self._codes[name] = len(self._names)
            self._names.append(name)
        return code

    def append(self, rec: RequestRecord) -> None:
        i = self._n % self.BLOCK
        if i == 0:
            self._blocks.append(np.zeros(self.BLOCK, dtype=_ROW))
        last = rec.chunk_ns[-1] if rec.chunk_ns else rec.last_chunk_ns
        ints = (rec.index, rec.sample, rec.query, rec.scheduled_ns, rec.sent_ns, rec.end_ns,
                rec.first_token_ns, last, rec.input_tokens, rec.output_tokens, rec.prompt_tokens,
                rec.requested_output_tokens, rec.status, rec.worker, rec.retries, rec.first_answer_ns,
                rec.reasoning_tokens)
        self._blocks[-1][i] = (*(s if v is None else v for v, s in zip(ints, _SENTINELS, strict=True)),
                               rec.warmup,
                               self._code(rec.tokens_source), self._code(rec.error_class),
                               -1 if rec.cached_tokens is None else rec.cached_tokens, self._code(rec.cls))
        if rec.error is not None:
            self._errors[self._n] = rec.error[:200]
        self._n += 1

    def __iter__(self) -> Iterator[RequestRecord]:
        names = self._names
        for b, block in enumerate(self._blocks):
            rows = block[: min(self.BLOCK, self._n - b * self.BLOCK)].tolist()  # tuples of Python scalars
            for k, row in enumerate(rows):
                values: dict[str, Any] = {f: (None if v == s else v)
                                          for f, v, s in zip(_INT_FIELDS, row, _SENTINELS, strict=False)}
                warmup, source, error_class, cached, cls = row[len(_INT_FIELDS):]
                yield RequestRecord(
                    **values, chunk_ns=_DROPPED, chunk_tokens=_DROPPED, warmup=bool(warmup),
                    cached_tokens=None if cached < 0 else cached,
                    tokens_source=names[source] or "chunks", error_class=names[error_class],
                    error=self._errors.get(b * self.BLOCK + k), cls=names[cls],
                )

    def to_list(self) -> list[RequestRecord]:
        """Every record, as :class:`~loadgen.metrics.rows.RowRecord` views on the table's columns (the
        blocks are let go: call once, when the run has ended). A view has a compacted record's fields
        and properties, read-only, at ~56 bytes instead of ~500 (see :mod:`loadgen.metrics.rows`)."""
        return rows_of(self.columns())

    def columns(self) -> Columns:
        """The table as flat columns, built once (the blocks are let go: call when the run has ended)."""
        if self._columns is None:
            blocks: list[np.ndarray | None] = list(self._blocks)
            self._blocks = []
            self._columns = Columns(blocks, self._n, self.BLOCK, self._names, self._errors)
        return self._columns

"""Inter-token gaps in bounded memory, and compact in-memory records.

A run of 200,000 requests × 128 tokens has 25 million inter-token gaps; keeping each record's chunk
timestamps as Python ints would take gigabytes. So, as each record completes (after it is written in
full to ``requests.jsonl``):

- its gaps go into a :class:`GapStore`: kept **exactly** (int64 numpy blocks) up to
  ``EXACT_LIMIT`` samples; beyond that, all of them are moved into a log-bucketed histogram whose
  buckets are ``RELATIVE_ERROR`` wide (relative), so every percentile it reports is within ±0.5% of the
  exact one (the report says which mode was used);
- the record keeps only its last chunk time (for TPOT) — :func:`compact`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from loadgen.metrics import PERCENTILES, distribution, percentile_key, request_itl_ns
from loadgen.records import RequestRecord

EXACT_LIMIT = 5_000_000  # 40 MB of float64 gaps
RELATIVE_ERROR = 0.005
_LOG_BASE = math.log1p(2 * RELATIVE_ERROR)  # bucket i covers [b^i, b^(i+1)); midpoint error ≤ 0.5%


class GapStore:
    """Pooled inter-token gaps (ns) of completed requests; exact below ``exact_limit`` samples."""

    def __init__(self, exact_limit: int = EXACT_LIMIT) -> None:
        self._limit = exact_limit
        self._blocks: list[np.ndarray] = []
        self._count = 0
        self._hist: dict[int, int] | None = None  # bucket index -> count, once past the limit
        self._zeros = 0  # gaps of 0 ns (several chunks in one read) have no log bucket
        self._sum = 0.0
        self._sumsq = 0.0
        self._min = math.inf
        self._max = -math.inf

    @property
    def exact(self) -> bool:
        return self._hist is None

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
        if self._hist is None:
            self._blocks.append(np.asarray(gaps_ns, dtype=np.float64))
            if self._count > self._limit:
                self._to_histogram()
        else:
            self._bucket(gaps_ns)

    def _to_histogram(self) -> None:
        self._hist = {}
        for block in self._blocks:
            self._bucket(block)
        self._blocks = []

    def _bucket(self, gaps: np.ndarray) -> None:
        assert self._hist is not None
        positive = gaps[gaps > 0]
        self._zeros += int(gaps.size - positive.size)
        idx, counts = np.unique(np.floor(np.log(positive) / _LOG_BASE).astype(np.int64), return_counts=True)
        hist = self._hist
        for i, c in zip(idx.tolist(), counts.tolist(), strict=True):
            hist[i] = hist.get(i, 0) + c

    def values(self) -> np.ndarray:
        """The exact samples (only while :attr:`exact`)."""
        if not self._blocks:
            return np.empty(0, dtype=np.float64)
        return np.concatenate(self._blocks)

    def distribution(self) -> dict[str, Any]:
        """Same keys as :func:`loadgen.metrics.distribution` (ms), plus ``exact`` and the error bound."""
        if self._hist is None:
            exact = distribution(self.values())
            exact["exact"] = True
            return exact
        n = self._count
        mean = self._sum / n
        var = max(self._sumsq / n - mean * mean, 0.0)
        keys = sorted(self._hist)
        counts = np.array([self._hist[k] for k in keys], dtype=np.float64)
        mids = np.exp((np.array(keys, dtype=np.float64) + 0.5) * _LOG_BASE)
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


_DROPPED: list[int] = []  # shared by every compacted record; never appended to


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

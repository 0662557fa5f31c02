"""Trace replay: arrival times and lengths from a production trace, sent open loop like Server.

Layouts (``replay: {format, path}``):

* ``azure``: the Azure LLM inference trace CSV, header ``TIMESTAMP,ContextTokens,GeneratedTokens``,
  TIMESTAMP a datetime string such as ``2023-11-16 18:15:46.6805900`` (read to the nanosecond).
* ``mooncake``: JSONL of ``{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}``;
  each hash id stands for a block of ``block_size`` (512) prompt tokens, and equal ids mean equal
  content, so rows sharing leading ids share a prefix (and can hit a prefix cache).
* ``burstgpt``: the BurstGPT CSV, header ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log
  Type``, Timestamp in seconds; rows with 0 response tokens (failed in the trace) are skipped.
* without ``format``/``path``, the ``timestamp`` column (seconds) of the ``dataset:`` file.

Time: ``t`` is seconds from the trace's first row. The window keeps ``start_s <= t < start_s +
duration_s`` and re-bases it to ``t − start_s``; then ``speedup`` divides every time, or ``target_qps``
scales every gap by one factor so that ``(n − 1) / (t_last − t_first)`` equals it (the burst shape —
which gaps are short and which long — is kept). The result is one :class:`~loadgen.workload.samples.Sample`
per row of the window with ``arrival_ns`` set; :func:`loadgen.schedule.trace.build_trace` turns those into
the open-loop offsets, and latency counts from them, as in Server.

Prompts for trace rows are synthetic, exactly ``input_length`` tokens for the counter in use (pool words,
see :mod:`loadgen.workload.tokens`); Mooncake blocks are drawn from a generator seeded by (run seed, hash id).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from loadgen.errors import ConfigError
from loadgen.settings import Settings
from loadgen.specs import ReplaySpec
from loadgen.workload.files import from_items, read_items
from loadgen.workload.samples import Dataset, Sample, verify_counts
from loadgen.workload.tokens import TokenCounter, single_token_words

_NS = 1_000_000_000


@dataclass(frozen=True)
class TraceRows:
    """A trace file's rows in time order: seconds from the first row, lengths, Mooncake blocks."""

    times_s: np.ndarray  # float64, non-decreasing, starting at 0
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    hash_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.times_s)

    def take(self, index: np.ndarray) -> TraceRows:
        ids = None if self.hash_ids is None else [self.hash_ids[i] for i in index.tolist()]
        return TraceRows(self.times_s[index], self.input_tokens[index], self.output_tokens[index], ids)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"trace file {path}: {reason}. Check replay.path.") from exc


def _sorted_rows(path: Path, stamps_ns: np.ndarray, ins: list[int], outs: list[int],
                 ids: list[list[int]] | None) -> TraceRows:
    if not len(stamps_ns):
        raise ConfigError(f"trace file {path} has no rows.")
    order = np.argsort(stamps_ns, kind="stable")
    rel = (stamps_ns[order] - stamps_ns[order[0]]).astype(np.float64) / _NS
    rows = TraceRows(rel, np.array(ins, dtype=np.int64)[order], np.array(outs, dtype=np.int64)[order],
                     None if ids is None else [ids[i] for i in order.tolist()])
    return rows


def read_azure(path: Path) -> TraceRows:
    """The Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    lines = _read_text(path).splitlines()
    header = [h.strip() for h in (lines[0].split(",") if lines else [])]
    need = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    if not all(n in header for n in need):
        raise ConfigError(f"trace file {path}: the Azure trace header needs {', '.join(need)}; got {header}.")
    col = [header.index(n) for n in need]
    stamps: list[str] = []
    ins: list[int] = []
    outs: list[int] = []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cells = line.split(",")
        try:
            stamps.append(cells[col[0]].strip())
            ins.append(int(cells[col[1]]))
            outs.append(int(cells[col[2]]))
        except (IndexError, ValueError):
            raise ConfigError(f"trace file {path}, line {lineno}: expected TIMESTAMP,int,int: {line!r}.") \
                from None
    try:
        ns = np.array(stamps, dtype="datetime64[ns]").astype(np.int64)
    except ValueError as exc:
        raise ConfigError(f"trace file {path}: a TIMESTAMP is not a date and time ({exc}).") from None
    return _sorted_rows(path, ns, ins, outs, None)


def read_mooncake(path: Path) -> TraceRows:
    """The Mooncake trace JSONL (``timestamp`` ms, ``input_length``, ``output_length``, ``hash_ids``)."""
    stamps: list[int] = []
    ins: list[int] = []
    outs: list[int] = []
    ids: list[list[int]] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"trace file {path}, line {lineno}"
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc}).") from exc
        try:
            ts, n_in, n_out = obj["timestamp"], obj["input_length"], obj["output_length"]
            hashes = obj.get("hash_ids", [])
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (ts, n_in, n_out)):
                raise TypeError
            if not (isinstance(hashes, list) and all(isinstance(h, int) for h in hashes)):
                raise TypeError
        except (KeyError, TypeError):
            raise ConfigError(
                f"{where}: needs numbers `timestamp` (ms), `input_length`, `output_length` and a list of "
                "integer `hash_ids`."
            ) from None
        stamps.append(round(ts * 1_000_000))
        ins.append(int(n_in))
        outs.append(int(n_out))
        ids.append(hashes)
    return _sorted_rows(path, np.array(stamps, dtype=np.int64), ins, outs, ids)


BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


def read_burstgpt(path: Path) -> TraceRows:
    """The BurstGPT trace CSV (``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log
    Type``; Timestamp in seconds). Rows with 0 response tokens are requests that failed in the trace
    (BurstGPT's own reading) and are not replayed."""
    lines = _read_text(path).splitlines()
    rows = csv.reader(lines)
    header = [h.strip() for h in next(rows, [])]
    if not all(n in header for n in BURSTGPT_COLUMNS):
        raise ConfigError(f"trace file {path}: the BurstGPT header needs {', '.join(BURSTGPT_COLUMNS)}; "
                          f"got {header}.")
    col = [header.index(n) for n in BURSTGPT_COLUMNS]
    stamps: list[int] = []
    ins: list[int] = []
    outs: list[int] = []
    for lineno, cells in enumerate(rows, 2):
        if not cells or not "".join(cells).strip():
            continue
        try:
            ts, n_in, n_out = float(cells[col[0]]), int(float(cells[col[1]])), int(float(cells[col[2]]))
            if not math.isfinite(ts) or n_in < 0 or n_out < 0:
                raise ValueError
        except (IndexError, ValueError):
            raise ConfigError(f"trace file {path}, line {lineno}: expected seconds and two token counts in "
                              f"{', '.join(BURSTGPT_COLUMNS)}: {lines[lineno - 1]!r}.") from None
        if n_out == 0:
            continue  # failed in the trace
        stamps.append(round(ts * _NS))
        ins.append(n_in)
        outs.append(n_out)
    return _sorted_rows(path, np.array(stamps, dtype=np.int64), ins, outs, None)


def read_trace(fmt: str, path: Path) -> TraceRows:
    return {"azure": read_azure, "mooncake": read_mooncake, "burstgpt": read_burstgpt}[fmt](path)


# ---- time: window, speedup, target rate ----------------------------------------------------------------


def window(times_s: np.ndarray, spec: ReplaySpec) -> np.ndarray:
    """Indices of the rows in ``[start_s, start_s + duration_s)``."""
    end = math.inf if spec.duration_s is None else spec.start_s + spec.duration_s
    return np.nonzero((times_s >= spec.start_s) & (times_s < end))[0]


def retime(times_s: np.ndarray, spec: ReplaySpec) -> np.ndarray:
    """Window times (already inside the window) → replay offsets in int ns; see the module docstring."""
    t = np.asarray(times_s, dtype=np.float64) - spec.start_s
    if spec.target_qps is not None:
        span = float(t[-1] - t[0]) if len(t) else 0.0
        if len(t) < 2 or span <= 0:
            raise ConfigError("replay.target_qps needs at least two rows at different times in the window.")
        t = t * ((len(t) - 1) / (spec.target_qps * span))
    else:
        t = t / spec.speedup
    return np.rint(t * _NS).astype(np.int64)


# ---- samples --------------------------------------------------------------------------------------------


def rows_dataset(rows: TraceRows, spec: ReplaySpec, counter: TokenCounter, seed: int,
                 rng: np.random.Generator) -> Dataset:
    """One sample per row: exact-length synthetic prompts, the row's output length, ``arrival_ns``."""
    pool, overhead = single_token_words(counter)
    words = np.array(pool)
    offsets = retime(rows.times_s, spec)
    ins = np.maximum(rows.input_tokens, 1 + overhead)
    if spec.max_input is not None:
        ins = np.minimum(ins, max(spec.max_input, 1 + overhead))
    outs = np.maximum(rows.output_tokens, 1)
    if spec.max_output is not None:
        outs = np.minimum(outs, spec.max_output)
    blocks: dict[int, np.ndarray] = {}
    samples = []
    for k in range(len(rows)):
        n_words = int(ins[k]) - overhead
        if rows.hash_ids is not None:
            idx = _block_words(rows.hash_ids[k], n_words, spec.block_size, len(words),
                               seed=seed, cache=blocks, rng=rng)
        else:
            idx = rng.integers(0, len(words), size=n_words)
        samples.append(Sample(" ".join(words[idx]), None, n_words + overhead, int(outs[k]),
                              arrival_ns=int(offsets[k])))
    return Dataset(verify_counts(samples, counter), counter.name, counter.exact)


def _block_words(hash_ids: list[int], n_words: int, block: int, pool: int, *, seed: int,
                 cache: dict[int, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Word indices for a Mooncake row: one block per hash id (equal ids, equal words), truncated to
    ``n_words``, padded with unique words when the row is longer than its blocks."""
    parts = []
    have = 0
    for h in hash_ids:
        if have >= n_words:
            break
        if h not in cache:
            cache[h] = np.random.default_rng([seed, h & 0xFFFFFFFFFFFFFFFF]).integers(0, pool, size=block)
        parts.append(cache[h])
        have += block
    if have < n_words:
        parts.append(rng.integers(0, pool, size=n_words - have))
    return np.concatenate(parts)[:n_words] if parts else np.zeros(0, dtype=np.int64)


def replay_dataset(
    settings: Settings, counter: TokenCounter, rngs: dict[str, np.random.Generator]
) -> Dataset:
    """The samples of ``scenario: replay``: trace rows of the window, or the ``dataset:`` file's rows."""
    spec = settings.replay or ReplaySpec()
    if spec.format is not None and spec.path is not None:
        rows = read_trace(spec.format, spec.path)
        picked = rows.take(window(rows.times_s, spec))
        if not len(picked):
            raise ConfigError(f"replay: no row of {spec.path} falls in the window starting at "
                              f"{spec.start_s:g} s (the trace spans {rows.times_s[-1]:g} s).")
        return rows_dataset(picked, spec, counter, settings.seed, rngs["prompts"])
    dspec = settings.dataset
    assert dspec is not None  # Settings validation: replay needs a trace or a dataset file
    items = read_items(dspec.format, dspec.path, dspec.fields)
    if any(it.timestamp_s is None for it in items):
        raise ConfigError(f"replay: dataset file {dspec.path} needs a `timestamp` on every row.")
    stamps = np.array([it.timestamp_s for it in items], dtype=np.float64)
    order = np.argsort(stamps, kind="stable")
    rel = stamps[order] - stamps[order[0]]
    keep = window(rel, spec)
    if not len(keep):
        raise ConfigError(
            f"replay: no row of {dspec.path} falls in the window starting at {spec.start_s:g} s."
        )
    new_s = retime(rel[keep], spec) / _NS
    chosen = [dataclasses.replace(items[int(order[i])], timestamp_s=float(t))
              for i, t in zip(keep.tolist(), new_s.tolist(), strict=True)]
    return from_items(chosen, dspec, settings, counter, rngs["lengths"], size=None, keep_order=True,
                      origin_s=0.0)

"""Prompt files turned into :class:`~loadgen.workload.samples.Sample` streams: ShareGPT JSON, JSONL, CSV.

Layouts (``dataset: {format, path, ...}`` in a scenario file):

* ``sharegpt``: ``[{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}, ...]}]``.
  The first human turn is the prompt; the token count of the gpt turn after it is the output length.
  Entries without such a pair are skipped (``user``/``assistant`` and ``role``/``content`` work too).
* ``jsonl``: one object per line, ``prompt`` (a string) or ``messages`` (a list of ``{role, content}``
  or ShareGPT's ``{from, value}``), optional ``output_len`` (a positive integer), ``reply`` (a reference
  answer: its token count is the output length when ``output_len`` is absent) and ``timestamp``
  (seconds, any origin).
* ``csv``: a header row with ``prompt`` and optional ``output_len``, ``reply`` and ``timestamp`` columns.
* ``parquet``, ``arrow``: a file, or a folder of them (a Hugging Face dataset kept locally); each row is
  read as a JSONL object (:mod:`loadgen.workload.tables`).

``fields: {prompt: question, reply: answer, ...}`` maps loadgen's names to the file's own column names
(jsonl, csv, parquet, arrow); a mapped column that is not there is an error naming it.

Input lengths are always re-counted with the token counter in use (never trusted from the file). A
missing ``output_len`` is drawn from the settings' ``output_len``. Samples outside the length bounds are
dropped; the rest are visited in an order shuffled with the run seed's ``lengths`` stream and taken
until ``num_samples`` are kept, so a 600 MB ShareGPT file is only counted as far as needed. For trace
replay (``keep_order``) the file order is kept and every row that passes the bounds is used.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen.errors import ConfigError
from loadgen.settings import Settings
from loadgen.specs import DATASET_FIELDS, DatasetSpec
from loadgen.workload.samples import Dataset, Sample, draw_lengths
from loadgen.workload.tokens import TokenCounter

_BATCH = 512
Messages = tuple[dict[str, str], ...]


@dataclass(frozen=True, slots=True)
class RawItem:
    """One entry of a prompt file before counting."""

    prompt: str | None
    messages: Messages | None
    output_len: int | None = None  # from the file
    output_text: str | None = None  # ShareGPT: the reply whose token count is the output length
    timestamp_s: float | None = None

    @property
    def text(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return "\n".join(m["content"] for m in self.messages or ())


# ---- readers -----------------------------------------------------------------------------------------


def read_items(fmt: str, path: Path, fields: dict[str, str] | None = None) -> list[RawItem]:
    """Every usable entry of ``path`` in file order; ConfigError names the file and line/entry.

    ``fields`` maps loadgen's names (prompt, messages, output_len, timestamp, reply) to the file's
    columns (jsonl, csv, parquet, arrow)."""
    if fmt in ("parquet", "arrow"):
        from loadgen.workload.tables import read_rows

        items = [_item(_mapped(obj, fields, where), where) for where, obj in read_rows(fmt, path)]
    elif fmt == "sharegpt":
        items = read_sharegpt(path)
    else:
        items = (read_jsonl if fmt == "jsonl" else read_csv)(path, fields)
    if not items:
        raise ConfigError(f"dataset file {path} ({fmt}) has no usable prompts.")
    return items


def _mapped(obj: dict[str, Any], fields: dict[str, str] | None, where: str) -> dict[str, Any]:
    """``obj`` with each mapped column also under loadgen's name (a row without it: the name absent)."""
    if not fields:
        return obj
    out = {k: v for k, v in obj.items() if k not in DATASET_FIELDS}
    for name, column in fields.items():
        if column not in obj:
            raise ConfigError(f"{where}: dataset.fields.{name} names the column `{column}`, which is not "
                              f"there; its columns are {', '.join(map(str, obj))}.")
        if obj[column] is not None:
            out[name] = obj[column]
    return out


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"dataset file {path}: {exc.strerror}. Check dataset.path.") from exc


_ROLES = {"human": "user", "gpt": "assistant", "chatgpt": "assistant"}  # ShareGPT's from: names
_HUMAN = ("human", "user")
_GPT = ("gpt", "assistant", "chatgpt", "bard", "bing")


def read_sharegpt(path: Path) -> list[RawItem]:
    try:
        data = orjson.loads(_read_bytes(path))
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"dataset file {path}: not valid JSON ({exc}).") from exc
    if not isinstance(data, list):
        raise ConfigError(f"dataset file {path}: a ShareGPT file is a JSON list of {{conversations}}.")
    items = []
    for entry in data:
        conv = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(conv, list):
            continue
        turns = [(str(t.get("from", t.get("role", ""))).lower(), t.get("value", t.get("content")))
                 for t in conv if isinstance(t, dict)]
        for i in range(len(turns) - 1):
            (who, text), (next_who, reply) = turns[i], turns[i + 1]
            if who in _HUMAN and next_who in _GPT and isinstance(text, str) and isinstance(reply, str):
                items.append(RawItem(text, None, output_text=reply))
                break
            if who in _HUMAN:
                break  # the first human turn must be answered by the next one
    return items


def read_jsonl(path: Path, fields: dict[str, str] | None = None) -> list[RawItem]:
    items = []
    for lineno, line in enumerate(_read_bytes(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"dataset file {path}, line {lineno}"
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc}).") from exc
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}: expected a JSON object with `prompt` or `messages`.")
        items.append(_item(_mapped(obj, fields, where), where))
    return items


def read_csv(path: Path, fields: dict[str, str] | None = None) -> list[RawItem]:
    try:
        text = _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"dataset file {path}: not UTF-8 text ({exc}).") from exc
    reader = csv.DictReader(text.splitlines())
    prompt = (fields or {}).get("prompt", "prompt")
    if reader.fieldnames is None or prompt not in reader.fieldnames:
        raise ConfigError(
            f"dataset file {path}: the CSV header needs a `{prompt}` column (and optionally `output_len`, "
            f"`timestamp`; dataset.fields maps other column names); found {reader.fieldnames}."
        )
    items = []
    for raw_row in reader:
        where = f"dataset file {path}, line {reader.line_num}"
        row = _mapped(raw_row, fields, where)
        obj: dict[str, Any] = {"prompt": row["prompt"]}
        if isinstance(row.get("reply"), str):
            obj["reply"] = row["reply"]
        for key, conv in (("output_len", int), ("timestamp", float)):
            raw = (row.get(key) or "").strip()
            if raw:
                try:
                    obj[key] = conv(raw)
                except ValueError:
                    raise ConfigError(f"{where}: `{key}` must be a number, not {raw!r}.") from None
        items.append(_item(obj, where))
    return items


def _item(obj: dict[str, Any], where: str) -> RawItem:
    out = obj.get("output_len")
    if out is not None and (not isinstance(out, int) or isinstance(out, bool) or out < 1):
        raise ConfigError(f"{where}: `output_len` must be a positive integer, not {out!r}.")
    ts = obj.get("timestamp")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)):
        raise ConfigError(f"{where}: `timestamp` must be a number of seconds, not {ts!r}.")
    ts_s = float(ts) if ts is not None else None
    reply = obj.get("reply")
    if reply is not None and not isinstance(reply, str):
        raise ConfigError(f"{where}: `reply` (the answer whose tokens are the output length) must be text.")
    if isinstance(obj.get("prompt"), str):
        return RawItem(obj["prompt"], None, out, output_text=reply, timestamp_s=ts_s)
    msgs = obj.get("messages")
    if isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs):
        turns = [(m.get("role", m.get("from")), m.get("content", m.get("value"))) for m in msgs]
        if all(isinstance(r, str) and isinstance(c, str) for r, c in turns):
            messages = tuple({"role": _ROLES.get(str(r).lower(), str(r)), "content": str(c)}
                             for r, c in turns)
            return RawItem(None, messages, out, output_text=reply, timestamp_s=ts_s)
    raise ConfigError(f"{where}: needs `prompt` (a string) or `messages` (a list of {{role, content}} or "
                      "{{from, value}}); dataset.fields maps other column names.")


# ---- counting, filtering, sampling ---------------------------------------------------------------------


def from_items(
    items: list[RawItem],
    spec: DatasetSpec,
    settings: Settings,
    counter: TokenCounter,
    rng: np.random.Generator,
    *,
    size: int | None,
    keep_order: bool = False,
    origin_s: float | None = None,
) -> Dataset:
    """Count, filter by ``spec``'s bounds and keep ``size`` samples (None: all that pass).

    Order of visiting: shuffled with ``rng`` unless ``keep_order``. ``arrival_ns`` is the item's
    timestamp minus ``origin_s`` (default: the earliest kept timestamp); items without one get None.
    """
    order = np.arange(len(items)) if keep_order else rng.permutation(len(items))
    want = len(items) if size is None else size
    kept: list[tuple[RawItem, int, int]] = []
    for start in range(0, len(order), _BATCH):
        batch = [items[i] for i in order[start:start + _BATCH].tolist()]
        ins = counter.count([it.text for it in batch])
        replies = [it.output_text for it in batch if it.output_text is not None]
        reply_counts = iter(counter.count(replies) if replies else [])
        drawn = draw_lengths(settings.output_len, len(batch), rng)
        for k, (it, n_in) in enumerate(zip(batch, ins, strict=True)):
            n_reply = next(reply_counts) if it.output_text is not None else None
            n_out = it.output_len if it.output_len is not None else (
                n_reply if n_reply is not None else int(drawn[k]))
            if _within(n_in, spec.min_input, spec.max_input) and _within(n_out, spec.min_output,
                                                                        spec.max_output):
                kept.append((it, n_in, n_out))
                if len(kept) == want:
                    break
        if len(kept) == want:
            break
    if not kept:
        raise ConfigError(
            f"dataset file {spec.path}: no prompt is within the length bounds (input "
            f"{spec.min_input}..{spec.max_input or 'any'}, output "
            f"{spec.min_output}..{spec.max_output or 'any'} tokens, counted with {counter.name})."
        )
    stamps = [it.timestamp_s for it, _, _ in kept if it.timestamp_s is not None]
    origin = origin_s if origin_s is not None else min(stamps) if stamps else 0.0
    samples = [
        Sample(it.prompt, it.messages, n_in, max(1, n_out),
               arrival_ns=None if it.timestamp_s is None else round((it.timestamp_s - origin) * 1e9))
        for it, n_in, n_out in kept
    ]
    return Dataset(samples, counter.name, counter.exact)


def _within(n: int, lo: int, hi: int | None) -> bool:
    return n >= lo and (hi is None or n <= hi)


def load_file(
    spec: DatasetSpec, settings: Settings, counter: TokenCounter, rng: np.random.Generator,
    size: int | None = None,
) -> Dataset:
    """``spec``'s file as a Dataset of ``spec.num_samples`` (else ``size``; None: every usable one)."""
    return from_items(read_items(spec.format, spec.path, spec.fields), spec, settings, counter, rng,
                      size=spec.num_samples or size)

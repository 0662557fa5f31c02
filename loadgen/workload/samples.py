"""Samples: prompts with known input token counts and the output length to ask for.

Synthetic prompts are random words from a pool in which every word is one token for the tokenizer in
use (see :mod:`loadgen.workload.tokens`), so their token counts are exact when the counter is exact. Lengths
are
drawn from the settings' distributions with the run seed's ``lengths`` stream and the words with its
``prompts`` stream, so the same seed gives the same prompts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen.errors import ConfigError
from loadgen.settings import Settings
from loadgen.specs import LengthDist
from loadgen.workload.tokens import TokenCounter, single_token_words


@dataclass(frozen=True, slots=True)
class Sample:
    """One prompt. ``input_tokens`` is exact when the dataset's ``exact`` flag says so.

    ``group`` is the shared-prefix group of the prompt (None: no shared prefix); ``arrival_ns`` is the
    due time from the run start that a trace or a timestamped file gave it (None: the scenario decides).
    """

    prompt: str | None
    messages: tuple[dict[str, Any], ...] | None
    input_tokens: int
    output_tokens: int
    group: int | None = None
    arrival_ns: int | None = None
    cls: str | None = None  # the traffic class (loadgen.workload.mix); None: no mix
    model: str | None = None  # the model or LoRA adapter this prompt names; None: the run's
    # a pooling request's further texts: embeddings inputs after the prompt, or rerank/score documents
    # (loadgen.workload.pooling); None: the prompt alone
    inputs: tuple[str, ...] | None = None
    endpoint: str | None = None  # a traffic class's own endpoint (loadgen.workload.mix); None: the run's

    def as_messages(self) -> list[dict[str, Any]]:
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]

    def as_prompt(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return "\n".join(m.get("content", "") for m in self.messages or ())


@dataclass(frozen=True)
class Dataset:
    samples: list[Sample]
    counter: str  # which counter gave input_tokens
    exact: bool  # whether input_tokens are exact counts
    images: dict[str, Any] | None = None  # what loadgen.workload.images attached (count, bytes, source)
    classes: dict[str, int] | None = None  # prompts per traffic class (loadgen.workload.mix)
    pooling: dict[str, Any] | None = None  # texts per pooling request (loadgen.workload.pooling)

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self) -> dict[str, Any]:
        ins = np.array([s.input_tokens for s in self.samples])
        outs = np.array([s.output_tokens for s in self.samples])
        return {
            "size": len(self.samples),
            "token_counter": self.counter,
            "input_tokens_exact": self.exact,
            "input_tokens_mean": float(ins.mean()),
            "output_tokens_mean": float(outs.mean()),
            **({"images": self.images} if self.images else {}),
            **({"classes": self.classes} if self.classes else {}),
            **({"pooling": self.pooling} if self.pooling else {}),
        }


def draw_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` integer lengths from ``dist``, clipped to [min, max]."""
    lo, hi = dist.min, dist.upper
    if dist.kind == "fixed":
        values = np.full(n, dist.mean, dtype=np.float64)
    elif dist.kind == "uniform":
        values = rng.integers(lo, hi + 1, size=n).astype(np.float64)
    elif dist.kind == "normal":
        values = rng.normal(dist.mean, dist.std, size=n)
    else:  # lognormal with the given mean and std of the lengths themselves
        var = dist.std**2
        sigma2 = np.log1p(var / dist.mean**2)
        mu = np.log(dist.mean) - sigma2 / 2
        values = rng.lognormal(mu, np.sqrt(sigma2), size=n)
    return np.clip(np.rint(values), lo, hi).astype(np.int64)


def synthetic(
    settings: Settings, size: int, counter: TokenCounter, rngs: dict[str, np.random.Generator]
) -> Dataset:
    """``size`` prompts of exactly drawn lengths (exact when the counter is)."""
    pool, overhead = single_token_words(counter)
    n = size
    # Input and output lengths from two children of the ``lengths`` stream, each drawn in sequence, so
    # prompt k does not depend on how many prompts are made: a longer or faster run sends the same
    # prompts first (numpy's samplers draw element by element; tests/test_datasets.py checks it).
    in_rng, out_rng = rngs["lengths"].spawn(2)
    in_lens = draw_lengths(settings.input_len, n, in_rng)
    out_lens = draw_lengths(settings.output_len, n, out_rng)
    words = np.array(pool)
    samples = []
    for k in range(n):
        n_words = max(1, int(in_lens[k]) - overhead)
        prompt = " ".join(words[rngs["prompts"].integers(0, len(words), size=n_words)])
        samples.append(Sample(prompt, None, n_words + overhead, int(out_lens[k])))
    if counter.exact and samples:
        # Verify (cheaply, on a few) that the pool arithmetic holds for this tokenizer.
        check = samples[: min(8, len(samples))]
        got = counter.count([s.prompt or "" for s in check])
        bad = [(s.input_tokens, g) for s, g in zip(check, got, strict=True) if s.input_tokens != g]
        if bad:
            samples = [
                Sample(s.prompt, None, c, s.output_tokens)
                for s, c in zip(samples, counter.count([s.prompt or "" for s in samples]), strict=True)
            ]
    return Dataset(samples, counter.name, counter.exact)


def word_prompt(words: np.ndarray, n_words: int, rng: np.random.Generator) -> str:
    """``n_words`` random words of ``words`` (single-token pool words) joined by single spaces."""
    return " ".join(words[rng.integers(0, len(words), size=n_words)])


def verify_counts(samples: list[Sample], counter: TokenCounter) -> list[Sample]:
    """Samples whose ``input_tokens`` agree with ``counter``.

    Built prompts carry counts from the pool arithmetic (N pool words = N + overhead tokens); an exact
    counter checks a few, and if any disagree every prompt is re-counted (so counts are never wrong).
    """
    if not counter.exact or not samples:
        return samples
    check = samples[: min(8, len(samples))]
    got = counter.count([s.as_prompt() for s in check])
    if all(s.input_tokens == g for s, g in zip(check, got, strict=True)):
        return samples
    counts = counter.count([s.as_prompt() for s in samples])
    return [dataclasses.replace(s, input_tokens=c) for s, c in zip(samples, counts, strict=True)]


def from_jsonl(path: Path, settings: Settings, counter: TokenCounter, rng: np.random.Generator) -> Dataset:
    """A JSONL prompt file: one ``{"prompt": str | "messages": [...], "output_len": int}`` per line."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"prompts file {path}: {exc.strerror}. Check the path.") from exc
    raw: list[tuple[str | None, tuple[dict[str, str], ...] | None, int | None]] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"prompts file {path}, line {lineno}: not valid JSON ({exc}).") from exc
        raw.append(_parse_item(obj, path, lineno))
    if not raw:
        raise ConfigError(f"prompts file {path} has no prompts.")
    raw = [raw[i] for i in rng.permutation(len(raw)).tolist()]  # the seed's order of the file
    texts = [p if p is not None else "\n".join(m["content"] for m in msgs or ()) for p, msgs, _ in raw]
    counts = counter.count(texts)
    default_out = draw_lengths(settings.output_len, len(raw), rng)
    samples = [
        Sample(p, msgs, c, out if out is not None else int(default_out[i]))
        for i, ((p, msgs, out), c) in enumerate(zip(raw, counts, strict=True))
    ]
    return Dataset(samples, counter.name, counter.exact)


def _parse_item(
    obj: Any, path: Path, lineno: int
) -> tuple[str | None, tuple[dict[str, str], ...] | None, int | None]:
    where = f"prompts file {path}, line {lineno}"
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object with `prompt` or `messages`.")
    out = obj.get("output_len")
    if out is not None and (not isinstance(out, int) or isinstance(out, bool) or out < 1):
        raise ConfigError(f"{where}: `output_len` must be a positive integer, not {out!r}.")
    if isinstance(obj.get("prompt"), str):
        return obj["prompt"], None, out
    msgs = obj.get("messages")
    if isinstance(msgs, list) and msgs and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in msgs
    ):
        return None, tuple({"role": m["role"], "content": m["content"]} for m in msgs), out
    raise ConfigError(
        f"{where}: needs `prompt` (a string) or `messages` (a list of {{role, content}} strings)."
    )

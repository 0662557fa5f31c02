"""Shared-prefix prompts, to measure a server's prefix cache, and TTFT per prefix group.

``prefix: {groups: G, length: L, suffix_len: S}`` builds G random prefixes of exactly L tokens; the
prompts are passes of G, each pass using every prefix once in an order shuffled by the seed, each
prefix followed by a unique random suffix of S tokens (a length distribution; default the run's
``input_len``). Each sample records its group in ``Sample.group``. Every group's first request fills the
cache and later ones can hit it, so the difference between :func:`ttft_by_group`'s ``first`` and the
rest is what the cache buys.

For a baseline without any reuse, use ``groups`` equal to the number of prompts (``dataset_size``):
same lengths, no prefix seen twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from loadgen.settings import Settings
from loadgen.specs import PrefixSpec
from loadgen.workload.samples import Dataset, Sample, draw_lengths, verify_counts, word_prompt
from loadgen.workload.tokens import TokenCounter, single_token_words


def shared_prefix(
    settings: Settings, spec: PrefixSpec, size: int, counter: TokenCounter,
    rngs: dict[str, np.random.Generator],
) -> Dataset:
    """``size`` prompts of ``spec.length`` shared + unique suffix tokens (exact when the counter is).

    Prefixes and suffixes come from the ``prompts`` stream, lengths from ``lengths``.
    """
    pool, overhead = single_token_words(counter)
    words = np.array(pool)
    prng = rngs["prompts"]
    n_groups = min(spec.groups, size)
    prefixes = [word_prompt(words, spec.length, prng) for _ in range(n_groups)]
    # one child stream each for suffix lengths, output lengths and groups, drawn in sequence: sample k
    # is the same whatever the number of samples (see loadgen.workload.samples.synthetic)
    suffix_rng, out_rng, group_rng = rngs["lengths"].spawn(3)
    suffix = draw_lengths(spec.suffix_len or settings.input_len, size, suffix_rng)
    out = draw_lengths(settings.output_len, size, out_rng)
    # passes of shuffled groups: each pass uses every group once, in the seed's order
    passes = -(-size // n_groups)
    groups = np.concatenate([group_rng.permutation(n_groups) for _ in range(passes)])
    samples = []
    for k in range(size):
        g = int(groups[k])
        n_suffix = int(suffix[k])
        prompt = f"{prefixes[g]} {word_prompt(words, n_suffix, prng)}"
        samples.append(Sample(prompt, None, spec.length + n_suffix + overhead, int(out[k]), group=g))
    return Dataset(verify_counts(samples, counter), counter.name, counter.exact)


class _Rec(Protocol):
    sample: int
    sent_ns: int
    first_token_ns: int | None
    error_class: str | None
    warmup: bool


def ttft_by_group(records: Iterable[_Rec], sample_groups: Sequence[int | None]) -> dict[int, dict[str, Any]]:
    """TTFT (ms, from the send time) of completed, measured requests, per prefix group.

    ``sample_groups[i]`` is the group of sample i (``[s.group for s in dataset.samples]``); samples
    without a group are left out. Per group: ``count``; ``first_ms``, the TTFT of the group's earliest
    sent request (the one that met a cold cache); ``rest`` with ``mean``/``p50``/``p90``/``p99`` over the
    later ones (linear-interpolated percentiles, as :mod:`loadgen.metrics.latency`), or None when there are
    none.
    """
    per: dict[int, list[tuple[int, float]]] = {}
    for r in records:
        if r.warmup or r.error_class is not None or r.first_token_ns is None:
            continue
        g = sample_groups[r.sample]
        if g is None:
            continue
        per.setdefault(g, []).append((r.sent_ns, (r.first_token_ns - r.sent_ns) / 1e6))
    out: dict[int, dict[str, Any]] = {}
    for g in sorted(per):
        ordered = [t for _, t in sorted(per[g])]
        rest = np.array(ordered[1:])
        out[g] = {
            "count": len(ordered),
            "first_ms": ordered[0],
            "rest": None if not len(rest) else {
                "mean": float(rest.mean()),
                **{f"p{p}": float(np.percentile(rest, p)) for p in (50, 90, 99)},
            },
        }
    return out

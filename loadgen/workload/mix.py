"""Traffic mixes: one prompt set drawn from several classes, each with its share, lengths, model and SLO.

::

    classes:
      - {name: interactive, share: 0.8, input_len: 128, output_len: 128, slo: {ttft_ms: 200}}
      - {name: batch, share: 0.2, input_len: 2048, output_len: 512, slo: {e2e_ms: 30000}}

Prompt k's class is drawn from the shares with the run's seed, so the queries of the one merged
schedule (whatever the scenario: Poisson, closed loop, ...) fall in each class with binomial error
around its share. Each class's prompts are the synthetic prompts its lengths give, sent to its own
``endpoint`` when it names one (embeddings beside chat: one request shape per class). Results per class
come from :func:`loadgen.metrics.classes.class_results`.

Classes with their own ``qps`` (and ``burstiness``) are arrival processes of their own: the schedule
(:mod:`loadgen.schedule.classes`) merges them and names each query's class, so here each class only
makes enough prompts (its expected share, with a margin) for its queries to take in turn.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from loadgen.settings import Settings
from loadgen.workload.samples import Dataset, Sample, synthetic
from loadgen.workload.tokens import TokenCounter

__all__ = ["mixed"]


def mixed(settings: Settings, size: int, counter: TokenCounter, rngs: dict[str, np.random.Generator]
          ) -> Dataset:
    """``size`` prompts, each of a class drawn from ``settings.classes`` shares."""
    classes = settings.classes or []
    shares = np.array(settings.class_shares(), dtype=np.float64)
    if settings.class_rates() is None:
        which = rngs["lengths"].spawn(1)[0].choice(len(classes), size=size, p=shares)
    else:  # own arrivals: the schedule says which class each query is; enough prompts of each, in blocks
        which = np.repeat(np.arange(len(classes)), [math.ceil(size * x * 1.2) + 8 for x in shares])
    out: list[Sample | None] = [None] * len(which)
    counts: dict[str, int] = {}
    for k, c in enumerate(classes):
        where = np.flatnonzero(which == k)
        counts[c.name] = len(where)
        if not len(where):
            continue
        own = settings.model_copy(update={"input_len": c.input_len or settings.input_len,
                                          "output_len": c.output_len or settings.output_len})
        made = synthetic(own, len(where), counter, rngs)
        for i, s in zip(where, made.samples, strict=True):
            out[i] = replace(s, cls=c.name, model=c.model, endpoint=c.endpoint)
    samples = [s for s in out if s is not None]
    return Dataset(samples, counter.name, counter.exact, classes=counts)

"""The one dispatcher over the prompt sources: a trace replay, a dataset file, shared prefixes, a JSONL
prompts file, or synthetic prompts, sized for the run without repeating a prompt."""

from __future__ import annotations

import math

import numpy as np

from loadgen.settings import Scenario, Settings
from loadgen.workload.files import load_file
from loadgen.workload.prefix import shared_prefix
from loadgen.workload.samples import Dataset, from_jsonl, synthetic
from loadgen.workload.tokens import TokenCounter
from loadgen.workload.traces import replay_dataset

__all__ = ["MAX_PROMPTS", "expected_queries", "load_dataset"]

MAX_PROMPTS = 50_000  # default cap on the prompt set (one per expected query below it)


def expected_queries(settings: Settings) -> int:
    """A good guess of the number of queries, used to size the prompt set (no prompt repeats)."""
    sc = settings.scenario
    if sc in (Scenario.SERVER, Scenario.CONSTANT):
        return max(settings.num_requests, math.ceil((settings.qps or 1) * settings.duration_s) + 16)
    if sc == Scenario.MULTISTREAM:
        return settings.num_requests * settings.samples_per_query
    return settings.num_requests


def load_dataset(settings: Settings, counter: TokenCounter, rngs: dict[str, np.random.Generator]) -> Dataset:
    """The run's prompts (see :func:`_prompts`), with ``images:`` attached when the settings ask, and a
    pooling request's further texts (``pooling:``; rerank and score always have documents)."""
    dataset = _prompts(settings, counter, rngs)
    ends = {settings.endpoint, *(c.endpoint for c in settings.classes or ())}
    if settings.pooling is not None or ends & {"rerank", "score"}:
        from loadgen.workload.pooling import with_inputs

        dataset = with_inputs(dataset, settings, counter)
    if settings.images is None:
        return dataset
    from loadgen.workload.images import with_images

    return with_images(dataset, settings.images, settings.seed)


def _prompts(settings: Settings, counter: TokenCounter, rngs: dict[str, np.random.Generator]) -> Dataset:
    """The run's prompts from whichever source the settings name (one at most; synthetic otherwise).

    ``replay`` → :func:`loadgen.workload.traces.replay_dataset`; ``dataset`` → the file; ``prefix`` →
    :func:`loadgen.workload.prefix.shared_prefix`; ``prompts_file`` → JSONL shorthand; else synthetic prompts.
    """
    size = settings.dataset_size or min(expected_queries(settings), MAX_PROMPTS)
    if settings.scenario == Scenario.REPLAY:
        return replay_dataset(settings, counter, rngs)
    if settings.dataset is not None:
        return load_file(settings.dataset, settings, counter, rngs["lengths"], size)
    if settings.prefix is not None:
        return shared_prefix(settings, settings.prefix, size, counter, rngs)
    if settings.prompts_file is not None:
        return from_jsonl(settings.prompts_file, settings, counter, rngs["lengths"])
    if settings.classes is not None:
        from loadgen.workload.mix import mixed

        return mixed(settings, size, counter, rngs)
    return synthetic(settings, size, counter, rngs)

"""Warm-up: requests sent before the clock starts, with prompts the measured trace does not send.

A server with a prefix cache remembers what it has seen. Warming it up with the prompts the first
measured queries carry would turn those queries into cache hits and flatter their TTFT, so the warm-up
prompts are kept apart from the measured ones:

* synthetic prompts (also for shared-prefix, trace-replay and multi-turn runs, whose warm-up needs no
  shared prefix or history): drawn with the root seed's *warm-up* stream, a child of the same
  ``SeedSequence`` spawned after the measured streams (:data:`loadgen.schedule.trace.SEED_STREAMS`), so a
  seed's measured trace is the same with and without ``--warmup``. A drawn prompt equal to a measured
  one is drawn again;
* prompt files: first the loaded samples the measured order never sends, then (``dataset:`` files)
  entries of the file outside the loaded set that pass its bounds. Only when the file holds no other
  usable prompt do warm-up prompts repeat measured ones, those the measured order sends last first;
  ``warmup.repeated`` in ``report.json`` counts them.

Warm-up records (``warmup.jsonl``) carry ``sample`` indices into the warm-up prompt set, not the
measured dataset.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.client.client import Client
from loadgen.engine.issuer import Issuer
from loadgen.errors import ConfigError
from loadgen.records import RecordWriter
from loadgen.schedule.trace import SEED_STREAMS, Trace
from loadgen.settings import Scenario, Settings
from loadgen.workload.samples import Dataset, Sample, synthetic
from loadgen.workload.tokens import TokenCounter

_MAX_DRAWS = 10  # synthetic rounds before accepting collisions (only tiny prompts can collide at all)


def warmup_rngs(seed: int) -> dict[str, np.random.Generator]:
    """The warm-up's generators: the root seed's next child after the measured streams, spawned again.

    ``SeedSequence(seed).spawn(k + 1)[:k]`` are exactly the children :func:`seeded_rngs` uses, so
    drawing warm-up prompts never moves the measured streams.
    """
    child = np.random.SeedSequence(seed).spawn(len(SEED_STREAMS) + 1)[-1]
    return {n: np.random.default_rng(c) for n, c in zip(SEED_STREAMS, child.spawn(len(SEED_STREAMS)),
                                                        strict=True)}


def _text(sample: Sample) -> str:
    return sample.as_prompt()


def warmup_dataset(
    settings: Settings, dataset: Dataset, trace: Trace, counter: TokenCounter
) -> tuple[Dataset, dict[str, Any]]:
    """``settings.warmup`` prompts apart from those ``trace`` sends, and a description for the report.

    The description has ``requests``, ``source`` (``synthetic`` or ``file``) and ``repeated`` (how many
    warm-up prompts are also measured prompts; 0 unless a prompt file has nothing else to offer).
    """
    n = settings.warmup
    flat = trace.order.ravel()
    used, first = np.unique(flat, return_index=True)
    by_first_use = used[np.argsort(first)].tolist()  # measured samples, in the order they are first sent
    measured = {_text(dataset.samples[i]) for i in by_first_use}
    rngs = warmup_rngs(settings.seed)
    if settings.dataset is None and settings.prompts_file is None:
        samples = _fresh_synthetic(settings, n, counter, rngs, measured)
        source = "synthetic"
    else:
        used_set = set(by_first_use)
        samples = [s for i, s in enumerate(dataset.samples) if i not in used_set and _text(s) not in measured]
        samples = _distinct(samples)[:n]
        if len(samples) < n and settings.dataset is not None:
            taken = measured | {_text(s) for s in samples}
            samples += _more_from_file(settings, counter, rngs["lengths"], taken, n - len(samples))
        source = "file"
    repeated = 0
    if len(samples) < n:  # the file has nothing else: repeat the measured prompts sent last
        extra = [dataset.samples[i] for i in reversed(by_first_use)]
        while len(samples) < n and extra:
            take = extra[: n - len(samples)]
            samples += take
            repeated += len(take)
    warm = Dataset(samples, dataset.counter, dataset.exact)
    return warm, {"requests": n, "source": source, "repeated": repeated}


def _distinct(samples: list[Sample]) -> list[Sample]:
    seen: set[str] = set()
    out = []
    for s in samples:
        if (t := _text(s)) not in seen:
            seen.add(t)
            out.append(s)
    return out


def _fresh_synthetic(
    settings: Settings, n: int, counter: TokenCounter, rngs: dict[str, np.random.Generator],
    measured: set[str],
) -> list[Sample]:
    out: list[Sample] = []
    taken = set(measured)
    clashes: list[Sample] = []
    for _ in range(_MAX_DRAWS):
        for s in synthetic(settings, n - len(out), counter, rngs).samples:
            if _text(s) in taken:
                clashes.append(s)
            else:
                taken.add(_text(s))
                out.append(s)
        if len(out) == n:
            return out
    return out + clashes[: n - len(out)]  # one-word prompts from a small pool: nothing else exists


def _more_from_file(
    settings: Settings, counter: TokenCounter, rng: np.random.Generator, taken: set[str], n: int
) -> list[Sample]:
    """Up to ``n`` entries of the ``dataset:`` file whose text is not in ``taken``, within its bounds."""
    from loadgen.workload.files import from_items, read_items

    spec = settings.dataset
    assert spec is not None
    items = [it for it in read_items(spec.format, spec.path, spec.fields) if it.text not in taken]
    if not items:
        return []
    try:
        extra = from_items(items, spec, settings, counter, rng, size=n)
    except ConfigError:  # none of the others is within the bounds
        return []
    return _distinct(extra.samples)[:n]


async def run_warmup(settings: Settings, client: Client, warm: Dataset, trace: Trace, out_dir: Path) -> None:
    """Send every warm-up prompt once (closed loop, a few at a time) into ``warmup.jsonl``."""
    n = len(warm)
    streams = max(1, min(n, trace.streams * trace.samples_per_query if not trace.open_loop else 8))
    plan = Trace(
        scenario=Scenario.CONCURRENCY, open_loop=False, offsets_ns=np.zeros(0, dtype=np.int64),
        order=np.arange(n, dtype=np.int64).reshape(-1, 1), streams=streams, min_queries=n,
        min_duration_ns=0, hard_stop_ns=int(settings.request_timeout_s * 1e9 * max(1, n)),
    )
    client.t0_ns = time.perf_counter_ns()
    with RecordWriter(out_dir / "warmup.jsonl") as writer:
        await Issuer(client, warm, plan, writer.write, warmup=True).run()

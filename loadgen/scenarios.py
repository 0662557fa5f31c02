"""Scenarios as traces: when each query is due and which samples it carries, fixed before the clock.

The whole trace is generated from the run seed **before** the clock starts (MLPerf LoadGen does the
same). The root seed spawns independent streams (``order``, ``schedule``, ``lengths``, ``prompts``), so
changing the QPS changes the schedule but not the sample order or the prompts.

Open-loop scenarios (Server, Offline, constant rate) get absolute offsets from the run start; the
issuer sends query *i* at ``t0 + offsets_ns[i]`` whatever the server is doing. Closed-loop scenarios
(SingleStream, MultiStream, concurrency) have no offsets: a query is due when its stream's previous
query completes, and they stop once both the query count and the duration are met (or at the hard stop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loadgen.arrivals import RateProfile, renewal_offsets
from loadgen.datasets import Dataset
from loadgen.settings import Scenario, Settings

SEED_STREAMS = ("order", "schedule", "lengths", "prompts")
MAX_OPEN_LOOP_QUERIES = 10_000_000
_NS = 1_000_000_000


def seeded_rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators derived from one root seed (same seed, same trace)."""
    children = np.random.SeedSequence(seed).spawn(len(SEED_STREAMS))
    return {name: np.random.default_rng(c) for name, c in zip(SEED_STREAMS, children, strict=True)}


def poisson_offsets(
    qps: float, min_count: int, min_duration_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Arrival offsets (int ns) of a Poisson process at ``qps``, until both minimums are met.

    Inter-arrival gaps are exponential with mean ``1/qps``; the first query is due one gap after the
    start, as in LoadGen. Generation stops at the first query that makes the count at least
    ``min_count`` *and* is scheduled at or after ``min_duration_s``.
    """
    gaps: list[np.ndarray] = []
    total = 0.0
    count = 0
    expect = max(min_count, int(qps * min_duration_s * 1.05) + 16)
    while True:
        block = rng.exponential(1.0 / qps, size=expect)
        gaps.append(block)
        times = total + np.cumsum(block)
        ok = np.nonzero((np.arange(count + 1, count + 1 + len(block)) >= min_count)
                        & (times >= min_duration_s))[0]
        if len(ok):
            cut = int(ok[0]) + 1
            gaps[-1] = block[:cut]
            break
        total = float(times[-1])
        count += len(block)
        if count > MAX_OPEN_LOOP_QUERIES:
            raise ValueError("schedule would exceed 10 million queries; lower qps or duration")
    return np.rint(np.cumsum(np.concatenate(gaps)) * _NS).astype(np.int64)


def constant_offsets(qps: float, min_count: int, min_duration_s: float) -> np.ndarray:
    """Offsets ``i/qps`` for i = 1…n, n the smallest count meeting both minimums."""
    n = max(min_count, math.ceil(min_duration_s * qps - 1e-9))
    if n > MAX_OPEN_LOOP_QUERIES:
        raise ValueError("schedule would exceed 10 million queries; lower qps or duration")
    return np.rint(np.arange(1, n + 1) * (_NS / qps)).astype(np.int64)


@dataclass(frozen=True)
class Trace:
    """What the issuer follows. ``order[q]`` is the sample of query q (row of samples for MultiStream)."""

    scenario: Scenario
    open_loop: bool
    offsets_ns: np.ndarray  # open loop: due time of each query from t0 (int64); closed loop: empty
    order: np.ndarray  # (queries, samples_per_query) sample indices; closed loops cycle through it
    streams: int  # closed loop: queries outstanding at once
    min_queries: int
    min_duration_ns: int
    hard_stop_ns: int

    @property
    def samples_per_query(self) -> int:
        return int(self.order.shape[1])

    @property
    def planned_queries(self) -> int | None:
        return len(self.offsets_ns) if self.open_loop else None

    def samples_of(self, query: int) -> np.ndarray:
        return self.order[query % len(self.order)]


def expected_queries(settings: Settings) -> int:
    """A good guess of the number of queries, used to size the prompt set (no prompt repeats)."""
    sc = settings.scenario
    if sc in (Scenario.SERVER, Scenario.CONSTANT):
        return max(settings.num_requests, math.ceil((settings.qps or 1) * settings.duration_s) + 16)
    if sc == Scenario.MULTISTREAM:
        return settings.num_requests * settings.samples_per_query
    return settings.num_requests


def server_offsets(settings: Settings, rng: np.random.Generator) -> np.ndarray:
    """The Server scenario's schedule: Poisson at ``qps``, or the ``arrival:`` block's process."""
    qps = settings.qps or 0.0
    arr = settings.arrival
    if arr is None or (arr.burstiness == 1.0 and arr.ramp is None):
        return poisson_offsets(qps, settings.num_requests, settings.duration_s, rng)
    ramp = arr.ramp
    profile = RateProfile(qps) if ramp is None else RateProfile(
        qps, start_qps=ramp.start_qps, ramp_s=ramp.duration_s, steps=ramp.steps
    )
    return renewal_offsets(profile, arr.burstiness, settings.num_requests, settings.duration_s, rng)


def replay_trace(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and order of a replay: sample i is sent at its own ``arrival_ns``, in time order."""
    arrivals = [s.arrival_ns for s in dataset.samples]
    if not arrivals or any(a is None for a in arrivals):
        raise ValueError("trace replay needs an arrival time on every sample (a timestamp column)")
    times = np.array(arrivals, dtype=np.int64)
    order = np.argsort(times, kind="stable")
    return times[order], order.reshape(-1, 1)


def build_trace(
    settings: Settings,
    dataset_size: int,
    rngs: dict[str, np.random.Generator],
    dataset: Dataset | None = None,
) -> Trace:
    """The run's trace. ``dataset`` is needed only for ``replay`` (its samples carry the times)."""
    sc = settings.scenario
    min_ns = int(settings.duration_s * _NS)
    hard_ns = int(settings.hard_stop_s * _NS)
    if sc == Scenario.REPLAY:
        if dataset is None:
            raise ValueError("build_trace(replay) needs the dataset: its samples carry the arrival times")
        offsets, order = replay_trace(dataset)
        # a replay is complete when every row was sent: the trace itself is the minimum
        last = int(offsets[-1]) if len(offsets) else 0
        return Trace(sc, True, offsets, order, 1, len(offsets), last, max(hard_ns, last))
    if sc == Scenario.SERVER:
        offsets = server_offsets(settings, rngs["schedule"])
    elif sc == Scenario.CONSTANT:
        offsets = constant_offsets(settings.qps or 0.0, settings.num_requests, settings.duration_s)
    elif sc == Scenario.OFFLINE:
        offsets = np.zeros(settings.num_requests, dtype=np.int64)
    else:
        offsets = np.zeros(0, dtype=np.int64)
    spq = settings.samples_per_query if sc == Scenario.MULTISTREAM else 1
    n_queries = len(offsets) if sc.open_loop else max(settings.num_requests, 1)
    order = _sample_order(n_queries * spq, dataset_size, rngs["order"]).reshape(n_queries, spq)
    streams = {Scenario.CONCURRENCY: settings.concurrency}.get(sc, 1)
    return Trace(sc, sc.open_loop, offsets, order, streams, settings.num_requests, min_ns, hard_ns)


def _sample_order(n: int, dataset_size: int, rng: np.random.Generator) -> np.ndarray:
    """Sample indices: the dataset in its own order, then (when the run needs more queries than there
    are samples) whole shuffled passes, so every sample is used evenly.

    The first pass is not shuffled because every source already is, by the seed (synthetic prompts are
    independent draws, files are sampled in a seeded order), and because sample k of a source does not
    depend on how many samples it made: so a run at another rate or duration sends the same prompts,
    in the same order, as far as both go (as LoadGen, whose sample order does not depend on the QPS).
    """
    first = np.arange(min(n, dataset_size), dtype=np.int64)
    passes = math.ceil(n / dataset_size) - 1
    return np.concatenate([first, *(rng.permutation(dataset_size) for _ in range(passes))])[:n]

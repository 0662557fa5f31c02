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

from loadgen.errors import ConfigError
from loadgen.schedule.arrivals import (
    MAX_QUERIES,
    RateProfile,
    constant_offsets,
    poisson_offsets,
    renewal_offsets,
)
from loadgen.schedule.length import check_max_duration
from loadgen.settings import Scenario, Settings
from loadgen.workload.samples import Dataset
from loadgen.workload.sources import expected_queries

__all__ = [
    "MAX_QUERIES", "Trace", "build_trace", "cap_shares", "constant_offsets", "expected_queries",
    "poisson_offsets", "replay_trace", "seeded_rngs", "server_offsets",
]

SEED_STREAMS = ("order", "schedule", "lengths", "prompts")
_NS = 1_000_000_000


def seeded_rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators derived from one root seed (same seed, same trace)."""
    children = np.random.SeedSequence(seed).spawn(len(SEED_STREAMS))
    return {name: np.random.default_rng(c) for name, c in zip(SEED_STREAMS, children, strict=True)}


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
    # open loop: at most this many requests in flight (--max-concurrency); None: no cap
    max_in_flight: int | None = None

    @property
    def samples_per_query(self) -> int:
        return int(self.order.shape[1])

    @property
    def planned_queries(self) -> int | None:
        return len(self.offsets_ns) if self.open_loop else None

    def samples_of(self, query: int) -> np.ndarray:
        return self.order[query % len(self.order)]


def rate_profile(settings: Settings) -> RateProfile:
    """The Server scenario's rate over time: ``qps``, or the ``arrival.ramp`` rising to it."""
    ramp = settings.arrival.ramp if settings.arrival is not None else None
    qps = settings.qps or 0.0
    if ramp is None:
        return RateProfile(qps)
    return RateProfile(qps, start_qps=ramp.start_qps, ramp_s=ramp.duration_s, steps=ramp.steps)


def server_offsets(
    settings: Settings, rng: np.random.Generator, *, max_queries: int = MAX_QUERIES
) -> np.ndarray:
    """The Server scenario's schedule: Poisson at ``qps``, or the ``arrival:`` block's process."""
    arr = settings.arrival
    if arr is None or (arr.burstiness == 1.0 and arr.ramp is None):
        return poisson_offsets(settings.qps or 0.0, settings.num_requests, settings.duration_s, rng,
                               max_queries=max_queries)
    return renewal_offsets(rate_profile(settings), arr.burstiness, settings.num_requests,
                           settings.duration_s, rng, max_queries=max_queries)


def replay_trace(dataset: Dataset, *, max_queries: int = MAX_QUERIES) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and order of a replay: sample i is sent at its own ``arrival_ns``, in time order.

    Raises ConfigError when a sample has no arrival time or the window holds more than
    ``max_queries`` rows."""
    arrivals = [s.arrival_ns for s in dataset.samples]
    if not arrivals or any(a is None for a in arrivals):
        raise ConfigError(
            "trace replay needs an arrival time on every sample: give the dataset: file a `timestamp` "
            "column, or a replay: {format: azure|mooncake|burstgpt, path: FILE} trace"
        )
    if len(arrivals) > max_queries:
        raise ConfigError(
            f"the replay window holds {len(arrivals):,} rows, above the {max_queries:,} queries one run's "
            "schedule may hold: narrow it with replay.duration_s (and replay.start_s)"
        )
    times = np.array(arrivals, dtype=np.int64)
    order = np.argsort(times, kind="stable")
    return times[order], order.reshape(-1, 1)


def _check_count(settings: Settings, n: int, max_queries: int) -> None:
    if n > max_queries:
        per = " × samples_per_query" if settings.scenario == Scenario.MULTISTREAM else ""
        raise ConfigError(
            f"num_requests{per} is {n:,}, above the {max_queries:,} queries one run's schedule may hold: "
            "lower num_requests (--num-requests), or split the load into several runs"
        )


def build_trace(
    settings: Settings,
    dataset_size: int,
    rngs: dict[str, np.random.Generator],
    dataset: Dataset | None = None,
    *,
    max_queries: int = MAX_QUERIES,
) -> Trace:
    """The run's trace. ``dataset`` is needed only for ``replay`` (its samples carry the times).

    Holds at most ``max_queries`` queries (samples, for MultiStream): more raises ConfigError, before
    anything is drawn wherever the count is known up front (see :mod:`loadgen.schedule.arrivals`)."""
    sc = settings.scenario
    min_ns = int(settings.duration_s * _NS)
    hard_ns = int(settings.hard_stop_s * _NS)
    if sc == Scenario.REPLAY:
        if dataset is None:
            raise ValueError("build_trace(replay) needs the dataset: its samples carry the arrival times")
        offsets, order = replay_trace(dataset, max_queries=max_queries)
        # a replay is complete when every row was sent: the trace itself is the minimum
        last = int(offsets[-1]) if len(offsets) else 0
        return Trace(sc, True, offsets, order, 1, len(offsets), last, max(hard_ns, last),
                     settings.max_concurrency)
    if sc == Scenario.SERVER and settings.class_rates() is not None:  # classes with their own arrivals
        if dataset is None:
            raise ValueError("build_trace(classes with qps) needs the dataset: its samples carry the class")
        from loadgen.schedule.classes import class_offsets

        offsets, order = class_offsets(settings, rngs["schedule"], dataset, max_queries=max_queries)
        check_max_duration(settings, int(offsets[-1]) / _NS, exact=True)
        return Trace(sc, True, offsets, order, 1, settings.num_requests, min_ns, hard_ns,
                     settings.max_concurrency)
    spq = settings.samples_per_query if sc == Scenario.MULTISTREAM else 1
    if sc in (Scenario.SERVER, Scenario.CONSTANT):
        offsets = (
            server_offsets(settings, rngs["schedule"], max_queries=max_queries) if sc == Scenario.SERVER
            else constant_offsets(settings.qps or 0.0, settings.num_requests, settings.duration_s,
                                  max_queries=max_queries)
        )
        check_max_duration(settings, int(offsets[-1]) / _NS, exact=True)
    elif sc == Scenario.OFFLINE:
        _check_count(settings, settings.num_requests, max_queries)
        offsets = np.zeros(settings.num_requests, dtype=np.int64)
    else:
        _check_count(settings, max(settings.num_requests, 1) * spq, max_queries)
        offsets = np.zeros(0, dtype=np.int64)
    n_queries = len(offsets) if sc.open_loop else max(settings.num_requests, 1)
    order = _sample_order(n_queries * spq, dataset_size, rngs["order"]).reshape(n_queries, spq)
    streams = {Scenario.CONCURRENCY: settings.concurrency}.get(sc, 1)
    cap = settings.max_concurrency if sc.open_loop else None
    return Trace(sc, sc.open_loop, offsets, order, streams, settings.num_requests, min_ns, hard_ns, cap)


def cap_shares(cap: int, parts: int) -> list[int]:
    """An in-flight cap split over ``parts`` worker processes as evenly as possible (they sum to
    ``cap``); callers use at most ``cap`` parts so that every share is at least 1."""
    return [cap // parts + (1 if w < cap % parts else 0) for w in range(parts)]


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

"""Traffic classes with arrival processes of their own, merged into the one open-loop schedule.

``classes: [{name, qps, burstiness, ...}, ...]`` (server scenario): class c's queries arrive as a
Poisson process at its rate (or a gamma renewal process of its ``burstiness``, the run's
``arrival.burstiness`` by default), drawn from its own child of the ``schedule`` stream, so changing one
class's rate leaves the others' arrival times as they were. The run's ``qps`` is the sum of the rates
(given, it scales them all by one factor). Each class's process runs until the run's minimum duration
and its share of the minimum query count are both met; the processes are merged in time order, and
query k carries the next prompt of the class that arrived k-th. So, unlike shares (each query's class a
coin toss on one Poisson process, which for Poisson classes is the same thing), a bursty batch class on
a smooth interactive one keeps its own bursts.
"""

from __future__ import annotations

import math

import numpy as np

from loadgen.errors import ConfigError
from loadgen.schedule.arrivals import MAX_QUERIES, RateProfile, poisson_offsets, renewal_offsets
from loadgen.settings import Settings
from loadgen.workload.samples import Dataset

__all__ = ["class_offsets"]


def class_offsets(settings: Settings, rng: np.random.Generator, dataset: Dataset, *,
                  max_queries: int = MAX_QUERIES) -> tuple[np.ndarray, np.ndarray]:
    """(offsets_ns, order) of the merged schedule: every class's arrivals in time order, and for each
    query the index of a prompt of its class (each class's prompts taken in turn)."""
    classes = settings.classes or []
    rates = settings.class_rates()
    assert rates is not None, "class_offsets needs classes with their own qps"
    shares = settings.class_shares()
    default = settings.arrival.burstiness if settings.arrival is not None else 1.0
    children = rng.spawn(len(classes))
    times, which = [], []
    for k, (c, rate) in enumerate(zip(classes, rates, strict=True)):
        burst = c.burstiness if c.burstiness is not None else default
        need = max(1, math.ceil(settings.num_requests * shares[k]))
        if burst == 1.0:
            got = poisson_offsets(rate, need, settings.duration_s, children[k], max_queries=max_queries)
        else:
            got = renewal_offsets(RateProfile(rate), burst, need, settings.duration_s, children[k],
                                  max_queries=max_queries)
        times.append(got)
        which.append(np.full(len(got), k, dtype=np.int64))
    offsets, cls = np.concatenate(times), np.concatenate(which)
    if len(offsets) > max_queries:
        raise ConfigError(f"the classes' schedules hold {len(offsets):,} queries together, above the "
                          f"{max_queries:,} one run may hold: lower the rates or --duration")
    by_time = np.argsort(offsets, kind="stable")
    offsets, cls = offsets[by_time], cls[by_time]
    order = np.empty(len(offsets), dtype=np.int64)
    for k, c in enumerate(classes):
        pool = np.array([i for i, s in enumerate(dataset.samples) if s.cls == c.name], dtype=np.int64)
        mine = np.flatnonzero(cls == k)
        if len(mine) and not len(pool):
            raise ConfigError(f"classes: {c.name} has queries but no prompts")
        order[mine] = pool[np.arange(len(mine)) % max(len(pool), 1)] if len(mine) else order[mine]
    return offsets, order.reshape(-1, 1)

"""LoadGen's statistics (``loadgen/results.cc``, ``early_stopping.cc``): its percentile and its
early-stopping bound, exactly, for :mod:`loadgen.metrics.mlperf`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

#: LoadGen's reported percentile grid (fractions).
MLPERF_PERCENTILES = (0.50, 0.90, 0.95, 0.97, 0.99, 0.999)
#: LoadGen's default ``min_duration`` (600 s), ns.
DEFAULT_MIN_DURATION_NS = 600 * 10**9


def percentile(sorted_values: Sequence[int] | npt.NDArray[Any], p: float) -> int:
    """LoadGen's percentile: ``sorted_values[int(n * p)]`` (p a fraction, 0-based, no interpolation),
    the index clamped to ``n − 1``. With n = 10, p = 0.9 gives the maximum. Raises ValueError when
    empty."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a fraction in [0, 1], not {p}")
    return int(sorted_values[min(int(n * p), n - 1)])


def _log_binom_cdf(t: int, n: int, q: float) -> float:
    """``log P[Binomial(n, q) ≤ t]``, in log space so n can be millions.

    ``log C(n, k)`` is the cumulative sum of ``log(n − j + 1) − log(j)`` (j = 1..k) anchored at
    ``math.lgamma``'s exact ``log C(n, t)``; the terms are combined with log-sum-exp.
    """
    if t >= n:
        return 0.0
    k = np.arange(1, t + 1, dtype=np.float64)
    log_c = np.concatenate(([0.0], np.cumsum(np.log(n - k + 1.0) - np.log(k))))
    # remove the cumulative rounding drift: the exact value at k = t comes from lgamma
    exact_t = math.lgamma(n + 1) - math.lgamma(t + 1) - math.lgamma(n - t + 1)
    if t > 0:
        log_c += (exact_t - log_c[-1]) * np.arange(t + 1, dtype=np.float64) / t
    ks = np.arange(t + 1, dtype=np.float64)
    terms = log_c + ks * math.log(q) + (n - ks) * math.log1p(-q)
    top = float(terms.max())
    return top + math.log(float(np.exp(terms - top).sum()))


def early_stopping_h(t: int, p: float, confidence: float = 0.99) -> int:
    """LoadGen's early-stopping bound: the smallest h ≥ 0 with
    ``P[Binomial(h + t, 1 − p) ≤ t] < 1 − confidence``.

    Read: after ``h + t`` queries of which ``t`` were over the latency bound, we are ``confidence``
    sure the true ``p``-quantile is within the bound. Check values: p = 0.99 → h(0) = 459,
    h(1) = 661; p = 0.90 → h(0) = 44, h(1) = 63. The CDF falls as h grows, so h is found by doubling
    then bisection.
    """
    if t < 0:
        raise ValueError(f"t must be ≥ 0, not {t}")
    if not 0.0 < p < 1.0 or not 0.0 < confidence < 1.0:
        raise ValueError("p and confidence must lie strictly between 0 and 1")
    q = 1.0 - p
    log_alpha = math.log1p(-confidence)

    def passes(h: int) -> bool:
        return _log_binom_cdf(t, h + t, q) < log_alpha

    # passes(0) is False (P[Bin(t, q) ≤ t] = 1). While the binomial's mean (h + t)·q is ≤ t its median is
    # ≤ t, so the CDF is ≥ 1/2 > 1 − confidence: h ≤ t·p/q cannot pass, and the search starts there.
    lo = max(0, math.floor(t * p / q) - 1) if confidence > 0.5 else 0
    step = max(1, lo // 8)
    hi = lo + step
    while not passes(hi):
        lo, step = hi, step * 2
        hi = lo + step
    while hi - lo > 1:  # invariant: not passes(lo), passes(hi)
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def largest_t(n: int, p: float, confidence: float) -> int:
    """The largest t ≥ 1 with ``n ≥ h(t) + t`` (0 if even t = 1 does not fit); h(t) + t grows with t."""
    if n < early_stopping_h(1, p, confidence) + 1:
        return 0
    # fits(lo), not fits(hi): h ≥ 1 so h(n + 1) + n + 1 > n; and h(t) + t > t / (1 − p) (see
    # early_stopping_h), so no t ≥ n·(1 − p) fits either.
    hi = min(n + 1, math.ceil(n * (1.0 - p)) + 1) if confidence > 0.5 else n + 1
    lo = 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if early_stopping_h(mid, p, confidence) + mid <= n:
            lo = mid
        else:
            hi = mid
    return lo

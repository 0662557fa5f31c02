"""Open-loop arrival processes beyond Poisson: gamma (bursty) gaps and rate ramps.

Every process here is built the same way, by **time rescaling**: draw a renewal process of unit mean
rate in "operational time" ``s`` (gaps ``Gamma(shape=k, scale=1/k)``, mean 1), then map each point to
wall time with the inverse of the cumulative rate, ``t = Λ⁻¹(s)`` where ``Λ(t) = ∫₀ᵗ rate(u) du``.

* Constant rate λ: ``Λ(t) = λt``, so the gaps are ``Gamma(k, 1/(kλ))``: mean ``1/λ`` whatever the
  burstiness ``k``, coefficient of variation ``1/√k``. ``k = 1`` is Poisson, ``k < 1`` is burstier,
  ``k > 1`` more regular — the same definition as ``vllm bench serve --burstiness``.
* A ramp (rate rising linearly, or in steps, from ``start_qps`` to ``qps`` over ``ramp_s``, then flat):
  with ``k = 1`` the rescaled process is exactly a non-homogeneous Poisson process with that rate
  (time-rescaling theorem), so the expected count in ``[a, b)`` is ``Λ(b) − Λ(a)``. With ``k ≠ 1`` it is
  a gamma renewal process run on the ramp's clock: the local rate follows the ramp and the burst shape
  (gap CV in operational time) is kept. Rescaling was chosen over thinning because it needs no upper
  bound on the rate, uses every random draw, and gives the same points for the same seed when only
  the ramp's shape changes.

As in LoadGen's Server scenario the first query is due one gap after the start, and generation stops at
the first query that meets both the minimum count and the minimum duration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_QUERIES = 10_000_000
_NS = 1_000_000_000


@dataclass(frozen=True)
class RateProfile:
    """Rate (queries/s) rising from ``start_qps`` to ``qps`` over ``ramp_s`` seconds, then flat.

    ``steps=None`` rises linearly; ``steps=n`` holds the levels ``start + (qps − start)·j/n`` for
    ``j = 0…n−1`` over equal parts of the ramp, and ``qps`` from ``ramp_s`` on. ``ramp_s = 0`` is a
    constant rate ``qps``.
    """

    qps: float
    start_qps: float | None = None
    ramp_s: float = 0.0
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.qps <= 0 or (self.start_qps is not None and self.start_qps <= 0) or self.ramp_s < 0:
            raise ValueError("rates must be > 0 and the ramp duration >= 0")

    @property
    def _r0(self) -> float:
        return self.qps if self.start_qps is None or self.ramp_s == 0 else self.start_qps

    def rate(self, t: np.ndarray) -> np.ndarray:
        """Instantaneous rate at ``t`` seconds (vectorised)."""
        t = np.asarray(t, dtype=np.float64)
        r0, r1, ramp = self._r0, self.qps, self.ramp_s
        if ramp == 0:
            return np.full_like(t, r1)
        if self.steps is None:
            inside = r0 + (r1 - r0) * t / ramp
        else:
            level = np.floor(t / ramp * self.steps)
            inside = r0 + (r1 - r0) * level / self.steps
        return np.where(t < ramp, inside, r1)

    def cumulative(self, t: np.ndarray) -> np.ndarray:
        """``Λ(t)``: expected number of arrivals in ``[0, t)`` (vectorised)."""
        t = np.asarray(t, dtype=np.float64)
        r0, r1, ramp = self._r0, self.qps, self.ramp_s
        if ramp == 0:
            return r1 * t
        inner = np.minimum(t, ramp)
        if self.steps is None:
            lam = r0 * inner + (r1 - r0) * inner**2 / (2 * ramp)
        else:
            knots_t, knots_l = self._step_knots()
            lam = np.interp(inner, knots_t, knots_l)
        return lam + r1 * np.maximum(t - ramp, 0.0)

    def inverse(self, s: np.ndarray) -> np.ndarray:
        """``Λ⁻¹(s)``: the wall time (s) at which ``s`` arrivals are expected (vectorised)."""
        s = np.asarray(s, dtype=np.float64)
        r0, r1, ramp = self._r0, self.qps, self.ramp_s
        if ramp == 0:
            return s / r1
        lam_ramp = float(self.cumulative(np.array(ramp)))
        inner = np.minimum(s, lam_ramp)
        if self.steps is None:
            a = (r1 - r0) / ramp
            # r0·t + a·t²/2 = s; the form below avoids cancellation when a is small
            t_in = inner / r0 if a == 0 else 2 * inner / (r0 + np.sqrt(r0 * r0 + 2 * a * inner))
        else:
            knots_t, knots_l = self._step_knots()
            t_in = np.interp(inner, knots_l, knots_t)
        return np.where(s <= lam_ramp, t_in, ramp + (s - lam_ramp) / r1)

    def _step_knots(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.steps or 1
        knots_t = np.linspace(0.0, self.ramp_s, n + 1)
        levels = self._r0 + (self.qps - self._r0) * np.arange(n) / n
        knots_l = np.concatenate([[0.0], np.cumsum(levels * (self.ramp_s / n))])
        return knots_t, knots_l


def renewal_offsets(
    profile: RateProfile,
    burstiness: float,
    min_count: int,
    min_duration_s: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Arrival offsets (int ns from the start) of a gamma renewal process on ``profile``'s clock.

    Gaps in operational time are ``Gamma(burstiness, 1/burstiness)``; see the module docstring.
    Stops at the first query that makes the count >= ``min_count`` and is due at or after
    ``min_duration_s``. Raises ValueError past 10 million queries.
    """
    if burstiness <= 0:
        raise ValueError("burstiness must be > 0")
    k = float(burstiness)
    total = 0.0
    count = 0
    pieces: list[np.ndarray] = []
    expect = max(min_count, int(float(profile.cumulative(np.array(min_duration_s))) * 1.05) + 16)
    while True:
        s = total + np.cumsum(rng.gamma(k, 1.0 / k, size=expect))
        t = profile.inverse(s)
        ok = np.nonzero((np.arange(count + 1, count + 1 + len(t)) >= min_count) & (t >= min_duration_s))[0]
        if len(ok):
            pieces.append(t[: int(ok[0]) + 1])
            break
        pieces.append(t)
        total = float(s[-1])
        count += len(t)
        if count > MAX_QUERIES:
            raise ValueError("schedule would exceed 10 million queries; lower qps or duration")
    return np.rint(np.concatenate(pieces) * _NS).astype(np.int64)

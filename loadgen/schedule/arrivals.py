"""Open-loop arrival processes: Poisson, constant rate, gamma (bursty) gaps and rate ramps.

Every process but the constant one is built the same way, by **time rescaling**: draw a renewal
process of unit mean rate in "operational time" ``s`` (gaps ``Gamma(shape=k, scale=1/k)``, mean 1),
then map each point to wall time with the inverse of the cumulative rate, ``t = Λ⁻¹(s)`` where
``Λ(t) = ∫₀ᵗ rate(u) du``.

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

**Limits.** A schedule holds at most ``max_queries`` queries (default :data:`MAX_QUERIES`, 10 million:
80 MB of offsets, and a run of that many requests is already hours at high rates) and spans at most
:data:`MAX_SCHEDULE_S` seconds (offsets are int64 nanoseconds). The expected count (``Λ(duration)``,
or ``num_requests``) is checked *before* anything is drawn, so an impossible schedule fails at once
without allocating; a random schedule whose draws run past the cap fails too, never returning more
than ``max_queries`` offsets. Either way the error is a :class:`~loadgen.errors.ConfigError` naming
the settings (``qps``, ``duration_s``, ``num_requests``) and what to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loadgen.errors import ConfigError

MAX_QUERIES = 10_000_000
#: The longest schedule (s): about 3 years, well inside int64 nanoseconds (292 years).
MAX_SCHEDULE_S = 1e8
_NS = 1_000_000_000

_FIX_COUNT = "lower num_requests (--num-requests)"
_FIX_RATE = "lower qps (--qps) or duration_s (--duration)"


def schedule_problem(
    expected: float, min_count: int, span_s: float, *, max_queries: int = MAX_QUERIES
) -> str | None:
    """Why a schedule cannot be made, or None: checked before any draw.

    ``expected`` is the expected number of queries due by ``duration_s`` (``qps × duration_s`` at a
    constant rate, ``Λ(duration_s)`` on a ramp), ``min_count`` the ``num_requests`` minimum and
    ``span_s`` the expected time of the last query.
    """
    if min_count > max_queries:
        return (
            f"num_requests is {min_count:,}, above the {max_queries:,} queries one run's schedule may hold: "
            f"{_FIX_COUNT}, or split the load into several runs"
        )
    if not expected <= max_queries:  # also catches inf and nan
        return (
            f"qps × duration_s is about {expected:,.0f} queries, above the {max_queries:,} one run's "
            f"schedule may hold: {_FIX_RATE}, or split the load into several runs"
        )
    if not span_s <= MAX_SCHEDULE_S:
        return (
            f"the schedule would last about {span_s:,.0f} s (num_requests {min_count:,} at this qps), "
            f"beyond the {MAX_SCHEDULE_S:g} s a schedule may span: raise qps (--qps) or {_FIX_COUNT}"
        )
    return None


def _check_rate(qps: float) -> None:
    if not 0 < qps < math.inf:
        raise ConfigError(f"qps must be a finite number of queries per second above 0 (got {qps!r})")


def _overrun(max_queries: int, expected: float) -> ConfigError:
    return ConfigError(
        f"the schedule's random draws needed more than {max_queries:,} queries to reach duration_s and "
        f"num_requests (qps × duration_s is about {expected:,.0f}, close to that cap): {_FIX_RATE}"
    )


def constant_offsets(
    qps: float, min_count: int, min_duration_s: float, *, max_queries: int = MAX_QUERIES
) -> np.ndarray:
    """Offsets ``i/qps`` for i = 1…n, n the smallest count meeting both minimums.

    Raises ConfigError when n would exceed ``max_queries`` (checked before allocating).
    """
    _check_rate(qps)
    expected = min_duration_s * qps
    n = max(min_count, math.ceil(expected - 1e-9)) if math.isfinite(expected) else math.inf
    problem = schedule_problem(n, min_count, n / qps, max_queries=max_queries)
    if problem is not None:
        raise ConfigError(problem)
    return np.rint(np.arange(1, int(n) + 1) * (_NS / qps)).astype(np.int64)


def _first_meeting(count: int, times: np.ndarray, min_count: int, min_duration_s: float) -> int | None:
    """Index in ``times`` (the queries ``count+1…``) of the first one that meets both minimums."""
    number = np.arange(count + 1, count + 1 + len(times))
    ok = np.nonzero((number >= min_count) & (times >= min_duration_s))[0]
    return int(ok[0]) if len(ok) else None


def poisson_offsets(
    qps: float, min_count: int, min_duration_s: float, rng: np.random.Generator,
    *, max_queries: int = MAX_QUERIES,
) -> np.ndarray:
    """Arrival offsets (int ns) of a Poisson process at ``qps``, until both minimums are met.

    Inter-arrival gaps are exponential with mean ``1/qps``; the first query is due one gap after the
    start, as in LoadGen. Generation stops at the first query that makes the count at least
    ``min_count`` *and* is scheduled at or after ``min_duration_s``. Never returns more than
    ``max_queries`` offsets: raises ConfigError instead (see the module docstring). The draws do not
    depend on ``max_queries``, so a cap that holds gives the same schedule as no cap.
    """
    _check_rate(qps)
    expected = qps * min_duration_s
    problem = schedule_problem(expected, min_count, max(min_duration_s, min_count / qps),
                               max_queries=max_queries)
    if problem is not None:
        raise ConfigError(problem)
    gaps: list[np.ndarray] = []
    total = 0.0
    count = 0
    block_size = max(min_count, int(expected * 1.05) + 16)
    while True:
        block = rng.exponential(1.0 / qps, size=block_size)
        times = total + np.cumsum(block)
        cut = _first_meeting(count, times, min_count, min_duration_s)
        if cut is not None:
            if count + cut + 1 > max_queries:
                raise _overrun(max_queries, expected)
            gaps.append(block[: cut + 1])
            break
        gaps.append(block)
        total = float(times[-1])
        count += len(block)
        if count >= max_queries:
            raise _overrun(max_queries, expected)
    return np.rint(np.cumsum(np.concatenate(gaps)) * _NS).astype(np.int64)


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
        bad_start = self.start_qps is not None and not 0 < self.start_qps < math.inf
        if not 0 < self.qps < math.inf or bad_start or not 0 <= self.ramp_s < math.inf:
            raise ConfigError(
                f"a rate profile needs qps > 0, arrival.ramp.start_qps > 0 and arrival.ramp.duration_s >= 0 "
                f"(got {self.qps!r}, {self.start_qps!r}, {self.ramp_s!r})"
            )

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
    *,
    max_queries: int = MAX_QUERIES,
) -> np.ndarray:
    """Arrival offsets (int ns from the start) of a gamma renewal process on ``profile``'s clock.

    Gaps in operational time are ``Gamma(burstiness, 1/burstiness)``; see the module docstring.
    Stops at the first query that makes the count >= ``min_count`` and is due at or after
    ``min_duration_s``. Never returns more than ``max_queries`` offsets: raises ConfigError instead.
    """
    if not burstiness > 0:
        raise ConfigError(f"arrival.burstiness must be > 0 (got {burstiness!r})")
    k = float(burstiness)
    expected = float(profile.cumulative(np.array(min_duration_s)))
    span = max(min_duration_s, float(profile.inverse(np.array(float(min_count)))))
    problem = schedule_problem(expected, min_count, span, max_queries=max_queries)
    if problem is not None:
        raise ConfigError(problem)
    total = 0.0
    count = 0
    pieces: list[np.ndarray] = []
    block_size = max(min_count, int(expected * 1.05) + 16)
    while True:
        s = total + np.cumsum(rng.gamma(k, 1.0 / k, size=block_size))
        t = profile.inverse(s)
        cut = _first_meeting(count, t, min_count, min_duration_s)
        if cut is not None:
            if count + cut + 1 > max_queries:
                raise _overrun(max_queries, expected)
            pieces.append(t[: cut + 1])
            break
        pieces.append(t)
        total = float(s[-1])
        count += len(t)
        if count >= max_queries:
            raise _overrun(max_queries, expected)
    return np.rint(np.concatenate(pieces) * _NS).astype(np.int64)

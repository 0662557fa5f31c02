"""Bursty (gamma) arrivals and rate ramps against their distributions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from loadgen.schedule.arrivals import RateProfile, renewal_offsets
from loadgen.schedule.trace import build_trace, poisson_offsets, seeded_rngs
from loadgen.settings import Settings


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_gaps_pass_ks_against_gamma_with_the_mean_rate_kept(burstiness):
    qps = 40.0
    offsets = renewal_offsets(RateProfile(qps), burstiness, 5000, 0, seeded_rngs(11)["schedule"])
    gaps = np.diff(np.concatenate([[0], offsets])) / 1e9
    assert len(gaps) == 5000
    ks = stats.kstest(gaps, "gamma", args=(burstiness, 0, 1 / (qps * burstiness)))
    assert ks.pvalue > 0.01, ks
    assert gaps.mean() == pytest.approx(1 / qps, rel=0.06)
    # coefficient of variation 1/sqrt(k): the burstiness really changes the shape
    assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(burstiness), rel=0.1)
    # power: an exponential of the same mean is rejected unless the shape is 1
    p_exp = stats.kstest(gaps, "expon", args=(0, 1 / qps)).pvalue
    assert (p_exp > 0.01) if burstiness == 1.0 else (p_exp < 1e-6)


def _window_counts_match(offsets_s, profile, edges):
    counts, _ = np.histogram(offsets_s, bins=edges)
    expected = np.diff(profile.cumulative(edges))
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    p = stats.chi2.sf(chi2, len(counts))
    return counts, expected, p


def test_linear_ramp_counts_per_window_match_the_integral_of_the_rate():
    profile = RateProfile(200.0, start_qps=10.0, ramp_s=40.0)
    offsets = renewal_offsets(profile, 1.0, 0, 60.0, seeded_rngs(5)["schedule"]) / 1e9
    edges = np.arange(0.0, 60.0 + 1e-9, 2.5)
    counts, expected, p = _window_counts_match(offsets, profile, edges)
    # Λ(60) = 10·40 + 190·40/2 + 200·20 = 8200
    assert expected.sum() == pytest.approx(8200.0)
    assert abs(len(offsets) - 8200) < 4 * np.sqrt(8200)
    assert p > 0.01, (counts, expected)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    # the same counts are rejected against a flat schedule of the same total (the test has power)
    flat = RateProfile(8200.0 / 60)
    assert _window_counts_match(offsets, flat, edges)[2] < 1e-6


def test_step_ramp_holds_each_level():
    profile = RateProfile(100.0, start_qps=20.0, ramp_s=30.0, steps=4)  # 20, 40, 60, 80 then 100
    assert profile.rate(np.array([0.0, 7.4, 7.6, 29.9, 30.0, 99.0])).tolist() == [20, 20, 40, 80, 100, 100]
    offsets = renewal_offsets(profile, 1.0, 0, 45.0, seeded_rngs(2)["schedule"]) / 1e9
    edges = np.array([0, 7.5, 15, 22.5, 30, 45])
    counts, expected, p = _window_counts_match(offsets, profile, edges)
    assert expected.tolist() == pytest.approx([150, 300, 450, 600, 1500])
    assert p > 0.01, (counts, expected)


def test_inverse_is_the_inverse_of_the_cumulative_rate():
    for prof in (RateProfile(50, 5, 10), RateProfile(50, 5, 10, steps=3), RateProfile(7)):
        t = np.linspace(0, 30, 301)
        assert np.allclose(prof.inverse(prof.cumulative(t)), t, atol=1e-9)


def test_server_settings_use_the_arrival_block_and_keep_poisson_schedules_otherwise():
    base = {"scenario": "server", "qps": 20.0, "duration_s": 5, "num_requests": 100}
    plain = build_trace(Settings(**base), 100, seeded_rngs(3))
    same = build_trace(Settings(**base, arrival={"burstiness": 1}), 100, seeded_rngs(3))
    assert np.array_equal(plain.offsets_ns, same.offsets_ns)
    assert np.array_equal(plain.offsets_ns, poisson_offsets(20.0, 100, 5, seeded_rngs(3)["schedule"]))
    bursty = build_trace(Settings(**base, arrival={"burstiness": 0.3}), 100, seeded_rngs(3))
    assert bursty.open_loop and not np.array_equal(plain.offsets_ns[:50], bursty.offsets_ns[:50])
    assert len(bursty.offsets_ns) >= 100 and bursty.offsets_ns[-1] >= 5e9
    ramp = build_trace(Settings(**base, arrival={"ramp": {"start_qps": 2, "duration_s": 10}}), 100,
                       seeded_rngs(3))
    first_5s = int((ramp.offsets_ns < 5e9).sum())  # Λ(5) = 2·5 + 18·25/20 = 32.5
    assert abs(first_5s - 32.5) < 4 * np.sqrt(32.5)

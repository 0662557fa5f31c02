"""Synthetic prompts: length distributions against their parameters, and the same seed giving the same
prompt text (not only the same token counts)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from loadgen.schedule.trace import build_trace, seeded_rngs
from loadgen.settings import Settings
from loadgen.specs import LengthDist
from loadgen.workload.samples import draw_lengths
from loadgen.workload.sources import load_dataset
from loadgen.workload.tokens import WordCounter

N = 200_000


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_fixed_is_the_mean_every_time():
    values = draw_lengths(LengthDist(kind="fixed", mean=77), 1000, _rng())
    assert values.dtype == np.int64 and values.tolist() == [77] * 1000


def test_fixed_above_max_is_clipped_to_max():
    assert set(draw_lengths(LengthDist(kind="fixed", mean=300, max=256), 10, _rng()).tolist()) == {256}


def test_uniform_covers_min_to_max_evenly():
    values = draw_lengths(LengthDist(kind="uniform", min=10, max=20), N, _rng(1))
    assert values.min() == 10 and values.max() == 20  # both ends included
    freq = np.bincount(values - 10, minlength=11) / N
    # a discrete uniform over 11 values: each 1/11; sd of a frequency sqrt(p(1-p)/N) = 0.00064
    assert np.all(np.abs(freq - 1 / 11) < 0.004), freq
    # mean (a+b)/2 = 15, variance ((b-a+1)^2 - 1)/12 = 10
    assert abs(values.mean() - 15) < 0.04
    assert abs(values.std() - math.sqrt(10)) < 0.02


def test_normal_mean_and_std():
    values = draw_lengths(LengthDist(kind="normal", mean=500, std=40, max=2000), N, _rng(2))
    assert abs(values.mean() - 500) < 5 * 40 / math.sqrt(N)  # 0.45 tokens
    assert abs(values.std() - 40) < 0.4  # sd of the sample std is 40 / sqrt(2N) = 0.063


def test_lognormal_mean_std_and_median_are_of_the_lengths_themselves():
    """mean 200 and std 100 are the lengths' own moments; the median of such a lognormal is
    mean / sqrt(1 + cv^2) = 200 / sqrt(1.25) = 178.9."""
    values = draw_lengths(LengthDist(kind="lognormal", mean=200, std=100, max=100_000), N, _rng(3))
    assert abs(values.mean() - 200) < 5 * 100 / math.sqrt(N)  # 1.1 tokens
    assert abs(values.std() - 100) / 100 < 0.03  # heavy tail: sd of the sample std ~0.3%
    assert abs(np.median(values) - 200 / math.sqrt(1.25)) < 2.0
    assert values.min() >= 1


def test_bounds_clip_and_pile_up_at_the_ends():
    """Normal(100, 50) clipped to [80, 120]: after rounding, 80 takes everything below 80.5, i.e.
    Phi(-0.39) = 0.348 of the draws, and 120 everything from 119.5 up (the same, by symmetry)."""
    values = draw_lengths(LengthDist(kind="normal", mean=100, std=50, min=80, max=120), N, _rng(4))
    assert values.min() == 80 and values.max() == 120
    expected = _phi((80.5 - 100) / 50)
    assert abs(np.mean(values == 80) - expected) < 0.006
    assert abs(np.mean(values == 120) - expected) < 0.006


def test_without_max_the_upper_bound_is_four_times_the_mean():
    values = draw_lengths(LengthDist(kind="normal", mean=10, std=100), N, _rng(5))
    assert values.min() == 1 and values.max() == 40


@pytest.mark.parametrize("dist", [
    LengthDist(kind="uniform", min=1, max=1000),
    LengthDist(kind="normal", mean=300, std=50),
    LengthDist(kind="lognormal", mean=300, std=200),
])
def test_same_seed_same_lengths(dist):
    a, b = draw_lengths(dist, 500, _rng(9)), draw_lengths(dist, 500, _rng(9))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, draw_lengths(dist, 500, _rng(10)))


def _prompts(seed: int, **kw) -> tuple[list[str], list[int]]:
    settings = Settings(scenario="server", qps=20, duration_s=2, num_requests=40, seed=seed,
                        input_len={"kind": "uniform", "min": 8, "max": 64}, output_len=4, **kw)
    rngs = seeded_rngs(seed)
    dataset = load_dataset(settings, WordCounter(exact=True), rngs)
    trace = build_trace(settings, len(dataset), rngs, dataset)
    sent = [dataset.samples[i].as_prompt() for i in trace.order.ravel()]
    return sent, [dataset.samples[i].input_tokens for i in trace.order.ravel()]


def _digest(prompts: list[str]) -> str:
    return hashlib.sha256("\x00".join(prompts).encode()).hexdigest()


def test_same_seed_same_prompt_text_in_the_same_order():
    first, counts = _prompts(7)
    again, counts_again = _prompts(7)
    assert first == again and _digest(first) == _digest(again)
    assert len(set(first)) == len(first)  # every query its own prompt
    assert counts == [len(p.split()) for p in first] == counts_again
    other, _ = _prompts(8)
    assert set(other).isdisjoint(first)  # another seed: other prompts


def test_same_seed_same_prompt_text_for_chat_and_shared_prefixes():
    a, _ = _prompts(3, prefix={"groups": 2, "length": 16})
    b, _ = _prompts(3, prefix={"groups": 2, "length": 16})
    assert a == b
    assert len({" ".join(p.split()[:16]) for p in a}) == 2  # two shared prefixes

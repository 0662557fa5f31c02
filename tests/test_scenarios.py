"""The trace: Poisson arrivals against their distribution, seeds, minimums, independence of streams."""

import numpy as np
import pytest
from scipy import stats

from loadgen.schedule.trace import build_trace, constant_offsets, poisson_offsets, seeded_rngs
from loadgen.settings import Settings


def test_poisson_gaps_pass_ks_against_exponential_at_target_rate():
    qps = 50.0
    offsets = poisson_offsets(qps, 5000, 0, seeded_rngs(7)["schedule"])
    gaps = np.diff(np.concatenate([[0], offsets])) / 1e9
    ks = stats.kstest(gaps, "expon", args=(0, 1 / qps))
    assert ks.pvalue > 0.01, ks
    # and the same test rejects a rate 10% off, so it has the power to notice a wrong rate
    assert stats.kstest(gaps, "expon", args=(0, 1 / (qps * 1.1))).pvalue < 0.01
    assert gaps.mean() == pytest.approx(1 / qps, rel=0.05)


def test_poisson_meets_both_minimums_and_stops_at_the_first_query_that_does():
    offsets = poisson_offsets(10.0, 50, 20.0, seeded_rngs(1)["schedule"])
    assert len(offsets) >= 50
    assert offsets[-1] >= 20e9
    assert len(offsets) == 50 or offsets[-2] < 20e9  # one fewer would miss a minimum
    assert np.all(np.diff(offsets) >= 0)


def test_constant_offsets_are_exact():
    offsets = constant_offsets(4.0, 3, 2.0)
    assert offsets.tolist() == [250_000_000, 500_000_000, 750_000_000, 1_000_000_000, 1_250_000_000,
                                1_500_000_000, 1_750_000_000, 2_000_000_000]


def _server(**kw):
    return Settings(scenario="server", qps=kw.pop("qps", 20), duration_s=5, num_requests=100, **kw)


def test_same_seed_same_trace_and_other_seed_differs():
    a = build_trace(_server(seed=3), 100, seeded_rngs(3))
    b = build_trace(_server(seed=3), 100, seeded_rngs(3))
    c = build_trace(_server(seed=4), 100, seeded_rngs(4))
    assert np.array_equal(a.offsets_ns, b.offsets_ns) and np.array_equal(a.order, b.order)
    assert not np.array_equal(a.offsets_ns[:50], c.offsets_ns[:50])


def test_changing_qps_keeps_the_sample_order():
    slow = build_trace(_server(qps=20), 1000, seeded_rngs(5))
    fast = build_trace(_server(qps=40), 1000, seeded_rngs(5))
    n = min(len(slow.order), len(fast.order))
    assert np.array_equal(slow.order[:n], fast.order[:n])


@pytest.mark.parametrize("extra", [{}, {"prefix": {"groups": 4, "length": 6}},
                                   {"input_len": {"kind": "lognormal", "mean": 20, "std": 8, "max": 60},
                                    "output_len": {"kind": "uniform", "min": 2, "max": 30}}])
def test_changing_qps_sends_the_same_prompts_first(extra):
    """The prompt set is sized from qps × duration, yet the queries both runs send carry the same
    prompts and lengths, in the same order (MLPERF.md: changing QPS must not change the sample order)."""
    from loadgen.workload.sources import load_dataset
    from loadgen.workload.tokens import WordCounter

    def sent(qps: float) -> list[tuple[str, int, int]]:
        s = Settings(scenario="server", qps=qps, duration_s=5, num_requests=1, seed=11, **extra)
        rngs = seeded_rngs(11)
        ds = load_dataset(s, WordCounter(exact=True), rngs)
        trace = build_trace(s, len(ds), rngs, ds)
        picked = [ds.samples[i] for i in trace.order[:, 0].tolist()]
        return [(x.as_prompt(), x.input_tokens, x.output_tokens) for x in picked]

    slow, fast = sent(20), sent(55)
    assert len(fast) > 2 * len(slow) > 150
    assert fast[: len(slow)] == slow


def test_offline_issues_everything_at_zero_and_multistream_groups_samples():
    off = build_trace(Settings(scenario="offline", num_requests=30), 30, seeded_rngs(0))
    assert off.open_loop and len(off.offsets_ns) == 30 and not off.offsets_ns.any()
    assert sorted(off.order[:, 0].tolist()) == list(range(30))  # each sample once
    ms = build_trace(Settings(scenario="multistream", samples_per_query=4, num_requests=5), 20,
                     seeded_rngs(0))
    assert not ms.open_loop and ms.order.shape == (5, 4)


def test_a_command_line_preset_replaces_the_scenario_files_bounds():
    from loadgen.settings import load_settings

    # The built-in `server` file carries 2000 ms / 100 ms; the interactive preset is 500 ms / 30 ms.
    assert load_settings("server").effective_slo.ttft_ms == 2000
    slo = load_settings("server", {"preset": "llama3_1-8b-interactive"}).effective_slo
    assert (slo.ttft_ms, slo.tpot_ms) == (500, 30)
    # An explicit bound next to the preset still wins over it.
    both = load_settings("server", {"preset": "llama3_1-8b-interactive", "slo": {"tpot_ms": 45}})
    assert (both.effective_slo.ttft_ms, both.effective_slo.tpot_ms) == (500, 45)

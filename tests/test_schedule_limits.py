"""Schedule limits: the query cap holds on every path, and every bad schedule setting is a ConfigError
that names the field (exit 2 through the CLI, never a traceback)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.errors import ConfigError
from loadgen.schedule.arrivals import RateProfile, constant_offsets, poisson_offsets, renewal_offsets
from loadgen.schedule.trace import build_trace, seeded_rngs
from loadgen.settings import Settings
from tests.conftest import run_cli, write_scenario

UNCAPPED = 10**8  # larger than any schedule these strategies can make
rates = st.floats(0.05, 2000.0)
durations = st.floats(0.0, 30.0)
counts = st.integers(0, 1500)
caps = st.integers(1, 1200)
seeds = st.integers(0, 2**32 - 1)


def _rng(seed: int) -> np.random.Generator:
    return seeded_rngs(seed)["schedule"]


def _meets_minimums(offsets: np.ndarray, min_count: int, min_duration_s: float) -> bool:
    """Both minimums met, and one query fewer would miss one of them (the schedule stops at once)."""
    n = len(offsets)
    if n < max(min_count, 1) or offsets[-1] < round(min_duration_s * 1e9) - 1:
        return False
    return n == max(min_count, 1) or offsets[-2] < min_duration_s * 1e9 + 1


def _names_a_field(exc: ConfigError) -> bool:
    return any(f in str(exc) for f in ("num_requests", "qps", "duration_s"))


def _check_capped(draw, full, cap: int, *, min_count: int, min_duration_s: float, expected: float) -> None:
    """``draw(cap)`` either returns the uncapped schedule (at most ``cap`` long) or raises a
    ConfigError naming a field, and it raises exactly when the schedule cannot fit: the expected
    count (checked before drawing) or the real one is above the cap."""
    try:
        got = draw(cap)
    except ConfigError as exc:
        assert _names_a_field(exc), exc
        assert max(min_count, expected) > cap or len(full) > cap, (len(full), expected, cap)
        return
    assert len(got) <= cap
    assert np.array_equal(got, full)  # the cap never changes a schedule it lets through
    assert _meets_minimums(got, min_count, min_duration_s)
    assert max(min_count, expected) <= cap


@settings(max_examples=150, deadline=None)
@given(qps=rates, min_count=counts, min_duration_s=durations, cap=caps, seed=seeds)
def test_poisson_schedule_never_exceeds_the_cap(qps, min_count, min_duration_s, cap, seed):
    full = poisson_offsets(qps, min_count, min_duration_s, _rng(seed), max_queries=UNCAPPED)
    _check_capped(lambda c: poisson_offsets(qps, min_count, min_duration_s, _rng(seed), max_queries=c),
                  full, cap, min_count=min_count, min_duration_s=min_duration_s,
                  expected=qps * min_duration_s)


@settings(max_examples=150, deadline=None)
@given(qps=rates, burstiness=st.floats(0.1, 8.0), ramp=st.one_of(st.none(), st.floats(0.5, 20.0)),
       steps=st.one_of(st.none(), st.integers(1, 5)), min_count=counts, min_duration_s=durations,
       cap=caps, seed=seeds)
def test_gamma_and_ramp_schedules_never_exceed_the_cap(  # noqa: PLR0917 (hypothesis passes them)
    qps, burstiness, ramp, steps, min_count, min_duration_s, cap, seed
):
    profile = RateProfile(qps) if ramp is None else RateProfile(qps, qps / 4, ramp, steps)
    expected = float(profile.cumulative(np.array(min_duration_s)))
    full = renewal_offsets(profile, burstiness, min_count, min_duration_s, _rng(seed), max_queries=UNCAPPED)
    _check_capped(
        lambda c: renewal_offsets(profile, burstiness, min_count, min_duration_s, _rng(seed), max_queries=c),
        full, cap, min_count=min_count, min_duration_s=min_duration_s, expected=expected,
    )


@settings(max_examples=150, deadline=None)
@given(qps=rates, min_count=counts, min_duration_s=durations, cap=caps)
def test_constant_schedule_fails_exactly_when_its_count_is_over_the_cap(qps, min_count, min_duration_s, cap):
    n = max(min_count, math.ceil(qps * min_duration_s - 1e-9))
    try:
        got = constant_offsets(qps, min_count, min_duration_s, max_queries=cap)
    except ConfigError as exc:
        assert n > cap and _names_a_field(exc)
        return
    assert len(got) == n <= cap


@settings(max_examples=60, deadline=None)
@given(scenario=st.sampled_from(["offline", "singlestream", "multistream", "concurrency"]),
       num_requests=st.integers(1, 400), spq=st.integers(1, 6), cap=st.integers(1, 600))
def test_offline_and_closed_loop_traces_fail_exactly_when_over_the_cap(scenario, num_requests, spq, cap):
    s = Settings(scenario=scenario, num_requests=num_requests, samples_per_query=spq, duration_s=0)
    n = num_requests * (spq if scenario == "multistream" else 1)
    try:
        trace = build_trace(s, 50, seeded_rngs(0), max_queries=cap)
    except ConfigError as exc:
        assert n > cap and "num_requests" in str(exc)
        return
    assert n <= cap and trace.order.size == n


def test_a_huge_schedule_fails_before_drawing_anything():
    """1e6 QPS for 100 s is 100 million queries: refused at once, without allocating 800 MB."""
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"qps × duration_s is about 100,000,000 queries"):
        poisson_offsets(1e6, 1, 100.0, _rng(0))
    with pytest.raises(ConfigError, match="qps"):
        constant_offsets(1e6, 1, 100.0)
    with pytest.raises(ConfigError, match="qps"):
        renewal_offsets(RateProfile(1e6, 10, 50), 0.5, 1, 100.0, _rng(0))
    assert time.perf_counter() - start < 0.5


def test_the_first_block_of_draws_is_cut_at_the_cap():
    """The old code drew a first block of 1.05·qps·duration + 16 and returned it unchecked: scaled to a
    cap of 1,000 it gave 10,059 offsets."""
    with pytest.raises(ConfigError, match="qps"):
        poisson_offsets(100.0, 1, 100.0, _rng(0), max_queries=1000)
    # just under the cap by expectation, over it by the draws: refused, never returned
    full = poisson_offsets(100.0, 1, 9.99, _rng(3), max_queries=UNCAPPED)
    assert len(full) > 1000
    with pytest.raises(ConfigError, match="random draws needed more than 1,000"):
        poisson_offsets(100.0, 1, 9.99, _rng(3), max_queries=1000)


def test_settings_refuse_a_schedule_that_cannot_be_made():
    cases = [
        ({"scenario": "constant", "qps": 1e6, "duration_s": 100}, "qps × duration_s"),
        ({"scenario": "server", "qps": 1e6, "duration_s": 100}, "qps × duration_s"),
        ({"scenario": "server", "qps": 1e6, "duration_s": 100,
          "arrival": {"ramp": {"start_qps": 1, "duration_s": 10}}}, "qps × duration_s"),
        ({"scenario": "offline", "num_requests": 20_000_000}, "num_requests is 20,000,000"),
        ({"scenario": "singlestream", "num_requests": 20_000_000}, "num_requests is 20,000,000"),
        ({"scenario": "multistream", "num_requests": 2_000_000, "samples_per_query": 10},
         "num_requests × samples_per_query"),
        ({"scenario": "server", "qps": 1e-9}, "raise qps"),
        ({"scenario": "server", "qps": float("inf")}, "qps: Input should be a finite number"),
        ({"scenario": "server", "qps": 1, "duration_s": float("inf")}, "duration_s (--duration)"),
        ({"scenario": "concurrency", "duration_s": 10, "max_duration_s": 5}, "max_duration_s"),
    ]
    from loadgen.settings import build_settings

    for data, needle in cases:
        with pytest.raises(ConfigError) as info:
            build_settings(data, "test")
        assert needle in str(info.value), (data, str(info.value))


BAD_SCHEDULES = [
    (("constant", "--qps", "1e6", "--duration", "100"), "lower qps (--qps) or duration_s (--duration)"),
    (("server", "--qps", "1e6", "--duration", "100"), "lower qps (--qps) or duration_s (--duration)"),
    (("offline", "--num-requests", "20000000"), "lower num_requests (--num-requests)"),
    (("concurrency", "--num-requests", "20000000"), "num_requests is 20,000,000"),
    (("server", "--qps", "1e-9"), "raise qps (--qps)"),
    (("server", "--qps", "inf"), "qps: Input should be a finite number"),
    (("server", "--qps", "0"), "qps: Input should be greater than 0"),
    (("server", "--duration", "-1"), "duration_s (--duration): Input should be greater than or equal"),
    (("server", "--duration", "nan"), "duration_s (--duration): Input should be a finite number"),
    (("server", "--num-requests", "0"), "num_requests: Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_SCHEDULES, ids=[" ".join(a) for a, _ in BAD_SCHEDULES])
def test_bad_schedule_settings_exit_2_with_the_field_named(tmp_path, args, needle):
    res = run_cli("run", *args, "--out", str(tmp_path / "out"), "--quiet", timeout=60)
    assert res.code == 2, res.output
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.output
    assert "target http" not in res.stderr  # refused before the simulator was started


def test_a_ramp_too_large_in_a_scenario_file_exits_2(tmp_path):
    f = write_scenario(tmp_path / "ramp.yaml", scenario="server", qps=2e5, duration_s=100,
                       arrival={"burstiness": 0.5, "ramp": {"start_qps": 1, "duration_s": 50}})
    res = run_cli("run", str(f), "--out", str(tmp_path / "out"), "--quiet", timeout=60)
    assert res.code == 2, res.output
    assert "qps × duration_s is about 15,000,025 queries" in res.stderr and "Traceback" not in res.output


def test_a_replay_without_timestamps_exits_2_naming_the_column(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "hello there", "output_len": 2}\n' * 3)
    f = write_scenario(tmp_path / "replay.yaml", scenario="replay",
                       dataset={"format": "jsonl", "path": str(data)})
    res = run_cli("run", str(f), "--out", str(tmp_path / "out"), "--quiet", timeout=60)
    assert res.code == 2, res.output
    assert "timestamp" in res.stderr and "Traceback" not in res.output

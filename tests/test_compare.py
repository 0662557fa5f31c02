"""A/B compare: an injected 20% TTFT regression (simulator TTFT 50 -> 60 ms) is caught and exits 1;
two runs of one configuration do not trip it. Plus the bootstrap on synthetic samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from loadgen.cli.study import register
from loadgen.engine.runner import run
from loadgen.errors import ReportError
from loadgen.settings import build_settings
from loadgen.study.compare import bootstrap_diff, compare, render


def _run(out: Path, ttft_ms: float, seed: int) -> Path:
    # Closed loop, 8 users, 400 requests of 4 tokens: ~3 s per run (enough requests for a steady p99).
    settings = build_settings({
        "scenario": "concurrency", "concurrency": 8, "num_requests": 400, "duration_s": 0.2,
        "input_len": 16, "output_len": 4, "seed": seed, "progress": False, "out": out,
        "sim": {"ttft_ms": ttft_ms, "itl_ms": 5, "max_seqs": 64},
    }, "test")
    return run(settings).out_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ab")
    return {
        "a": _run(base / "a", 50, 1),
        "a2": _run(base / "a2", 50, 2),
        "b": _run(base / "b", 60, 3),
    }


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("noop")(lambda: None)  # a second command keeps typer from flattening the app
    register(app)
    return app


def test_injected_ttft_regression_is_caught(runs: dict[str, Path]) -> None:
    result = compare(runs["a"], runs["b"], metrics=("ttft_p99_ms",), threshold=0.1)
    assert result.regressed
    row = next(r for r in result.comparisons[0].rows if r.metric == "ttft_p99_ms")
    # 50 -> 60 ms of simulated TTFT: +10 ms, +20%, and the interval is far from 0.
    # (loose tolerances: the 2 shared cores also run the simulator, and their hiccups reach the tail)
    assert row.diff == pytest.approx(10.0, abs=4.0)
    assert row.rel == pytest.approx(0.2, abs=0.08)
    assert row.ci is not None and row.ci[0] > 0
    text = render(result)
    assert "REGRESSED" in text and "bootstrap" in text and "1000 times" in text
    cli = CliRunner().invoke(_app(), ["compare", str(runs["a"]), str(runs["b"] / "report.json"),
                                      "--metric", "ttft_p99_ms", "--threshold", "0.1"])
    assert cli.exit_code == 1, cli.output
    assert "verdict: REGRESSION in ttft_p99_ms" in cli.output


def test_same_configuration_does_not_trip(runs: dict[str, Path], tmp_path: Path) -> None:
    cli = CliRunner().invoke(_app(), ["compare", str(runs["a"]), str(runs["a2"]), "--metric",
                                      "ttft_p99_ms", "--out", str(tmp_path / "c.json")])
    assert cli.exit_code == 0, cli.output
    assert "no checked metric regressed" in cli.output
    assert (tmp_path / "c.json").is_file()
    # An improvement (B faster than A) is never a regression either.
    assert not compare(runs["b"], runs["a"], metrics=("ttft_p99_ms",)).regressed


def test_bootstrap_interval_covers_truth() -> None:
    rng = np.random.default_rng(7)
    a = rng.exponential(10.0, 2000)
    same = rng.exponential(10.0, 2000)
    shifted = a + 5.0
    lo, hi = bootstrap_diff(a, same, 50, np.random.default_rng(0))
    assert lo <= 0 <= hi  # same distribution: noise
    lo, hi = bootstrap_diff(a, shifted, 50, np.random.default_rng(0))
    assert lo <= 5.0 <= hi and lo > 0  # a +5 shift: the interval holds 5 and excludes 0
    # Seeded: same seed, same interval.
    assert bootstrap_diff(a, same, 99, np.random.default_rng(1)) == bootstrap_diff(
        a, same, 99, np.random.default_rng(1))


def test_compare_sweeps_point_by_point(tmp_path: Path) -> None:
    from loadgen.study.sweep import parse_param, run_sweep

    def sweep(out: Path, values: str, ttft: float) -> Path:
        base = build_settings({"scenario": "concurrency", "num_requests": 40, "duration_s": 0,
                               "input_len": 8, "output_len": 4, "progress": False,
                               "sim": {"ttft_ms": ttft, "itl_ms": 1}}, "t")
        run_sweep(base, [parse_param(f"concurrency={values}")], out)
        return out

    a = sweep(tmp_path / "a", "1,2", 20)
    b = sweep(tmp_path / "b", "2,4", 40)  # TTFT doubled; concurrency=2 is the only common point
    result = compare(a, b, metrics=("ttft_p50_ms",))
    assert result.kind == "sweeps"
    assert [c.label for c in result.comparisons] == ["concurrency=2"]
    assert sorted(result.unmatched) == ["concurrency=1", "concurrency=4"]
    assert result.regressed
    assert "-- concurrency=2" in render(result)
    with pytest.raises(ReportError, match="a sweep"):
        compare(a, runs_dir(a))


def runs_dir(sweep: Path) -> Path:
    return next(p for p in sweep.iterdir() if p.is_dir())

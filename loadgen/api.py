"""loadgen as a library: the functions the CLI calls, with the CLI's defaults and none of its printing.

A run::

    import loadgen

    settings = loadgen.load_settings("server", qps=8, duration_s=5, num_requests=40, output_len=16)
    result = loadgen.run(settings)          # the built-in simulator when no url is given
    result.valid, result.report["results"]["ttft_ms"]["p99"], result.out_dir

Many runs: :func:`sweep` (a grid), :func:`find_peak` (the highest VALID Server QPS), :func:`plan` (replicas
for a target rate from a sweep or peak search) and :func:`compare` (A/B with a bootstrap noise band).
Every user mistake raises a :class:`loadgen.LoadgenError` subclass whose message names the field, file or
URL and what to do; the CLI prints that message and exits with ``exc.exit_code``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from loadgen.engine.control import RunControl
from loadgen.engine.runner import RunResult, run_with_signals
from loadgen.engine.runner import run as _run
from loadgen.engine.sink import RunObserver
from loadgen.errors import ConfigError
from loadgen.settings import Settings
from loadgen.settings import load_settings as _load_settings
from loadgen.study.compare import DEFAULT_METRICS, CompareResult
from loadgen.study.compare import compare as _compare
from loadgen.study.params import parse_param
from loadgen.study.peak import PeakResult
from loadgen.study.peak import find_peak as _find_peak
from loadgen.study.plan import PlanInputs, load_source, make_plan
from loadgen.study.sweep import SweepResult, run_sweep

__all__ = ["compare", "find_peak", "load_settings", "plan", "run", "sweep"]


def load_settings(scenario: str = "server", **overrides: Any) -> Settings:
    """A built-in scenario name (``server``, ``offline``, ``singlestream``, ``multistream``,
    ``concurrency``, ``constant``) or a YAML file, with fields overridden by keyword (the names of
    :class:`loadgen.Settings`: ``qps``, ``duration_s``, ``num_requests``, ``url``, ``model``, ...).
    Raises :class:`loadgen.ConfigError` naming the bad field."""
    return _load_settings(scenario, overrides)


def _runner(handle_signals: bool | None) -> Callable[..., RunResult]:
    main = threading.current_thread() is threading.main_thread()
    if handle_signals and not main:
        raise ConfigError("handle_signals=True needs the main thread (Python delivers signals there); "
                          "pass handle_signals=False or call from the main thread.")
    return run_with_signals if (main if handle_signals is None else handle_signals) else _run


def run(
    settings: Settings,
    *,
    handle_signals: bool | None = None,
    observers: Sequence[RunObserver] = (),
    log: Callable[[str], None] | None = None,
    api_key: str | None = None,
    control: RunControl | None = None,
) -> RunResult:
    """One run: prompts, warm-up, the measured scenario, then ``report.json``, ``summary.txt``,
    ``requests.jsonl`` and ``report.html`` in ``settings.out`` (a fresh ``runs/`` folder if unset).

    ``handle_signals`` (default: when called from the main thread) installs SIGINT/SIGTERM handlers for
    the run as the CLI does: the first stops issuing and lets requests in flight finish, the second
    cancels them; the report then says ``interrupted``. ``control.stop(reason)`` stops a run from
    another task or thread's callback. ``observers`` see every request live."""
    return _runner(handle_signals)(settings, control=control, observers=tuple(observers), log=log,
                                   api_key=api_key)


def sweep(
    settings: Settings,
    params: Mapping[str, str | Sequence[Any]],
    out_dir: str | Path,
    *,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """One run per point of the grid ``params`` (``{"concurrency": [1, 4, 16]}`` or
    ``{"qps": "5:40:5"}``; a key starting with ``--`` is a server flag, relaunching the server per point).
    Resumable: a second call with the same ``out_dir`` runs only the points not yet done."""
    parsed = [parse_param(f"{name}={_spec(values)}", server_arg=name.startswith("--"))
              for name, values in params.items()]
    return run_sweep(settings, parsed, Path(out_dir), run_point=_point_runner(), log=log)


def find_peak(settings: Settings, out_dir: str | Path, *, log: Callable[[str], None] | None = None,
              **options: Any) -> PeakResult:
    """The highest Server QPS whose run is VALID (MLPerf's FindPeakPerformance, made stricter); options
    as :func:`loadgen.study.peak.find_peak` (``start_qps``, ``step``, ``precision``, ``repeats``, ...)."""
    return _find_peak(settings, Path(out_dir), run_point=_point_runner(), log=log, **options)


def plan(source: str | Path, peak_qps: float, **inputs: Any) -> dict[str, Any]:
    """A capacity plan for ``peak_qps`` from a sweep or peak-search folder (or its JSON): replicas with
    headroom, expected latency, tokens per GPU-second, cost. ``inputs`` as :class:`loadgen.PlanInputs`."""
    return make_plan(load_source(Path(source)), PlanInputs(peak_qps=peak_qps, **inputs))


def compare(a: str | Path, b: str | Path, *, metrics: Sequence[str] = DEFAULT_METRICS,
            threshold: float = 0.1, resamples: int = 1000, seed: int = 0) -> CompareResult:
    """Two runs (or two sweeps, point by point) with a bootstrap noise band on every metric."""
    return _compare(Path(a), Path(b), metrics=tuple(metrics), threshold=threshold, resamples=resamples,
                    seed=seed)


def _spec(values: str | Sequence[Any]) -> str:
    return values if isinstance(values, str) else ",".join(str(v) for v in values)


def _point_runner() -> Callable[[Settings], RunResult]:
    runner = _runner(None)

    def point(settings: Settings) -> RunResult:
        return runner(settings)

    return point

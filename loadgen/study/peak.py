"""Peak search: the highest Server QPS whose run is VALID (MLPerf's FindPeakPerformance, made stricter).

::

    result = find_peak(settings, Path("out"), start_qps=10, precision=0.1, repeats=2, max_runs=20)
    result.data                                        # what peak.json holds

Search (as LoadGen's FindPeakPerformance): run at ``start_qps``; while the run passes, multiply the QPS
by ``1 + step`` (doubling by default) until a run fails; then bisect [last pass, first fail) until the
two differ by at most ``precision`` QPS. If the start itself fails, divide by ``1 + step`` until a run
passes. Unlike LoadGen, which checks only the latency percentiles at each step, a run "passes" only when
it is fully VALID: p99 TTFT and TPOT within the bounds, minimum duration and query count, and early
stopping. Early stopping at p99 (confidence 0.99) needs at least 459 queries even with none over the
bound, and 662 to tolerate one, so every run gets ``max(num_requests, min_queries)`` queries with
``min_queries`` = 662 by default (at Q QPS a run lasts at least 662 / Q seconds).

Noise: the bracket's two ends are then run ``repeats`` more times each (new seeds) and the pass/fail
counts and the spread of TTFT p99 at each end are reported: a boundary whose pass point sometimes fails,
or whose fail point sometimes passes, is noisy, and the peak should be read as a range.

Every run gets its own seed (``loadgen.study.sweep.point_seed`` of the base seed and the run number) and its
own
folder ``run-NNN-qps=Q``. A run INVALID only because the client fell behind its schedule (client-limited:
it says nothing about the server) is retried once. The number of runs is bounded by ``max_runs``
(retries and repeats included).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen.errors import ConfigError
from loadgen.report.files import write_json
from loadgen.settings import Scenario, Settings, build_settings
from loadgen.specs import bounds_text
from loadgen.study.params import point_seed
from loadgen.study.rows import joules_per_output_token
from loadgen.study.sweep import RunPoint

SCHEMA_VERSION = 1
PEAK_MIN_QUERIES = 662  # early stopping at p99: h(1) + 1, so one query over the bound can still pass
MLPERF_MIN_QUERIES = 459  # h(0): below this a p99 Server run can never be VALID


@dataclass
class PeakResult:
    out_dir: Path
    data: dict[str, Any]

    @property
    def peak_qps(self) -> float | None:
        return self.data["peak_qps"]


def _run_entry(qps: float, phase: str, seed: int, out_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    ml = report.get("mlperf") or {}
    res = report.get("results") or {}

    def p99_ms(ns_key: str, ms_key: str) -> float | None:
        d = ml.get(ns_key) or {}
        if d.get("p99") is not None:  # LoadGen's percentile, the one validity is judged by
            return float(d["p99"]) / 1e6
        v = (res.get(ms_key) or {}).get("p99")
        return float(v) if v is not None else None

    validity = report.get("validity") or {}
    checks = ml.get("checks") or {}
    return {
        "qps": qps,
        "phase": phase,
        "seed": seed,
        "valid": bool(validity.get("valid")),
        "reasons": list(validity.get("reasons") or []),
        "out_dir": out_dir.name,
        "ttft_p99_ms": p99_ms("ttft_ns", "ttft_from_scheduled_ms"),
        "tpot_p99_ms": p99_ms("tpot_ns", "tpot_ms"),
        "requests_per_s": res.get("requests_per_s"),
        "output_tokens_per_s": res.get("output_tokens_per_s"),
        "joules_per_output_token": joules_per_output_token(report),
        "client_limited_only": checks.get("client_not_limited") is False
        and all(v for k, v in checks.items() if k != "client_not_limited"),
    }


class _Search:
    def __init__(self, base: Settings, out_dir: Path, run_point: RunPoint, max_runs: int,
                 say: Callable[[str], None]) -> None:
        self.base, self.out_dir, self.run_point, self.max_runs, self.say = (
            base, out_dir, run_point, max_runs, say)
        self.runs: list[dict[str, Any]] = []
        self.interrupted = False

    @property
    def left(self) -> int:
        return self.max_runs - len(self.runs)

    def run(self, qps: float, phase: str) -> bool:
        """One run at ``qps``; a run INVALID only because the client fell behind says nothing about the
        server, so it is retried once (phase ``retry``) while the budget allows."""
        valid = self._run(qps, phase)
        last = self.runs[-1]
        if not valid and last["client_limited_only"] and self.left > 0 and not self.interrupted:
            self.say("  the client fell behind the schedule; retrying once at the same QPS")
            valid = self._run(qps, "retry")
        return valid

    def _run(self, qps: float, phase: str) -> bool:
        k = len(self.runs)
        seed = point_seed(self.base.seed, k)
        folder = self.out_dir / f"run-{k:03d}-qps={qps:.6g}"
        for name in ("requests.jsonl", "warmup.jsonl", "report.json", "summary.txt"):
            (folder / name).unlink(missing_ok=True)  # the runner appends records
        data = self.base.model_dump()
        data.update(qps=qps, seed=seed, out=folder)
        settings = build_settings(data, f"peak run {k} at {qps:g} QPS")
        self.say(f"run {k + 1} ({phase}) at {qps:.6g} QPS, seed {seed}")
        result = self.run_point(settings)
        entry = _run_entry(qps, phase, seed, folder, result.report)
        self.runs.append(entry)
        if getattr(result, "interrupted", False):
            self.interrupted = True
            entry["valid"] = False
        self.say(f"  -> {'VALID' if entry['valid'] else 'INVALID'}; TTFT p99 {_ms(entry['ttft_p99_ms'])} ms")
        return bool(entry["valid"])

    def write(self, data: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.out_dir / "peak.json", data)


def peak_settings(base: Settings, min_queries: int = PEAK_MIN_QUERIES) -> Settings:
    """``base`` as a Server run with enough queries to be VALID at p99; ConfigError without a bound."""
    slo = base.effective_slo
    class_bound = any(c.slo.ttft_ms or c.slo.tpot_ms or c.slo.e2e_ms for c in base.classes or ())
    if slo.ttft_ms is None and slo.tpot_ms is None and not class_bound:
        raise ConfigError(
            "find-peak needs a latency bound to search against: give --ttft-ms and/or --tpot-ms, or "
            "--preset (e.g. llama3_1-8b), or classes: with their own slo:"
        )
    if min_queries < MLPERF_MIN_QUERIES:
        raise ConfigError(
            f"min_queries={min_queries}: a Server run at p99 needs at least {MLPERF_MIN_QUERIES} queries "
            "to be VALID (early stopping)"
        )
    data = base.model_dump()
    data.update(scenario=Scenario.SERVER, num_requests=max(base.num_requests, min_queries))
    data["qps"] = base.qps or 1.0
    return build_settings(data, "find-peak settings")


def find_peak(
    base: Settings,
    out_dir: Path,
    *,
    start_qps: float | None = None,
    step: float = 1.0,
    precision: float = 0.1,
    repeats: int = 2,
    max_runs: int = 20,
    min_queries: int = PEAK_MIN_QUERIES,
    run_point: RunPoint | None = None,
    log: Callable[[str], None] | None = None,
) -> PeakResult:
    """Search for the highest VALID Server QPS (see the module docstring); writes ``peak.json`` after
    every run. ``run_point`` defaults to :func:`loadgen.engine.runner.run`. Raises ConfigError for bad
    arguments; errors of a run (target unreachable, launch failure) propagate after peak.json is written.
    """
    say = log or (lambda _m: None)
    if step <= 0 or precision <= 0 or repeats < 0:
        raise ConfigError("find-peak: step and precision must be > 0, repeats >= 0")
    if max_runs < 2 * repeats + 2:
        raise ConfigError(f"find-peak: max_runs={max_runs} leaves no room for the search and "
                          f"{repeats} repeats at each end of the bracket; raise --max-runs")
    settings = peak_settings(base, min_queries)
    if run_point is None:
        from loadgen.engine.runner import run as _run

        def run_point(s: Settings) -> Any:
            return _run(s, log=say)

    q0 = float(start_qps or base.qps or 1.0)
    slo = settings.effective_slo
    search = _Search(settings, out_dir, run_point, max_runs, say)
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": "peak", "peak_qps": None, "bracket": [None, None],
        "runs": search.runs, "boundary_repeats": None, "preset": base.preset,
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms,
                **({"classes": {c.name: {k: v for k, v in c.slo.model_dump().items() if v is not None}
                                for c in settings.classes}} if settings.classes else {})},
        "method": {
            "start_qps": q0, "step": step, "precision": precision, "repeats": repeats,
            "max_runs": max_runs, "queries_per_run": settings.num_requests,
            "min_duration_s": settings.duration_s, "pass": "the run is VALID (early stopping included)",
        },
        "length_mix": {"input_len": settings.input_len.model_dump(),
                       "output_len": settings.output_len.model_dump()},
        "peak_out_dir": None, "complete": False, "notes": [],
    }
    say(f"each run: >= {settings.num_requests} queries (VALID at p99 needs >= {MLPERF_MIN_QUERIES}) and "
        f">= {settings.duration_s:g} s")
    search_budget = max_runs - 2 * repeats
    lo, hi = _bracket(search, q0, step, search_budget, data)
    while lo is not None and hi is not None and hi - lo > precision and len(search.runs) < search_budget:
        if search.interrupted:
            break
        mid = (lo + hi) / 2
        if search.run(mid, "bisect"):
            lo = mid
        else:
            hi = mid
        _update(data, lo, hi, search)
        search.write(data)
    if lo is not None and hi is not None and hi - lo > precision:
        data["notes"].append(f"stopped at {len(search.runs)} runs (--max-runs) before the bracket "
                             f"narrowed to {precision:g} QPS")
    if lo is not None and hi is not None and not search.interrupted and repeats:
        data["boundary_repeats"] = _repeat(search, lo, hi, repeats)
    data["complete"] = not search.interrupted and lo is not None and hi is not None
    if search.interrupted:
        data["notes"].append("interrupted; the bracket is what was measured so far")
    _update(data, lo, hi, search)
    search.write(data)
    return PeakResult(out_dir, data)


def _update(data: dict[str, Any], lo: float | None, hi: float | None, search: _Search) -> None:
    data["bracket"] = [lo, hi]
    data["peak_qps"] = lo
    passing = [r for r in search.runs if r["valid"] and r["qps"] == lo]
    data["peak_out_dir"] = passing[0]["out_dir"] if passing else None


def _bracket(search: _Search, q0: float, step: float, budget: int, data: dict[str, Any]
             ) -> tuple[float | None, float | None]:
    """Widen from ``q0`` until [pass, fail) is found (or the budget ends): (last pass, first fail)."""
    lo: float | None = None
    hi: float | None = None
    q = q0
    passed = search.run(q, "start")
    if passed:
        lo = q
        while len(search.runs) < budget and not search.interrupted:
            q *= 1 + step
            if search.run(q, "widen"):
                lo = q
            else:
                hi = q
                break
    else:
        hi = q
        while len(search.runs) < budget and not search.interrupted:
            q /= 1 + step
            if search.run(q, "narrow"):
                lo = q
                break
            hi = q
    if lo is None:
        data["notes"].append(f"no passing QPS found down to {q:.6g}; check the bounds and the target")
    elif hi is None:
        data["notes"].append(f"every run passed up to {lo:.6g} QPS; raise --max-runs or --start-qps")
    _update(data, lo, hi, search)
    search.write(data)
    return lo, hi


def _repeat(search: _Search, lo: float, hi: float, repeats: int) -> dict[str, Any]:
    """Run both ends of the bracket ``repeats`` more times; counts include the search's own runs."""
    for _ in range(repeats):
        if search.interrupted:
            break
        search.run(lo, "repeat")
        if search.interrupted:
            break
        search.run(hi, "repeat")

    def end(qps: float) -> dict[str, Any]:
        runs = [r for r in search.runs if r["qps"] == qps]
        ttft = [r["ttft_p99_ms"] for r in runs if r["ttft_p99_ms"] is not None]
        return {
            "qps": qps, "runs": len(runs), "valid": sum(r["valid"] for r in runs),
            "ttft_p99_ms_min": min(ttft) if ttft else None, "ttft_p99_ms_max": max(ttft) if ttft else None,
        }

    p, f = end(lo), end(hi)
    noisy = p["valid"] < p["runs"] or f["valid"] > 0
    verdict = (
        f"at {lo:.6g} QPS {p['valid']}/{p['runs']} runs VALID, at {hi:.6g} QPS {f['valid']}/{f['runs']}; "
        + ("the boundary is noisy: read the peak as the range of the bracket, or run longer"
           if noisy else "the boundary was reproducible")
    )
    return {"pass": p, "fail": f, "noisy": noisy, "verdict": verdict}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _short(reason: str) -> str:
    """A verdict's reason for a table cell: its first sentence, nanoseconds as ms, at most 60 characters
    (cut mid-number, 'bound 1000' read as a bound of 1000 ms when it was 1,000,000,000 ns)."""
    first = re.sub(r"^\w+ constraint not met: ", "", reason.split(". ", maxsplit=1)[0])
    first = re.sub(r"(\d+) ns\b", lambda m: f"{int(m.group(1)) / 1e6:,.1f} ms", first)
    return first if len(first) <= 60 else first[:59] + "…"


def render_table(data: dict[str, Any]) -> str:
    """Runs, bracket and boundary noise for the console."""
    lines = [f"{'#':>3}  {'phase':<7}{'QPS':>10}  {'result':<8}{'TTFT p99':>10}{'TPOT p99':>10}{'req/s':>9}"
             "  first reason"]
    for i, r in enumerate(data["runs"]):
        def f(v: Any, d: int = 1) -> str:
            return "-" if v is None else f"{v:,.{d}f}"
        reason = _short(r["reasons"][0]) if r["reasons"] else ""
        lines.append(f"{i:>3}  {r['phase']:<7}{r['qps']:>10.4g}  {'VALID' if r['valid'] else 'INVALID':<8}"
                     f"{f(r['ttft_p99_ms']):>10}{f(r['tpot_p99_ms'], 2):>10}{f(r['requests_per_s']):>9}"
                     f"  {reason[:60]}")
    slo = data["slo"]
    lo, hi = data["bracket"]
    bounds = [bounds_text({k: slo[k] for k in ("ttft_ms", "tpot_ms") if slo.get(k) is not None})]
    bounds += [f"class {name}: {bounds_text(b)}" for name, b in (slo.get("classes") or {}).items()]
    preset = f" (preset {data['preset']})" if data.get("preset") else ""
    lines.append("bounds: " + "; ".join(b for b in bounds if b) + preset)
    if lo is None:
        lines.append("peak: none (no VALID run)")
    else:
        lines.append(f"peak: {lo:.6g} QPS (VALID); bracket [{lo:.6g}, {'?' if hi is None else f'{hi:.6g}'})")
    if data.get("boundary_repeats"):
        lines.append("boundary: " + data["boundary_repeats"]["verdict"])
    lines.extend(f"note: {n}" for n in data.get("notes", []))
    return "\n".join(lines)

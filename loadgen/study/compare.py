"""A/B comparison of two runs, or of two sweeps point by point, with a bootstrap noise band.

::

    result = compare(Path("runs/a"), Path("runs/b"), metrics=("ttft_p99_ms",), threshold=0.1)
    result.regressed        # True when a chosen metric got worse past the threshold AND beyond noise
    render(result)

Method (stated in the output too): for each latency metric (a percentile of per-request TTFT, TPOT or
E2E, in ms, TTFT and E2E counted from the scheduled time), the requests of A and of B are resampled
with replacement ``resamples`` times (default 1000, seeded), the percentile is computed on every
resample, and the 2.5%–97.5% quantiles of (B − A) form a 95% interval of the difference. The change is
"noise" when that interval contains 0. A metric regressed when B is worse than A by more than
``threshold`` (relative, 0.1 = 10%) and the change is beyond noise. Throughput figures are shown without
an interval (they are one number per run).

Sweeps are compared at every point whose parameter values appear in both (matched by ``values``), each
point's runs as above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loadgen.errors import ReportError
from loadgen.metrics.latency import RequestArrays, e2e_ns, tpot_ns, ttft_ns
from loadgen.records import read_records
from loadgen.report.files import load_json

DEFAULT_RESAMPLES = 1000
#: Latency metrics: name -> (per-request series, percentile). Lower is better for all of them.
LATENCY_METRICS = {
    f"{series}_p{p}_ms": (series, p)
    for series in ("ttft", "tpot", "e2e")
    for p in (50, 90, 99)
}
#: One number per run, higher is better; shown, never tested for noise.
RATE_METRICS = ("requests_per_s", "output_tokens_per_s")
DEFAULT_METRICS = ("ttft_p99_ms", "tpot_p99_ms")
METHOD = (
    "bootstrap: requests of each run resampled with replacement {n} times (seed {seed}); 95% interval of "
    "the percentile difference B - A from the 2.5%/97.5% quantiles; 'noise' = the interval contains 0; "
    "regressed = worse by more than the threshold ({t:.0%}) and beyond noise"
)


def request_series(run_dir: Path) -> dict[str, npt.NDArray[np.float64]]:
    """Per-request TTFT (from scheduled), TPOT and E2E (from scheduled) in ms, from requests.jsonl."""
    path = run_dir / "requests.jsonl"
    records = [r for r in read_records(path) if not r.warmup and r.ok]
    arrays = RequestArrays.from_records(records)
    if not len(arrays):
        raise ReportError(f"{path} holds no completed request to compare")
    ms = {
        "ttft": ttft_ns(arrays, "scheduled"), "tpot": tpot_ns(arrays), "e2e": e2e_ns(arrays, "scheduled")
    }
    return {k: (np.asarray(v, dtype=np.float64) / 1e6) for k, v in ms.items()}


def bootstrap_diff(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], q: float,
                   rng: np.random.Generator, resamples: int = DEFAULT_RESAMPLES) -> tuple[float, float]:
    """95% interval of ``percentile(b, q) − percentile(a, q)`` by resampling each sample (vectorised:
    one (resamples × n) index matrix per side). ``q`` in percent."""
    ia = rng.integers(0, a.size, size=(resamples, a.size))
    ib = rng.integers(0, b.size, size=(resamples, b.size))
    diff = np.percentile(b[ib], q, axis=1) - np.percentile(a[ia], q, axis=1)
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass
class MetricRow:
    metric: str
    a: float | None
    b: float | None
    ci: tuple[float, float] | None  # 95% interval of B − A; None for rates
    checked: bool  # one of the metrics chosen for the verdict

    @property
    def diff(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def rel(self) -> float | None:
        return None if self.diff is None or not self.a else self.diff / self.a

    @property
    def noise(self) -> bool | None:
        return None if self.ci is None else self.ci[0] <= 0.0 <= self.ci[1]

    def regressed(self, threshold: float) -> bool:
        rel = self.rel
        if rel is None:
            return False
        lower_is_better = self.metric not in RATE_METRICS
        worse = rel > threshold if lower_is_better else rel < -threshold
        return worse and self.noise is False if self.ci is not None else worse


@dataclass
class Comparison:
    label: str  # "run" or the sweep point's values
    rows: list[MetricRow]


@dataclass
class CompareResult:
    a: Path
    b: Path
    kind: str  # "runs" | "sweeps"
    threshold: float
    metrics: tuple[str, ...]
    method: str
    comparisons: list[Comparison] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[tuple[str, MetricRow]]:
        return [(c.label, r) for c in self.comparisons for r in c.rows
                if r.checked and r.regressed(self.threshold)]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": 1, "kind": "compare", "a": str(self.a), "b": str(self.b), "of": self.kind,
            "threshold": self.threshold, "metrics": list(self.metrics), "method": self.method,
            "regressed": self.regressed, "unmatched": self.unmatched,
            "comparisons": [
                {"label": c.label, "rows": [
                    {"metric": r.metric, "a": r.a, "b": r.b, "diff": r.diff, "rel": r.rel,
                     "ci95": list(r.ci) if r.ci else None, "noise": r.noise, "checked": r.checked,
                     "regressed": r.checked and r.regressed(self.threshold)}
                    for r in c.rows]}
                for c in self.comparisons
            ],
        }


def _run_dir(path: Path) -> Path:
    folder = path.parent if path.is_file() else path
    if not (folder / "requests.jsonl").is_file():
        raise ReportError(f"{folder} has no requests.jsonl; give a run folder or its report.json")
    return folder


def compare_runs(a: Path, b: Path, *, metrics: tuple[str, ...], rng: np.random.Generator,
                 resamples: int, label: str = "run") -> Comparison:
    """Every latency metric with its bootstrap interval, plus the rates from each report.json."""
    da, db = _run_dir(a), _run_dir(b)
    sa, sb = request_series(da), request_series(db)
    rows = []
    for name, (series, p) in LATENCY_METRICS.items():
        xa, xb = sa[series], sb[series]
        if not xa.size or not xb.size:
            rows.append(MetricRow(name, None, None, None, name in metrics))
            continue
        ci = bootstrap_diff(xa, xb, p, rng, resamples)
        rows.append(MetricRow(name, float(np.percentile(xa, p)), float(np.percentile(xb, p)), ci,
                              name in metrics))
    ra = (load_json(da / "report.json").get("results") or {}) if (da / "report.json").is_file() else {}
    rb = (load_json(db / "report.json").get("results") or {}) if (db / "report.json").is_file() else {}
    rows += [MetricRow(m, ra.get(m), rb.get(m), None, m in metrics) for m in RATE_METRICS]
    return Comparison(label, rows)


def _sweep_file(path: Path) -> Path | None:
    if path.is_dir() and (path / "sweep.json").is_file():
        return path / "sweep.json"
    if path.is_file() and path.name.endswith(".json") and load_json(path).get("kind") == "sweep":
        return path
    return None


def compare(a: Path, b: Path, *, metrics: tuple[str, ...] = DEFAULT_METRICS, threshold: float = 0.1,
            resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> CompareResult:
    """Compare two runs or two sweeps; ReportError for unreadable inputs or unknown metrics."""
    unknown = [m for m in metrics if m not in LATENCY_METRICS and m not in RATE_METRICS]
    if unknown:
        raise ReportError(f"unknown metric(s) {', '.join(unknown)}; known: "
                          f"{', '.join([*LATENCY_METRICS, *RATE_METRICS])}")
    rng = np.random.default_rng(seed)
    method = METHOD.format(n=resamples, seed=seed, t=threshold)
    swa, swb = _sweep_file(a), _sweep_file(b)
    if (swa is None) != (swb is None):
        raise ReportError("compare a run with a run, or a sweep with a sweep (one of them is a sweep)")
    if swa is None or swb is None:
        result = CompareResult(a, b, "runs", threshold, metrics, method)
        result.comparisons.append(compare_runs(a, b, metrics=metrics, rng=rng, resamples=resamples))
        return result
    result = CompareResult(a, b, "sweeps", threshold, metrics, method)
    ja, jb = load_json(swa), load_json(swb)
    pb = {_key(p["values"]): p for p in jb.get("points") or [] if p.get("status") == "done"}
    for p in ja.get("points") or []:
        key = _key(p["values"])
        label = ", ".join(f"{k}={v}" for k, v in p["values"].items())
        other = pb.pop(key, None)
        if p.get("status") != "done" or other is None:
            result.unmatched.append(label)
            continue
        result.comparisons.append(compare_runs(
            swa.parent / p["out_dir"], swb.parent / other["out_dir"], metrics=metrics, rng=rng,
            resamples=resamples, label=label))
    result.unmatched += [", ".join(f"{k}={v}" for k, v in p["values"].items()) for p in pb.values()]
    return result


def _key(values: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in values.items()))


def render(result: CompareResult) -> str:
    """Side-by-side table per comparison, the verdict and the method."""
    lines = [f"A: {result.a}", f"B: {result.b}"]
    for c in result.comparisons:
        if result.kind == "sweeps":
            lines.append(f"-- {c.label}")
        lines.append(f"{'metric':<22}{'A':>12}{'B':>12}{'B-A':>11}{'rel':>9}  {'95% CI of B-A':<22}verdict")
        for r in c.rows:
            def f(v: float | None) -> str:
                return "-" if v is None else f"{v:,.2f}"
            ci = f"[{r.ci[0]:+.2f}, {r.ci[1]:+.2f}]" if r.ci else "(one number per run)"
            rel = "-" if r.rel is None else f"{r.rel:+.1%}"
            verdict = "noise" if r.noise else ("beyond noise" if r.noise is False else "")
            if r.checked:
                verdict += " REGRESSED" if r.regressed(result.threshold) else " ok"
            lines.append(f"{('*' if r.checked else ' ') + r.metric:<22}{f(r.a):>12}{f(r.b):>12}"
                         f"{f(r.diff):>11}{rel:>9}  {ci:<22}{verdict.strip()}")
    if result.unmatched:
        lines.append("not compared (in one sweep only, or not done): " + "; ".join(result.unmatched))
    lines.append(f"method: {result.method}; * = checked metric")
    regs = result.regressions
    lines.append("verdict: REGRESSION in " + ", ".join(f"{r.metric} ({lbl})" for lbl, r in regs)
                 if regs else "verdict: no checked metric regressed beyond noise")
    return "\n".join(lines)

"""Calibration: a serving model (:mod:`loadgen.study.servemodel`) fitted to a few measured runs of one
deployment, with the uncertainty of each parameter and the fit's error on the runs it used.

::

    fit = calibrate([Path("sweeps/c")])        # run folders, or sweep folders (every finished point)
    fit["parameters"], fit["fit_error"]          # what model.json holds

Each run gives its requests (``requests.jsonl``: input tokens, send, first token, end) and its load.
The fit, in order:

1. **Prefill.** The unqueued first-token time is ``ttft_ms + prefill_ms_per_token · I``. For each input
   length (or length bin) the 10th percentile of TTFT in each run, and the smallest over the runs, is an
   unqueued point; a weighted least-squares line through them gives both (weights: requests). Runs of
   one user are used alone when they cover two lengths or more: nothing else runs beside them.
2. **Slots in use.** A request's queue wait is its TTFT above that line; it held a slot from
   ``sent + wait`` to its end. Sweeping those intervals gives, per run, the time-averaged number of
   slots in use ``b̄`` and the number most often in use.
3. **Decode.** A request's TPOT averages ``step(b)`` over its decode, so a run's mean TPOT against its
   ``b̄`` is a line with intercept ``itl_ms`` and slope ``itl_ms · itl_slope`` (weighted least squares).
4. **Slots.** A run whose requests queued (mean wait over max(2 ms, 10% of the unqueued TTFT)) had every
   slot busy: ``max_seqs`` is the number most often in use there (the most over such runs: a server
   may also make requests wait for other reasons, with fewer slots busy). With no such run,
   ``max_seqs`` is not identified (null) and model.json says so; replays then never queue.

Standard errors come from the least-squares covariance (0 where a line has no spare point). The fit
error replays every run through the fitted model (same load, same lengths) and compares TTFT p50/p99
and TPOT p50 with what was measured; ``fit_error_max`` is the worst of the medians (a p99 of a dozen
requests is mostly the client's own noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.errors import ConfigError, ReportError
from loadgen.records import iter_records
from loadgen.report.files import load_json
from loadgen.study.servemodel import ServingModel, replay

SCHEMA_VERSION = 1


@dataclass
class RunObs:
    """One measured run reduced to what the fit needs (times in ms from each request's send)."""

    name: str
    concurrency: int | None  # closed loop users, else None
    qps: float | None
    arrivals_s: np.ndarray  # send times, s from the first
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    ttft_ms: np.ndarray
    e2e_ms: np.ndarray
    tpot_ms: np.ndarray  # NaN for one-token outputs


def _run_dirs(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if (path / "sweep.json").is_file():
            data = load_json(path / "sweep.json")
            out += [path / p["out_dir"] for p in data.get("points") or ()
                    if p.get("status") == "done" and p.get("out_dir")]
        elif (path / "report.json").is_file():
            out.append(path)
        else:
            raise ConfigError(f"{path}: neither a run folder (report.json) nor a sweep folder (sweep.json); "
                              "give the folders loadgen run or loadgen sweep wrote")
    return out


def read_run(path: Path) -> RunObs:
    """A run folder's completed requests and load. ConfigError for a run that cannot be fitted."""
    report = load_json(path / "report.json")
    s = report.get("settings") or {}
    if s.get("stream") is False or s.get("sessions"):
        raise ConfigError(f"{path}: a {'--no-stream' if s.get('stream') is False else 'session'} run; "
                          "calibrate needs streamed runs of a plain load (drop --no-stream and sessions:)")
    recs = [r for r in iter_records(path / "requests.jsonl")
            if not r.warmup and r.ok and r.first_token_ns is not None]
    if len(recs) < 2:
        raise ConfigError(f"{path}: fewer than 2 completed streaming requests; calibrate needs streamed runs")
    sent = np.array([r.sent_ns for r in recs], dtype=np.float64)
    first = np.array([r.first_token_ns for r in recs], dtype=np.float64)
    end = np.array([r.end_ns for r in recs], dtype=np.float64)
    last = np.array([r.chunk_ns[-1] if r.chunk_ns else r.end_ns for r in recs], dtype=np.float64)
    outs = np.array([r.output_tokens for r in recs], dtype=np.int64)
    ins = np.array([r.prompt_tokens if r.prompt_tokens is not None else r.input_tokens for r in recs],
                   dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(outs >= 2, (last - first) / np.maximum(outs - 1, 1) / 1e6, np.nan)
    scenario = s.get("scenario")
    closed = {"concurrency": s.get("concurrency"), "singlestream": 1}.get(str(scenario))
    return RunObs(path.name, closed, s.get("qps") if closed is None else None, (sent - sent.min()) / 1e9,
                  ins, outs, (first - sent) / 1e6, (end - sent) / 1e6, tpot)


def _wls(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float, float, float]:
    """(intercept, slope, their standard errors) of a weighted line; slope 0 when x does not vary."""
    if len(x) < 2 or np.ptp(x) == 0:
        mean = float(np.average(y, weights=w))
        return mean, 0.0, 0.0, 0.0
    coef, cov = np.polyfit(x, y, 1, w=np.sqrt(w), cov="unscaled" if len(x) == 2 else True)
    se = np.sqrt(np.clip(np.diag(cov), 0, None)) if len(x) > 2 else np.zeros(2)
    return float(coef[1]), float(coef[0]), float(se[1]), float(se[0])


def _bins(ins: np.ndarray) -> np.ndarray:
    """A bin index per request: exact input lengths when few, else 8 quantile bins."""
    values = np.unique(ins)
    if len(values) <= 12:
        return np.searchsorted(values, ins)
    edges = np.quantile(ins, np.linspace(0, 1, 9)[1:-1])
    return np.searchsorted(edges, ins)


def _prefill(runs: list[RunObs]) -> tuple[float, float, float, float]:
    ins = np.concatenate([r.input_tokens for r in runs])
    which = _bins(ins)
    best: dict[int, tuple[float, float, int]] = {}  # bin -> (p10 TTFT, mean I, requests)
    k = 0
    for r in runs:
        b = which[k:k + len(r.input_tokens)]
        k += len(r.input_tokens)
        for v in np.unique(b):
            sel = b == v
            low = float(np.percentile(r.ttft_ms[sel], 10))
            if v not in best or low < best[v][0]:
                best[int(v)] = (low, float(r.input_tokens[sel].mean()), int(sel.sum()))
    pts = np.array(list(best.values()))
    return _wls(pts[:, 1], pts[:, 0], pts[:, 2])


def _slots(r: RunObs, ttft0: np.ndarray) -> tuple[float, int, float]:
    """(time-averaged slots in use, the number most often in use, mean queue wait ms) of a run."""
    wait = np.maximum(r.ttft_ms - ttft0, 0.0)
    start = r.arrivals_s * 1e3 + wait
    stop = r.arrivals_s * 1e3 + r.e2e_ms
    times = np.concatenate([start, stop])
    delta = np.concatenate([np.ones(len(start)), -np.ones(len(stop))])
    order = np.lexsort((delta, times))  # at one instant, releases (-1) before admissions
    times, delta = times[order], delta[order]
    level = np.cumsum(delta)[:-1]
    span = np.diff(times)
    total = float(span.sum())
    if total <= 0:
        return float(len(start)), len(start), float(wait.mean())
    by_level: dict[int, float] = {}
    for lv, dt in zip(level.astype(int), span, strict=True):
        by_level[lv] = by_level.get(lv, 0.0) + float(dt)
    mode = int(max(by_level, key=lambda v: by_level[v]))
    return float((level * span).sum() / total), mode, float(wait.mean())


def fit(runs: list[RunObs]) -> tuple[ServingModel, list[dict[str, Any]]]:
    """The model and, per run, what the fit saw in it (slots in use, queue wait, mean TPOT)."""
    alone = [r for r in runs if r.concurrency == 1]
    lengths = {round(float(r.input_tokens.mean())) for r in alone}
    # a first token is measured cleanest with nothing else running: a real server's concurrent
    # prefills and decodes slow it in ways the model does not hold
    a, b, sa, sb = _prefill(alone if len(lengths) >= 2 else runs)
    seen: list[dict[str, Any]] = []
    for r in runs:
        mean_b, mode_b, wait = _slots(r, a + b * r.input_tokens)
        tpot = r.tpot_ms[np.isfinite(r.tpot_ms)]
        seen.append({"run": r.name, "concurrency": r.concurrency, "qps": r.qps, "requests": len(r.ttft_ms),
                     "mean_slots_in_use": mean_b, "slots_most_in_use": mode_b, "mean_queue_wait_ms": wait,
                     "mean_tpot_ms": float(tpot.mean()) if len(tpot) else None,
                     "queued": wait > max(2.0, 0.1 * a)})
    dec = [x for x in seen if x["mean_tpot_ms"] is not None]
    if not dec:
        raise ConfigError("no run has requests of 2 or more output tokens: the decode step cannot be fitted")
    x = np.array([d["mean_slots_in_use"] - 1 for d in dec])
    itl, slope_ms, s_itl, s_slope = _wls(x, np.array([d["mean_tpot_ms"] for d in dec]),
                                         np.array([d["requests"] for d in dec], dtype=float))
    # the most slots a queued run kept busy: a run can also "queue" for other reasons (prefills batched
    # together), and then it holds fewer
    queued = [int(d["slots_most_in_use"]) for d in seen if d["queued"]]
    seqs = max(queued) if queued else None
    rel = slope_ms / itl if itl > 0 else 0.0
    s_rel = abs(rel) * float(np.hypot(s_slope / slope_ms if slope_ms else 0.0, s_itl / itl if itl else 0.0))
    model = ServingModel(max(a, 0.0), max(b, 0.0), max(itl, 0.0), max(rel, 0.0), seqs,
                         {"ttft_ms": sa, "prefill_ms_per_token": sb, "itl_ms": s_itl, "itl_slope": s_rel})
    return model, seen


def _error(measured: float | None, predicted: float | None) -> float | None:
    if not measured or predicted is None:
        return None
    return (predicted - measured) / measured


def fit_error(model: ServingModel, runs: list[RunObs]) -> list[dict[str, Any]]:
    """Each run replayed through the model (its own load and lengths) against what it measured."""
    out = []
    for r in runs:
        if r.concurrency is not None:
            got = replay(model, r.input_tokens, r.output_tokens, concurrency=r.concurrency)
        else:
            got = replay(model, r.input_tokens, r.output_tokens, arrivals_s=r.arrivals_s)
        row: dict[str, Any] = {"run": r.name}
        checks = (("ttft_p50_ms", r.ttft_ms, got.ttft_ms()), ("ttft_p99_ms", r.ttft_ms, got.ttft_ms()),
                  ("tpot_p50_ms", r.tpot_ms[np.isfinite(r.tpot_ms)], got.tpot_ms()))
        for name, meas, pred in checks:
            p = 99 if "p99" in name else 50
            m = float(np.percentile(meas, p)) if len(meas) else None
            q = float(np.percentile(pred, p)) if len(pred) else None
            row[name] = {"measured": m, "predicted": q, "error": _error(m, q)}
        out.append(row)
    return out


def calibrate(paths: Sequence[Path]) -> dict[str, Any]:
    """model.json's content from run and sweep folders (see the module docstring)."""
    try:
        runs = [read_run(p) for p in _run_dirs(paths)]
    except ReportError as exc:
        raise ConfigError(str(exc)) from None
    if not runs:
        raise ConfigError("no finished run to calibrate from")
    model, seen = fit(runs)
    errors = fit_error(model, runs)
    # the medians judge the fit; a p99 of a dozen requests is mostly the client's noise
    worst = max((abs(v["error"]) for row in errors for k, v in row.items()
                 if k.endswith("p50_ms") and v["error"] is not None), default=None)
    notes = []
    if model.max_seqs is None:
        notes.append("max_seqs not identified: no run queued (every request found a free slot); add a run "
                     "at a concurrency above the server's batch size")
    if worst is not None and worst > 0.2:
        notes.append(f"the fit's worst error is {worst:.0%}: this deployment departs from the model (on a "
                     "real server, e.g., concurrent prefills slowing decodes); predictions carry that error "
                     "in their bands, so confirm before trusting one")
    if len({round(float(r.input_tokens.mean())) for r in runs}) < 2:
        notes.append("prefill_ms_per_token not identified: every run had the same input length; add a run "
                     "with another --input-len")
    params = {**{k: v for k, v in model.to_dict().items() if k != "sigma"}, "sigma": model.sigma}
    return {"schema_version": SCHEMA_VERSION, "kind": "serving_model", "parameters": params,
            "runs": seen, "fit_error": errors, "fit_error_max": worst, "notes": notes,
            "sources": [str(p) for p in paths]}

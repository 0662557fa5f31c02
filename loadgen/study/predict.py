"""Predictions from a fitted serving model, and their confirmation by a run.

::

    model = ServingModel.from_dict(load_json(Path("model.json")))
    pred = predict(model, settings)             # latency percentiles, throughput, capacity, bands
    rows = confirm(pred, report)                # predicted vs measured, and the verdict

A prediction replays the scenario's load (``settings``: a closed loop of ``concurrency`` users, or
Poisson arrivals at ``qps``; lengths drawn from its ``input_len``/``output_len`` with its seed; as many
requests as the run would send) through the model in virtual time
(:func:`loadgen.study.servemodel.replay`). Each figure has a **band**: the widest of (a) the same replay
with every parameter one standard error slower and faster, (b) the model's own worst fit error on the
runs it was fitted to, (c) 5% for medians and throughput and 10% for p99s: run-to-run noise, and the
client host's own jitter, which the model does not hold, lands in the tails. A closed loop is replayed
for as many requests as the run would send before both its count and its duration are met. The capacity
(the knee: every slot busy) is ``max_seqs / service time at a full batch`` for the mean lengths.

A percentile can sit on a **cliff** of the predicted distribution: a closed loop with more users than
slots, equal lengths, splits into requests that wait a whole service time for a slot and requests that
do not, and its median falls between the two groups. Then the values within one binomial standard error
of the percentile's rank, 100·√(p(1−p)/n) points, differ by more than the band, and the figure carries
that ``range``: a run is confirmed anywhere in it (widened by the band at each end).

``confirm`` compares a run's report with the prediction figure by figure; the prediction is
**confirmed** when every measured figure lies within its band of the predicted one (or within its
range, for a figure on a cliff).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from loadgen.errors import ConfigError
from loadgen.settings import Scenario, Settings
from loadgen.specs import bounds_text
from loadgen.study.servemodel import Replayed, ServingModel, percentile, replay
from loadgen.study.tiers import Tier, meets
from loadgen.workload.samples import draw_lengths

MIN_BAND = 0.05
MIN_BAND_TAIL = 0.10  # p99s: a few requests decide them, and the client host's own jitter adds ms
#: Figure -> (results key in report.json, percentile key).
FIGURES = {"ttft_p50_ms": ("ttft_ms", "p50"), "ttft_p99_ms": ("ttft_ms", "p99"),
           "tpot_p50_ms": ("tpot_ms", "p50"), "tpot_p99_ms": ("tpot_ms", "p99"),
           "e2e_p99_ms": ("e2e_ms", "p99"), "requests_per_s": ("requests_per_s", None)}


def _requests(settings: Settings, rate: float | None) -> int:
    if settings.scenario in (Scenario.SERVER, Scenario.CONSTANT) and rate:
        return max(settings.num_requests, math.ceil(rate * settings.duration_s))
    return settings.num_requests


def _load(settings: Settings, model: ServingModel, *, concurrency: int | None = None, qps: float | None = None
          ) -> Replayed:
    rng = np.random.default_rng(settings.seed)
    closed = settings.scenario not in (Scenario.SERVER, Scenario.CONSTANT, Scenario.OFFLINE)
    users = concurrency if concurrency is not None else (settings.concurrency if closed else None)
    rate = qps if qps is not None else (None if closed else settings.qps)
    n = _requests(settings, rate)
    ins = draw_lengths(settings.input_len, n, rng)
    outs = draw_lengths(settings.output_len, n, rng)
    if settings.scenario == Scenario.OFFLINE:
        return replay(model, ins, outs, arrivals_s=np.zeros(n))
    if users is not None:
        got = replay(model, ins, outs, concurrency=users)
        span = float(got.end.max()) / 1e9
        if span < settings.duration_s:  # a closed loop runs until both bounds are met: as many as that
            more = math.ceil(n * settings.duration_s / max(span, 1e-9) * 1.02) - n
            ins = np.concatenate([ins, draw_lengths(settings.input_len, more, rng)])
            outs = np.concatenate([outs, draw_lengths(settings.output_len, more, rng)])
            got = replay(model, ins, outs, concurrency=users)
        return got
    assert rate is not None
    gaps = rng.exponential(1.0 / rate, n) if settings.scenario == Scenario.SERVER else np.full(n, 1.0 / rate)
    return replay(model, ins, outs, arrivals_s=np.cumsum(gaps) - gaps[0])


def rank_ranges(r: Replayed) -> dict[str, tuple[float, float]]:
    """Per percentile figure, the values at its rank ± one binomial standard error (100·√(p(1−p)/n)
    points): where the replay's distribution has a cliff at the rank — half the requests wait for a slot
    and half do not — a run's percentile may land anywhere in this range, which the band must hold."""
    series = {"ttft": r.ttft_ms(), "tpot": r.tpot_ms(), "e2e": r.e2e_ms()}
    out = {}
    for name, (_, pct) in FIGURES.items():
        values = series[name.split("_")[0]] if pct else None
        if pct is None or values is None or len(values) < 2:
            continue
        p = float(pct[1:])
        d = 100 * math.sqrt(p / 100 * (1 - p / 100) / len(values))
        lo, hi = percentile(values, max(0.0, p - d)), percentile(values, min(100.0, p + d))
        if lo is not None and hi is not None:
            out[name] = (lo, hi)
    return out


def figures(r: Replayed) -> dict[str, float | None]:
    ttft, tpot, e2e = r.ttft_ms(), r.tpot_ms(), r.e2e_ms()
    return {"ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
            "tpot_p50_ms": percentile(tpot, 50), "tpot_p99_ms": percentile(tpot, 99),
            "e2e_p99_ms": percentile(e2e, 99), "requests_per_s": r.throughput_rps()}


def predict(model: ServingModel, settings: Settings, *, fit_error: float | None = None,
            tiers: Sequence[Tier] = ()) -> dict[str, Any]:
    """The prediction for ``settings``' load (module docstring): ``figures`` with value, band and
    assumption; ``capacity_rps``; per tier the most load that meets it."""
    base = _load(settings, model)
    central = figures(base)
    slow = figures(_load(settings, model.shifted(+1)))
    fast = figures(_load(settings, model.shifted(-1)))
    ranges = rank_ranges(base)
    out = []
    for name, value in central.items():
        band = max(MIN_BAND_TAIL if "p99" in name else MIN_BAND, fit_error or 0.0)
        fig: dict[str, Any] = {"name": name, "value": value}
        if value:
            spread = max(abs((slow[name] or value) - value), abs((fast[name] or value) - value)) / value
            band = max(band, spread)
            lo, hi = ranges.get(name, (value, value))
            if max(value - lo, hi - value) / value > band:  # the percentile sits on a cliff: a run may
                fig["range"] = [lo, hi]                       # land anywhere between its two sides
        fig.update(band=band, assumption=(
            "the fitted model's continuous batching at this load; band = max(±1σ of the parameters, the "
            f"fit's worst error, {MIN_BAND:.0%} ({MIN_BAND_TAIL:.0%} for a p99)); on a cliff of the "
            "distribution, the values within one standard error of the rank"))
        out.append(fig)
    mean_in, mean_out = float(base.input_tokens.mean()), float(base.output_tokens.mean())
    cap = model.capacity_rps(mean_in, mean_out)
    held = model.service_s(mean_in, mean_out, model.max_seqs or 1)
    return {"kind": "prediction", "scenario": settings.scenario.value, "load": _load_label(settings),
            "figures": out, "capacity_rps": cap, "capacity_concurrency": model.max_seqs,
            "capacity_assumption": (f"max_seqs {model.max_seqs} slots each busy {held:.3f} s for "
                                    f"{mean_in:.0f} in / {mean_out:.0f} out" if cap else
                                    "max_seqs was not identified by the calibration: no capacity"),
            "tiers": [max_load(model, settings, t) for t in tiers]}


def _load_label(settings: Settings) -> str:
    if settings.scenario in (Scenario.SERVER, Scenario.CONSTANT):
        return f"qps={settings.qps:g}"
    if settings.scenario == Scenario.OFFLINE:
        return f"offline, {settings.num_requests} requests at once"
    return f"concurrency={settings.concurrency}"


def max_load(model: ServingModel, settings: Settings, tier: Tier) -> dict[str, Any]:
    """The most load (users for closed loops, else req/s) whose replay meets ``tier``."""
    if model.max_seqs is None:
        raise ConfigError("max_seqs was not identified, so the model never queues and any load would meet "
                          "the tier; calibrate again with a run at a concurrency that queues")
    open_loop = settings.scenario in (Scenario.SERVER, Scenario.CONSTANT)

    def ok(x: float) -> bool:
        r = _load(settings, model, qps=x) if open_loop else _load(settings, model, concurrency=int(x))
        row = {**figures(r), "error_rate": 0.0, "client_limited": False}
        return meets(row, tier)

    # A finite replay can hide what a day of traffic would not: above capacity an open loop's queue grows
    # without end, and a closed loop never has more users in flight than it has requests.
    if open_loop:
        ceiling = model.capacity_rps(*_mean_lengths(settings))
    else:
        ceiling = float(settings.num_requests) if settings.num_requests else None
    floor = 0.001 if open_loop else 1  # req/s or users: below this, the tier is not met at all
    capped = False
    if not ok(floor):
        lo = 0.0
    elif ceiling is not None and ok(ceiling):
        lo, capped = ceiling, True
    elif open_loop:
        lo, hi = floor, 1.0
        while ok(hi) and hi < (ceiling or 1e6):
            lo, hi = hi, hi * 2
        hi = min(hi, ceiling or hi)
        while hi - lo > 0.01 * hi:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    else:
        lo, hi = 1, 2
        while ok(hi) and hi < (ceiling or 1_000_000):
            lo, hi = hi, hi * 2
        hi = min(hi, int(ceiling or hi))
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    limit = None
    if capped:
        limit = ("capacity: above it the queue grows without end, which a finite replay hides" if open_loop
                 else f"the replay's {settings.num_requests} requests are all in flight at once; give more "
                      "--num-requests to look further")
    return {"name": tier.name, "bounds": tier.bounds(), "parameter": "qps" if open_loop else "concurrency",
            "max": (int(lo) if not open_loop else round(lo, 3)) or None, "limit": limit}


def _mean_lengths(settings: Settings) -> tuple[float, float]:
    rng = np.random.default_rng(settings.seed)
    return (float(draw_lengths(settings.input_len, 4096, rng).mean()),
            float(draw_lengths(settings.output_len, 4096, rng).mean()))


def replicas(model: ServingModel, settings: Settings, peak_qps: float, *, headroom: float = 0.2,
             gpu_hour_usd: float | None = None, gpus_per_replica: int = 1) -> dict[str, Any]:
    """Replicas for ``peak_qps`` with ``headroom``: each replica carries the most Poisson QPS whose
    replay meets the scenario's SLO (p99 TTFT/TPOT bounds); cost per million output tokens when
    ``gpu_hour_usd`` is given. ConfigError without an SLO to plan against."""
    slo = settings.effective_slo
    if slo.ttft_ms is None and slo.tpot_ms is None:
        raise ConfigError("a replica count needs an SLO: give --ttft-ms/--tpot-ms or a scenario with slo:")
    if peak_qps <= 0 or headroom < 0 or gpus_per_replica < 1:
        raise ConfigError("--peak-qps must be > 0, --headroom >= 0 and --gpus-per-replica >= 1")
    open_loop = settings.model_copy(update={"scenario": Scenario.SERVER, "qps": 1.0})
    per = max_load(model, open_loop, Tier("slo", ttft_ms=slo.ttft_ms, tpot_ms=slo.tpot_ms))["max"]
    if not per:
        raise ConfigError("the model meets the SLO at no rate: even one request at a time is too slow")
    mean_out = _mean_lengths(settings)[1]
    need = max(1, math.ceil(peak_qps * (1 + headroom) / per - 1e-9))
    cost = (gpu_hour_usd * gpus_per_replica * need / (peak_qps * mean_out * 3600) * 1e6
            if gpu_hour_usd is not None else None)
    return {"peak_qps": peak_qps, "headroom": headroom, "sustainable_qps_per_replica": per,
            "replicas": need, "load_per_replica_qps": peak_qps / need, "usd_per_million_output_tokens": cost,
            "assumption": f"Poisson arrivals; a replica carries the most QPS whose replay meets TTFT p99 <= "
                          f"{slo.ttft_ms} ms and TPOT p99 <= {slo.tpot_ms} ms, at most its capacity; load "
                          "balances evenly"}


def confirm(prediction: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """Predicted vs measured, figure by figure; ``confirmed`` when each lies within its band."""
    results = report.get("results") or {}
    rows = []
    for fig in prediction["figures"]:
        key, pct = FIGURES[fig["name"]]
        measured = results.get(key) if pct is None else (results.get(key) or {}).get(pct)
        err = None if not measured or fig["value"] is None else (fig["value"] - measured) / measured
        rows.append({**fig, "measured": measured, "error": err,
                     "within": err is not None and measured is not None and _within(fig, measured, err)})
    return {"rows": rows, "confirmed": all(r["within"] for r in rows if r["measured"] is not None),
            "valid_run": bool((report.get("validity") or {}).get("valid"))}


def _within(fig: dict[str, Any], measured: float, err: float) -> bool:
    if fig.get("range"):
        lo, hi = fig["range"]
        return lo * (1 - fig["band"]) <= measured <= hi * (1 + fig["band"])
    return abs(err) <= fig["band"]


def render(prediction: dict[str, Any], confirmation: dict[str, Any] | None = None) -> str:
    lines = [f"prediction for {prediction['scenario']} at {prediction['load']}:"]
    measured = {r["name"]: r for r in (confirmation or {}).get("rows", ())}
    for fig in prediction["figures"]:
        v = fig["value"]
        text = f"  {fig['name']:<16}{'-' if v is None else f'{v:,.2f}':>12}  ± {fig['band']:.1%}"
        if fig["name"] in measured:
            m = measured[fig["name"]]
            mv = "-" if m["measured"] is None else f"{m['measured']:,.2f}"
            where = "within" if m["within"] else "OUTSIDE"
            err = "" if m["error"] is None else f" ({m['error']:+.1%}, {where})"
            text += f"   measured {mv}{err}"
        if fig.get("range"):
            lo, hi = fig["range"]
            text += f"   [on a cliff: {lo:,.2f} to {hi:,.2f}]"
        lines.append(text)
    cap = prediction["capacity_rps"]
    lines.append(f"capacity (every slot busy): {'not identified' if cap is None else f'{cap:,.2f} req/s'}"
                 f" — {prediction['capacity_assumption']}")
    for t in prediction["tiers"]:
        bounds = bounds_text(t["bounds"])
        got = f"up to {t['parameter']}={t['max']}" if t["max"] else "not met at any load"
        if t.get("limit"):
            got += f" (the {t['limit']})" if t["parameter"] == "qps" else f" ({t['limit']})"
        lines.append(f"tier {t['name']} ({bounds}): {got}")
    plan = prediction.get("replicas")
    if plan:
        cost = plan["usd_per_million_output_tokens"]
        lines.append(f"replicas for {plan['peak_qps']:g} QPS (+{plan['headroom']:.0%}): {plan['replicas']} "
                     f"(each carries up to {plan['sustainable_qps_per_replica']:g} QPS within the SLO)"
                     + ("" if cost is None else f"; ${cost:,.2f} per million output tokens"))
    cliffs = [f["name"] for f in prediction["figures"] if f.get("range")]
    if cliffs:
        lines.append(f"note: the predicted distribution has a cliff at {', '.join(cliffs)} (e.g. some "
                     "requests wait for a slot and the rest do not): a run may land anywhere in the range "
                     "shown, and is confirmed there")
    widest = max((f["band"] for f in prediction["figures"]), default=0.0)
    if widest > 0.25:
        lines.append(f"warning: bands up to ±{widest:.0%}: the model fits this deployment poorly (see the "
                     "notes of loadgen calibrate); a confirmation within such bands says little")
    if confirmation is not None:
        verdict = "CONFIRMED" if confirmation["confirmed"] else "NOT CONFIRMED"
        lines.append(f"confirmation: {verdict} (every measured figure within its band: "
                     f"{'yes' if confirmation['confirmed'] else 'no'}; the run was "
                     f"{'VALID' if confirmation['valid_run'] else 'INVALID'})")
    return "\n".join(lines)

"""Capacity plan from a sweep or a peak search: replicas, expected latency, tokens per GPU-second, cost
and energy, each figure with the assumption it rests on.

::

    plan = make_plan(load_source(Path("sweep-dir")), PlanInputs(peak_qps=120, headroom=0.2,
                     gpu_hour_usd=2.5, gpus_per_replica=1))
    plan["replicas"], plan["figures"]                        # what plan.json holds

Formulas (``O`` = output tokens per request, measured at the sustainable point as output tokens/s over
requests/s):

* sustainable QPS per replica = the highest achieved requests/s among the source's points that are
  VALID (unless ``require_valid`` is off) and meet the SLO (p99 TTFT and p99 TPOT within the bounds);
* replicas = ceil(peak_qps × (1 + headroom) / sustainable);
* load per replica at peak = peak_qps / replicas; expected TTFT/TPOT there = linear interpolation in
  requests/s between the two measured points that bracket it (the lightest point's value below it);
* tokens per GPU-second = load per replica × O / gpus_per_replica;
* cost per million output tokens = gpu_hour_usd × gpus_per_replica × replicas / (peak_qps × O × 3600)
  × 1e6 (every replica is paid for all hour, busy or not);
* energy per 1k output tokens = 1000 × joules per output token, interpolated like the latencies (only
  when the points' reports carried GPU telemetry).

Everything assumes the traffic has the source's length mix; asking about another mix only warns.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen.errors import ConfigError, ReportError
from loadgen.report.files import load_json

SCHEMA_VERSION = 1
_CURVES = ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "joules_per_output_token")


@dataclass
class Source:
    """A sweep or peak search reduced to what a plan needs."""

    path: Path
    kind: str  # "sweep" | "peak"
    points: list[dict[str, Any]]  # label, requests_per_s, output_tokens_per_s, curves, valid, ...
    slo: dict[str, Any]
    input_tokens: float | None
    output_tokens: float | None


@dataclass(frozen=True)
class PlanInputs:
    peak_qps: float
    headroom: float = 0.2
    gpu_hour_usd: float | None = None
    gpus_per_replica: int = 1
    input_len: int | None = None
    output_len: int | None = None
    ttft_ms: float | None = None  # override the source's SLO
    tpot_ms: float | None = None
    require_valid: bool = True


def _mean_len(dist: Any) -> float | None:
    if isinstance(dist, dict):
        v = dist.get("mean")
        return float(v) if isinstance(v, int | float) else None
    return float(dist) if isinstance(dist, int | float) else None


def load_source(path: Path) -> Source:
    """A sweep folder / sweep.json, or a peak folder / peak.json. Raises ReportError otherwise."""
    if path.is_dir():
        for name in ("sweep.json", "peak.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ReportError(f"{path} holds neither sweep.json nor peak.json; give a sweep or find-peak "
                              "output folder (or the JSON file itself)")
    data = load_json(path)
    kind = data.get("kind")
    mix = data.get("length_mix") or {}
    in_mean, out_mean = _mean_len(mix.get("input_len")), _mean_len(mix.get("output_len"))
    points: list[dict[str, Any]] = []
    if kind == "sweep":
        for p in data.get("points") or []:
            row = p.get("row")
            if p.get("status") != "done" or not row or not row.get("requests_per_s"):
                continue
            values = p.get("values") or {}
            label = ", ".join(f"{k}={v}" for k, v in values.items())
            points.append({**row, "label": f"point {p.get('index')} ({label})",
                           "input_tokens": _mean_len(values.get("input_len")) or in_mean})
    elif kind == "peak":
        for i, r in enumerate(data.get("runs") or []):
            if not r.get("requests_per_s"):
                continue
            points.append({**r, "label": f"run {i} at {r.get('qps'):g} QPS", "client_limited": False,
                           "input_tokens": in_mean})
    else:
        raise ReportError(f"{path} is not a sweep.json or peak.json (kind {kind!r})")
    return Source(path, str(kind), points, dict(data.get("slo") or {}), in_mean, out_mean)


def _meets(point: dict[str, Any], slo: dict[str, Any]) -> bool:
    for key, bound in (("ttft_p99_ms", slo.get("ttft_ms")), ("tpot_p99_ms", slo.get("tpot_ms"))):
        if bound is not None and (point.get(key) is None or point[key] > bound):
            return False
    return True


def interpolate(points: list[dict[str, Any]], x: float, key: str) -> tuple[float | None, str]:
    """``key`` at requests/s ``x``: linear between the bracketing points (sorted by requests/s), the
    lightest point's value below the first one. Returns (value, how it was obtained). Pure."""
    pts = sorted((p for p in points if p.get(key) is not None), key=lambda p: p["requests_per_s"])
    if not pts:
        return None, "not measured"
    if x <= pts[0]["requests_per_s"]:
        return float(pts[0][key]), (f"at or below the lightest point measured ({pts[0]['label']}, "
                                    f"{pts[0]['requests_per_s']:.4g} req/s): its value")
    for a, b in itertools.pairwise(pts):
        xa, xb = a["requests_per_s"], b["requests_per_s"]
        if xa <= x <= xb:
            frac = 0.0 if xb == xa else (x - xa) / (xb - xa)
            return (float(a[key] + frac * (b[key] - a[key])),
                    f"interpolated linearly between {a['label']} ({xa:.4g} req/s) and {b['label']} "
                    f"({xb:.4g} req/s)")
    return float(pts[-1][key]), f"beyond the heaviest point measured ({pts[-1]['label']}): its value"


def _select(src: Source, inp: PlanInputs) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(SLO, measured points, the sustainable point); ConfigError when no point qualifies."""
    if inp.peak_qps <= 0 or inp.headroom < 0 or inp.gpus_per_replica < 1:
        raise ConfigError("plan: --peak-qps must be > 0, --headroom >= 0, --gpus-per-replica >= 1")
    if inp.gpu_hour_usd is not None and inp.gpu_hour_usd < 0:
        raise ConfigError("plan: --gpu-hour-usd must be >= 0")
    slo = {**src.slo}
    if inp.ttft_ms is not None:
        slo["ttft_ms"] = inp.ttft_ms
    if inp.tpot_ms is not None:
        slo["tpot_ms"] = inp.tpot_ms
    measured = [p for p in src.points if not p.get("client_limited")]
    usable = [p for p in measured if (p.get("valid") or not inp.require_valid) and _meets(p, slo)]
    if not usable:
        need = "VALID and within" if inp.require_valid else "within"
        raise ConfigError(
            f"no point of {src.path} is {need} the SLO (TTFT p99 <= {slo.get('ttft_ms')} ms, TPOT p99 <= "
            f"{slo.get('tpot_ms')} ms), so there is no sustainable rate to plan with"
            + ("; --allow-invalid uses points that are INVALID only for other reasons (e.g. too few "
               "queries)" if inp.require_valid else "")
        )
    return slo, measured, max(usable, key=lambda p: p["requests_per_s"])


def _mix_warning(src: Source, inp: PlanInputs, in_per_req: float | None, out_per_req: float | None
                 ) -> list[str]:
    asked_in = inp.input_len is not None and in_per_req is not None and round(in_per_req) != inp.input_len
    asked_out = (inp.output_len is not None and out_per_req is not None
                 and round(out_per_req) != inp.output_len)
    if not (asked_in or asked_out):
        return []
    return [
        f"you asked about {inp.input_len or _n(in_per_req)} in / {inp.output_len or _n(out_per_req)} "
        f"out, but the {src.kind} measured {_n(in_per_req)} in / {_n(out_per_req)} out: every figure "
        "below is for the measured mix; sweep again with your lengths for a plan you can trust"
    ]


def make_plan(src: Source, inp: PlanInputs) -> dict[str, Any]:
    """The plan as a JSON-able dict (see the module docstring for every formula). ConfigError when no
    point qualifies or an input is out of range."""
    slo, measured, best = _select(src, inp)
    sustainable = float(best["requests_per_s"])
    target = inp.peak_qps * (1 + inp.headroom)
    replicas = max(1, math.ceil(target / sustainable - 1e-9))
    per_replica = inp.peak_qps / replicas
    out_per_req = (float(best["output_tokens_per_s"]) / sustainable
                   if best.get("output_tokens_per_s") else src.output_tokens)
    in_per_req = best.get("input_tokens") or src.input_tokens
    mix = f"{_n(in_per_req)} in / {_n(out_per_req)} out"
    warnings = _mix_warning(src, inp, in_per_req, out_per_req)
    expected: dict[str, Any] = {}
    how = {}
    for key in _CURVES:
        expected[key], how[key] = interpolate(measured, per_replica, key)
    figures: list[dict[str, Any]] = []

    def fig(name: str, value: Any, unit: str, assumption: str) -> None:
        figures.append({"name": name, "value": value, "unit": unit, "assumption": assumption})

    base = f"assumes traffic with the {src.kind}'s length mix: {mix}"
    fig("sustainable_qps_per_replica", sustainable, "req/s",
        f"{best['label']}: the highest achieved rate that was {'VALID and ' if inp.require_valid else ''}"
        f"within the SLO; {base}")
    fig("replicas", replicas, "", f"ceil({inp.peak_qps:g} × (1 + {inp.headroom:g}) / {sustainable:.4g}); "
        "assumes load balances evenly and replicas behave like the one measured")
    fig("load_per_replica_at_peak", per_replica, "req/s",
        f"{inp.peak_qps:g} req/s over {replicas} replicas ({100 * per_replica / sustainable:.0f}% of the "
        "sustainable rate)")
    for key in ("ttft_p99_ms", "tpot_p99_ms", "ttft_p50_ms", "tpot_p50_ms"):
        if expected[key] is not None:
            fig(f"expected_{key}", expected[key], "ms", f"at {per_replica:.4g} req/s per replica, "
                f"{how[key]}; {base}")
    tok_s = per_replica * out_per_req if out_per_req else None
    gpu_s = tok_s / inp.gpus_per_replica if tok_s is not None else None
    if gpu_s is not None and out_per_req:
        fig("output_tokens_per_gpu_s", gpu_s, "tokens/s",
            f"{per_replica:.4g} req/s × {_n(out_per_req)} output tokens / {inp.gpus_per_replica} GPU(s) per "
            f"replica, at peak traffic; {_n(sustainable * out_per_req / inp.gpus_per_replica)} at the "
            "sustainable rate")
    cost = None
    if inp.gpu_hour_usd is not None and out_per_req:
        per_hour = inp.gpu_hour_usd * inp.gpus_per_replica * replicas
        cost = per_hour / (inp.peak_qps * out_per_req * 3600) * 1e6
        fig("cost_per_million_output_tokens_usd", cost, "USD",
            f"{replicas} replicas × {inp.gpus_per_replica} GPU(s) × ${inp.gpu_hour_usd:g}/GPU-hour = "
            f"${per_hour:g}/h, serving {inp.peak_qps:g} req/s × {_n(out_per_req)} output tokens all hour "
            "(traffic below the peak costs more per token)")
    energy = expected["joules_per_output_token"] * 1000 if expected["joules_per_output_token"] else None
    if energy is not None:
        fig("energy_per_1k_output_tokens_j", energy, "J",
            f"GPU energy from the reports (the fleet's DCGM series when present, else local NVML "
            f"telemetry), {how['joules_per_output_token']}")
    else:
        warnings.append("no GPU telemetry in the measured points: no energy figure")
    return {
        "schema_version": SCHEMA_VERSION, "kind": "plan", "source": str(src.path), "source_kind": src.kind,
        "inputs": {"peak_qps": inp.peak_qps, "headroom": inp.headroom, "gpu_hour_usd": inp.gpu_hour_usd,
                   "gpus_per_replica": inp.gpus_per_replica, "input_len": inp.input_len,
                   "output_len": inp.output_len, "require_valid": inp.require_valid},
        "slo": {"ttft_ms": slo.get("ttft_ms"), "tpot_ms": slo.get("tpot_ms")},
        "length_mix": {"input_tokens": in_per_req, "output_tokens": out_per_req},
        "sustainable": {"requests_per_s": sustainable, "point": best["label"],
                        "ttft_p99_ms": best.get("ttft_p99_ms"), "tpot_p99_ms": best.get("tpot_p99_ms")},
        "target_qps": target, "replicas": replicas, "per_replica_qps": per_replica,
        "utilization": per_replica / sustainable,
        "expected": {**{k: expected[k] for k in _CURVES[:4]}, "method": how["ttft_p99_ms"]},
        "output_tokens_per_request": out_per_req, "output_tokens_per_gpu_s": gpu_s,
        "cost_per_million_output_tokens_usd": cost, "energy_per_1k_output_tokens_j": energy,
        "figures": figures, "warnings": warnings,
    }


def _n(v: float | None) -> str:
    if v is None:
        return "?"
    return f"{v:,.0f}" if abs(v - round(v)) < 0.05 or v >= 100 else f"{v:,.1f}"


def render(plan: dict[str, Any]) -> str:
    """Each figure with its assumption, warnings first."""
    lines = [f"capacity plan from {plan['source']}"]
    lines += [f"WARNING: {w}" for w in plan["warnings"]]
    for f in plan["figures"]:
        v = f["value"]
        shown = f"{v:,.4g}" if isinstance(v, float) else str(v)
        lines.append(f"{f['name']:<36} {shown} {f['unit']}".rstrip())
        lines.append(f"    {f['assumption']}")
    return "\n".join(lines)

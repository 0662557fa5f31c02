"""A sweep's rows and knees: one row of numbers per point from its ``report.json``, GPU joules per output
token, and the knee(s) where more load stops buying throughput. Pure: dicts in, dicts out.

Knee (:func:`find_knee`): along the points in order, the first point ``i`` such that going to point
``i + 1`` raises throughput (completed requests/s) by less than 10% while TTFT p99 rises by more than 50%:
past it, more load buys queueing, not throughput. With several parameters the knee is found along the
load parameter (the first one that is not a server argument) separately for each combination of the
others (:func:`find_knees`): each server setting has its own knee. ``sweep.json`` holds them all in
``knees`` (``{"index", "reason", "group"}``, ``group`` the other parameters' values) and, for a sweep of
one parameter, the one knee in ``knee`` as well.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from loadgen.settings import Scenario

__all__ = [
    "KNEE_THROUGHPUT_GAIN",
    "KNEE_TTFT_GROWTH",
    "ROW_FIELDS",
    "find_knee",
    "find_knees",
    "joules_per_output_token",
    "load_parameter",
    "row_from_report",
]

KNEE_THROUGHPUT_GAIN = 0.10  # less than +10% requests/s ...
KNEE_TTFT_GROWTH = 0.50  # ... while TTFT p99 grows by more than 50%

#: The columns of one sweep row (``sweep.json`` points[].row and ``sweep.csv``), in order.
ROW_FIELDS = (
    "offered_qps", "concurrency", "requests_per_s", "output_tokens_per_s", "goodput_requests_per_s",
    "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "tpot_p50_ms", "tpot_p99_ms",
    "e2e_p50_ms", "e2e_p99_ms", "ttfa_p99_ms", "error_rate", "valid", "client_limited",
    "joules_per_output_token", "server_args", "classes_missed",
)


def _pct(results: dict[str, Any], key: str, p: str) -> float | None:
    d = results.get(key) or {}
    v = d.get(p)
    return float(v) if v is not None else None


def joules_per_output_token(report: dict[str, Any]) -> float | None:
    """GPU joules per output token from the report's ``telemetry`` section (``total``, as written by
    :mod:`loadgen.observe.gpu`), or the remote fleet's (``fleet_energy``, preferred when present: those
    GPUs serve); None when the run had neither."""
    from loadgen.report.fleet import fleet_joules_per_output_token

    if (fleet := fleet_joules_per_output_token(report)) is not None:
        return fleet
    tel = report.get("telemetry")
    if not isinstance(tel, dict) or tel.get("available") is False:
        return None
    total: dict[str, Any] = tel["total"] if isinstance(tel.get("total"), dict) else tel
    jpt = total.get("joules_per_output_token")
    if isinstance(jpt, int | float):
        return float(jpt)
    energy = total.get("energy_j")
    tokens = (report.get("results") or {}).get("output_tokens_total")
    if isinstance(energy, int | float) and energy > 0 and tokens:
        return float(energy) / float(tokens)
    return None


def row_from_report(report: dict[str, Any]) -> dict[str, Any]:
    """One sweep row from a ``report.json`` dict. TTFT is counted from the scheduled time (MLPerf's
    base; equal to "from sent" unless the client ran late); ITL percentiles are over all gaps."""
    s = report.get("settings") or {}
    r = report.get("results") or {}
    scenario = str(s.get("scenario"))
    open_rate = scenario in (Scenario.SERVER.value, Scenario.CONSTANT.value)
    concurrency = {
        Scenario.CONCURRENCY.value: s.get("concurrency"),
        Scenario.SINGLESTREAM.value: 1,
        Scenario.MULTISTREAM.value: s.get("samples_per_query"),
    }.get(scenario)
    if s.get("sessions"):  # sessions in flight at once: the load of a session run
        concurrency = s["sessions"].get("users")
    issued = r.get("requests_issued") or 0
    server = s.get("server") or {}
    client = report.get("client") or {}
    return {
        "offered_qps": s.get("qps") if open_rate else None,
        "concurrency": concurrency,
        "requests_per_s": r.get("requests_per_s"),
        "output_tokens_per_s": r.get("output_tokens_per_s"),
        "goodput_requests_per_s": (r.get("goodput") or {}).get("requests_per_s"),
        "ttft_p50_ms": _pct(r, "ttft_from_scheduled_ms", "p50"),
        "ttft_p99_ms": _pct(r, "ttft_from_scheduled_ms", "p99"),
        "itl_p50_ms": _pct(r, "itl_ms", "p50"),
        "itl_p99_ms": _pct(r, "itl_ms", "p99"),
        "tpot_p50_ms": _pct(r, "tpot_ms", "p50"),
        "tpot_p99_ms": _pct(r, "tpot_ms", "p99"),
        "e2e_p50_ms": _pct(r, "e2e_from_scheduled_ms", "p50"),
        "e2e_p99_ms": _pct(r, "e2e_from_scheduled_ms", "p99"),
        "ttfa_p99_ms": _pct(r, "time_to_first_answer_ms", "p99"),
        "error_rate": (r.get("requests_failed", 0) / issued) if issued else None,
        "valid": bool((report.get("validity") or {}).get("valid")),
        "client_limited": bool(client.get("client_limited")),
        "joules_per_output_token": joules_per_output_token(report),
        "server_args": " ".join(server["args"]) if server.get("args") else None,
        # a traffic mix: the classes that missed their own SLO ("" when every class met it)
        "classes_missed": None if not r.get("classes") else " ".join(
            name for name, c in r["classes"].items() if c.get("slo_met") is False),
    }


def load_parameter(names: Sequence[str]) -> str | None:
    """The parameter a knee is looked for along: the first that is not a server argument (else the
    first one; None for no parameters)."""
    return next((n for n in names if not n.startswith("-")), names[0] if names else None)


def find_knees(points: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """One knee search (:func:`find_knee`) per combination of the parameters other than the load
    parameter, along the points in index order. Pure. ``points`` are ``sweep.json`` points (``values``,
    ``status``, ``row``); returns ``{"index", "reason", "group"}`` per group that has a knee, ``index``
    into ``points`` and ``group`` the other parameters' values (empty for a one-parameter sweep)."""
    load = load_parameter(names)
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for p in points:
        group = {n: v for n, v in (p.get("values") or {}).items() if n != load}
        groups.setdefault(tuple((n, repr(v)) for n, v in group.items()), group)
    knees = []
    for key, group in groups.items():
        rows = [
            p["row"] if p.get("status") == "done" and p.get("row") is not None
            and tuple((n, repr(v)) for n, v in (p.get("values") or {}).items() if n != load) == key
            else None
            for p in points
        ]
        knee = find_knee(rows)
        if knee is not None:
            knees.append({**knee, "group": group})
    return knees


def find_knee(rows: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The knee of a load sweep, or None. Pure.

    Rule: the first ``i`` such that from row ``i`` to the next usable row, ``requests_per_s`` grows by
    less than 10% while ``ttft_p99_ms`` grows by more than 50%. Rows that are None or lack either number
    (failed points) are skipped. Returns ``{"index", "reason"}`` with the index into ``rows``.
    """
    usable = [
        (i, float(r["requests_per_s"]), float(r["ttft_p99_ms"]))
        for i, r in enumerate(rows)
        if r is not None and r.get("requests_per_s") and r.get("ttft_p99_ms")
    ]
    for (i, thr, ttft), (j, thr2, ttft2) in itertools.pairwise(usable):
        gain = thr2 / thr - 1.0
        growth = ttft2 / ttft - 1.0
        if gain < KNEE_THROUGHPUT_GAIN and growth > KNEE_TTFT_GROWTH:
            return {
                "index": i,
                "reason": (
                    f"from point {i} to point {j} throughput grew {100 * gain:+.1f}% (< "
                    f"{100 * KNEE_THROUGHPUT_GAIN:.0f}%) while TTFT p99 grew {100 * growth:+.1f}% (> "
                    f"{100 * KNEE_TTFT_GROWTH:.0f}%): more load past point {i} buys queueing, not "
                    "throughput"
                ),
            }
    return None

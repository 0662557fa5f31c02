"""Results per traffic class (``classes:``, :mod:`loadgen.workload.mix`) and each class's own SLO.

For each class: its share of the measured queries, its latency distributions (TTFT, TPOT, E2E, and time
to first answer), its request and token rates over the run's duration, and its goodput against its own
SLO. A class's SLO is judged as the run's is: on the p99, and from each query's scheduled time, so a
late client cannot hide a wait. TTFT, TPOT and E2E p99 must each be at most their bound. Any class that
misses makes the run INVALID, with a reason naming the class and the bound. So a peak search over a mix
finds the highest total rate at which every class meets its SLO, and the class whose SLO binds first is
the one that sets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loadgen.metrics.latency import Slo, summarize
from loadgen.records import RequestRecord
from loadgen.specs import ClassSpec

__all__ = ["class_results"]

_KEEP = ("requests_issued", "requests_completed", "requests_failed", "ttft_ms", "ttft_from_scheduled_ms",
         "tpot_ms", "e2e_ms", "e2e_from_scheduled_ms", "time_to_first_answer_ms", "output_tokens_total",
         "input_tokens_total", "goodput")
# (bound, the distribution it judges, label): from the scheduled time, as the run's verdict judges
_BOUNDS = (("ttft_ms", "ttft_from_scheduled_ms", "TTFT"), ("tpot_ms", "tpot_ms", "TPOT"),
           ("e2e_ms", "e2e_from_scheduled_ms", "E2E"))


def class_results(records: Sequence[RequestRecord], classes: Sequence[ClassSpec], duration_s: float | None,
                  shares: Sequence[float], rates: Sequence[float] | None = None,
                  ) -> tuple[dict[str, Any], list[str]]:
    """(``results.classes``, the reasons of the classes that missed their SLO) over measured records;
    ``shares`` are the classes' normalised shares asked for, ``rates`` their own arrival rates."""
    total = len(records)
    out: dict[str, Any] = {}
    reasons: list[str] = []
    for i, c in enumerate(classes):
        mine = [r for r in records if r.cls == c.name]
        got = summarize(mine, slo=Slo.of(c.slo))
        row: dict[str, Any] = {k: got.get(k) for k in _KEEP}
        done = row["requests_completed"] or 0
        row["share"] = len(mine) / total if total else None
        row["share_asked"] = shares[i]
        if rates is not None:
            row["qps_asked"] = rates[i]
            row["burstiness"] = c.burstiness
        row["model"] = c.model
        row["endpoint"] = c.endpoint
        row["requests_per_s"] = done / duration_s if duration_s else None
        row["output_tokens_per_s"] = (row["output_tokens_total"] or 0) / duration_s if duration_s else None
        row["slo"] = {k: v for k, v in c.slo.model_dump().items() if v is not None}
        missed = []
        for key, dist, label in _BOUNDS:
            bound = getattr(c.slo, key)
            if bound is None:
                continue
            p99 = (row.get(dist) or {}).get("p99")
            if p99 is None:
                missed.append(f"no completed request to judge its {label} p99 against {bound:g} ms")
            elif p99 > bound:
                missed.append(f"{label} p99 {p99:,.1f} ms > bound {bound:g} ms")
        row["slo_met"] = not missed if row["slo"] else None
        reasons += [f"class {c.name}: {m}. Lower the load (--qps, --concurrency), or relax this class's "
                    "slo: if even light load misses it." for m in missed]
        out[c.name] = row
    return out, reasons

"""Per-node certification of a Ray run: each node judged as a client of its own, and the clocks.

A node's workers are the actors on it; a record belongs to worker ``index % workers`` (the issuer's
id stride). Each node's records, loop lags and CPU go through the same verdict as a whole run
(:func:`loadgen.metrics.health.assess`), so "client-limited" means the same on a node as on one
host; the run is client-limited when any node is. The clocks: each actor's start offset is good to
± half the shortest ping's round trip; when that uncertainty exceeds :data:`CLOCK_SHARE` of the
median latency measured (TTFT, else E2E), the run's schedule across nodes is not known well enough
to trust the merged timeline, and the run is INVALID with a reason naming the node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from loadgen.engine.workers import WorkerResult
from loadgen.metrics.health import ClientHealth
from loadgen.records import RequestRecord

CLOCK_SHARE = 0.01
CLOCK_FIELDS = ("worker", "pid", "niceness", "clock_offset_ms", "clock_uncertainty_ms", "clock_drift_ppm")

Judge = Callable[[list[RequestRecord], np.ndarray, list[float | None]], ClientHealth]


def certify(health: ClientHealth, records: Sequence[RequestRecord], results: Sequence[WorkerResult],
            actors: Sequence[dict[str, Any]], judge: Judge) -> ClientHealth:
    """``health`` of the whole run with ``engine="ray"``, the per-node table, any node's verdict and
    the clock check folded in. ``actors``: :attr:`RayPool.nodes` (one row per worker)."""
    workers = len(actors)
    by_worker = {r.worker: r for r in results}
    index = np.array([r.index for r in records], dtype=np.int64)
    owner = index % max(workers, 1)
    nodes: dict[str, list[dict[str, Any]]] = {}
    for row in actors:
        nodes.setdefault(row["node"], []).append(row)
    table, reasons = [], list(health.reasons)
    for node, rows in nodes.items():
        mine = [w["worker"] for w in rows]
        picked = [records[int(k)] for k in np.nonzero(np.isin(owner, mine))[0]]
        lags = [by_worker[w].lags_ns for w in mine if w in by_worker]
        cpus = [by_worker[w].cpu_cores if w in by_worker else None for w in mine]
        verdict = judge(picked, np.concatenate(lags) if lags else np.zeros(0, np.int64), cpus)
        first = rows[0]
        table.append({"node": node, "ip": first["ip"], "hostname": first["hostname"], "workers": mine,
                      "requests": len(picked), "issue_delay_ms": verdict.issue_delay_ms,
                      "loop_lag_ms": verdict.loop_lag_ms, "cpu_cores": verdict.cpu_cores,
                      "client_limited": verdict.limited, "reasons": verdict.reasons,
                      "lost": any(w["lost"] for w in rows),
                      "clocks": [{k: w[k] for k in CLOCK_FIELDS} for w in rows]})
        reasons += [f"node {first['ip']} ({node}): {r}" for r in verdict.reasons if verdict.limited]
    limited = health.limited or any(n["client_limited"] for n in table)
    return dataclasses.replace(health, engine="ray", nodes=table, limited=limited, reasons=reasons,
                               clock_reasons=tuple(_clock_reasons(records, table)))


def _clock_reasons(records: Sequence[RequestRecord], table: list[dict[str, Any]]) -> list[str]:
    ttft = [r.first_token_ns - r.sent_ns for r in records if r.ok and r.first_token_ns]
    lat = ttft or [r.end_ns - r.sent_ns for r in records if r.ok and r.end_ns]
    if not lat:
        return []
    median_ms = float(np.median(lat)) / 1e6
    what = "TTFT" if ttft else "E2E"
    out = []
    for node in table:
        worst = max(c["clock_uncertainty_ms"] for c in node["clocks"])
        if worst > CLOCK_SHARE * median_ms:
            out.append(f"node {node['ip']} ({node['node']}): its clock offset is known to ±{worst:.3f} ms, "
                       f"more than {CLOCK_SHARE:.0%} of the {what} p50 ({median_ms:.2f} ms): the nodes' "
                       "schedules cannot be aligned well enough (a faster network between the driver and "
                       "the nodes, or the driver on the cluster, narrows it)")
    return out

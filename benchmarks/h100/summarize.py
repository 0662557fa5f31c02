"""One line per loadgen run folder under a directory (recursively), for the H100 results table.

    python3 benchmarks/h100/summarize.py /tmp/lg
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(v: object, d: int = 1) -> str:
    return "-" if v is None else f"{v:.{d}f}" if isinstance(v, int | float) else str(v)


def line(path: Path) -> str:
    r = json.loads(path.read_text())
    s, res = r["settings"], r["results"]
    tel = (r.get("telemetry") or {}).get("total") or {}
    cross = (r.get("server_metrics") or {}).get("cross_check") or {}
    load = f"qps={s['qps']}" if s.get("qps") else f"c={s.get('concurrency')}"
    return (
        f"{path.parent.relative_to(ROOT)!s:<34} {s['scenario']:<12} {load:<9} n={res['requests_completed']}"
        f"/{res['requests_failed']} out_tok/s={_f(res['output_tokens_per_s'], 0)} "
        f"req/s={_f(res['requests_per_s'], 2)} ttft_p50={_f(res['ttft_ms']['p50'])} "
        f"ttft_p99={_f(res['ttft_ms']['p99'])} itl_p50={_f(res['itl_ms']['p50'], 2)} "
        f"itl_p99={_f(res['itl_ms']['p99'], 2)} tpot_p50={_f(res['tpot_ms']['p50'], 2)} "
        f"server_ttft_p50={_f(cross.get('server_ttft_p50_ms'))}+-{_f(cross.get('bucket_resolution_ms'))} "
        f"energy_J={_f(tel.get('energy_j'), 0)} power_W={_f((tel.get('power_w') or {}).get('mean'), 0)} "
        f"J/tok={_f(tel.get('joules_per_output_token'), 4)} valid={r['validity']['valid']} "
        f"client_limited={(r.get('client') or {}).get('client_limited')} "
        f"prefix_hit={_f((r.get('server_metrics') or {}).get('prefix_cache_hit_rate'), 3)}"
    )


ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
for report in sorted(ROOT.rglob("report.json")):
    try:
        print(line(report))
    except (KeyError, TypeError, ValueError) as exc:
        print(f"{report}: unreadable ({exc})")
for peak in sorted(ROOT.rglob("peak.json")):
    p = json.loads(peak.read_text())
    print(f"PEAK {peak.parent.name}: peak_qps={p.get('peak_qps')} bracket={p.get('bracket')} "
          f"runs={len(p.get('runs', []))} boundary={json.dumps(p.get('boundary_repeats'))[:300]}")
for sweep in sorted(ROOT.rglob("sweep.csv")):
    print(f"SWEEP {sweep.parent.name}:")
    print(sweep.read_text()[:3000])

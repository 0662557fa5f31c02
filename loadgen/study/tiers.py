"""SLO tiers: the most load a sweep's points carried within each of several objectives.

A tier names per-request p99 bounds (``interactive:ttft_ms=300,tpot_ms=30``; keys ``ttft_ms``,
``tpot_ms``, ``e2e_ms``, ``ttfa_ms``). A point *meets* a tier when its run completed every request (error
rate 0), was not client-limited, and each bounded p99 of its row is within the bound. A tier's capacity
is the highest value of the load parameter (the sweep's first non-server parameter: concurrency, qps,
``sessions.users`` ...) among the points met *before the first point that misses it*, in increasing
load: a capacity is where the service first breaks, so a lucky point above a miss does not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loadgen.errors import ConfigError
from loadgen.specs import bounds_text

#: Tier bound key -> the sweep row field holding that p99.
TIER_FIELDS = {"ttft_ms": "ttft_p99_ms", "tpot_ms": "tpot_p99_ms", "e2e_ms": "e2e_p99_ms",
               "ttfa_ms": "ttfa_p99_ms"}


@dataclass(frozen=True)
class Tier:
    name: str
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    ttfa_ms: float | None = None

    def bounds(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "name" and v is not None}


def parse_tier(text: str) -> Tier:
    """``NAME:KEY=MS,KEY=MS`` → :class:`Tier`; ConfigError naming ``--tier`` otherwise."""
    name, sep, spec = text.partition(":")
    example = "--tier interactive:ttft_ms=300,tpot_ms=30"
    if not sep or not name.strip() or not spec.strip():
        raise ConfigError(f"--tier {text!r}: expected NAME:KEY=MS,..., e.g. {example}")
    bounds: dict[str, float] = {}
    for item in spec.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in TIER_FIELDS or not eq:
            raise ConfigError(f"--tier {text!r}: {key!r} is not a bound; use {', '.join(TIER_FIELDS)} "
                              f"(e.g. {example})")
        try:
            bounds[key] = float(value)
        except ValueError:
            raise ConfigError(f"--tier {text!r}: {key}={value!r} is not a number of ms") from None
        if bounds[key] <= 0:
            raise ConfigError(f"--tier {text!r}: {key} must be > 0 ms")
    return Tier(name.strip(), **bounds)


def meets(row: dict[str, Any] | None, tier: Tier) -> bool:
    if not row or row.get("error_rate") not in (0, 0.0) or row.get("client_limited"):
        return False
    for key, bound in tier.bounds().items():
        value = row.get(TIER_FIELDS[key])
        if value is None or float(value) > bound:
            return False
    return True


def tier_capacity(points: Sequence[dict[str, Any]], param: str | None, tiers: Sequence[Tier]
                  ) -> list[dict[str, Any]]:
    """For each tier: ``{name, bounds, parameter, max, point}`` (``max``/``point`` None when even the
    lightest point misses it) over the sweep's finished points, ordered by ``param``."""
    done = [p for p in points if p.get("status") == "done" and param is not None
            and isinstance(p["values"].get(param), int | float)]
    done.sort(key=lambda p: p["values"][param])
    out = []
    for tier in tiers:
        best = None
        for p in done:
            if not meets(p.get("row"), tier):
                break
            best = p
        out.append({"name": tier.name, "bounds": tier.bounds(), "parameter": param,
                    "max": best["values"][param] if best else None, "point": best["index"] if best else None})
    return out


def tier_lines(tiers: Sequence[dict[str, Any]]) -> list[str]:
    """One console line per tier."""
    lines = []
    for t in tiers:
        bounds = bounds_text(t["bounds"])
        got = (f"up to {t['parameter']}={t['max']:g} (point {t['point']})" if t["max"] is not None
               else "not met even at the lightest point")
        lines.append(f"tier {t['name']} ({bounds}): {got}")
    return lines

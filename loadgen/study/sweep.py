"""Sweeps: one run per point of a parameter grid, a table of rows, and the knee.

::

    params = [parse_param("concurrency=1,4,16,64"), parse_param("--max-num-seqs=8,32", server_arg=True)]
    result = run_sweep(base_settings, params, Path("out"))        # -> SweepResult
    result.data                                                   # what sweep.json holds

Layout of ``out``: one run folder per point (``point-000-concurrency=1/`` ...), ``sweep.json`` and
``sweep.csv``, both rewritten after every point so an interrupted sweep keeps what it measured.

Parameters, the grid and each point's settings and seed: :mod:`loadgen.study.params`. Rows and knees:
:mod:`loadgen.study.rows`. Both are re-exported here.

Resuming. Rerunning the same sweep into the same folder skips every point whose folder holds a complete
``report.json`` (not interrupted) made with the same settings (``out`` and ``progress`` aside), and runs
the rest: a point whose settings changed (another scenario file, say) runs again, its old records
removed. A folder holding a different sweep (other parameters or values) is refused rather than mixed.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadgen.errors import ConfigError, LoadgenError, ReportError
from loadgen.report.files import load_json, write_json
from loadgen.settings import Settings
from loadgen.study.params import (
    MAX_POINTS,
    SweepParam,
    grid,
    load_sweep_scenario,
    parse_param,
    parse_values,
    plan_sweep,
    point_dirname,
    point_seed,
    point_settings,
    replace_flag,
    sim_options,
)
from loadgen.study.rows import (
    KNEE_THROUGHPUT_GAIN,
    KNEE_TTFT_GROWTH,
    ROW_FIELDS,
    find_knee,
    find_knees,
    joules_per_output_token,
    load_parameter,
    row_from_report,
)
from loadgen.study.tiers import Tier, tier_capacity, tier_lines

__all__ = [
    "KNEE_THROUGHPUT_GAIN",
    "KNEE_TTFT_GROWTH",
    "MAX_POINTS",
    "ROW_FIELDS",
    "SCHEMA_VERSION",
    "RunPoint",
    "SweepParam",
    "SweepResult",
    "find_knee",
    "find_knees",
    "grid",
    "joules_per_output_token",
    "load_parameter",
    "load_sweep_scenario",
    "parse_param",
    "parse_values",
    "plan_sweep",
    "point_dirname",
    "point_seed",
    "point_settings",
    "render_table",
    "replace_flag",
    "row_from_report",
    "run_sweep",
    "sim_options",
    "write_sweep",
]

SCHEMA_VERSION = 1


# ---- running ---------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    out_dir: Path
    data: dict[str, Any]  # what sweep.json holds

    @property
    def points(self) -> list[dict[str, Any]]:
        return list(self.data["points"])

    @property
    def complete(self) -> bool:
        return all(p["status"] == "done" for p in self.data["points"])


RunPoint = Callable[[Settings], Any]  # returns a RunResult-like object: .report, .interrupted


def _settings_key(settings_json: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings_json.items() if k not in ("out", "progress")}


def _finished_report(settings: Settings) -> dict[str, Any] | None:
    """The point's report.json when it is complete and was made with these settings."""
    assert settings.out is not None
    path = Path(settings.out) / "report.json"
    if not path.is_file():
        return None
    try:
        report = load_json(path)
    except ReportError:
        return None
    if "validity" not in report or report.get("interrupted"):
        return None
    same = _settings_key(report.get("settings") or {}) == _settings_key(settings.public_dict())
    return report if same else None


def _clear_point(folder: Path) -> None:
    """Before (re)running a point: its old records would be appended to, so they go."""
    for name in ("requests.jsonl", "warmup.jsonl", "report.json", "summary.txt"):
        (folder / name).unlink(missing_ok=True)


def _check_same_sweep(out_dir: Path, header: dict[str, Any]) -> None:
    path = out_dir / "sweep.json"
    if not path.is_file():
        return
    try:
        old = load_json(path)
    except ReportError as exc:
        why = exc.__cause__ or exc  # the OSError or JSON error itself, else "not a JSON object"
        raise ConfigError(f"{path} exists but cannot be read ({why}); choose another --out") from None
    old_values = [p.get("values") for p in old.get("points", [])]
    new_values = [p["values"] for p in header["points"]]
    if old.get("parameters") != header["parameters"] or old_values != new_values:
        raise ConfigError(
            f"{out_dir} holds a different sweep (parameters {old.get('parameters')}); resume it with "
            "the same parameters or choose another --out"
        )


def write_sweep(out_dir: Path, data: dict[str, Any]) -> None:
    """``sweep.json`` and ``sweep.csv`` (index, status, seed, the parameter values not already among
    ROW_FIELDS, then ROW_FIELDS)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "sweep.json", data)
    names = [n for n in data["parameters"] if n not in ROW_FIELDS]
    with (out_dir / "sweep.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "status", "seed", *names, *ROW_FIELDS])
        for p in data["points"]:
            row = p.get("row") or {}
            w.writerow([p["index"], p["status"], p["seed"], *(p["values"].get(n) for n in names),
                        *("" if row.get(k) is None else row.get(k) for k in ROW_FIELDS)])


def run_sweep(
    base: Settings,
    params: Sequence[SweepParam],
    out_dir: Path,
    *,
    scenario: str = "",
    run_point: RunPoint | None = None,
    tiers: Sequence[Tier] = (),
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run every point not already done; write ``sweep.json``/``sweep.csv`` after each.

    ``run_point(settings)`` runs one point (default :func:`loadgen.engine.runner.run`); a
    :class:`loadgen.errors.LoadgenError` from it marks the point ``failed`` and the sweep goes on. A
    result with ``interrupted`` true, or a cancellation, marks the point ``interrupted``, writes the
    files and stops the sweep (cancellation is re-raised). Raises ConfigError before running anything
    when a point's settings are invalid or ``out_dir`` holds another sweep.
    """
    say = log or (lambda _m: None)
    if run_point is None:
        from loadgen.engine.runner import run as _run

        def run_point(s: Settings) -> Any:
            return _run(s, log=say)

    plan = plan_sweep(base, params, out_dir)
    slo = base.effective_slo
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "sweep",
        "scenario": scenario or base.scenario.value,
        "parameters": [p.name for p in params],
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
        "points": [
            {"index": i, "values": values, "seed": s.seed,
             "out_dir": Path(s.out).name if s.out else None, "status": "pending", "error": None,
             "row": None}
            for i, (values, s) in enumerate(plan)
        ],
        "knee": None,
        "knees": [],
        "tier_bounds": [asdict(t) for t in tiers],  # read back by _finish (loadgen.study.tiers)
        "tiers": [],
        "length_mix": {"input_len": base.input_len.model_dump(), "output_len": base.output_len.model_dump()},
    }
    _check_same_sweep(out_dir, data)
    total = len(plan)
    for i, (values, settings) in enumerate(plan):
        point = data["points"][i]
        label = ", ".join(f"{k}={v}" for k, v in values.items())
        done = _finished_report(settings)
        if done is not None:
            say(f"point {i + 1}/{total} ({label}): already done, skipped")
            point.update(status="done", row=_row(done, values, base))
            continue
        assert settings.out is not None
        _clear_point(Path(settings.out))
        say(f"point {i + 1}/{total} ({label}), seed {settings.seed}")
        try:
            result = run_point(settings)
        except LoadgenError as exc:
            point.update(status="failed", error=str(exc))
            say(f"point {i + 1}/{total} failed: {exc}")
        except BaseException:  # Ctrl-C before measuring, cancellation: keep what we have, then stop
            point.update(status="interrupted", error="interrupted before the run finished")
            _finish(out_dir, data)
            raise
        else:
            point.update(row=_row(result.report, values, base))
            if getattr(result, "interrupted", False):
                point.update(status="interrupted", error="the run was interrupted; rerun to finish it")
                _finish(out_dir, data)
                break
            point["status"] = "done"
        _finish(out_dir, data)
    _finish(out_dir, data)
    return SweepResult(out_dir, data)


def _finish(out_dir: Path, data: dict[str, Any]) -> None:
    data["knees"] = find_knees(data["points"], data["parameters"])
    tiers = [Tier(**t) for t in data.get("tier_bounds") or ()]
    data["tiers"] = tier_capacity(data["points"], load_parameter(data["parameters"]), tiers)
    if len(data["parameters"]) == 1:
        data["knee"] = {k: v for k, v in data["knees"][0].items() if k != "group"} if data["knees"] else None
    else:
        data["knee"] = None
    write_sweep(out_dir, data)


def _row(report: dict[str, Any], values: dict[str, Any], base: Settings) -> dict[str, Any]:
    """The point's row; a simulator point's ``server_args`` are the swept simulator options."""
    row = row_from_report(report)
    flags = [f"{k} {v}" for k, v in values.items() if k.startswith("-")]
    if base.server is None and flags and row["server_args"] is None:
        row["server_args"] = " ".join(flags)
    return row


# ---- console view ----------------------------------------------------------------------------------


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _classes_cell(missed: str | None) -> str:
    if missed is None:
        return "-"
    return f"{missed.replace(' ', ',')} missed" if missed else "all met"


def render_table(data: dict[str, Any]) -> str:
    """The sweep as a console table, the knee marked."""
    names = list(data["parameters"])
    cols = [*names, "status", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p99", "err%", "valid"]
    mix = any((p.get("row") or {}).get("classes_missed") is not None for p in data["points"])
    if mix:  # a traffic mix: which classes missed their own SLO at each point
        cols.append("classes")
    lines = []
    knees = data.get("knees") or ([data["knee"]] if data.get("knee") else [])
    at_knee = {k["index"] for k in knees}
    table = [cols]
    for p in data["points"]:
        r = p.get("row") or {}
        err = r.get("error_rate")
        table.append([
            *(_f(p["values"].get(n)) for n in names),
            p["status"] + (" *knee*" if p["index"] in at_knee else ""),
            _f(r.get("requests_per_s")), _f(r.get("output_tokens_per_s"), 0), _f(r.get("ttft_p50_ms")),
            _f(r.get("ttft_p99_ms")), _f(r.get("tpot_p99_ms"), 2),
            _f(100 * err if err is not None else None), _f(r.get("valid")),
            *([_classes_cell(r.get("classes_missed"))] if mix else []),
        ])
    widths = [max(len(str(row[c])) for row in table) for c in range(len(cols))]
    for row in table:
        lines.append("  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)))
    lines.append("(latencies in ms; TTFT from the scheduled time)")
    for k in knees:
        group = ", ".join(f"{n}={v}" for n, v in (k.get("group") or {}).items())
        lines.append(f"knee{f' ({group})' if group else ''}: point {k['index']}: {k['reason']}")
    if not knees:
        lines.append("knee: none found (throughput never flattened while TTFT p99 rose by > 50%)")
    lines += tier_lines(data.get("tiers") or ())
    return "\n".join(lines)

"""Sweeps: one run per point of a parameter grid, a table of rows, and the knee.

::

    params = [parse_param("concurrency=1,4,16,64"), parse_param("--max-num-seqs=8,32", server_arg=True)]
    result = run_sweep(base_settings, params, Path("out"))        # -> SweepResult
    result.data                                                   # what sweep.json holds

Layout of ``out``: one run folder per point (``point-000-concurrency=1/`` ...), ``sweep.json`` and
``sweep.csv``, both rewritten after every point so an interrupted sweep keeps what it measured.

Parameters. A setting name (any top-level field of :class:`loadgen.settings.Settings`: ``concurrency``,
``qps``, ``input_len``, ``output_len``, ``num_requests`` ...) takes a list ``1,4,16`` and/or inclusive
ranges ``START:STOP:STEP`` (``qps=5:40:5``). A server argument (``--max-num-seqs=8,32,128``) with a
``server:`` block sets that flag once in each point's ``server.args`` (earlier occurrences removed, the
rule of ``loadgen.servers.vllm.VllmLaunchSpec.with_flag``), so the runner relaunches vLLM per point. Without a
``server:`` block and without ``url`` the target is the built-in simulator, started per run anyway, and a
server argument is the simulator's option of that name (``--max-seqs=2,8`` sets ``sim.max_seqs``; see
``loadgen sim --help``): a server-setting sweep that needs no GPU. Several parameters make the cartesian
product, the first one varying slowest.

Seeds. Point ``i`` runs with ``point_seed(base_seed, i)`` (a ``numpy.random.SeedSequence`` of
``[base_seed, i]``), recorded in its row: a server's prefix cache can never serve one point's prompts from
another point's run (the same seed everywhere hit vLLM's prefix cache ~50% of the time; GPU.md).

Resuming. Rerunning the same sweep into the same folder skips every point whose folder holds a complete
``report.json`` (not interrupted) made with the same settings (``out`` and ``progress`` aside), and runs
the rest: a point whose settings changed (another scenario file, say) runs again, its old records
removed. A folder holding a different sweep (other parameters or values) is refused rather than mixed.

Knee (:func:`find_knee`): along the points in order, the first point ``i`` such that going to point
``i + 1`` raises throughput (completed requests/s) by less than 10% while TTFT p99 rises by more than 50%:
past it, more load buys queueing, not throughput. With several parameters the knee is found along the
load parameter (the first one that is not a server argument) separately for each combination of the
others (:func:`find_knees`): each server setting has its own knee. ``sweep.json`` holds them all in
``knees`` (``{"index", "reason", "group"}``, ``group`` the other parameters' values) and, for a sweep of
one parameter, the one knee in ``knee`` as well.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen.errors import ConfigError, LoadgenError
from loadgen.settings import (
    BUILTIN_DIR,
    Scenario,
    Settings,
    build_settings,
    read_scenario_file,
    scenario_source,
)

SCHEMA_VERSION = 1
MAX_POINTS = 1000
KNEE_THROUGHPUT_GAIN = 0.10  # less than +10% requests/s ...
KNEE_TTFT_GROWTH = 0.50  # ... while TTFT p99 grows by more than 50%

#: The columns of one sweep row (``sweep.json`` points[].row and ``sweep.csv``), in order.
ROW_FIELDS = (
    "offered_qps", "concurrency", "requests_per_s", "output_tokens_per_s", "goodput_requests_per_s",
    "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "tpot_p50_ms", "tpot_p99_ms",
    "e2e_p50_ms", "e2e_p99_ms", "error_rate", "valid", "client_limited", "joules_per_output_token",
    "server_args",
)
_SETTING_ALIASES = {"duration": "duration_s"}
# Settings a sweep point may not vary: they name where results go or how the run is driven.
_NOT_SWEEPABLE = {"out", "progress", "server", "sim", "scenario", "seed", "headers", "slo"}


# ---- parameters ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepParam:
    """One swept parameter: a settings field, or a server flag (``--max-num-seqs``)."""

    name: str
    values: tuple[Any, ...]

    @property
    def server_arg(self) -> bool:
        return self.name.startswith("-")


def _number(text: str) -> int | float | str:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def parse_values(spec: str) -> list[Any]:
    """``"1,4,16"`` → [1, 4, 16]; ``"5:20:5"`` → [5, 10, 15, 20] (inclusive); items may be mixed.

    Raises ConfigError on an empty list, a bad range or more than MAX_POINTS values.
    """
    values: list[Any] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        if ":" in item:
            raw_parts = [_number(p) for p in item.split(":")]
            parts = [p for p in raw_parts if isinstance(p, int | float)]
            if len(raw_parts) != 3 or len(parts) != 3:
                raise ConfigError(f"range {item!r}: expected START:STOP:STEP with numbers, e.g. 5:40:5")
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise ConfigError(f"range {item!r}: STEP must be > 0 and STOP >= START")
            count = math.floor((stop - start) / step + 1e-9) + 1
            if len(values) + count > MAX_POINTS:
                raise ConfigError(f"range {item!r} has {count} values; at most {MAX_POINTS} per sweep")
            floats = any(isinstance(p, float) for p in parts)
            for k in range(count):
                v = start + k * step
                values.append(round(v, 10) if floats else int(v))
        else:
            values.append(_number(item))
    if not values:
        raise ConfigError(f"no values in {spec!r}; e.g. concurrency=1,4,16 or qps=5:40:5")
    return values


def parse_param(text: str, *, server_arg: bool = False) -> SweepParam:
    """``NAME=VALUES`` (``--param``) or ``--FLAG=VALUES`` (``--server-arg``) → :class:`SweepParam`."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name:
        example = "--max-num-seqs=8,32,128" if server_arg else "concurrency=1,4,16"
        raise ConfigError(f"{text!r}: expected NAME=VALUES, e.g. {example}")
    if server_arg:
        if not name.startswith("--"):
            raise ConfigError(f"server argument {name!r} must be a flag such as --max-num-seqs")
        return SweepParam(name, tuple(str(v) for v in parse_values(spec)))
    name = _SETTING_ALIASES.get(name, name)
    if name not in Settings.model_fields or name in _NOT_SWEEPABLE:
        raise ConfigError(
            f"cannot sweep {name!r}: give a settings field such as concurrency, qps, input_len, "
            "output_len, num_requests, duration_s (server flags go in --server-arg)"
        )
    return SweepParam(name, tuple(parse_values(spec)))


def grid(params: Sequence[SweepParam]) -> list[dict[str, Any]]:
    """The cartesian product of the parameters' values, the first parameter varying slowest."""
    if not params:
        raise ConfigError("a sweep needs at least one --param or --server-arg")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ConfigError(f"parameter given twice in {names}")
    total = math.prod(len(p.values) for p in params)
    if total > MAX_POINTS:
        raise ConfigError(f"the sweep has {total} points; at most {MAX_POINTS}")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(p.values for p in params))]


def load_sweep_scenario(
    scenario: str, overrides: dict[str, Any] | None = None, extra: Sequence[SweepParam] = ()
) -> tuple[Settings, list[SweepParam]]:
    """A scenario file that may carry its own ``sweep:`` block, plus CLI overrides and parameters.

    ``sweep:`` maps a settings name to a list or a spec string (``concurrency: [1, 4, 16]``,
    ``qps: "5:40:5"``) and a server flag to its values (``--max-num-seqs: [8, 32]``). Parameters in
    ``extra`` (``--param``/``--server-arg``) replace the file's parameter of the same name.
    """
    path = scenario_source(scenario)
    data = read_scenario_file(path)
    block = data.pop("sweep", None) or {}
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: `sweep:` must map parameter names to values, e.g. concurrency: [1, 4]")
    params: list[SweepParam] = []
    for name, values in block.items():
        spec = ",".join(str(v) for v in values) if isinstance(values, list) else str(values)
        params.append(parse_param(f"{name}={spec}", server_arg=str(name).startswith("-")))
    given = {p.name for p in extra}
    params = [p for p in params if p.name not in given] + list(extra)
    if "scenario" not in data and path.parent == BUILTIN_DIR:
        data["scenario"] = path.stem
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if data.get("scenario") is None:
        raise ConfigError(f"{path} does not say which scenario to run: add `scenario:`")
    return build_settings(data, f"scenario file {path}"), params


def point_seed(base_seed: int, index: int) -> int:
    """The seed of point ``index``: independent of every other point's, reproducible from the base."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1, np.uint32)[0])


def point_dirname(index: int, values: dict[str, Any]) -> str:
    parts = [f"{name.lstrip('-')}={value}" for name, value in values.items()]
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", f"point-{index:03d}-" + ",".join(parts))


def point_settings(base: Settings, values: dict[str, Any], index: int, out_dir: Path) -> Settings:
    """``base`` with the point's values, its own seed and its own folder (validated like a file)."""
    data = base.model_dump()
    server_flags = {k: v for k, v in values.items() if k.startswith("-")}
    data.update({k: v for k, v in values.items() if not k.startswith("-")})
    if server_flags and base.server is not None:
        args = list(base.server.args)
        for flag, value in server_flags.items():
            args = replace_flag(args, flag, value)
        data["server"] = {**data["server"], "args": args}
    elif server_flags and base.url is None:
        data["sim"] = sim_options(base.sim, server_flags)
    elif server_flags:
        raise ConfigError(
            f"server arguments {', '.join(server_flags)} need a `server:` block in the scenario "
            "(loadgen launches vLLM per point); with --url the server is not ours to restart"
        )
    data["seed"] = point_seed(base.seed, index)
    data["out"] = out_dir / point_dirname(index, values)
    return build_settings(data, f"sweep point {index} ({values})")


def sim_options(sim: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The ``sim:`` block with server flags applied as simulator options (``--max-seqs`` → ``max_seqs``,
    typed like the option). Only the simulator's numeric options and its model name can be swept; an
    unknown flag or a value the simulator refuses raises ConfigError now, before any point runs."""
    import dataclasses

    from loadgen.servers.sim.config import SimConfig

    kinds = {f.name: type(f.default) for f in dataclasses.fields(SimConfig)
             if isinstance(f.default, int | float | str) and f.name not in ("api_key", "seed")}
    out = dict(sim)
    for flag, value in flags.items():
        name = flag.lstrip("-").replace("-", "_")
        kind = kinds.get(name)
        if kind is None:
            options = ", ".join("--" + k.replace("_", "-") for k in kinds)
            raise ConfigError(
                f"server argument {flag}: the built-in simulator (no url, no server: block) has no such "
                f"option; it takes {options}. vLLM flags need a `server:` block."
            )
        try:
            out[name] = kind(float(value)) if kind is int and float(value).is_integer() else kind(value)
        except ValueError:
            raise ConfigError(f"server argument {flag}={value}: expected {kind.__name__}") from None
    try:
        SimConfig.from_dict(out)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"server arguments {flags}: {exc}") from None
    return out


def replace_flag(args: Sequence[str], name: str, value: object | None) -> list[str]:
    """``args`` with flag ``name`` set once to ``value`` (``VllmLaunchSpec.with_flag``'s rule)."""
    kept: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == name:
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            i += 2 if has_value else 1
            continue
        if not arg.startswith(name + "="):
            kept.append(arg)
        i += 1
    return kept + ([name] if value is None else [name, str(value)])


# ---- rows ------------------------------------------------------------------------------------------


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
        "error_rate": (r.get("requests_failed", 0) / issued) if issued else None,
        "valid": bool((report.get("validity") or {}).get("valid")),
        "client_limited": bool(client.get("client_limited")),
        "joules_per_output_token": joules_per_output_token(report),
        "server_args": " ".join(server["args"]) if server.get("args") else None,
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
        report = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(report, dict) or "validity" not in report or report.get("interrupted"):
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
        old = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{path} exists but cannot be read ({exc}); choose another --out") from None
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
    tmp = out_dir / "sweep.json.tmp"
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    tmp.replace(out_dir / "sweep.json")
    names = [n for n in data["parameters"] if n not in ROW_FIELDS]
    with (out_dir / "sweep.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "status", "seed", *names, *ROW_FIELDS])
        for p in data["points"]:
            row = p.get("row") or {}
            w.writerow([p["index"], p["status"], p["seed"], *(p["values"].get(n) for n in names),
                        *("" if row.get(k) is None else row.get(k) for k in ROW_FIELDS)])


def plan_sweep(
    base: Settings, params: Sequence[SweepParam], out_dir: Path
) -> list[tuple[dict[str, Any], Settings]]:
    """Every point's values and settings, validated before anything runs (a bad value fails the whole
    sweep now, not after an hour of runs)."""
    return [(values, point_settings(base, values, i, out_dir)) for i, values in enumerate(grid(params))]


def run_sweep(
    base: Settings,
    params: Sequence[SweepParam],
    out_dir: Path,
    *,
    scenario: str = "",
    run_point: RunPoint | None = None,
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


def render_table(data: dict[str, Any]) -> str:
    """The sweep as a console table, the knee marked."""
    names = list(data["parameters"])
    cols = [*names, "status", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p99", "err%", "valid"]
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
    return "\n".join(lines)

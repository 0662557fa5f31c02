"""The parameters of a sweep: ``NAME=VALUES`` (``--param``) and ``--FLAG=VALUES`` (``--server-arg``)
parsing, the grid of points, and each point's settings (its values, seed, folder, and server flags or
simulator options).

A setting name (any top-level field of :class:`loadgen.settings.Settings`: ``concurrency``, ``qps``,
``input_len``, ``output_len``, ``num_requests`` ...) takes a list ``1,4,16`` and/or inclusive ranges
``START:STOP:STEP`` (``qps=5:40:5``). A server argument (``--max-num-seqs=8,32,128``) with a ``server:``
block sets that flag once in each point's ``server.args`` (earlier occurrences removed, the rule of
``loadgen.servers.vllm.VllmLaunchSpec.with_flag``), so the runner relaunches vLLM per point. Without a
``server:`` block and without ``url`` the target is the built-in simulator, started per run anyway, and a
server argument is the simulator's option of that name (``--max-seqs=2,8`` sets ``sim.max_seqs``; see
``loadgen sim --help``): a server-setting sweep that needs no GPU. Several parameters make the cartesian
product, the first one varying slowest.

Seeds. Point ``i`` runs with ``point_seed(base_seed, i)`` (a ``numpy.random.SeedSequence`` of
``[base_seed, i]``), recorded in its row: a server's prefix cache can never serve one point's prompts from
another point's run (the same seed everywhere hit vLLM's prefix cache ~50% of the time; GPU.md).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.errors import ConfigError
from loadgen.settings import (
    BUILTIN_DIR,
    Settings,
    build_settings,
    read_scenario_file,
    scenario_source,
)

__all__ = [
    "MAX_POINTS",
    "SweepParam",
    "grid",
    "load_sweep_scenario",
    "parse_param",
    "parse_values",
    "plan_sweep",
    "point_dirname",
    "point_seed",
    "point_settings",
    "replace_flag",
    "sim_options",
]

MAX_POINTS = 1000
_SETTING_ALIASES = {"duration": "duration_s"}
# Settings a sweep point may not vary: they name where results go or how the run is driven.
_NOT_SWEEPABLE = {"out", "progress", "server", "sim", "scenario", "seed", "headers", "slo"}


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
    if "." in name:  # a field of a block: sessions.users, prefix.groups ...
        block, _, field = name.partition(".")
        annotation = Settings.model_fields[block].annotation if block in Settings.model_fields else None
        model: Any = next((a for a in getattr(annotation, "__args__", (annotation,))
                           if hasattr(a, "model_fields")), None)
        if model is None or field not in model.model_fields:
            raise ConfigError(f"cannot sweep {name!r}: {block!r} is not a block of the scenario or has no "
                              f"field {field!r} (e.g. sessions.users)")
        return SweepParam(name, tuple(parse_values(spec)))
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
    data.update({k: v for k, v in values.items() if not k.startswith("-") and "." not in k})
    for key, value in values.items():
        if "." in key and not key.startswith("-"):
            block, _, field = key.partition(".")
            if data.get(block) is None:
                raise ConfigError(f"cannot sweep {key}: the scenario has no `{block}:` block to vary")
            data[block] = {**data[block], field: value}
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


def plan_sweep(
    base: Settings, params: Sequence[SweepParam], out_dir: Path
) -> list[tuple[dict[str, Any], Settings]]:
    """Every point's values and settings, validated before anything runs (a bad value fails the whole
    sweep now, not after an hour of runs)."""
    return [(values, point_settings(base, values, i, out_dir)) for i, values in enumerate(grid(params))]

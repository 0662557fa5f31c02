"""loadgen: a load tester for LLM serving endpoints with MLPerf LoadGen scenario semantics.

The public surface is this module (``__all__``; pinned by ``tests/test_exports.py``): :func:`run` one
scenario, :func:`sweep` / :func:`find_peak` / :func:`plan` / :func:`compare` over many, the
:class:`Settings` they take (:func:`load_settings` from a built-in name or a YAML file) and the
:class:`LoadgenError` tree they raise. Importing it touches no global state and imports nothing heavy:
the names below load on first use; the event loop, signal handlers and logging are set up by the run.

The house, along the data flow (each sub-package's ``__init__`` says what it holds)::

    settings, specs            what to do: typed, validated Settings and the parts a scenario is built from
    records, errors, limits,   per-request records and their JSONL; the exception tree; process limits;
    loops                      the event loop (uvloop when installed)
    workload/                  WHAT is sent: tokens, samples, files, traces, prefixes, conversations
    schedule/                  WHEN: arrival processes, the trace fixed before the clock, run length
    client/                    ONE request timed at the byte: bodies, HTTP transports, SSE, probes
    metrics/                   PURE numbers: latency, gaps, MLPerf rules, the verdict, client health
    report/                    report.json, summary.txt, console, HTML (report/html/)
    observe/                   BESIDE the run: Prometheus exporter, GPU telemetry, server metrics
    servers/                   what loadgen starts: the simulator (servers/sim/), the vLLM launcher
    engine/                    ISSUE and orchestrate: issuer, workers, sink, measure, runner, clock
    study/                     MANY runs: sweep, peak, plan, compare
    api.py, cli/               the library's entry points and the thin ``loadgen`` command over them

A module imports only from its own line or the lines above it (``tests/test_layers.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; loaded on first attribute access (PEP 562)
_EXPORTS = {
    "AuthenticationFailed": "loadgen.errors",
    "CompareResult": "loadgen.study.compare",
    "ConfigError": "loadgen.errors",
    "LaunchError": "loadgen.errors",
    "LoadgenError": "loadgen.errors",
    "ModelNotServed": "loadgen.errors",
    "PeakResult": "loadgen.study.peak",
    "PlanInputs": "loadgen.study.plan",
    "ReportError": "loadgen.errors",
    "RequestRecord": "loadgen.records",
    "RunControl": "loadgen.engine.control",
    "RunResult": "loadgen.engine.runner",
    "Scenario": "loadgen.settings",
    "Settings": "loadgen.settings",
    "SweepResult": "loadgen.study.sweep",
    "TargetError": "loadgen.errors",
    "TargetUnreachable": "loadgen.errors",
    "compare": "loadgen.api",
    "find_peak": "loadgen.api",
    "load_settings": "loadgen.api",
    "plan": "loadgen.api",
    "read_records": "loadgen.records",
    "run": "loadgen.api",
    "sweep": "loadgen.api",
}

__all__ = [
    "AuthenticationFailed",
    "CompareResult",
    "ConfigError",
    "LaunchError",
    "LoadgenError",
    "ModelNotServed",
    "PeakResult",
    "PlanInputs",
    "ReportError",
    "RequestRecord",
    "RunControl",
    "RunResult",
    "Scenario",
    "Settings",
    "SweepResult",
    "TargetError",
    "TargetUnreachable",
    "__version__",
    "compare",
    "find_peak",
    "load_settings",
    "plan",
    "read_records",
    "run",
    "sweep",
]

if TYPE_CHECKING:
    from loadgen.api import compare, find_peak, load_settings, plan, run, sweep
    from loadgen.engine.control import RunControl
    from loadgen.engine.runner import RunResult
    from loadgen.errors import (
        AuthenticationFailed,
        ConfigError,
        LaunchError,
        LoadgenError,
        ModelNotServed,
        ReportError,
        TargetError,
        TargetUnreachable,
    )
    from loadgen.records import RequestRecord, read_records
    from loadgen.settings import Scenario, Settings
    from loadgen.study.compare import CompareResult
    from loadgen.study.peak import PeakResult
    from loadgen.study.plan import PlanInputs
    from loadgen.study.sweep import SweepResult


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loadgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

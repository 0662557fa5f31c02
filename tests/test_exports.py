"""``loadgen.__all__`` is the public surface: pinned here, every name importable, nothing heavy on import."""

from __future__ import annotations

import subprocess
import sys

import loadgen

PUBLIC = [
    "AuthenticationFailed", "CompareResult", "ConfigError", "LaunchError", "LoadgenError", "ModelNotServed",
    "PeakResult", "PlanInputs", "ReportError", "RequestRecord", "RunControl", "RunResult", "Scenario",
    "Settings", "SweepResult", "TargetError", "TargetUnreachable", "__version__", "compare", "find_peak",
    "load_settings", "plan", "read_records", "run", "sweep",
]


def test_all_is_the_pinned_sorted_surface():
    assert loadgen.__all__ == PUBLIC == sorted(PUBLIC)


def test_every_public_name_resolves_and_is_documented():
    for name in PUBLIC:
        value = getattr(loadgen, name)
        if name != "__version__":
            assert value.__doc__, name
    assert issubclass(loadgen.ConfigError, loadgen.LoadgenError)
    assert issubclass(loadgen.TargetUnreachable, loadgen.TargetError)
    assert set(dir(loadgen)) >= set(PUBLIC)


def test_an_unknown_name_is_an_attribute_error():
    try:
        loadgen.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_light_and_touches_no_global_state():
    code = ("import asyncio, signal, sys; before = signal.getsignal(signal.SIGINT); import loadgen; "
            "heavy = [m for m in ('numpy', 'aiohttp', 'pydantic', 'typer', 'loadgen.engine') "
            "if m in sys.modules]; "
            "assert signal.getsignal(signal.SIGINT) is before; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"

"""Reading and writing loadgen's JSON files (``report.json``, ``run.json``, ``sweep.json``, ``peak.json``).

Every reader goes through :func:`load_json`, so a missing, unreadable or non-object file is one clear
:class:`~loadgen.errors.ReportError` naming the path. Every writer goes through :func:`write_json` (or
:func:`write_text`): the bytes go to a temporary file beside the target, which then replaces it, so a
crash or Ctrl-C mid-write leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from loadgen.errors import ReportError

__all__ = ["load_json", "write_json", "write_text"]

_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY


def load_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ReportError when it is missing, unreadable, not JSON or not an object."""
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}.") from exc
    except orjson.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path} is not a loadgen report (expected a JSON object).")
    return data


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON (numpy scalars and arrays allowed), replacing ``path`` atomically."""
    _replace(path, orjson.dumps(data, option=_JSON_OPTIONS))


def write_text(path: Path, text: str) -> None:
    """``text`` as UTF-8, replacing ``path`` atomically."""
    _replace(path, text.encode("utf-8"))

"""Option values of ``loadgen run`` turned into settings fields and blocks, with errors naming the flag."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import orjson

from loadgen.errors import ConfigError


def json_object(flag: str, text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{flag} {text!r} is not valid JSON ({exc}); give an object, e.g. "
                          f"{flag} '{{\"temperature\": 0.7}}'.") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} {text!r} is not a JSON object; give one, e.g. "
                          f"{flag} '{{\"temperature\": 0.7}}'.")
    return value


def headers(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    headers = {}
    for item in values:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"--header {item!r}: expected NAME:VALUE, e.g. --header 'X-Team: perf'.")
        headers[name.strip()] = value.strip()
    return headers


def gpus(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--gpus {text!r}: expected NVML indices such as 0,1.") from None


def launch_block(
    launch: str, model: str | None, args: list[str] | None, command: str | None
) -> dict[str, Any]:
    if launch != "vllm":
        raise ConfigError(f"--launch {launch}: only `vllm` can be launched (or give --url).")
    if not model:
        raise ConfigError("--launch vllm needs --model (a model name or directory to serve).")
    block: dict[str, Any] = {"launch": "vllm", "model": model, "args": list(args or ())}
    if command:
        block["command"] = shlex.split(command)
    return block


def images_block(count: int | None, size: str | None, folder: Path | None) -> dict[str, Any] | None:
    if count is None and size is None and folder is None:
        return None
    block: dict[str, Any] = {"count": 1 if count is None else count, "folder": folder}
    if size is not None:
        w, x, h = size.lower().partition("x")
        if not (x and w.strip().isdigit() and h.strip().isdigit()):
            raise ConfigError(f"--image-size {size!r}: expected WIDTHxHEIGHT in pixels, e.g. 512x512")
        block |= {"width": int(w), "height": int(h)}
    return block


def pooling_block(inputs: int | None, document_len: int | None) -> dict[str, Any] | None:
    """``pooling:`` from ``--inputs-per-request`` and ``--document-len`` (None when neither is given)."""
    if inputs is None and document_len is None:
        return None
    block: dict[str, Any] = {"inputs": 1 if inputs is None else inputs}
    if document_len is not None:
        block["document_len"] = document_len
    return block

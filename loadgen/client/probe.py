"""Checking the endpoint before the clock starts: reachable, authorised, serving the model.

Each failure becomes one :class:`loadgen.errors.TargetError` whose message names the URL, the model or
the variable that held the key, and what to do. Nothing here runs during the measured window.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp

from loadgen.errors import AuthenticationFailed, ConfigError, ModelNotServed, TargetUnreachable

PROBE_TIMEOUT_S = 10.0


def api_headers(api_key_env: str | None, extra: dict[str, str], api_key: str | None = None) -> dict[str, str]:
    """Request headers, with ``Authorization`` from ``api_key`` (typed at a prompt) or else read from the
    named environment variable. The key lives only in these headers: never in settings or outputs."""
    headers = dict(extra)
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    elif api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(
                f"--api-key-env {api_key_env}: that environment variable is not set or empty. "
                f"Export it first (export {api_key_env}=...) or leave the option out."
            )
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def probe(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str | None,
    headers: dict[str, str],
    api_key_env: str | None,
    *,
    key_from: str | None = None,
) -> dict[str, Any]:
    """``GET /v1/models`` (within 10 s), then check ``model``; returns identity info for the report.

    The returned dict has ``url``, ``models`` (ids), ``model`` (the one to use) and ``version`` when the
    endpoint has ``/version`` (vLLM does). ``key_from`` says where the key came from in an
    authentication error (default: the variable ``api_key_env``).
    """
    url = f"{base_url}/v1/models"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S), session.get(url, headers=headers) as resp:
            status = resp.status
            body = await resp.json(content_type=None) if status == 200 else None
    except TimeoutError:
        raise TargetUnreachable(
            f"no answer from {base_url} within {PROBE_TIMEOUT_S:g} s. Check that the server is running "
            "and the URL (host, port, http vs https) is right."
        ) from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise TargetUnreachable(
            f"cannot reach {base_url}: {exc}. Check that the server is running and the URL (host, port, "
            "http vs https) is right."
        ) from None
    if status in (401, 403):
        where = key_from or (
            f"the key read from ${api_key_env}"
            if api_key_env
            else "no API key (none was given; pass --api-key-env VAR or --api-key-prompt)"
        )
        raise AuthenticationFailed(
            f"authentication failed at {base_url} (HTTP {status}) with {where}. Check the key and that the "
            "variable holds it."
        )
    info: dict[str, Any] = {"url": base_url, "models": [], "model": model, "version": None}
    if status == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
        info["models"] = [m.get("id") for m in body["data"] if isinstance(m, dict) and m.get("id")]
        info["max_model_len"] = {
            m.get("id"): m.get("max_model_len") for m in body["data"] if isinstance(m, dict)
        }
    elif status != 404:
        raise TargetUnreachable(
            f"{url} answered HTTP {status}; is {base_url} an OpenAI-compatible endpoint? loadgen "
            "needs /v1/completions or /v1/chat/completions there."
        )
    models = info["models"]
    if model is None:
        if not models:
            raise ConfigError(
                f"{base_url} does not list its models (/v1/models); say which model to use with --model."
            )
        info["model"] = models[0]
    elif models and model not in models:
        raise ModelNotServed(
            f"model {model!r} is not served at {base_url}; it serves: {', '.join(models)}. "
            "Pass one of those with --model."
        )
    info["version"] = await _version(session, base_url, headers)
    return info


async def _version(session: aiohttp.ClientSession, base_url: str, headers: dict[str, str]) -> Any:
    try:
        async with asyncio.timeout(5), session.get(f"{base_url}/version", headers=headers) as resp:
            if resp.status == 200:
                data = await resp.json(content_type=None)
                return data.get("version") if isinstance(data, dict) else data
    except (aiohttp.ClientError, TimeoutError, ValueError):
        pass
    return None

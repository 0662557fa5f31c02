"""The endpoint a run measures: the given ``--url``, a vLLM loadgen launches (``server:``), or the
built-in simulated server in its own process; and how its tokens are counted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from loadgen.errors import ConfigError
from loadgen.settings import Settings
from loadgen.workload.tokens import LocalTokenizer, ServerTokenizer, TokenCounter, WordCounter


def launch_spec(settings: Settings) -> Any:
    """The vLLM launch spec of ``settings.server`` (loadgen.servers.vllm.VllmLaunchSpec)."""
    from loadgen.servers.vllm import VllmLaunchSpec

    srv = settings.server
    assert srv is not None
    return VllmLaunchSpec(
        model=srv.model, args=tuple(srv.args), command=tuple(srv.command), env=dict(srv.env),
        startup_timeout_s=srv.startup_timeout_s, served_model_name=srv.served_model_name,
    )


@contextlib.asynccontextmanager
async def open_target(
    settings: Settings, out_dir: Path, say: Callable[[str], None]
) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
    """The endpoint's base URL and what loadgen launched for it (None: a given URL). A launched server
    is stopped on exit (its log in ``out_dir/server.log``). Raises ConfigError for bad simulator
    settings; the vLLM launcher's errors for a server that does not start."""
    if settings.url is not None:
        yield settings.url, None
        return
    if settings.server is not None:
        from loadgen.servers.vllm import VllmLauncher

        # `async with`: the start (minutes) runs in a thread, so Ctrl-C still reaches the run
        launcher = VllmLauncher(launch_spec(settings), log_path=out_dir / "server.log", progress=say)
        async with launcher as vllm:
            ident = await asyncio.to_thread(vllm.identity)
            ident["launched"] = "vllm"
            ident["startup_s"] = vllm.startup_s
            yield vllm.base_url, ident
        return
    from loadgen.servers.sim import SimConfig, SimProcess  # only needed when we start it

    try:
        cfg = SimConfig.from_dict(settings.sim)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sim: {exc}. See `loadgen sim --help` for the simulator's settings.") from None
    with SimProcess(cfg) as sim:
        yield sim.url, {"launched": "loadgen-sim", "config": cfg.to_dict()}


def token_counter(
    settings: Settings, base_url: str, model: str, headers: dict[str, str],
    launched: dict[str, Any] | None = None,
) -> TokenCounter:
    """``--tokenizer``, else the server's ``/tokenize``, else words: exact only for the built-in
    simulator loadgen started (it counts words); for any other server the counts are approximate."""
    if settings.tokenizer:
        return LocalTokenizer(settings.tokenizer)
    server = ServerTokenizer(base_url, model, headers)
    if server.available():
        return server
    return WordCounter(exact=launched is not None and launched.get("launched") == "loadgen-sim")

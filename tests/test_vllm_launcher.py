"""The vLLM launcher: command lines, startup failures and complete teardown.

Two kinds of server:

* a stand-in process (a few lines of Python below) that behaves like vLLM where the launcher cares:
  /health after a delay, /version, /v1/models, an "engine" child, optionally one that ignores SIGTERM
  and one that escapes the process group with setsid. Fast; runs everywhere.
* real vLLM (``@pytest.mark.vllm``) on the tiny word-level model: ONE launch for the module (about 80 s
  on 2 cores), ended by a KeyboardInterrupt raised inside its ``with`` block, plus two failing starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadgen.errors import ConfigError, LaunchError
from loadgen.observe.scrape import ServerMetricsScraper
from loadgen.servers.vllm import VllmLauncher, VllmLaunchSpec
from tests.conftest_vllm import (
    TINY_MODEL_NAME,
    group_members,
    process_tree,
    require_vllm,
    running,
    tiny_model_dir,  # noqa: F401 - a fixture
    tiny_vllm_spec,
)
from tests.tiny_model import prompt_of

FAKE_VLLM = textwrap.dedent(
    """
    import argparse, json, signal, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?")
    p.add_argument("--model", dest="model_flag")
    p.add_argument("--host"); p.add_argument("--port", type=int)
    p.add_argument("--served-model-name")
    p.add_argument("--healthy-after", type=float, default=0.0)
    p.add_argument("--exit-code", type=int)
    p.add_argument("--stubborn-child", action="store_true")
    p.add_argument("--setsid-child", action="store_true")
    a = p.parse_args()
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    stubborn = [sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
    children = [subprocess.Popen(stubborn if a.stubborn_child else sleeper)]
    if a.setsid_child:
        children.append(subprocess.Popen(sleeper, start_new_session=True))
    print("engine children", [c.pid for c in children], flush=True)
    for i in range(40):
        print(f"init line {i}", flush=True)
    if a.exit_code is not None:
        print("fatal: cannot load model", a.model or a.model_flag, flush=True)
        sys.exit(a.exit_code)
    start = time.monotonic()
    name = a.served_model_name or a.model or a.model_flag

    class H(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/health":
                code, body = (200 if time.monotonic() - start >= a.healthy_after else 503), {}
            elif self.path == "/version":
                code, body = 200, {"version": "fake-0.1"}
            elif self.path == "/v1/models":
                code, body = 200, {"object": "list", "data": [{"id": name, "object": "model"}]}
            else:
                code, body = 404, {}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def on_term(*_):
        # Like vLLM: stop serving and exit; the stubborn child ignores the SIGTERM it also got.
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    ThreadingHTTPServer((a.host, a.port), H).serve_forever()
    """
)


@pytest.fixture
def fake_spec(tmp_path: Path) -> VllmLaunchSpec:
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_VLLM)
    return VllmLaunchSpec(
        model="some/model", command=(sys.executable, str(script)), startup_timeout_s=30, term_timeout_s=5
    )


def _assert_all_gone(pgid: int, tree: set[int]) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert running(tree) == set(), f"survivors of the server tree: {running(tree)}"
    assert group_members(pgid) == {}


# -- command line and spec (pure) -----------------------------------------------------------------------


def test_command_line_forms() -> None:
    serve = VllmLaunchSpec(model="m/x", args=("--max-num-seqs", "8"), served_model_name="x")
    assert serve.command_line(8001) == [
        "vllm", "serve", "m/x", "--host", "127.0.0.1", "--port", "8001", "--served-model-name", "x",
        "--max-num-seqs", "8",
    ]
    module = VllmLaunchSpec(model="m/x", command=("python", "-m", "vllm.entrypoints.openai.api_server"))
    assert module.command_line(9) == [
        "python", "-m", "vllm.entrypoints.openai.api_server", "--model", "m/x",
        "--host", "127.0.0.1", "--port", "9",
    ]
    docker = VllmLaunchSpec(model="m/x", command=("docker", "run", "--rm", "--network", "host", "img"))
    assert docker.command_line(9)[6:8] == ["--model", "m/x"]


def test_with_args_and_with_flag_make_new_specs() -> None:
    base = VllmLaunchSpec(model="m", args=("--max-num-seqs", "8", "--enforce-eager", "--dtype=bfloat16"))
    assert base.with_args("--seed", "1").args[-2:] == ("--seed", "1")
    assert base.with_flag("--max-num-seqs", 64).args == (
        "--enforce-eager", "--dtype=bfloat16", "--max-num-seqs", "64",
    )
    assert base.with_flag("--dtype", "float32").args == (
        "--max-num-seqs", "8", "--enforce-eager", "--dtype", "float32",
    )
    assert base.args == ("--max-num-seqs", "8", "--enforce-eager", "--dtype=bfloat16")  # unchanged


def test_flags_the_launcher_owns_are_refused() -> None:
    with pytest.raises(ConfigError, match="--port"):
        VllmLaunchSpec(model="m", args=("--port", "8000"))
    with pytest.raises(ConfigError, match="--model"):
        VllmLaunchSpec(model="m", args=("--model=other",))


# -- lifecycle against the stand-in --------------------------------------------------------------------


def test_start_identity_and_clean_exit(fake_spec: VllmLaunchSpec, tmp_path: Path) -> None:
    lines: list[str] = []
    spec = fake_spec.with_args("--healthy-after", "1.2")
    launcher = VllmLauncher(
        spec, log_path=tmp_path / "server.log", progress=lines.append, progress_every_s=0.5
    )
    with launcher as server:
        assert server.running
        pgid, tree = server.pgid, process_tree(server.pid)
        assert len(tree) == 2  # the server and its "engine" child
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        ident = server.identity()
        assert ident["version"] == "fake-0.1"
        assert ident["models"] == ["some/model"]
        assert ident["command_line"] == server.command_line
        assert ident["command_line"][2:4] == ["--model", "some/model"]
        assert "gpu" in ident
    assert not launcher.running
    _assert_all_gone(pgid, tree)
    waiting = [ln for ln in lines if ln.startswith("waiting for vLLM /health:")]
    assert waiting and "last log line: init line 39" in waiting[-1]
    assert any(ln.startswith("vLLM ready at") for ln in lines)
    assert (tmp_path / "server.log").read_text().count("=== loadgen: launch") == 1


def test_keyboard_interrupt_inside_with_kills_stubborn_and_escaped_children(
    fake_spec: VllmLaunchSpec,
) -> None:
    spec = fake_spec.with_args("--stubborn-child", "--setsid-child")
    spec = dataclasses.replace(spec, term_timeout_s=1.0)
    launcher = VllmLauncher(spec)
    with pytest.raises(KeyboardInterrupt), launcher:
        pgid, tree = launcher.pgid, process_tree(launcher.pid)
        assert len(tree) == 3
        raise KeyboardInterrupt
    _assert_all_gone(pgid, tree)
    assert launcher.teardown_note is not None and "SIGKILL" in launcher.teardown_note


def test_reentry_starts_a_fresh_server(fake_spec: VllmLaunchSpec, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    launcher = VllmLauncher(fake_spec, log_path=log)
    seen = []
    for _ in range(2):
        with launcher:
            seen.append((launcher.pid, launcher.base_url))
            tree = process_tree(launcher.pid)
        _assert_all_gone(seen[-1][0], tree)
    assert seen[0] != seen[1]
    assert log.read_text().count("=== loadgen: launch") == 2


def test_early_exit_raises_launch_error_with_log_tail(fake_spec: VllmLaunchSpec, tmp_path: Path) -> None:
    launcher = VllmLauncher(fake_spec.with_args("--exit-code", "3"), log_path=tmp_path / "server.log")
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as err:
        launcher.__enter__()
    assert time.monotonic() - t0 < 20
    msg = str(err.value)
    assert "exited with code 3" in msg
    assert launcher.command_text in msg
    assert "fatal: cannot load model some/model" in msg
    tail = [ln for ln in msg.splitlines() if ln.startswith("  | ")]
    assert len(tail) == 30
    assert tail[0].endswith("init line 11") and "init line 10" not in msg
    assert tail[-1].endswith("fatal: cannot load model some/model")
    assert not launcher.running


def test_startup_timeout_kills_the_group(fake_spec: VllmLaunchSpec) -> None:
    spec = dataclasses.replace(fake_spec.with_args("--healthy-after", "999"), startup_timeout_s=1.5)
    launcher = VllmLauncher(spec)
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match=r"within 1.5 s") as err:
        launcher.start()
    assert time.monotonic() - t0 < 10
    assert "init line 39" in str(err.value)
    assert not launcher.running


def test_missing_executable_is_a_launch_error(tmp_path: Path) -> None:
    spec = VllmLaunchSpec(model="m", command=(str(tmp_path / "no-such-vllm"), "serve"))
    with pytest.raises(LaunchError, match="no-such-vllm"):
        VllmLauncher(spec).start()


# -- real vLLM ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmLauncher]:  # noqa: F811
    """One real vLLM for the module. Its ``with`` block ends with a KeyboardInterrupt raised inside it,
    as a Ctrl-C would; the teardown then checks that nothing of the server's tree is left."""
    require_vllm()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    launcher = VllmLauncher(
        tiny_vllm_spec(tiny_model_dir), log_path=log, progress=lambda s: print(s, file=sys.stderr)
    )
    interrupted = False
    try:
        with launcher:
            print(f"vLLM startup took {launcher.startup_s:.1f} s", file=sys.stderr)
            yield launcher
            pgid, tree = launcher.pgid, process_tree(launcher.pid)
            assert len(tree) >= 2, f"expected an EngineCore child, tree is {tree}"
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
    assert interrupted
    print(f"vLLM teardown took {launcher.teardown_s:.1f} s ({launcher.teardown_note})", file=sys.stderr)
    _assert_all_gone(pgid, tree)


async def _stream_completion(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> dict[str, Any]:
    """POST a streaming request; return the ``usage`` of its last chunk and the number of text chunks."""
    usage, chunks = None, 0
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if event.get("choices"):
                chunks += 1
            if event.get("usage"):
                usage = event["usage"]
    assert usage is not None
    return {"usage": usage, "chunks": chunks}


@pytest.mark.vllm
def test_vllm_streaming_token_counts_and_metrics(vllm_server: VllmLauncher) -> None:
    n_words, max_tokens = 100, 24

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        run_start = time.perf_counter_ns()
        scraper = ServerMetricsScraper(vllm_server.base_url, run_start_ns=run_start, interval_s=0.2)
        stop = asyncio.Event()
        body = {
            "model": TINY_MODEL_NAME, "prompt": prompt_of(n_words), "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
        }
        connector = aiohttp.TCPConnector(limit=4)
        async with aiohttp.ClientSession(connector=connector) as session:
            await scraper.baseline(session)  # before the request, as the runner does
            async with asyncio.TaskGroup() as tg:
                tg.create_task(scraper.run(session, stop))
                got = await _stream_completion(session, vllm_server.base_url + "/v1/completions", body)
                stop.set()
        return got, scraper.result({"p50_ms": 50.0})

    got, metrics = asyncio.run(main())
    assert got["usage"]["completion_tokens"] == max_tokens
    assert got["usage"]["prompt_tokens"] == n_words  # no BOS: N words are N tokens
    assert metrics["note"] is None, metrics
    assert metrics["final_scrape"]["settled"] is True, metrics["final_scrape"]
    assert metrics["deltas"]["vllm:generation_tokens_total"] == max_tokens
    assert metrics["deltas"]["vllm:prompt_tokens_total"] == n_words
    assert metrics["deltas"]["vllm:request_success_total"] == 1
    ttft = metrics["histograms"]["time_to_first_token"]
    assert ttft["count"] == 1 and ttft["p50_ms"] is not None
    assert metrics["histograms"]["inter_token_latency"]["count"] == max_tokens - 1
    assert metrics["cross_check"]["bucket_resolution_ms"] > 0
    assert {"vllm:num_requests_running", "vllm:kv_cache_usage_perc"} <= set(metrics["samples"][0])


@pytest.mark.vllm
def test_vllm_chat_prompt_tokens_equal_words(vllm_server: VllmLauncher) -> None:
    async def main() -> dict[str, Any]:
        body = {
            "model": TINY_MODEL_NAME,
            "messages": [
                {"role": "user", "content": prompt_of(30)},
                {"role": "user", "content": prompt_of(7, offset=100)},
            ],
            "max_tokens": 5, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
        }
        async with aiohttp.ClientSession() as session:
            return await _stream_completion(session, vllm_server.base_url + "/v1/chat/completions", body)

    usage = asyncio.run(main())["usage"]
    assert usage["prompt_tokens"] == 37
    assert usage["completion_tokens"] == 5


@pytest.mark.vllm
def test_vllm_identity(vllm_server: VllmLauncher) -> None:
    ident = vllm_server.identity()
    assert ident["version"] == "0.32.0"
    assert ident["models"] == [TINY_MODEL_NAME]
    assert ident["command_line"][1:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model"]
    assert "--load-format" in ident["args"]


@pytest.mark.vllm
@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"model": "/nonexistent/tiny-model"}, "/nonexistent/tiny-model"),
        ({"args": ("--load-format", "dummy", "--no-such-flag")}, "unrecognized arguments: --no-such-flag"),
    ],
    ids=["bad-model-path", "bad-argument"],
)
def test_vllm_failed_start_raises_with_log_tail(
    tiny_model_dir: Path, tmp_path: Path, change: dict[str, Any], expect: str  # noqa: F811
) -> None:
    require_vllm()
    launcher = VllmLauncher(tiny_vllm_spec(tiny_model_dir, startup_timeout_s=120, **change),
                            log_path=tmp_path / "server.log")
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as err:
        launcher.start()
    assert time.monotonic() - t0 < 120
    msg = str(err.value)
    assert "exited with code" in msg
    assert "vllm.entrypoints.openai.api_server" in msg
    assert expect in msg
    assert not launcher.running


def test_sigterm_reaches_the_whole_group(fake_spec: VllmLaunchSpec) -> None:
    """The server runs in its own session: a signal to our process group does not reach it, and a
    signal to its group reaches the engine child too (what teardown relies on)."""
    with VllmLauncher(fake_spec) as server:
        assert os.getpgid(server.pid) == server.pid != os.getpgid(0)
        tree = process_tree(server.pid)
        os.killpg(server.pgid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while running(tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running(tree) == set()
    _assert_all_gone(server.pgid, tree)


def test_async_with_and_cancelled_startup(fake_spec: VllmLaunchSpec) -> None:
    """``async with`` runs start/stop in a thread; a cancelled startup still leaves nothing behind."""

    async def main() -> tuple[VllmLauncher, VllmLauncher]:
        ok = VllmLauncher(fake_spec)
        async with ok, aiohttp.ClientSession() as session, session.get(ok.base_url + "/health") as resp:
            assert resp.status == 200
        slow = VllmLauncher(fake_spec.with_args("--healthy-after", "999"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.0), slow:
                pytest.fail("never healthy, so never entered")
        return ok, slow

    ok, slow = asyncio.run(main())
    for launcher in (ok, slow):
        assert not launcher.running
        with pytest.raises(ProcessLookupError):
            os.killpg(launcher.pgid, 0)


def test_a_busy_fixed_port_is_refused(fake_spec: VllmLaunchSpec) -> None:
    with VllmLauncher(fake_spec) as first:
        second = VllmLauncher(dataclasses.replace(fake_spec, port=first.port))
        with pytest.raises(LaunchError, match="already listens"):
            second.start()
        assert first.running

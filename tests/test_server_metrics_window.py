"""The window the server deltas cover: the baseline scrape is taken before the first request, and the
final scrape is repeated until the server's counters settle (bounded), or the report says they may be
incomplete.

The scraper against the small /metrics server of tests/test_server_metrics.py, and the real CLI against
a server that answers /metrics late and counts each request's tokens late (as a server whose metrics
come from a logging loop would): the deltas must still equal what the server counted for the run.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from loadgen.observe.scrape import ServerMetricsScraper
from tests.conftest import load_report, run_cli
from tests.test_server_metrics import FakeVllmMetrics, _serve, _wait_for


async def _nothing() -> None:
    pass


async def _scrape_around(fake: FakeVllmMetrics, after_stop: Callable[[], Awaitable[None]], **kw: Any
                         ) -> tuple[dict, float]:
    """Baseline, one scrape during, then ``stop`` with ``after_stop`` moving the fake's numbers while
    the final scrape settles. Returns the report section and how long the final phase took (s)."""
    app = web.Application()
    app.router.add_get("/metrics", fake.handle)
    runner, url = await _serve(app)
    try:
        scraper = ServerMetricsScraper(url, interval_s=0.05, settle_poll_s=0.02, **kw)
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            await scraper.baseline(session)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(scraper.run(session, stop))
                await _wait_for(lambda: scraper.scrapes >= 2)
                t0 = time.monotonic()
                stop.set()
                tg.create_task(after_stop())
        return scraper.result({"p50_ms": 30.0}), time.monotonic() - t0
    finally:
        await runner.cleanup()


def test_the_final_scrape_waits_until_the_counters_stop_moving() -> None:
    fake = FakeVllmMetrics()
    fake.generated = 100  # counted before the run: not in the deltas

    async def late_counts() -> None:
        for _ in range(3):  # the server counts the run's last 300 tokens 0.1-0.3 s after the stop
            await asyncio.sleep(0.1)
            fake.generated += 100

    res, took = asyncio.run(_scrape_around(fake, late_counts, settle_s=0.15, settle_timeout_s=3.0))
    assert res["deltas"]["vllm:generation_tokens_total"] == 300.0
    final = res["final_scrape"]
    assert final["settled"] is True and res["note"] is None, res
    # Quiet for 0.15 s after the last change at 0.3 s; well inside the 3 s bound. waited_s is rounded to
    # the millisecond, so it may sit up to 0.5 ms above the unrounded wall time (CI saw 0.483 > 0.48286)
    assert 0.44 <= final["waited_s"] <= took + 0.0005 < 2.0, final
    assert final["scrapes"] >= 5


def test_the_final_scrape_waits_while_the_server_still_runs_requests() -> None:
    fake = FakeVllmMetrics()
    fake.running = 2

    async def finish_later() -> None:
        await asyncio.sleep(0.4)  # longer than settle_s: standing counters alone would have settled
        fake.generated += 64
        fake.running = 0

    res, _took = asyncio.run(_scrape_around(fake, finish_later, settle_s=0.1, settle_timeout_s=3.0))
    assert res["final_scrape"]["settled"] is True, res
    assert res["deltas"]["vllm:generation_tokens_total"] == 64.0
    assert res["final_scrape"]["waited_s"] >= 0.5
    # The baseline saw 2 running requests; the report says the deltas include their tokens.
    assert "2 requests running or waiting at the first scrape" in res["note"]


def test_counters_that_never_settle_stop_the_wait_at_the_bound_and_say_so() -> None:
    fake = FakeVllmMetrics()

    async def endless_load() -> None:  # another client keeps the server busy
        while True:
            await asyncio.sleep(0.01)
            fake.generated += 1

    async def main() -> tuple[dict, float]:
        task = asyncio.create_task(endless_load())
        try:
            return await _scrape_around(fake, _nothing, settle_s=0.1, settle_timeout_s=0.5)
        finally:
            task.cancel()

    res, took = asyncio.run(main())
    final = res["final_scrape"]
    assert final["settled"] is False
    # waited_s is rounded to the millisecond, so it may sit up to 0.5 ms above the unrounded wall time
    assert 0.5 <= final["waited_s"] <= took + 0.0005 < 1.5, final
    assert "had not settled" in res["note"] and "may be incomplete" in res["note"], res["note"]


def test_a_failed_baseline_is_said() -> None:
    fake = FakeVllmMetrics()
    fake.fail_next = 1
    res, _took = asyncio.run(_scrape_around(fake, _nothing, settle_s=0.05))
    assert res["errors"] == ["HTTP 500"]
    assert "the first scrape failed" in res["note"], res


# -- the real CLI against a server that is late in both ways ---------------------------------------------


class LateServer:
    """OpenAI-compatible completions (streaming, usage at the end) whose ``/metrics`` takes
    ``metrics_delay_s`` to answer and shows the numbers of the moment it answers, and which counts a
    request's generated tokens and its success ``count_lag_s`` after the stream ended (the request stays
    in ``vllm:num_requests_running`` until then). Prompt tokens are counted on arrival. Runs in a thread
    on its own event loop."""

    def __init__(self, metrics_delay_s: float = 0.2, count_lag_s: float = 1.0) -> None:
        self.metrics_delay_s, self.count_lag_s = metrics_delay_s, count_lag_s
        self.prompt_tokens = self.generation_tokens = self.success = self.running = 0
        self.first_post_s: float | None = None  # monotonic time of the first generation request
        self.metrics_answered_s: list[float] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> LateServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/metrics", self._metrics)
        runner, self.url = self._loop.run_until_complete(_serve(app))
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    async def _models(self, _req: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "late-model", "object": "model"}]})

    async def _metrics(self, _req: web.Request) -> web.Response:
        await asyncio.sleep(self.metrics_delay_s)
        self.metrics_answered_s.append(time.monotonic())
        lines = [
            f"vllm:num_requests_running {self.running}",
            f"vllm:prompt_tokens_total {self.prompt_tokens}",
            f"vllm:generation_tokens_total {self.generation_tokens}",
            f"vllm:request_success_total {self.success}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def _completions(self, req: web.Request) -> web.StreamResponse:
        if self.first_post_s is None:
            self.first_post_s = time.monotonic()
        body = await req.json()
        n_in, n_out = len(body["prompt"].split()), int(body["max_tokens"])
        self.prompt_tokens += n_in
        self.running += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        for i in range(n_out):
            await asyncio.sleep(0.002)
            choice = {"index": 0, "text": f" w{i:04d}", "finish_reason": "length" if i == n_out - 1 else None}
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        asyncio.get_running_loop().call_later(self.count_lag_s, self._count, n_out)
        return resp

    def _count(self, n_out: int) -> None:
        self.generation_tokens += n_out
        self.success += 1
        self.running -= 1


@pytest.mark.parametrize("transport", ["fast", "aiohttp"])
def test_cli_deltas_are_exact_when_the_server_answers_and_counts_late(tmp_path, transport: str) -> None:
    """A baseline scrape sent beside the first requests would be answered after the server counted
    their prompts; a single final scrape 0.25 s after the run (answered 0.2 s later) would miss the
    last second of counting.
    Both ways the deltas would come out short; they must equal the server's own totals for the run."""
    out = tmp_path / "run"
    with LateServer() as server:
        res = run_cli("run", "offline", "--url", server.url, "--num-requests", "16", "--duration", "0",
                      "--input-len", "12", "--output-len", "8", "--http-client", transport,
                      "--no-gpu-telemetry", "--out", str(out), "--quiet")
        deadline = time.monotonic() + 10
        while server.running and time.monotonic() < deadline:  # its own late counting done
            time.sleep(0.05)
        totals = (server.prompt_tokens, server.generation_tokens, server.success)
        first_post, answered = server.first_post_s, list(server.metrics_answered_s)
    assert res.code == 0, res.output
    report = load_report(out)
    results, sm = report["results"], report["server_metrics"]
    assert results["requests_completed"] == 16 and results["requests_failed"] == 0
    assert totals[1:] == (16 * 8, 16)
    assert first_post is not None and answered[0] < first_post  # the baseline came back first
    deltas = sm["deltas"]
    assert deltas["vllm:prompt_tokens_total"] == totals[0]
    assert deltas["vllm:generation_tokens_total"] == results["output_tokens_total"] == 16 * 8
    assert deltas["vllm:request_success_total"] == 16
    assert sm["final_scrape"]["settled"] is True and sm["note"] is None, sm
    assert sm["final_scrape"]["waited_s"] >= 1.0

"""Server /metrics scraping: the pure parser/delta/quantile helpers on hand-written exposition text, and
the scraper against a small aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
import socket

import aiohttp
import pytest
from aiohttp import web

from loadgen.observe.promtext import (
    NO_METRICS_NOTE,
    Histogram,
    counter_deltas,
    cross_check,
    cross_check_problems,
    histogram_delta,
    histogram_quantile,
    metrics_endpoint,
    parse_exposition,
)
from loadgen.observe.scrape import ServerMetricsScraper
from loadgen.servers.sim import SimProcess
from tests.conftest import load_report, run_cli

# Two engines of one model, as vLLM exposes them (names, label sets and *_created samples included).
AFTER = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny"} 4.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="tiny"} 700.0
vllm:generation_tokens_total{engine="1",model_name="tiny"} 300.0
# HELP vllm:generation_tokens_created Number of generation tokens processed.
# TYPE vllm:generation_tokens_created gauge
vllm:generation_tokens_created{engine="0",model_name="tiny"} 1.7953339263308082e+09
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"} 2.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 8.0
vllm:request_success_created{engine="0",finished_reason="stop",model_name="tiny"} 1.7953339263308403e+09
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.02",model_name="tiny"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="tiny"} 4.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="tiny"} 7.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 7.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 7.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 0.3
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.02",model_name="tiny"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.04",model_name="tiny"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.1",model_name="tiny"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="+Inf",model_name="tiny"} 3.0
vllm:time_to_first_token_seconds_count{engine="1",model_name="tiny"} 3.0
vllm:time_to_first_token_seconds_sum{engine="1",model_name="tiny"} 0.1
vllm:time_to_first_token_seconds_created{engine="1",model_name="tiny"} 1.7953339263308403e+09
"""

BEFORE = """\
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="tiny"} 100.0
vllm:generation_tokens_total{engine="1",model_name="tiny"} 0.0
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 4.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.02",model_name="tiny"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="tiny"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="tiny"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 0.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 0.0
"""


def test_parse_sums_label_sets_and_drops_created() -> None:
    snap = parse_exposition(AFTER)
    assert snap.scalars["vllm:num_requests_running"] == 7.0
    assert snap.scalars["vllm:kv_cache_usage_perc"] == 0.25
    assert snap.scalars["vllm:generation_tokens_total"] == 1000.0
    assert snap.scalars["vllm:request_success_total"] == 10.0  # summed over finished_reason too
    assert not any(name.endswith("_created") for name in snap.scalars)
    ttft = snap.histograms["vllm:time_to_first_token_seconds"]
    assert ttft.buckets == ((0.02, 2.0), (0.04, 6.0), (0.1, 10.0), (float("inf"), 10.0))
    assert ttft.count == 10.0
    assert ttft.sum == pytest.approx(0.4)


def test_parse_rejects_non_exposition_text() -> None:
    with pytest.raises(ValueError):
        parse_exposition("<html><body>Not Found</body></html>")


def test_counter_deltas() -> None:
    before, after = parse_exposition(BEFORE), parse_exposition(AFTER)
    deltas = counter_deltas(
        before, after, ["vllm:generation_tokens_total", "vllm:request_success_total", "vllm:missing_total"]
    )
    assert deltas == {
        "vllm:generation_tokens_total": 900.0,
        "vllm:request_success_total": 6.0,
        "vllm:missing_total": None,
    }
    # A counter that went down means the server restarted: no honest delta exists.
    assert counter_deltas(after, before, ["vllm:generation_tokens_total"]) == {
        "vllm:generation_tokens_total": None
    }


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    ttft = histogram_delta(
        parse_exposition(BEFORE).histograms["vllm:time_to_first_token_seconds"],
        parse_exposition(AFTER).histograms["vllm:time_to_first_token_seconds"],
    )
    # 10 observations: 2 in (0, 20 ms], 4 in (20, 40 ms], 4 in (40, 100 ms].
    p50 = histogram_quantile(0.5, ttft)
    assert p50 is not None
    # rank 5 is the 3rd of 4 in (20, 40]: 20 + 20 * 3/4 = 35 ms, known to within 20 ms.
    assert p50.value == pytest.approx(0.035)
    assert (p50.lower, p50.upper) == (0.02, 0.04)
    assert p50.resolution == pytest.approx(0.02)
    p99 = histogram_quantile(0.99, ttft)
    assert p99 is not None
    # rank 9.9 is 3.9 of 4 into (40, 100]: 40 + 60 * 3.9/4 = 98.5 ms.
    assert p99.value == pytest.approx(0.0985)
    low = histogram_quantile(0.1, ttft)  # rank 1 of 2 in the first bucket, from 0
    assert low is not None and low.value == pytest.approx(0.01)


def test_histogram_quantile_in_inf_bucket_and_empty() -> None:
    hist = Histogram(buckets=((0.1, 1.0), (float("inf"), 4.0)), count=4.0, sum=9.0)
    p99 = histogram_quantile(0.99, hist)
    assert p99 is not None
    assert p99.value == 0.1 and p99.resolution == 0.0
    empty = Histogram(buckets=((0.1, 0.0), (float("inf"), 0.0)), count=0.0, sum=0.0)
    assert histogram_quantile(0.5, empty) is None
    with pytest.raises(ValueError):
        histogram_quantile(1.5, hist)


def test_histogram_delta_refuses_a_restart() -> None:
    after = parse_exposition(AFTER).histograms["vllm:time_to_first_token_seconds"]
    before = parse_exposition(BEFORE).histograms["vllm:time_to_first_token_seconds"]
    with pytest.raises(ValueError):
        histogram_delta(after, before)


# -- the scraper over real HTTP ------------------------------------------------------------------------


class FakeVllmMetrics:
    """A /metrics endpoint whose numbers the test sets; ``fail_next`` answers 500 that many times."""

    def __init__(self) -> None:
        self.generated = 0
        self.running = 0
        self.ttft_le_40ms = 0
        self.fail_next = 0
        self.hits = 0

    async def handle(self, _request: web.Request) -> web.Response:
        self.hits += 1
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=500, text="boom")
        n = self.ttft_le_40ms
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="m"}} {self.running}\n'
            "# TYPE vllm:generation_tokens_total counter\n"
            f'vllm:generation_tokens_total{{model_name="m"}} {self.generated}\n'
            "# TYPE vllm:prefix_cache_queries counter\n"
            f'vllm:prefix_cache_queries_total{{model_name="m"}} {8 * self.generated}\n'
            "# TYPE vllm:prefix_cache_hits counter\n"
            f'vllm:prefix_cache_hits_total{{model_name="m"}} {2 * self.generated}\n'
            "# TYPE vllm:time_to_first_token_seconds histogram\n"
            f'vllm:time_to_first_token_seconds_bucket{{le="0.02",model_name="m"}} 0\n'
            f'vllm:time_to_first_token_seconds_bucket{{le="0.04",model_name="m"}} {n}\n'
            f'vllm:time_to_first_token_seconds_bucket{{le="+Inf",model_name="m"}} {n}\n'
            f'vllm:time_to_first_token_seconds_count{{model_name="m"}} {n}\n'
            f'vllm:time_to_first_token_seconds_sum{{model_name="m"}} {0.03 * n}\n'
        )
        return web.Response(text=text, content_type="text/plain")


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _wait_for(cond, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def test_scraper_before_during_after() -> None:
    async def main() -> dict:
        fake = FakeVllmMetrics()
        app = web.Application()
        app.router.add_get("/metrics", fake.handle)
        runner, url = await _serve(app)
        try:
            scraper = ServerMetricsScraper(url, interval_s=0.05)
            stop = asyncio.Event()
            async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
                tg.create_task(scraper.run(session, stop))
                await _wait_for(lambda: scraper.scrapes >= 1)
                fake.generated, fake.running, fake.ttft_le_40ms = 640, 5, 4
                fake.fail_next = 2
                await _wait_for(lambda: fake.hits >= 6)
                fake.running = 0  # the run's requests are done: the final scrape can settle
                stop.set()
            return scraper.result({"p50_ms": 33.0})
        finally:
            await runner.cleanup()

    res = asyncio.run(main())
    assert res["note"] is None
    assert res["failed_scrapes"] == 2 and res["errors"] == ["HTTP 500", "HTTP 500"]
    assert res["deltas"]["vllm:generation_tokens_total"] == 640.0
    # 5120 prompt tokens looked up, 1280 found: a 25% prefix-cache hit rate over the run.
    assert res["deltas"]["vllm:prefix_cache_queries_total"] == 5120.0
    assert res["prefix_cache_hit_rate"] == pytest.approx(0.25)
    samples = res["samples"]
    assert samples[0]["vllm:num_requests_running"] == 0.0
    assert 5.0 in [s["vllm:num_requests_running"] for s in samples]
    assert samples[-1]["vllm:num_requests_running"] == 0.0
    assert res["final_scrape"]["settled"] is True
    ts = [s["t_s"] for s in samples]
    assert ts == sorted(ts) and ts[0] >= 0.0
    ttft = res["histograms"]["time_to_first_token"]
    # 4 observations all in (20, 40] ms: the p50 is the bucket's midpoint, known to ±20 ms.
    assert ttft["count"] == 4.0
    assert ttft["p50_ms"] == pytest.approx(30.0)
    assert ttft["p50_bucket_ms"] == pytest.approx([20.0, 40.0])
    cc = res["cross_check"]
    assert cc["client_ttft_p50_ms"] == 33.0
    assert cc["server_ttft_p50_ms"] == pytest.approx(30.0)
    assert cc["difference_ms"] == pytest.approx(3.0)
    assert cc["bucket_resolution_ms"] == pytest.approx(20.0)


def test_scraper_skips_an_endpoint_without_metrics() -> None:
    async def main() -> dict:
        app = web.Application()  # no routes: /metrics is 404
        runner, url = await _serve(app)
        try:
            scraper = ServerMetricsScraper(url, interval_s=0.05)
            stop = asyncio.Event()
            async with aiohttp.ClientSession() as session:
                # Returns on its own without stop being set.
                await asyncio.wait_for(scraper.run(session, stop), timeout=5)
            return scraper.result({"p50_ms": 10.0})
        finally:
            await runner.cleanup()

    res = asyncio.run(main())
    assert res["note"] == NO_METRICS_NOTE
    assert res["samples"] == [] and res["deltas"] == {}


def test_scraper_skips_when_connection_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    async def main() -> dict:
        scraper = ServerMetricsScraper(f"http://127.0.0.1:{port}", interval_s=0.05)
        async with aiohttp.ClientSession() as session:
            await asyncio.wait_for(scraper.run(session, asyncio.Event()), timeout=5)
        return scraper.result()

    res = asyncio.run(main())
    assert res["note"] == NO_METRICS_NOTE


def test_selected_parser_agrees_with_the_full_parser():
    from loadgen.observe.promtext import DEFAULT_COUNTERS, DEFAULT_GAUGES, DEFAULT_HISTOGRAMS, parse_selected

    for text in (BEFORE, AFTER):
        full = parse_exposition(text)
        fast = parse_selected(text, (*DEFAULT_GAUGES, *DEFAULT_COUNTERS), DEFAULT_HISTOGRAMS.values())
        for name, value in fast.scalars.items():
            assert full.scalars[name] == value, name
        assert set(fast.scalars) == {n for n in full.scalars if n in (*DEFAULT_GAUGES, *DEFAULT_COUNTERS)}
        for name, hist in fast.histograms.items():
            assert full.histograms[name] == hist, name
        assert set(fast.histograms) == {n for n in full.histograms if n in DEFAULT_HISTOGRAMS.values()}
        assert fast.histograms  # the fixtures hold histograms, so the comparison is not vacuous


# ---- where to scrape ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    (None, ("http://a:1", "/metrics")),
    ("http://h:8000", ("http://h:8000", "/metrics")),
    ("http://h:8000/", ("http://h:8000", "/metrics")),
    ("https://h/prom/metrics", ("https://h", "/prom/metrics")),
    ("http://h:9/stats/", ("http://h:9", "/stats")),
    ("http://h:9/m?x=1", ("http://h:9", "/m?x=1")),
])
def test_metrics_endpoint(given, expected) -> None:
    assert metrics_endpoint("http://a:1/", given) == expected


@pytest.mark.parametrize("bad", ["h:8000", "ftp://h/metrics", "http://", "/metrics"])
def test_metrics_endpoint_refuses_what_is_not_a_url(bad) -> None:
    with pytest.raises(ValueError, match="not an http"):
        metrics_endpoint("http://a:1", bad)


def _run_with_metrics_url(tmp_path, name: str, *args: str) -> dict:
    out = tmp_path / name
    res = run_cli("run", "concurrency", "--concurrency", "4", "--num-requests", "20", "--duration", "1",
                  "--input-len", "16", "--output-len", "8", "--no-gpu-telemetry", "--out", str(out),
                  "--quiet", *args)
    assert res.code == 0, res.output
    return load_report(out)


def test_server_metrics_url_without_a_path_scrapes_a_second_server(sim: SimProcess, tmp_path) -> None:
    """The built-in simulator takes the load; ``--server-metrics-url`` names another simulator by host
    and port only: its /metrics is scraped, and it saw none of the run's tokens."""
    report = _run_with_metrics_url(tmp_path, "run", "--server-metrics-url", sim.url)
    assert report["server"]["url"] != sim.url  # the load went to the built-in one
    sm = report["server_metrics"]
    assert sm["url"] == f"{sim.url}/metrics"
    assert sm["note"] is None and sm["scrapes"] >= 2 and sm["failed_scrapes"] == 0, sm
    res = report["results"]
    assert res["requests_completed"] >= 20 and res["output_tokens_total"] == 8 * res["requests_completed"]
    assert sm["deltas"]["vllm:generation_tokens_total"] == 0
    assert sm["deltas"]["vllm:request_success_total"] == 0


@pytest.mark.parametrize("suffix", ["", "/metrics"])
def test_server_metrics_url_of_the_target_itself(sim: SimProcess, tmp_path, suffix: str) -> None:
    """The same server given explicitly, with or without the path: its counters moved by exactly what
    the client received, and the TTFT cross-check is plausible (simulated TTFT 50 ms)."""
    report = _run_with_metrics_url(tmp_path, "run", "--url", sim.url,
                                   "--server-metrics-url", sim.url + suffix)
    sm, res = report["server_metrics"], report["results"]
    assert sm["url"] == f"{sim.url}/metrics"
    assert sm["note"] is None and sm["scrapes"] >= 2, sm
    assert res["requests_completed"] >= 20 and res["requests_failed"] == 0
    assert sm["deltas"]["vllm:generation_tokens_total"] == res["output_tokens_total"] == 8 * res[
        "requests_completed"]
    assert sm["deltas"]["vllm:request_success_total"] == res["requests_completed"]
    cross = sm["cross_check"]
    assert 45 <= cross["client_ttft_p50_ms"] <= 100, cross
    assert cross_check_problems(cross, max_overhead_ms=50.0) == []


def test_a_bad_server_metrics_url_is_refused_before_the_run(sim: SimProcess, tmp_path) -> None:
    res = run_cli("run", "concurrency", "--url", sim.url, "--num-requests", "2", "--out", str(tmp_path / "r"),
                  "--server-metrics-url", "localhost:8000", "--quiet")
    assert res.code == 2, res.output
    assert "not an http(s) URL" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r" / "requests.jsonl").exists()


# ---- the TTFT cross-check's sanity bounds -------------------------------------------------------------


def _ttft_hist(le_20ms: int, le_40ms: int, total: int) -> Histogram:
    return Histogram(buckets=((0.02, le_20ms), (0.04, le_40ms), (math.inf, total)), count=total, sum=0.0)


@pytest.mark.parametrize(("client_p50", "ok"), [
    (30.0, True),  # the server's own midpoint
    (19.5, True),  # below the bucket by less than the 1 ms slack
    (18.9, False),  # the client saw the first token before the server made it
    (99.5, True),  # difference 69.5 ms ≤ 20 ms bucket + 50 ms overhead
    (100.5, False),  # difference 70.5 ms
])
def test_cross_check_bounds(client_p50: float, ok: bool) -> None:
    # 10 observations in (20, 40] ms: the server's p50 estimate is 30 ms, known to within [20, 40]
    cross = cross_check({"p50": client_p50}, _ttft_hist(0, 10, 10))
    assert cross["server_ttft_p50_ms"] == pytest.approx(30.0)
    assert cross["server_bucket_ms"] == pytest.approx([20.0, 40.0])
    assert cross["bucket_resolution_ms"] == pytest.approx(20.0)
    assert (cross_check_problems(cross, max_overhead_ms=50.0) == []) is ok


def test_cross_check_bounds_in_the_inf_bucket_and_without_data() -> None:
    # every observation above the last finite bound (40 ms): only the lower bound is known
    cross = cross_check({"p50": 900.0}, _ttft_hist(0, 0, 10))
    assert cross["server_bucket_ms"] == pytest.approx([40.0, 40.0])
    assert cross_check_problems(cross, max_overhead_ms=50.0) == []
    low = cross_check({"p50": 30.0}, _ttft_hist(0, 0, 10))
    assert len(cross_check_problems(low, max_overhead_ms=50.0)) == 1
    assert cross_check_problems(cross_check({"p50": 30.0}, None), max_overhead_ms=50.0) != []

"""The simulated server over real sockets: protocol shapes, errors, endpoints, faults, determinism.

Timing, capacity and the subprocess launcher are in test_sim_timing.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadgen.servers.sim import FaultSpec, SimConfig, SimServer, parse_fault

FAST = {"ttft_ms": 2.0, "itl_ms": 1.0}


def run(cfg: SimConfig, body: Callable[[aiohttp.ClientSession, str], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with SimServer(cfg) as url, aiohttp.ClientSession() as session:
            return await body(session, url)

    return asyncio.run(main())


async def sse(resp: aiohttp.ClientResponse) -> list[str]:
    """The ``data:`` payloads of an SSE response, in order."""
    out = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("data: "):
            out.append(line[len("data: "):])
    return out


def prompt(n: int) -> str:
    return " ".join(f"w{i:04d}" for i in range(n))


# -- protocol shapes --------------------------------------------------------------------------------

def test_completions_stream_shape_and_usage() -> None:
    async def body(s: aiohttp.ClientSession, url: str) -> None:
        req = {"model": "sim-model", "prompt": prompt(7), "max_tokens": 5, "stream": True,
               "stream_options": {"include_usage": True}}
        async with s.post(url + "/v1/completions", json=req) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = await sse(r)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        content, usage = chunks[:-1], chunks[-1]
        assert len(content) == 5
        for i, c in enumerate(content):
            assert c["object"] == "text_completion" and c["model"] == "sim-model"
            assert c["id"] == content[0]["id"] and c["id"].startswith("cmpl-")
            (choice,) = c["choices"]
            assert choice["index"] == 0 and choice["logprobs"] is None
            assert len(choice["text"].split()) == 1 and choice["text"].startswith(" w")
            assert choice["finish_reason"] == ("length" if i == 4 else None)
        assert usage["choices"] == []
        assert usage["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}

    run(SimConfig(**FAST), body)


def test_chat_stream_role_chunk_and_continuous_usage() -> None:
    cfg = SimConfig(**FAST, chat_template_tokens=4)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt(10)}]

    async def body(s: aiohttp.ClientSession, url: str) -> None:
        req = {"model": "sim-model", "messages": msgs, "max_completion_tokens": 3, "stream": True,
               "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        async with s.post(url + "/v1/chat/completions", json=req) as r:
            events = await sse(r)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        content = chunks[1:-1]
        assert [c["choices"][0]["finish_reason"] for c in content] == [None, None, "length"]
        assert all(len(c["choices"][0]["delta"]["content"].split()) == 1 for c in content)
        prompt_tokens = 2 + 10 + 2 * 4
        assert [c["usage"]["completion_tokens"] for c in content] == [1, 2, 3]
        assert all(c["usage"]["prompt_tokens"] == prompt_tokens for c in content)
        assert chunks[-1]["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 3,
                                       "total_tokens": prompt_tokens + 3}

    run(cfg, body)


def test_non_streaming_both_endpoints() -> None:
    async def body(s: aiohttp.ClientSession, url: str) -> None:
        async with s.post(url + "/v1/completions", json={"prompt": [prompt(4)], "max_tokens": 6}) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "application/json"
            comp = await r.json()
        assert comp["object"] == "text_completion"
        assert len(comp["choices"][0]["text"].split()) == 6
        assert comp["choices"][0]["finish_reason"] == "length"
        assert comp["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
        chat_req = {"model": "sim-model", "messages": [{"role": "user", "content": prompt(3)}],
                    "max_tokens": 2}
        async with s.post(url + "/v1/chat/completions", json=chat_req) as r:
            chat = await r.json()
        assert chat["object"] == "chat.completion"
        assert chat["choices"][0]["message"]["role"] == "assistant"
        assert len(chat["choices"][0]["message"]["content"].split()) == 2
        assert chat["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        async with s.post(url + "/v1/completions", json={"prompt": prompt(2)}) as r:  # vLLM default 16
            assert (await r.json())["usage"]["completion_tokens"] == 16

    run(SimConfig(**FAST), body)


def test_tokens_per_chunk_groups_after_the_first_token() -> None:
    async def body(s: aiohttp.ClientSession, url: str) -> None:
        req = {"prompt": "x", "max_tokens": 8, "stream": True,
               "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        async with s.post(url + "/v1/completions", json=req) as r:
            chunks = [json.loads(e) for e in (await sse(r))[:-2]]
        assert [len(c["choices"][0]["text"].split()) for c in chunks] == [1, 3, 3, 1]
        assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 4, 7, 8]

    run(SimConfig(**FAST, tokens_per_chunk=3), body)


# -- errors -----------------------------------------------------------------------------------------

def test_error_shapes() -> None:
    async def body(s: aiohttp.ClientSession, url: str) -> None:
        async with s.post(url + "/v1/completions", json={"model": "gpt-9", "prompt": "a"}) as r:
            assert r.status == 404
            assert await r.json() == {"object": "error", "message": "The model `gpt-9` does not exist.",
                                      "type": "NotFoundError", "param": None, "code": 404}
        async with s.post(url + "/v1/completions", data=b"{not json",
                          headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            err = await r.json()
            assert err["object"] == "error" and err["code"] == 400 and err["type"] == "BadRequestError"
        async with s.post(url + "/v1/completions", json={"prompt": prompt(10), "max_tokens": 60}) as r:
            assert r.status == 400
            assert "maximum context length is 64" in (await r.json())["message"]
        async with s.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 0}) as r:
            assert r.status == 400
        async with s.post(url + "/v1/completions",
                          json={"prompt": "a", "stream_options": {"include_usage": True}}) as r:
            assert r.status == 400

    run(SimConfig(**FAST, max_model_len=64), body)


def test_api_key() -> None:
    async def body(s: aiohttp.ClientSession, url: str) -> None:
        async with s.get(url + "/v1/models") as r:
            assert r.status == 401 and "error" in await r.json()
        async with s.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 1},
                          headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with s.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 1},
                          headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 200
        async with s.get(url + "/health") as r:  # like vLLM, only /v1 is protected
            assert r.status == 200

    run(SimConfig(**FAST, api_key="s3cret"), body)


# -- other endpoints --------------------------------------------------------------------------------

def test_models_health_version_tokenize() -> None:
    async def body(s: aiohttp.ClientSession, url: str) -> None:
        async with s.get(url + "/v1/models") as r:
            models = await r.json()
        assert models["object"] == "list"
        assert [(m["id"], m["max_model_len"], m["owned_by"]) for m in models["data"]] == [
            ("m1", 1000, "loadgen-sim")]
        async with s.get(url + "/health") as r:
            assert r.status == 200 and await r.read() == b""
        async with s.get(url + "/version") as r:
            assert await r.json() == {"version": "loadgen-sim-0.1"}
        async with s.post(url + "/tokenize", json={"model": "m1", "prompt": prompt(13)}) as r:
            tok = await r.json()
        assert tok["count"] == 13 and len(tok["tokens"]) == 13 and tok["max_model_len"] == 1000

    run(SimConfig(**FAST, model="m1", max_model_len=1000), body)


def test_metrics_parse_and_counters_move() -> None:
    def families(text: str) -> dict[str, Any]:
        return {f.name: f for f in text_string_to_metric_families(text)}

    def value(fams: dict[str, Any], family: str, sample: str) -> float:
        return next(s.value for s in fams[family].samples if s.name == sample)

    async def body(s: aiohttp.ClientSession, url: str) -> None:
        async with s.get(url + "/metrics") as r:
            before = families(await r.text())
        for _ in range(3):
            async with s.post(url + "/v1/completions", json={"prompt": prompt(5), "max_tokens": 4}) as r:
                await r.read()
        async with s.get(url + "/metrics") as r:
            after = families(await r.text())
        assert value(before, "vllm:generation_tokens", "vllm:generation_tokens_total") == 0
        assert value(after, "vllm:generation_tokens", "vllm:generation_tokens_total") == 12
        assert value(after, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == 15
        assert value(after, "vllm:request_success", "vllm:request_success_total") == 3
        assert value(after, "vllm:num_requests_running", "vllm:num_requests_running") == 0
        ttft = after["vllm:time_to_first_token_seconds"]
        assert value(after, ttft.name, ttft.name + "_count") == 3
        assert {s.labels["model_name"] for s in ttft.samples} == {"sim-model"}
        assert value(after, "vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_count") == 9
        assert value(after, "loadgen_sim_emit_lateness_seconds",
                     "loadgen_sim_emit_lateness_seconds_count") == 12
        for name in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:num_preemptions",
                     "vllm:e2e_request_latency_seconds"):
            assert name in after
        async with s.get(url + "/sim/stats") as r:
            stats = await r.json()
        assert stats["chunks_emitted"] == 12 and stats["requests"] == {"completed": 3}
        assert stats["lateness_ms"]["count"] == 12 and stats["lateness_ms"]["max"] < 100
        assert stats["first_token_lateness_ms"]["count"] == 3  # one first token per request
        assert stats["first_token_lateness_ms"]["max"] <= stats["lateness_ms"]["max"]

    run(SimConfig(**FAST), body)


# -- faults -----------------------------------------------------------------------------------------

STREAM = {"prompt": "a b", "max_tokens": 6, "stream": True}


async def stream_outcome(s: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """What a plain client sees: status, content type, data events, error class, time to headers."""
    out: dict[str, Any] = {"events": [], "error": None, "status": None}
    t0 = time.perf_counter()
    try:
        async with s.post(url + "/v1/completions", json=STREAM) as r:
            out["headers_s"] = time.perf_counter() - t0
            out["status"], out["ctype"] = r.status, r.headers.get("Content-Type", "")
            if r.status != 200 or not out["ctype"].startswith("text/event-stream"):
                out["body"] = await r.text()
                return out
            async for raw in r.content:
                if raw.startswith(b"data: "):
                    out["events"].append((time.perf_counter() - t0, raw[6:].decode().rstrip("\n")))
    except aiohttp.ClientError as exc:
        out["error"] = type(exc).__name__
    return out


def fault_run(spec: str) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = SimConfig(ttft_ms=5.0, itl_ms=5.0, faults=(parse_fault(spec),))

    async def body(s: aiohttp.ClientSession, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
        out = await stream_outcome(s, url)
        async with aiohttp.ClientSession() as fresh, fresh.get(url + "/sim/stats") as r:
            return out, await r.json()

    return run(cfg, body)


def _json_ok(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("kind,status", [("http_429", 429), ("http_500", 500), ("http_503", 503)])
def test_fault_http_status(kind: str, status: int) -> None:
    out, stats = fault_run(kind)
    assert out["status"] == status
    assert json.loads(out["body"])["code"] == status
    assert stats["faults"] == {kind: 1}


def test_fault_reset_before_headers() -> None:
    out, stats = fault_run("reset_before_headers")
    assert out["status"] is None and out["error"] in ("ServerDisconnectedError", "ClientOSError")
    assert stats["faults"] == {"reset_before_headers": 1}


def test_fault_disconnect_mid_stream() -> None:
    out, stats = fault_run("disconnect_mid_stream:every=1,after=3")
    assert len(out["events"]) == 3 and out["error"] == "ClientPayloadError"
    assert stats["faults"] == {"disconnect_mid_stream": 1} and stats["running"] == 0


def test_fault_stall() -> None:
    out, _ = fault_run("stall:every=1,after=2,seconds=0.3")
    times = [t for t, _ in out["events"]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(out["events"]) == 7 and out["events"][-1][1] == "[DONE]"
    assert 0.3 <= gaps[1] < 0.4  # chunk 2 → 3: stall + one step
    assert max(gaps[:1] + gaps[2:]) < 0.1


def test_fault_slow_headers() -> None:
    out, _ = fault_run("slow_headers:every=1,seconds=0.3")
    assert out["headers_s"] >= 0.3 and out["status"] == 200 and out["events"][-1][1] == "[DONE]"


def test_fault_malformed_sse() -> None:
    out, stats = fault_run("malformed_sse:every=1,after=1")
    payloads = [p for _, p in out["events"]]
    bad = [p for p in payloads if p != "[DONE]" and not _json_ok(p)]
    assert len(bad) == 1 and payloads.index(bad[0]) == 1
    assert stats["faults"] == {"malformed_sse": 1}


def test_fault_error_event() -> None:
    out, _ = fault_run("error_event:every=1,after=2")
    payloads = [p for _, p in out["events"]]
    assert payloads[-1] == "[DONE]" and len(payloads) == 4
    assert json.loads(payloads[2])["error"]["code"] == 500


def test_fault_truncated_final_chunk() -> None:
    out, stats = fault_run("truncated_final_chunk:1.0")
    payloads = [p for _, p in out["events"]]
    assert out["error"] == "ClientPayloadError" and "[DONE]" not in payloads
    # The half-sent sixth event has no newline: a line reader gets 5 whole events, then the payload error.
    assert len(payloads) == 5 and all(_json_ok(p) for p in payloads)
    assert stats["faults"] == {"truncated_final_chunk": 1}


def test_fault_wrong_content_type() -> None:
    out, _ = fault_run("wrong_content_type")
    assert out["status"] == 200 and out["ctype"].startswith("text/html") and "<html>" in out["body"]


def test_fault_every_n_is_exact_and_rate_is_seeded() -> None:
    cfg = SimConfig(**FAST, seed=7, faults=(FaultSpec("http_500", every=3), FaultSpec("http_429", rate=0.5)))

    async def body(s: aiohttp.ClientSession, url: str) -> list[int]:
        statuses = []
        for _ in range(30):
            async with s.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 1}) as r:
                await r.read()
                statuses.append(r.status)
        return statuses

    first, again = run(cfg, body), run(cfg, body)
    assert first == again
    assert [i for i, st in enumerate(first, 1) if st == 500] == list(range(3, 31, 3))
    n429 = first.count(429)
    assert 4 <= n429 <= 17  # 20 draws at p=0.5 (≈ 3.5σ band)
    assert run(SimConfig(**FAST, seed=8, faults=cfg.faults), body) != first


def test_parse_fault() -> None:
    assert parse_fault("http_500:0.1") == FaultSpec("http_500", rate=0.1)
    assert parse_fault("stall:every=10,after=5,seconds=2") == FaultSpec("stall", every=10, after_tokens=5,
                                                                         seconds=2.0)
    assert parse_fault("wrong_content_type") == FaultSpec("wrong_content_type", every=1)
    for bad, part in [("http_600:0.1", "http_600"), ("stall:every=x", "'every=x'"),
                      ("stall:often=3", "'often'"), ("http_500:1.5", "rate"), ("http_500:every=0", "rate")]:
        with pytest.raises(ValueError, match=part):
            parse_fault(bad)


def test_config_round_trip() -> None:
    cfg = SimConfig(model="m", itl_slope=0.25, api_key="k", faults=(parse_fault("stall:every=2"),))
    assert SimConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SimConfig.from_dict({"faults": ["http_500:0.5"]}).faults == (FaultSpec("http_500", rate=0.5),)
    with pytest.raises(ValueError, match="bogus"):
        SimConfig.from_dict({"bogus": 1})


# -- determinism and disconnects --------------------------------------------------------------------

def test_generated_text_is_deterministic_given_seed() -> None:
    async def body(s: aiohttp.ClientSession, url: str) -> list[str]:
        texts = []
        for _ in range(3):
            async with s.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 8}) as r:
                texts.append((await r.json())["choices"][0]["text"])
        return texts

    a, b, c = (run(SimConfig(**FAST, seed=seed), body) for seed in (1, 1, 2))
    assert a == b and a != c and len(set(a)) == 3


def test_client_disconnect_frees_the_slot() -> None:
    cfg = SimConfig(ttft_ms=5.0, itl_ms=5.0, max_seqs=1)

    async def body(s: aiohttp.ClientSession, url: str) -> None:
        async with aiohttp.ClientSession() as other:
            r = await other.post(url + "/v1/completions", json={**STREAM, "max_tokens": 1000})
            await r.content.readline()
            r.close()  # drop the connection mid-stream
        for _ in range(100):  # bounded: 1 s
            async with s.get(url + "/sim/stats") as st:
                stats = await st.json()
            if stats["running"] == 0:
                break
            await asyncio.sleep(0.01)
        assert stats["running"] == 0 and stats["requests"].get("client_disconnected") == 1
        t0 = time.perf_counter()
        async with s.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 1}) as r2:
            await r2.read()
        assert time.perf_counter() - t0 < 0.5  # not queued behind the abandoned 1000-token stream

    run(cfg, body)

"""Image inputs for chat, against the simulator over real sockets: it charges a known prefill time per
image (IMG ms) on top of TTFT T, and counts K prompt tokens per image, so TTFT = T + images·IMG and the
prompt tokens are known beforehand; what it received shows the images were there, distinct, and of the
asked size."""

from __future__ import annotations

import base64
import json
import struct
import urllib.request
import zlib

import pytest

from loadgen.servers.sim import SimConfig, SimProcess
from loadgen.workload.images import png
from tests.conftest import load_report, run_cli

T, IMG, K, N = 40.0, 30.0, 100, 12


def _decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw scanlines) of a PNG, read independently of loadgen's writer."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, width, height, idat = 8, 0, 0, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
            assert body[8:10] == b"\x08\x02"  # 8-bit RGB
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


@pytest.fixture(scope="module")
def image_sim():
    with SimProcess(SimConfig(ttft_ms=T, itl_ms=5.0, image_prefill_ms=IMG, image_tokens=K,
                              keep_bodies=1000)) as proc:
        yield proc


def _bodies(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/sim/bodies", timeout=10) as resp:
        return json.load(resp)["bodies"]


def _run(url: str, out, *extra: str):
    return run_cli("run", "concurrency", "--url", url, "--endpoint", "chat", "--concurrency", "3",
                   "--num-requests", str(N), "--duration", "0", "--input-len", "16", "--output-len", "8",
                   "--out", str(out), "--quiet", *extra)


def test_png_is_a_valid_image_of_the_asked_size_and_distinct_per_seed():
    w, h, raw = _decode_png(png(70, 33, seed=1))
    assert (w, h) == (70, 33) and len(raw) == 33 * (1 + 3 * 70)
    assert all(raw[r * (1 + 3 * 70)] == 0 for r in range(33))  # filter byte of every row
    assert png(70, 33, seed=1) == png(70, 33, seed=1) != png(70, 33, seed=2)


def test_each_image_costs_its_prefill_in_ttft_and_its_tokens_in_the_prompt(image_sim, tmp_path):
    plain = _run(image_sim.url, tmp_path / "plain")
    assert plain.code == 0, plain.output
    base = load_report(tmp_path / "plain")["results"]
    assert base["ttft_ms"]["p50"] == pytest.approx(T, abs=1.0)
    before = len(_bodies(image_sim.url))

    res = _run(image_sim.url, tmp_path / "img", "--images", "2", "--image-size", "96x48")
    assert res.code == 0, res.output
    report = load_report(tmp_path / "img")
    r = report["results"]
    assert r["requests_completed"] == N and r["requests_failed"] == 0
    assert r["ttft_ms"]["p50"] == pytest.approx(T + 2 * IMG, abs=1.0)
    assert r["ttft_ms"]["p99"] == pytest.approx(T + 2 * IMG, abs=2.0)
    # the server's usage counts the image tokens beside the text's; input tokens stay the text's
    rows = [json.loads(x) for x in (tmp_path / "img" / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == N and all(x["prompt_tokens"] == x["input_tokens"] + 2 * K for x in rows)
    assert r["input_tokens_total"] == base["input_tokens_total"]
    images = report["dataset"]["images"]
    assert images["per_request"] == 2 and (images["width"], images["height"]) == (96, 48)
    assert "images: 2 per request (96x48 synthetic PNG)" in res.stdout

    sent = _bodies(image_sim.url)[before:]
    assert len(sent) == N
    seen = set()
    for body in sent:
        parts = body["messages"][-1]["content"]
        assert parts[0]["type"] == "text" and parts[0]["text"]
        urls = [p["image_url"]["url"] for p in parts[1:]]
        assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)
        for u in urls:
            w, h, _ = _decode_png(base64.b64decode(u.split(",", 1)[1]))
            assert (w, h) == (96, 48)
            seen.add(u)
    assert len(seen) == 2 * N  # no image repeats: a multimodal cache cannot flatter the run
    assert images["bytes_per_request_mean"] == pytest.approx(
        sum(len(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))
            for b in sent for p in b["messages"][-1]["content"][1:]) / N)


def test_a_folder_of_pictures_is_sent_as_it_is_in_name_order(image_sim, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(8, 8, 5))
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not decoded by the simulator")
    (folder / "notes.txt").write_text("not an image")
    before = len(_bodies(image_sim.url))
    res = _run(image_sim.url, tmp_path / "run", "--image-folder", str(folder), "--concurrency", "1")
    assert res.code == 0, res.output
    sent = _bodies(image_sim.url)[before:]
    kinds = [b["messages"][-1]["content"][1]["image_url"]["url"].split(";")[0] for b in sent]
    assert kinds == ["data:image/png", "data:image/jpeg"] * (N // 2)
    first = base64.b64decode(sent[0]["messages"][-1]["content"][1]["image_url"]["url"].split(",", 1)[1])
    assert first == (folder / "a.png").read_bytes()
    images = load_report(tmp_path / "run")["dataset"]["images"]
    assert images["files"] == 2 and images["source"] == str(folder)
    assert load_report(tmp_path / "run")["results"]["ttft_ms"]["p50"] == pytest.approx(T + IMG, abs=1.0)


@pytest.mark.parametrize(("args", "needle"), [
    (["--images", "1"], "--endpoint chat"),  # completions has no messages
    (["--endpoint", "chat", "--image-size", "wide"], "--image-size 'wide'"),
    (["--endpoint", "chat", "--image-folder", "/nonexistent/pics"], "/nonexistent/pics"),
    (["--endpoint", "chat", "--images", "0"], "images.count"),
])
def test_bad_image_options_exit_2_naming_what_to_fix(tmp_path, args, needle):
    res = run_cli("run", "concurrency", "--num-requests", "2", "--duration", "0", "--out",
                  str(tmp_path / "r"), "--quiet", *args)
    assert res.code == 2, res.output
    assert needle in res.stderr and "Traceback" not in res.stderr, res.stderr

"""Acceptance: real runs against the simulated server, rendered in headless Chromium.

A run and a small concurrency sweep (the simulator decodes at most 4 sequences, so latency bends at
concurrency 4) are made through the real CLI; ``report.html`` and ``sweep.html`` are written from their
folders and opened in Debian's Chromium from a ``file://`` URL with networking off. The page's own
inline script records what the browser drew in each figure's ``data-rendered``; ``--dump-dom`` gives it
back. A screenshot of each page must not be blank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from loadgen.html import RUN_FIGURES, SWEEP_FIGURES, write_run_html, write_sweep_html
from tests.conftest import load_report, run_cli, write_scenario

pytestmark = pytest.mark.chromium

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CONCURRENCIES = (1, 2, 4, 8, 16)
SIM = {"ttft_ms": 20, "itl_ms": 5, "max_seqs": 4}
SLO = {"ttft_ms": 60.0, "tpot_ms": 20.0}


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("LOADGEN_REQUIRE_CHROMIUM") == "1":
            pytest.fail("LOADGEN_REQUIRE_CHROMIUM=1 but no chromium binary was found (make setup-system)")
        pytest.skip("chromium is not installed (make setup-system installs it); set "
                    "LOADGEN_REQUIRE_CHROMIUM=1 to make this a failure")
    return CHROMIUM


def _browser(chromium: str, profile: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _row(report: dict, concurrency: int) -> dict:
    r = report["results"]
    return {
        "offered_qps": None, "concurrency": concurrency, "requests_per_s": r["requests_per_s"],
        "output_tokens_per_s": r["output_tokens_per_s"],
        "goodput_requests_per_s": (r.get("goodput") or {}).get("requests_per_s"),
        **{f"{m}_{p}_ms": r[f"{m}_ms"][p] for m in ("ttft", "itl", "tpot", "e2e") for p in ("p50", "p99")},
        "error_rate": r["requests_failed"] / max(r["requests_issued"], 1),
        "valid": report["validity"]["valid"], "client_limited": bool((report.get("client") or {}).get(
            "client_limited")),
        "joules_per_output_token": None, "server_args": [f"--max-num-seqs={SIM['max_seqs']}"],
    }


def make_sweep(root: Path) -> Path:
    """Run one concurrency point per value through the CLI and write sweep.json as the sweep runner
    does (points under ``points/NNN``); the knee is the last point within the TTFT SLO."""
    scenario = write_scenario(
        root / "s.yaml", scenario="concurrency", duration_s=1.0, num_requests=24, input_len=32,
        output_len=16, sim=SIM, slo=SLO,
    )
    points = []
    for i, c in enumerate(CONCURRENCIES):
        out = root / "points" / f"{i:03d}"
        res = run_cli("run", str(scenario), "--concurrency", str(c), "--out", str(out), "--quiet")
        assert res.code == 0, res.output
        points.append({
            "index": i, "values": {"concurrency": c}, "seed": 0, "out_dir": f"points/{i:03d}",
            "status": "done", "error": None, "row": _row(load_report(out), c),
        })
    within = [p["index"] for p in points if p["row"]["ttft_p99_ms"] <= SLO["ttft_ms"]]
    knee = {"index": within[-1], "reason": "last point with TTFT p99 within the SLO"} if within else None
    points.append({"index": len(points), "values": {"concurrency": 64}, "seed": 0, "out_dir": "points/005",
                   "status": "failed", "error": "server <crashed> & restarted", "row": None})
    sweep = {"schema_version": 1, "kind": "sweep", "scenario": "concurrency", "parameters": ["concurrency"],
             "slo": SLO, "points": points, "knee": knee}
    (root / "sweep.json").write_text(json.dumps(sweep, indent=2))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html-run") / "run"
    res = run_cli("run", "server", "--duration", "3", "--qps", "20", "--num-requests", "60",
                  "--out", str(out), "--quiet")
    assert res.code == 0, res.output
    # the optional sections, as the scraper and the GPU sampler write them
    report = load_report(out)
    report["server_metrics"] = {"samples": [
        {"t_s": t, "vllm:num_requests_waiting": max(0, 3 - abs(t - 2)), "vllm:num_requests_running": 4,
         "vllm:kv_cache_usage_perc": min(1.0, 0.2 * t)} for t in np.arange(0, 4, 0.5).tolist()
    ]}
    report["telemetry"] = {"samples": [{"t_s": t, "gpu": 0, "power_w": 300 + 20 * t} for t in range(5)]}
    (out / "report.json").write_text(json.dumps(report))
    write_run_html(out)
    return out


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    root = make_sweep(tmp_path_factory.mktemp("html-sweep"))
    write_sweep_html(root)
    return root


def _rendered(chromium: str, page: Path, tmp: Path) -> dict[str, dict]:
    res = _browser(chromium, tmp / "profile-dom", "--virtual-time-budget=2000", "--dump-dom", page.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert "data-measured=\"true\"" in dom, "the page's measuring script did not run"
    found = {}
    pattern = r"<figure data-plot=\"([^\"]+)\" data-points=\"(\d+)\" data-rendered=\"([^\"]+)\""
    for m in re.finditer(pattern, dom):
        found[m.group(1)] = {"declared": int(m.group(2)), **json.loads(m.group(3).replace("&quot;", '"'))}
    return found


def _png_pixels(path: Path) -> np.ndarray:
    """RGB pixels of an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes), decoded with zlib
    and numpy: Pillow is not a dependency."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, bytearray()
    width = height = ch = 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            assert body[8] == 8 and body[12] == 0, "expected an 8-bit, non-interlaced PNG"
            ch = {2: 3, 6: 4}[body[9]]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(bytes(idat))
    stride = width * ch
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind_, line = raw[start], raw[start + 1:start + 1 + stride]
        if kind_ == 0:  # None
            cur = bytearray(line)
        elif kind_ == 1:  # Sub: a running sum along the row, per channel
            arr = np.frombuffer(line, np.uint8).reshape(width, ch).astype(np.int64)
            cur = bytearray((np.cumsum(arr, axis=0) & 0xFF).astype(np.uint8).tobytes())
        elif kind_ == 2:  # Up
            up = np.frombuffer(line, np.uint8).astype(np.int64) + np.frombuffer(bytes(prev), np.uint8)
            cur = bytearray((up & 0xFF).astype(np.uint8).tobytes())
        else:  # Average, Paeth: sequential along the row
            cur = bytearray(line)
            for x in range(stride):
                a = cur[x - ch] if x >= ch else 0
                b = prev[x]
                c = prev[x - ch] if x >= ch else 0
                if kind_ == 3:
                    pred = (a + b) >> 1
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (cur[x] + pred) & 0xFF
        out[y] = np.frombuffer(bytes(cur), np.uint8)
        prev = cur
    return out.reshape(height, width, ch)[:, :, :3]


def _screenshot(chromium: str, page: Path, png: Path, tmp: Path, height: int) -> np.ndarray:
    res = _browser(chromium, tmp / "profile-shot", f"--screenshot={png}", f"--window-size=1400,{height}",
                   "--hide-scrollbars", page.as_uri())
    assert res.returncode == 0 and png.exists(), res.stderr[-2000:]
    keep = os.environ.get("LOADGEN_SHOTS_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(keep) / png.name)
    return _png_pixels(png)


def _assert_drawn(found: dict[str, dict], names: tuple[str, ...]) -> None:
    for name in names:
        assert name in found, f"figure {name} missing from the rendered page ({sorted(found)})"
        r = found[name]
        assert r["width"] >= 300 and r["height"] >= 150, (name, r)
        # every point the page says a plot holds was drawn by the browser
        assert r["declared"] > 0 and r["points"] == r["declared"], (name, r)
        assert r["marks"] + r["lines"] > 0, (name, r)


def test_report_html_renders_every_plot_with_data(chromium, run_dir, tmp_path):
    page = run_dir / "report.html"
    found = _rendered(chromium, page, tmp_path)
    _assert_drawn(found, (*RUN_FIGURES, "server_queue", "server_kv_cache", "gpu_power"))
    ttft = found["ttft_vs_time"]
    assert ttft["marks"] == load_report(run_dir)["results"]["requests_completed"]
    pixels = _screenshot(chromium, page, tmp_path / "report.png", tmp_path, 4300)
    assert pixels.std() > 20, "the screenshot is blank"
    # the plot area is not all background: a good share of pixels differs from white
    assert (pixels.min(axis=2) < 200).mean() > 0.02


def test_sweep_html_renders_curves_frontier_and_knee(chromium, sweep_dir, tmp_path):
    page = sweep_dir / "sweep.html"
    found = _rendered(chromium, page, tmp_path)
    _assert_drawn(found, SWEEP_FIGURES)
    done = len(CONCURRENCIES)
    # p50 and p99 markers of every done point
    assert found["ttft_vs_load"]["marks"] == 2 * done
    assert found["pareto"]["marks"] == done
    html = page.read_text()
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert sweep["knee"] is not None, "the simulator's 4 decode slots should bend TTFT at concurrency 4"
    assert ">knee</text>" in html
    assert "server &lt;crashed&gt; &amp; restarted" in html
    pixels = _screenshot(chromium, page, tmp_path / "sweep.png", tmp_path, 2400)
    assert pixels.std() > 20, "the screenshot is blank"

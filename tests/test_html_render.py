"""Acceptance: real runs against the simulated server, rendered in headless Chromium.

A run and a real ``loadgen sweep`` are made through the CLI: the sweep crosses concurrency 2, 4, 8, 16
with two settings of the simulator, ``--server-arg=--max-seqs=2,8`` (two "server settings", each with
its own knee), and the CLI itself writes ``sweep.html``. The pages are opened in Debian's Chromium
from a ``file://`` URL with networking off. The page's own inline script records what the browser drew
in each figure's ``data-rendered`` (points, marks, reference lines, legend entries, axis labels);
``--dump-dom`` gives it back. A screenshot of each page must not be blank.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from loadgen.report.html import RUN_FIGURES, SWEEP_FIGURES, write_run_html
from loadgen.servers.sim.config import SimConfig, service_time_s
from tests.conftest import load_report, run_cli, write_scenario

pytestmark = pytest.mark.chromium

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CONCURRENCIES = (2, 4, 8, 16)
MAX_SEQS = (2, 8)
SIM = {"ttft_ms": 20.0, "itl_ms": 5.0}
IN_LEN, OUT_LEN = 16, 16
SLO = {"ttft_ms": 60.0, "tpot_ms": 8.0}


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
    """``loadgen sweep`` over concurrency x simulator max_seqs, 8 short points (~15 s in all)."""
    root = tmp_path_factory.mktemp("html-sweep")
    scenario = write_scenario(
        root / "s.yaml", scenario="concurrency", duration_s=0.3, num_requests=24, input_len=IN_LEN,
        output_len=OUT_LEN, sim=SIM, slo=SLO,
        # closed loops on 2 shared cores: a re-issue blip past 1 ms says nothing about the plots here
        issue_delay_limit_ms=25,
    )
    out = root / "sweep"
    res = run_cli("sweep", str(scenario), "--param", "concurrency=" + ",".join(map(str, CONCURRENCIES)),
                  "--server-arg=--max-seqs=" + ",".join(map(str, MAX_SEQS)), "--out", str(out), "--quiet",
                  timeout=240)
    assert res.code == 0, res.output
    assert (out / "sweep.html").is_file(), "loadgen sweep did not write sweep.html"
    return out


def _rendered(chromium: str, page: Path, tmp: Path) -> tuple[dict[str, dict], str]:
    """What the browser drew in each figure (its ``data-rendered``), and the rendered DOM."""
    res = _browser(chromium, tmp / "profile-dom", "--virtual-time-budget=2000", "--dump-dom", page.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert "data-measured=\"true\"" in dom, "the page's measuring script did not run"
    found = {}
    pattern = r"<figure data-plot=\"([^\"]+)\" data-points=\"(\d+)\" data-rendered=\"([^\"]+)\""
    for m in re.finditer(pattern, dom):
        found[m.group(1)] = {"declared": int(m.group(2)), **json.loads(html.unescape(m.group(3)))}
    return found, dom


def _table_rows(dom: str) -> list[list[str]]:
    """The cells' text of every body row of the page's last table (the sweep's point table)."""
    body = dom[dom.rindex("<tbody>"):dom.rindex("</tbody>")]
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, flags=re.S)]


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
        assert r["legend"], f"{name}: no legend entry was drawn"


def _assert_units(found: dict[str, dict], units: dict[str, tuple[str, str]]) -> None:
    """Each figure's drawn x and y axis labels name the unit given (a substring)."""
    for name, (xu, yu) in units.items():
        r = found[name]
        assert r["xlabel"] and xu in r["xlabel"], (name, r["xlabel"], xu)
        assert r["ylabel"] and yu in r["ylabel"], (name, r["ylabel"], yu)


def _drawn_refs(fig: dict) -> set[str]:
    return {r["label"] for r in fig["refs"] if r["drawn"]}


RUN_UNITS = {
    "ttft_cdf": ("TTFT (ms)", "(%)"), "e2e_cdf": ("(ms)", "(%)"), "itl_cdf": ("(ms)", "(%)"),
    "issue_delay_cdf": ("(ms)", "(%)"), "inflight": ("(s)", "requests"),
    "output_tokens_per_s": ("(s)", "tokens/s"), "completed_per_s": ("(s)", "requests/s"),
    "ttft_vs_time": ("(s since run start)", "TTFT (ms)"), "server_queue": ("(s)", "requests"),
    "server_kv_cache": ("(s)", "(%)"), "gpu_power": ("(s)", "(W)"),
}
SWEEP_UNITS = {
    "ttft_vs_load": ("concurrency (requests in flight)", "TTFT (ms)"),
    "tpot_vs_load": ("concurrency (requests in flight)", "TPOT (ms)"),
    "ttft_vs_throughput": ("output tokens/s", "TTFT (ms)"),
    "tpot_vs_throughput": ("output tokens/s", "TPOT (ms)"),
    "goodput_vs_load": ("concurrency (requests in flight)", "requests/s"),
    "tokens_vs_param": ("concurrency (requests in flight)", "output tokens/s"),
    "pareto": ("output tokens/s", "TTFT p99 (ms)"),
}


def test_report_html_renders_every_plot_with_data(chromium, run_dir, tmp_path):
    page = run_dir / "report.html"
    found, _ = _rendered(chromium, page, tmp_path)
    _assert_drawn(found, (*RUN_FIGURES, "server_queue", "server_kv_cache", "gpu_power"))
    _assert_units(found, RUN_UNITS)
    done = load_report(run_dir)["results"]["requests_completed"]
    assert found["ttft_vs_time"]["marks"] == done
    assert found["ttft_cdf"]["legend"] == [f"from sent (n={done:,})", f"from scheduled (n={done:,})"]
    assert "p99" in _drawn_refs(found["ttft_cdf"])
    pixels = _screenshot(chromium, page, tmp_path / "report.png", tmp_path, 4300)
    assert pixels.std() > 20, "the screenshot is blank"
    # the plot area is not all background: a good share of pixels differs from white
    assert (pixels.min(axis=2) < 200).mean() > 0.02


def _index(c: int, seqs: int) -> int:
    """The point of (concurrency, max_seqs): concurrency is the first parameter, so it varies slowest."""
    return CONCURRENCIES.index(c) * len(MAX_SEQS) + MAX_SEQS.index(seqs)


def test_sweep_html_renders_curves_frontier_and_knee(chromium, sweep_dir, tmp_path):
    """Expected from the simulator's model: a request holds one of ``max_seqs`` slots for
    S = 20 + 15 × 5 = 95 ms, so a closed loop of c users runs at min(c, m) / S req/s, and past c = m
    the extra users queue for whole service times (TTFT p99 ≥ 20 + 95 ms). The knee of each setting is
    therefore its last concurrency ≤ m: c = 2 for max_seqs 2 (point 0), c = 8 for max_seqs 8 (point
    5). max_seqs 2 saturates at 2 / S = 21 req/s; at c = 16 it is dominated (more throughput and less
    TTFT at max_seqs 8, c = 4), while the fastest point of the sweep is on the frontier."""
    s_time = service_time_s(SimConfig(**SIM), IN_LEN, OUT_LEN, 1)  # type: ignore[arg-type]
    assert s_time == pytest.approx(0.095)
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    rows = {p["index"]: p["row"] for p in sweep["points"]}
    assert [p["status"] for p in sweep["points"]] == ["done"] * 8
    # the simulator option really took effect per point
    assert rows[_index(16, 2)]["requests_per_s"] == pytest.approx(2 / s_time, rel=0.15)
    assert rows[_index(16, 8)]["requests_per_s"] == pytest.approx(8 / s_time, rel=0.15)
    assert rows[_index(16, 2)]["server_args"] == "--max-seqs 2"
    knees = {k["index"]: k["group"] for k in sweep["knees"]}
    assert knees == {_index(2, 2): {"--max-seqs": "2"}, _index(8, 8): {"--max-seqs": "8"}}, sweep["knees"]

    page = sweep_dir / "sweep.html"
    found, dom = _rendered(chromium, page, tmp_path)
    _assert_drawn(found, SWEEP_FIGURES)
    _assert_units(found, SWEEP_UNITS)
    n = len(CONCURRENCIES) * len(MAX_SEQS)
    load = found["ttft_vs_load"]
    assert load["marks"] == 2 * n  # p50 and p99 markers of every point
    assert load["lines"] == 2 * len(MAX_SEQS)  # a p50 and a p99 line per server setting
    assert {f"TTFT p99 (--max-seqs={m})" for m in MAX_SEQS} <= set(load["legend"]), load["legend"]
    # SLO lines and the two knee markers, drawn as lines inside the plot
    assert {"SLO: TTFT p99 ≤ 60 ms", "knee (--max-seqs=2)", "knee (--max-seqs=8)"} <= _drawn_refs(load)
    assert "SLO: TPOT p99 ≤ 8 ms" in _drawn_refs(found["tpot_vs_load"])
    assert {"knee (--max-seqs=2)", "knee (--max-seqs=8)"} <= _drawn_refs(found["goodput_vs_load"])
    # Pareto: every point of both settings, and one frontier across them
    pareto = found["pareto"]
    table = {int(r[0]): r for r in _table_rows(dom)}
    frontier = {i for i, r in table.items() if "frontier" in r[3]}
    assert pareto["marks"] == n + len(frontier)
    assert {f"--max-seqs={m}: every point" for m in MAX_SEQS} <= set(pareto["legend"]), pareto["legend"]
    assert any(e.startswith("frontier across settings") for e in pareto["legend"])
    assert "SLO: TTFT p99 ≤ 60 ms" in _drawn_refs(pareto)
    fastest = max(rows, key=lambda i: rows[i]["output_tokens_per_s"])
    assert fastest in frontier and _index(16, 2) not in frontier, (fastest, frontier)
    assert {i for i, r in table.items() if "knee" in r[3]} == set(knees)
    pixels = _screenshot(chromium, page, tmp_path / "sweep.png", tmp_path, 2400)
    assert pixels.std() > 20, "the screenshot is blank"

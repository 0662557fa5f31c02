"""GPU energy and failed requests in every output: report.json, summary.txt (under "Additional Stats",
MLPerf's layout kept), the console summary, report.html and the exporter's gauges.

The GPU runs go through the real runner and the real :class:`loadgen.observe.gpu.GpuSampler`, with only
NVML replaced (the fake of tests/test_telemetry.py on the real clock): two GPUs drawing a constant
200 W and 300 W whose energy counters are the exact integral, so every energy figure is known from the
run's duration and token count alone.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import loadgen.observe.gpu
from loadgen.engine.runner import run
from loadgen.records import read_records
from loadgen.report.build import render_console
from loadgen.settings import load_settings
from tests.conftest import load_report, run_cli, write_scenario
from tests.test_mlperf import parse_summary
from tests.test_telemetry import FakeNvml, RealClock

WATTS = (200.0, 300.0)


def _run_with_nvml(monkeypatch, tmp_path: Path, fake: FakeNvml, **extra) -> Path:
    monkeypatch.setattr(loadgen.observe.gpu, "PynvmlBackend", lambda: fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = tmp_path / "run"
    settings = load_settings("concurrency", {
        "concurrency": 4, "num_requests": 40, "duration_s": 1.0, "input_len": 16, "output_len": 8,
        "server_metrics_url": "none", "progress": False, "out": str(out), **extra,
    })
    run(settings)
    return out


def _lines_between(text: str, first: str, last: str) -> list[str]:
    lines = text.splitlines()
    return lines[lines.index(first) + 1: lines.index(last)]


def test_energy_in_report_summary_console_html_and_gauges(monkeypatch, tmp_path: Path) -> None:
    clock = RealClock()
    fake = FakeNvml(clock, count=2, power=lambda g, t: WATTS[g], energy=lambda g, t: WATTS[g] * t)
    prom = tmp_path / "final.prom"
    out = _run_with_nvml(monkeypatch, tmp_path, fake, metrics_textfile=str(prom))
    report = load_report(out)
    res, tel = report["results"], report["telemetry"]
    duration, tokens = res["duration_s"], res["output_tokens_total"]
    assert res["requests_failed"] == 0 and tokens == 8 * res["requests_completed"] >= 320

    # report.json: 500 W over the measured window (the sampler ran before and after it)
    assert tel["available"] is True and tel["covered_s"] == pytest.approx(duration, rel=1e-6)
    total = tel["total"]
    energy = sum(WATTS) * duration
    assert total["energy_method"] == "counter"
    assert total["energy_j"] == pytest.approx(energy, rel=1e-3)
    assert total["power_w"]["mean"] == pytest.approx(500.0, rel=1e-3)
    assert total["power_w"]["peak"] == pytest.approx(500.0)
    assert total["joules_per_output_token"] == pytest.approx(energy / tokens, rel=1e-3)
    assert total["output_tokens_per_joule"] == pytest.approx(tokens / energy, rel=1e-3)
    assert [g["power_w"]["peak"] for g in tel["gpus"]] == pytest.approx(list(WATTS))

    # summary.txt: the MLPerf layout still parses; the energy lines sit under "Additional Stats"
    text = (out / "summary.txt").read_text()
    kv = parse_summary(text)
    assert kv["Result is"] in ("VALID", "INVALID") and kv["Scenario"].startswith("Server")
    extra = _lines_between(text, "Additional Stats", "Test Parameters Used")
    assert f"GPU energy (J) : {total['energy_j']:.2f}" in extra
    assert float(kv["GPU energy (J)"]) == pytest.approx(energy, rel=1e-3)
    assert kv["GPU energy method"] == "counter"
    assert float(kv["GPU joules per output token"]) == pytest.approx(energy / tokens, rel=1e-3)
    assert float(kv["GPU output tokens per joule"]) == pytest.approx(tokens / energy, rel=1e-3)
    assert float(kv["GPU mean power (W)"]) == pytest.approx(500.0, rel=1e-3)
    assert kv["GPU peak power (W)"] == "500.00"
    assert kv["Failed requests"] == "0"
    ours = [ln for ln in extra if ln.startswith(("GPU ", "Failed requests"))]
    assert len(ours) == 7 and all(" : " in ln for ln in ours), ours
    assert extra[-2 - len(ours):-2] == ours  # one block after LoadGen's own stats, before the banner

    # the console
    console = render_console(report)
    gpu_line = next(ln for ln in console.splitlines() if ln.startswith("GPU: "))
    assert f"{total['joules_per_output_token']:,.4f} J/output token" in gpu_line
    assert f"{total['output_tokens_per_joule']:,.2f} output tokens/J" in gpu_line
    assert "power mean 500 W, peak 500 W" in gpu_line and "(counter)" in gpu_line

    # report.html
    html = (out / "report.html").read_text()
    assert f"<td class='l'>joules per output token</td><td class=''>{total['joules_per_output_token']:,.4f}" \
        in html
    assert f"<td class='l'>output tokens per joule</td><td class=''>{total['output_tokens_per_joule']:,.2f}" \
        in html
    assert "<td class='l'>peak power (W)</td><td class=''>500.0</td>" in html
    assert f"{total['energy_j']:,.1f} (counter)" in html
    assert "data-plot='gpu_power'" in html

    # the exporter's final gauges (energy there counts from the sampler's start, not the window)
    final = {(smp.name, smp.labels.get("gpu", "")): smp.value
             for fam in text_string_to_metric_families(prom.read_text()) for smp in fam.samples}
    for gpu, watts in enumerate(WATTS):
        assert final[("loadgen_gpu_power_peak_watts", str(gpu))] == pytest.approx(watts)
        assert final[("loadgen_gpu_power_mean_watts", str(gpu))] == pytest.approx(watts, rel=1e-2)
    exported_j = sum(final[("loadgen_gpu_energy_joules_total", str(g))] for g in range(2))
    assert exported_j > energy  # the sampler started before the measured window and ended after it
    assert final[("loadgen_output_tokens_per_joule", "")] == pytest.approx(tokens / exported_j)
    assert final[("loadgen_joules_per_output_token", "")] == pytest.approx(exported_j / tokens)


def test_unavailable_telemetry_says_why_everywhere(monkeypatch, tmp_path: Path) -> None:
    out = _run_with_nvml(monkeypatch, tmp_path, FakeNvml(RealClock(), count=0), num_requests=8,
                         duration_s=0.2)
    why = "no GPU visible (NVML sees none)"
    report = load_report(out)
    assert report["telemetry"] == {"available": False, "reason": why}
    kv = parse_summary((out / "summary.txt").read_text())
    assert kv["GPU telemetry"] == f"unavailable: {why}"
    assert "GPU energy (J)" not in kv
    assert f"GPU telemetry unavailable: {why}" in render_console(report).splitlines()
    assert f"GPU telemetry unavailable: {why}" in (out / "report.html").read_text()


def test_failed_requests_by_class_and_status_in_summary_and_console(tmp_path: Path) -> None:
    """One request at a time; the simulator fails every 5th with HTTP 500, every 7th with 503 and
    resets every 11th before the headers: of 34 requests, 6 + 4 + 3 fail."""
    f = write_scenario(tmp_path / "s.yaml", scenario="concurrency", concurrency=1, num_requests=34,
                       duration_s=0, input_len=8, output_len=4,
                       sim={"faults": ["http_500:every=5", "http_503:every=7",
                                       "reset_before_headers:every=11"]})
    out = tmp_path / "run"
    res = run_cli("run", str(f), "--out", str(out), "--no-gpu-telemetry", "--quiet")
    assert res.code == 0, res.output
    records = read_records(out / "requests.jsonl")
    assert len(records) == 34
    by_status = Counter(str(r.status) for r in records if r.error_class == "http_status")
    assert by_status == {"500": 6, "503": 4}
    assert Counter(r.error_class for r in records if r.error_class) == {"http_status": 10, "connect": 3}

    text = (out / "summary.txt").read_text()
    kv = parse_summary(text)
    assert kv["Result is"] == "INVALID" and kv["All requests completed"] == "NO"
    assert kv["Failed requests"] == "13"
    assert kv["Failed requests of class http_status"] == "10"
    assert kv["Failed requests of class connect"] == "3"
    assert kv["Failed requests with HTTP status 500"] == "6"
    assert kv["Failed requests with HTTP status 503"] == "4"
    extra = _lines_between(text, "Additional Stats", "Test Parameters Used")
    assert "Failed requests with HTTP status 503 : 4" in extra
    assert "GPU telemetry" not in kv  # --no-gpu-telemetry: nothing to say

    console = res.stdout.splitlines()
    assert "errors by class: connect: 3, http_status: 10" in console
    assert "errors by HTTP status: 500: 6, 503: 4" in console
    assert render_console(load_report(out)).splitlines().count("errors by HTTP status: 500: 6, 503: 4") == 1

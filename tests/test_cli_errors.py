"""Bad input through the real CLI: a clear one-paragraph message, exit code 2, no traceback."""

from __future__ import annotations

import socket
import time

import pytest

from loadgen.servers.sim import SimConfig, SimProcess
from tests.conftest import run_cli, write_scenario
from tests.recording_server import RecordingServer


def assert_clean_error(res, *needles: str) -> None:
    assert res.code == 2, res.output
    assert "Traceback" not in res.output, res.output
    for needle in needles:
        assert needle in res.stderr, res.stderr


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: server\nqps: [1, 2\nduration_s: 5\n")
    res = run_cli("run", str(bad))
    assert_clean_error(res, str(bad), "not valid YAML", "line")


def test_unknown_field_is_named_with_its_path(tmp_path):
    f = write_scenario(tmp_path / "s.yaml", scenario="server", qps=5, input_len={"kind": "fixed", "meen": 3})
    res = run_cli("run", str(f))
    assert_clean_error(res, "input_len.meen", "unknown field")


def test_mistyped_value_is_named(tmp_path):
    f = write_scenario(tmp_path / "s.yaml", scenario="server", qps="fast")
    assert_clean_error(run_cli("run", str(f)), "qps", str(f))


def test_unknown_scenario_lists_the_builtins():
    res = run_cli("run", "sever")
    assert_clean_error(res, "unknown scenario 'sever'", "server", "offline", "singlestream")


@pytest.fixture(scope="module")
def startup_s() -> float:
    """Seconds the CLI takes to start and exit (``loadgen --help``: the interpreter and the imports),
    the slower of two tries, so the 10 s bound below is checked on what loadgen itself spends."""
    times = []
    for _ in range(2):
        t = time.monotonic()
        assert run_cli("--help").code == 0
        times.append(time.monotonic() - t)
    return max(times)


# Besides the start-up, a run loads its settings and opens a session before the probe: a small, fixed
# slack, and a quarter of the start-up again for a shared machine's noise.
def _bound(startup: float, wait: float = 10.0) -> float:
    return wait + 1.25 * startup + 1.0


def test_unreachable_url_fails_fast(startup_s):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    res = run_cli("run", "server", "--url", f"http://127.0.0.1:{port}", timeout=60)
    elapsed = time.monotonic() - t
    assert_clean_error(res, f"http://127.0.0.1:{port}", "running")
    assert elapsed < _bound(startup_s, wait=0.0), (elapsed, startup_s)  # refused: no waiting at all


def test_silent_endpoint_times_out_within_ten_seconds(startup_s):
    with socket.socket() as srv:  # accepts connections, never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        t = time.monotonic()
        res = run_cli("run", "server", "--url", f"http://127.0.0.1:{port}", timeout=60)
        elapsed = time.monotonic() - t
    assert_clean_error(res, "no answer", "10 s")
    assert 10.0 <= elapsed < _bound(startup_s), (elapsed, startup_s)


@pytest.fixture(scope="module")
def keyed_sim():
    with SimProcess(SimConfig(api_key="right-key", model="served-a")) as proc:
        yield proc


def test_wrong_api_key_says_authentication_failed_and_names_the_variable(keyed_sim):
    res = run_cli("run", "server", "--url", keyed_sim.url, "--api-key-env", "MY_KEY_VAR",
                  env={"MY_KEY_VAR": "wrong-key"})
    assert_clean_error(res, "authentication failed", "MY_KEY_VAR")
    assert "wrong-key" not in res.output


@pytest.mark.parametrize("status", [401, 403])
def test_http_401_and_403_say_authentication_failed(status):
    with RecordingServer(models_status=status) as srv:
        res = run_cli("run", "server", "--url", srv.url, "--api-key-env", "MY_KEY_VAR",
                      env={"MY_KEY_VAR": "some-key-value"})
    assert_clean_error(res, "authentication failed", f"HTTP {status}", "MY_KEY_VAR")
    assert "some-key-value" not in res.output


def test_missing_api_key_variable(keyed_sim):
    res = run_cli("run", "server", "--url", keyed_sim.url, "--api-key-env", "UNSET_VAR_XYZ")
    assert_clean_error(res, "UNSET_VAR_XYZ", "not set")


def test_model_not_served_lists_the_served_ones(keyed_sim):
    res = run_cli("run", "server", "--url", keyed_sim.url, "--api-key-env", "K", "--model", "nope",
                  env={"K": "right-key"})
    assert_clean_error(res, "'nope'", "served-a")


def test_bad_option_value_is_a_usage_error():
    res = run_cli("run", "server", "--qps", "-3")
    assert_clean_error(res, "qps")


def test_report_of_missing_path():
    res = run_cli("report", "/nonexistent/run")
    assert_clean_error(res, "/nonexistent/run")

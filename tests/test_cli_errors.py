"""Bad input through the real CLI: a clear one-paragraph message, exit code 2, no traceback."""

from __future__ import annotations

import socket
import time

import pytest

from servers.sim import SimConfig, SimProcess
from tests.conftest import run_cli, write_scenario


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


def test_unreachable_url_fails_fast():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    res = run_cli("run", "server", "--url", f"http://127.0.0.1:{port}", timeout=60)
    assert_clean_error(res, f"http://127.0.0.1:{port}", "running")
    assert time.monotonic() - t < 20


def test_silent_endpoint_times_out_within_ten_seconds():
    with socket.socket() as srv:  # accepts connections, never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        t = time.monotonic()
        res = run_cli("run", "server", "--url", f"http://127.0.0.1:{port}", timeout=60)
        elapsed = time.monotonic() - t
    assert_clean_error(res, "no answer", "10 s")
    assert elapsed < 20


@pytest.fixture(scope="module")
def keyed_sim():
    with SimProcess(SimConfig(api_key="right-key", model="served-a")) as proc:
        yield proc


def test_wrong_api_key_says_authentication_failed_and_names_the_variable(keyed_sim):
    res = run_cli("run", "server", "--url", keyed_sim.url, "--api-key-env", "MY_KEY_VAR",
                  env={"MY_KEY_VAR": "wrong-key"})
    assert_clean_error(res, "authentication failed", "MY_KEY_VAR")
    assert "wrong-key" not in res.output


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

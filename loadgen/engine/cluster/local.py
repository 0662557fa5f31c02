"""Connecting to Ray: a running cluster (``--ray ADDRESS``) or a one-node Ray started for the run
(``--ray local``).

``--ray local`` runs ``ray start --head --block`` in a session of its own and stops it by that
process group at the end: started by ``ray.init()`` instead, Ray's processes would share loadgen's
process group, and a terminal's Ctrl-C (sent to the whole foreground group) would kill them mid-run
instead of draining the run. A loopback address (``local``, ``127.0.0.1:PORT``) keeps every Ray
process on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray otherwise swaps a loopback address
for the host's network address). The local head uses Ray's token authentication with a token made
for the run (``RAY_AUTH_TOKEN``, inherited by the head and so by its workers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from loadgen.errors import ConfigError

START_TIMEOUT_S = 90.0
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
#: Ray starts workers at niceness 15; a load generator's must not wait behind the rest of the node.
HEAD_ENV = {**LOOPBACK_ENV, "RAY_worker_niceness": "0"}


def need_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray, an optional extra: pip install 'loadgen[ray]' (on the driver "
                          "and on every node of the cluster)") from None
    return ray


def _loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rsplit(":", 1)[0]
    return address == "local" or host in ("127.0.0.1", "localhost") or host.startswith("127.")


@contextlib.contextmanager
def ray_cluster(address: str, log_dir: Path, say: Callable[[str], None], cpus: int | None = None
                ) -> Iterator[str]:
    """Ray connected for the block (``ray.init``), and shut down after; yields the address used."""
    if _loopback(address):  # read by Ray when it is first imported, so before that
        os.environ.update(LOOPBACK_ENV)
    if address == "local":  # Ray's token authentication, with a token of this run's own
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    ray = need_ray()
    with contextlib.ExitStack() as stack:
        if address == "local":
            address = stack.enter_context(_local_head(log_dir, cpus or len(os.sched_getaffinity(0)), say))
        elif address != "auto":
            _reachable(address)
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                     namespace="loadgen", configure_logging=False)
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError: Ray's own words
            raise ConfigError(f"--ray {address}: could not connect ({type(exc).__name__}: {exc}); give "
                              "a running cluster's address (ray://HEAD:10001, HEAD:6379 or auto) or "
                              "--ray local") from None
        stack.callback(ray.shutdown)
        yield address


def _reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing listens there (Ray itself retries for a minute)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address}: give HOST:PORT (the head's GCS port, 6379 by default), "
                          "ray://HOST:10001 (Ray Client), auto or local")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"--ray {address}: nothing answers there ({exc.strerror or exc}); start the "
                          "cluster (ray start --head) or use --ray local") from None


def free_cpus() -> int:
    ray = need_ray()
    return int(ray.available_resources().get("CPU", 0))


@contextlib.contextmanager
def _local_head(log_dir: Path, cpus: int, say: Callable[[str], None]) -> Iterator[str]:
    exe = Path(sys.executable).with_name("ray")
    ray_cli = str(exe) if exe.exists() else shutil.which("ray")
    if ray_cli is None:
        raise ConfigError("--ray local: the `ray` command was not found beside this Python; "
                          "pip install 'loadgen[ray]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = (log_dir / "ray.log").open("ab")
    cmd = [ray_cli, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", str(cpus), "--include-dashboard", "false", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **HEAD_ENV})
    address = f"127.0.0.1:{port}"
    try:
        say(f"ray: starting a local head at {address} ({cpus} CPUs; log {log_dir / 'ray.log'})")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(port):
            if proc.poll() is not None:
                raise ConfigError(f"--ray local: `ray start` exited with {proc.returncode}; see "
                                  f"{log_dir / 'ray.log'}")
            if time.monotonic() > deadline:
                raise ConfigError(f"--ray local: Ray did not start in {START_TIMEOUT_S:.0f} s; see "
                                  f"{log_dir / 'ray.log'}")
            time.sleep(0.2)
        yield address
    finally:
        _stop_group(proc)
        log.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group this module created (``ray start`` and what it started), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)

"""Start a real vLLM OpenAI-compatible server, wait until it is healthy, and tear it down completely.

Public API::

    spec = VllmLaunchSpec(model, args=(...), command=("vllm", "serve"), env={...}, port=None, ...)
    spec.with_args("--enforce-eager")            a new spec with extra flags appended
    spec.with_flag("--max-num-seqs", 64)         a new spec with that flag set (earlier values removed)
    with VllmLauncher(spec, log_path=OUT / "server.log", progress=print) as vllm:
        vllm.base_url, vllm.pid, vllm.pgid, vllm.command_line, vllm.startup_s, vllm.identity()
    async with VllmLauncher(spec) as vllm: ...   the same, the blocking parts run in a worker thread

A launcher can be entered again after it exited (a sweep relaunches with other flags by building a new
spec, or reuses one launcher for the same spec); each entry starts a fresh process on a fresh port when
``port`` is None.

A container prefix (``docker run --rm --network host IMAGE``) gets the ``--model`` form unless it ends
with ``serve``. The launcher signals the *local* process group it started: with docker that is the
docker client, which forwards SIGTERM to the container (``--sig-proxy`` is on by default for attached
runs); add ``--init --rm`` so the container does not outlive it.

Modules: :mod:`~loadgen.servers.vllm.spec` (what to start, the command line),
:mod:`~loadgen.servers.vllm.launcher` (start, wait for health, stop; lifecycle and zombies),
:mod:`~loadgen.servers.vllm.probe` (health, identity, local GPUs); the process-group teardown is
:mod:`loadgen.servers.proc`.
"""

from loadgen.servers.vllm.launcher import LOG_TAIL_LINES, VllmLauncher
from loadgen.servers.vllm.probe import local_gpu_names
from loadgen.servers.vllm.spec import VllmLaunchSpec

__all__ = ["LOG_TAIL_LINES", "VllmLaunchSpec", "VllmLauncher", "local_gpu_names"]

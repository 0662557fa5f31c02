"""Process limits a large run needs: open file descriptors (``RLIMIT_NOFILE``).

Every request in flight holds a socket, and many distributions start processes with a soft limit of
1,024 descriptors, so a 2,000-stream run would fail with EMFILE ("Too many open files") — which would
then show up as ``connect`` errors, i.e. as a server problem. :func:`ensure_descriptors` raises the soft
limit up to the hard limit (an unprivileged process may) before the run, and refuses the run with a
clear message when even the hard limit is too low. The runner raises it before it starts the target,
so worker processes and a server loadgen launches (the simulator, vLLM) inherit the raised limit; the
simulator's process raises its own as well (it may be started on its own).
"""

from __future__ import annotations

import resource

from loadgen.errors import ConfigError

#: Descriptors a run uses besides its connections: the event loop, files, pipes, the exporter, imports.
BASE_DESCRIPTORS = 64
#: The soft limit is raised at most to this (an unlimited hard limit must not mean a huge fd table).
CEILING = 1 << 20


def nofile() -> tuple[int, int]:
    """The (soft, hard) ``RLIMIT_NOFILE``; ``RLIM_INFINITY`` as :data:`CEILING`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    return (CEILING if soft == inf else soft), (CEILING if hard == inf else hard)


def ensure_descriptors(connections: int | None) -> int:
    """Raise the soft descriptor limit as far as allowed; returns the new soft limit.

    ``connections`` is the most sockets the run can hold open at once (None when unbounded: an open
    loop's in-flight count depends on the server). Raises :class:`ConfigError` when the hard limit
    cannot hold ``connections`` plus :data:`BASE_DESCRIPTORS`.
    """
    soft, hard = nofile()
    target = min(hard, CEILING)
    if soft < target:
        try:
            raw_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, raw_hard))
            soft = target
        except (ValueError, OSError):  # e.g. a sandbox that forbids it: keep what we have
            pass
    if connections is not None and connections + BASE_DESCRIPTORS > soft:
        raise ConfigError(
            f"this run can hold {connections} connections open at once and needs about "
            f"{connections + BASE_DESCRIPTORS} file descriptors, but only {soft} are available (soft "
            f"limit; hard limit {hard}). Raise the limit (`ulimit -n {connections + BASE_DESCRIPTORS}`, "
            "or LimitNOFILE= for a systemd service, or --ulimit nofile=... for a container), or lower "
            "the concurrency."
        )
    return soft

"""The built-in simulated LLM server (``python -m loadgen.servers.sim``).

Modules: ``config`` (settings, faults, the analytical timing model), ``engine`` (continuous batching and
the on-time token scheduler), ``http`` (a small HTTP/1.1 server), ``openai`` (routes and response shapes),
``sinks`` (SSE or JSON bodies), ``metrics`` (``/metrics`` and ``/sim/stats``), ``server`` (SimServer,
serve, SimProcess and the command line). The public names are re-exported here.
"""

from loadgen.servers.sim.config import (
           FAULT_KINDS,
           FaultSpec,
           SimConfig,
           capacity_rps,
           parse_fault,
           service_time_s,
)
from loadgen.servers.sim.server import SimLaunchError, SimProcess, SimServer, main, serve

__all__ = ["FAULT_KINDS", "FaultSpec", "SimConfig", "SimLaunchError", "SimProcess", "SimServer",
           "capacity_rps", "main", "parse_fault", "serve", "service_time_s"]

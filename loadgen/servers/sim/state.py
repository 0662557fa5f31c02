"""The simulated server's state: its engine, fault picker, ids, reply words and outcome counters.

The sinks (:mod:`loadgen.servers.sim.sinks`) and ``/metrics`` (:mod:`loadgen.servers.sim.metrics`) read and
count through this object; :class:`loadgen.servers.sim.openai.SimApp` extends it with the routes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import Any

import orjson

from loadgen.servers.sim.config import FaultSpec, SimConfig
from loadgen.servers.sim.engine import Engine
from loadgen.servers.sim.prefix import PrefixCache

WORDS = 4096


class FaultPicker:
    """Chooses at most one fault per generation request, deterministically from the seed and the
    request's arrival index. Every rate-based spec draws for every request, so the choices of one spec
    do not depend on whether an earlier one fired."""

    def __init__(self, faults: tuple[FaultSpec, ...], seed: int) -> None:
        self.faults = faults
        self.rng = random.Random(seed ^ 0x5EED_FA17)
        self.n = 0

    def pick(self) -> FaultSpec | None:
        self.n += 1
        chosen = None
        for spec in self.faults:
            draw = self.rng.random() if spec.rate > 0 else 1.0
            fires = (spec.every > 0 and self.n % spec.every == 0) or draw < spec.rate
            if fires and chosen is None:
                chosen = spec
        return chosen



class SimState:
    """What every request of one simulated server shares."""

    def __init__(self, cfg: SimConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.engine = Engine(cfg, loop)
        self.prefix = (PrefixCache(cfg.prefix_cache_blocks, cfg.prefix_block_tokens)
                       if cfg.prefix_cache_blocks else None)
        self.faults = FaultPicker(cfg.faults, cfg.seed)
        rng = random.Random(cfg.seed)
        self.words = [f" w{rng.randrange(10000):04d}" for _ in range(WORDS)]
        self._ids = random.Random(cfg.seed ^ 0x1D5)
        self.model_json = orjson.dumps(cfg.model)
        self.created = int(time.time())
        self.started_ns = time.perf_counter_ns()
        self.outcomes: dict[str, int] = {}
        self.fault_counts: dict[str, int] = {}
        self.requests = 0
        self.bodies: deque[dict[str, Any]] = deque(maxlen=cfg.keep_bodies)  # GET /sim/bodies
        self.headers: deque[dict[str, str]] = deque(maxlen=cfg.keep_bodies)  # and their headers

    def close(self) -> None:
        self.engine.close()

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def count_fault(self, kind: str, terminal: bool = True) -> None:
        """Count an injected fault; ``terminal`` ones also end the request (outcome ``fault``)."""
        self.fault_counts[kind] = self.fault_counts.get(kind, 0) + 1
        if terminal:
            self.count("fault")

    def text(self, base: int, lo: int, hi: int) -> str:
        w = self.words
        if lo == hi:
            return w[(base + lo) % WORDS]
        return "".join(w[(base + j) % WORDS] for j in range(lo, hi + 1))

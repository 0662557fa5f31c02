"""A serving model: the continuous-batching timing of one deployment in five numbers, and its replay in
virtual time.

The model is the built-in simulator's (``loadgen.servers.sim.config``)::

    first token  = admission + ttft_ms + prefill_ms_per_token · input_tokens
    token k + 1  = token k + step(b),   step(b) = itl_ms · (1 + itl_slope · (b − 1))
    b            = sequences holding a slot (at most max_seqs; the rest wait FIFO for one)

:func:`replay` runs it as a discrete-event simulation, in virtual time, of exactly the engine the
simulator runs in real time (``loadgen.servers.sim.engine``): a heap of token due times, a FIFO queue,
slots handed over at the due time of the last token. A ten-minute scenario replays in seconds, and the
same model can serve real HTTP (``loadgen sim --model model.json``) to confirm a prediction end to end.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from loadgen.errors import ConfigError

#: The model's parameters, in the order model.json lists them.
PARAMS = ("ttft_ms", "prefill_ms_per_token", "itl_ms", "itl_slope", "max_seqs")


@dataclass(frozen=True)
class ServingModel:
    ttft_ms: float
    prefill_ms_per_token: float
    itl_ms: float
    itl_slope: float
    max_seqs: int | None  # None: never saturated in the points fitted (unbounded in replay)
    sigma: dict[str, float] = field(default_factory=dict)  # one standard error per parameter

    def step_ms(self, batch: int) -> float:
        return self.itl_ms * (1.0 + self.itl_slope * (max(batch, 1) - 1))

    def service_s(self, input_tokens: float, output_tokens: float, batch: int) -> float:
        """Seconds a request holds its slot when ``batch`` sequences run."""
        return (self.ttft_ms + self.prefill_ms_per_token * input_tokens
                + max(output_tokens - 1, 0) * self.step_ms(batch)) / 1000.0

    def capacity_rps(self, input_tokens: float, output_tokens: float) -> float | None:
        """The saturated completion rate: every slot busy for one full-batch service time."""
        if self.max_seqs is None:
            return None
        return self.max_seqs / self.service_s(input_tokens, output_tokens, self.max_seqs)

    def shifted(self, k: float) -> ServingModel:
        """Every timing parameter moved by ``k`` standard errors (k > 0: slower), at least 0."""
        moved = {p: max(0.0, getattr(self, p) + k * self.sigma.get(p, 0.0)) for p in PARAMS[:4]}
        return replace(self, **moved)

    def sim_options(self) -> dict[str, Any]:
        """The built-in simulator's options for this model (``sim:`` block, SimConfig fields)."""
        out: dict[str, Any] = {p: getattr(self, p) for p in PARAMS[:4]}
        out["max_seqs"] = self.max_seqs or 4096
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "model.json") -> ServingModel:
        params = data.get("parameters", data) if isinstance(data, dict) else None
        if not isinstance(params, dict):
            raise ConfigError(f"{where}: not a serving model (no `parameters`); write one with "
                              "loadgen calibrate")
        try:
            seqs = params["max_seqs"]
            model = cls(float(params["ttft_ms"]), float(params["prefill_ms_per_token"]),
                        float(params["itl_ms"]), float(params["itl_slope"]),
                        None if seqs is None else int(seqs),
                        {k: float(v) for k, v in (params.get("sigma") or {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: parameter {exc} missing or not a number; write the file with "
                              "loadgen calibrate") from None
        if min(model.ttft_ms, model.prefill_ms_per_token, model.itl_ms, model.itl_slope) < 0:
            raise ConfigError(f"{where}: parameters must be >= 0")
        return model


@dataclass
class Replayed:
    """Per-request times of a replay, ns from its start (first token, end) and the lengths."""

    arrival: np.ndarray
    first: np.ndarray
    end: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray

    def ttft_ms(self) -> np.ndarray:
        return (self.first - self.arrival) / 1e6

    def e2e_ms(self) -> np.ndarray:
        return (self.end - self.arrival) / 1e6

    def tpot_ms(self) -> np.ndarray:
        n = self.output_tokens
        keep = n >= 2
        return (self.end[keep] - self.first[keep]) / (n[keep] - 1) / 1e6

    def throughput_rps(self) -> float:
        span = float(self.end.max() - self.arrival.min()) if len(self.end) else 0.0
        return len(self.end) / (span / 1e9) if span > 0 else 0.0


Lengths = Sequence[int] | np.ndarray


def replay(model: ServingModel, input_tokens: Lengths, output_tokens: Lengths, *,
           arrivals_s: Sequence[float] | np.ndarray | None = None, concurrency: int | None = None
           ) -> Replayed:
    """Replay requests through the model in virtual time: open loop at ``arrivals_s`` (seconds from
    the start, one per request), or a closed loop of ``concurrency`` users issuing the requests in
    order, each the instant its previous one ended."""
    n = len(input_tokens)
    if (arrivals_s is None) == (concurrency is None):
        raise ValueError("give arrivals_s (open loop) or concurrency (closed loop)")
    ins = np.asarray(input_tokens, dtype=np.int64)
    outs = np.maximum(np.asarray(output_tokens, dtype=np.int64), 1)
    arrival = np.zeros(n, dtype=np.int64)
    first = np.zeros(n, dtype=np.int64)
    end = np.zeros(n, dtype=np.int64)
    slots = model.max_seqs or (1 << 30)
    ttft_ns = model.ttft_ms * 1e6
    prefill_ns = model.prefill_ms_per_token * 1e6
    cap = min(slots, n + 1)
    step = [round(model.step_ms(b) * 1e6) for b in range(cap + 1)]
    pending, nxt = _first_arrivals(n, arrivals_s, concurrency)
    tokens = np.zeros(n, dtype=np.int64)
    heap: list[tuple[int, int]] = []  # (due ns, request)
    waiting: deque[int] = deque()
    running = 0

    def admit(i: int, at: int) -> None:
        nonlocal running
        running += 1
        heapq.heappush(heap, (at + round(ttft_ns + prefill_ns * int(ins[i])), i))

    while pending or heap:
        if pending and (not heap or pending[0][0] <= heap[0][0]):
            t, i = heapq.heappop(pending)
            arrival[i] = t
            if running < slots:
                admit(i, t)
            else:
                waiting.append(i)
            continue
        due, i = heapq.heappop(heap)
        tokens[i] += 1
        if tokens[i] == 1:
            first[i] = due
        if tokens[i] < outs[i]:
            heapq.heappush(heap, (due + step[min(running, cap)], i))
            continue
        end[i] = due
        running -= 1
        while waiting and running < slots:
            j = waiting.popleft()
            admit(j, max(due, int(arrival[j])))
        if concurrency is not None and nxt < n:
            heapq.heappush(pending, (due, nxt))
            nxt += 1
    return Replayed(arrival, first, end, ins, outs)


def _first_arrivals(n: int, arrivals_s: Sequence[float] | np.ndarray | None, concurrency: int | None
                    ) -> tuple[list[tuple[int, int]], int]:
    """The arrival heap to start from, (ns, request), and the next request a closed loop issues."""
    if arrivals_s is not None:
        return sorted((round(t * 1e9), i) for i, t in enumerate(arrivals_s)), n
    assert concurrency is not None
    return [(0, i) for i in range(min(concurrency, n))], min(concurrency, n)


def percentile(values: np.ndarray, p: float) -> float | None:
    return float(np.percentile(values, p)) if len(values) else None


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None

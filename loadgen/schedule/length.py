"""How long a run will take, said before it starts: the expected length, the bound that sets it, and how
to change it.

``--duration`` and ``--num-requests`` are both *minimums* (MLPerf's ``min_duration`` and
``min_query_count``): a run lasts until both are met, so the larger one decides, and a user who lowered
only the smaller one is surprised by a long run (``server --qps 4 --duration 8`` with the built-in
scenario's 600 queries runs 150 s). :func:`expected_length` works it out from the settings alone:

* Open loops at a rate (Server, constant): the schedule ends at the first query that meets both, so
  its length is ``max(num_requests / qps, duration_s)`` (the inverse of the cumulative rate on a
  ramp), and the run ends when the last response does. Constant rate is exact; for Poisson arrivals it
  is the expectation (the seed fixes the real schedule; its spread is ``√n / qps``).
* Offline: every sample at once; the run lasts as long as the server takes to finish them.
* Closed loops (SingleStream, MultiStream, concurrency): until both minimums are met, so how long
  ``num_requests`` queries take depends on the server's latency; the hard stop ``--max-duration``
  bounds it.
* Trace replay: the trace window decides; the minimums do not apply.

When loadgen starts the built-in simulator itself, its latency is known from its settings
(:func:`loadgen.servers.sim.config.service_time_s`), so the figure includes the responses for every scenario.
Nothing here draws random numbers or touches the network.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from loadgen.errors import ConfigError
from loadgen.schedule.arrivals import RateProfile
from loadgen.settings import Scenario, Settings


@dataclass(frozen=True)
class Expectation:
    """``seconds``: expected wall time from the start to the last response, None when it depends on a
    server loadgen knows nothing about; ``issue_s``: when the last query is due (open loops at a rate);
    ``bound``: the setting that decides (``num_requests``, ``duration_s``, ``server``, ``replay``);
    ``line``: the sentence printed before the run."""

    seconds: float | None
    issue_s: float | None
    bound: str
    line: str


def _secs(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.1f} s" if s < 10 else f"{s:,.0f} s"


def _sim_latency_s(settings: Settings, batch: int) -> tuple[float, int] | None:
    """(seconds one request takes, sequences served at once) on the built-in simulator loadgen starts;
    None for any other server (or a sim: block it cannot read, which the run itself reports)."""
    if settings.url is not None or settings.server is not None:
        return None
    from loadgen.servers.sim.config import SimConfig, service_time_s

    try:
        cfg = SimConfig.from_dict(settings.sim)
    except (TypeError, ValueError):
        return None
    slots = min(batch, cfg.max_seqs)
    out = 1 if settings.pools else settings.output_len.mean  # pooling: prefill only
    return service_time_s(cfg, _input_tokens(settings), out, slots), cfg.max_seqs


def _input_tokens(settings: Settings) -> int:
    """Mean input tokens of one request: the prompt, or a pooling request's texts (workload.pooling)."""
    n, spec = settings.input_len.mean, settings.pooling
    per = spec.inputs if spec is not None else 1
    if settings.endpoint == "embeddings":
        return n * per
    if settings.endpoint in ("rerank", "score"):
        doc = spec.document_len.mean if spec is not None and spec.document_len is not None else n
        return per * (n + doc)
    return n


def _origin(field: str, given: Collection[str], *, paren: bool = True) -> str:
    if field in given:
        return ""
    return " (the scenario's minimum)" if paren else ", the scenario's minimum"


def _sessions(settings: Settings) -> Expectation:
    ss = settings.sessions
    assert ss is not None
    if ss.path is not None:
        return Expectation(None, None, "server", (
            f"expect: the agent sessions of {ss.path}, {ss.users} at once, each turn after its "
            "recorded wait; the length depends on the server's latency"))
    if ss.agentic:
        return Expectation(None, None, "server", (
            f"expect: {ss.count or ss.users} agent sessions ({ss.users} at once) x {ss.turns} turns, "
            f"a tool result between turns after {ss.think_time_s:g} s on average; the length depends "
            "on the server's latency"))
    return Expectation(None, None, "server", (
        f"expect: {ss.users} users x {ss.turns} turns of multi-turn chat, {ss.think_time_s:g} s think "
        "time between a reply and the next turn; the length depends on the server's latency"))


def expected_length(settings: Settings, given: Collection[str] = ()) -> Expectation:
    """The run's expected length and the sentence saying so. ``given``: the settings fields set on
    the command line (the others came from the scenario), to say where a bound came from."""
    sc = settings.scenario
    if settings.sessions is not None:
        return _sessions(settings)
    if sc == Scenario.REPLAY:
        return _replay(settings)
    if sc == Scenario.OFFLINE:
        return _offline(settings, given)
    if sc.open_loop:
        return _rate(settings, given)
    return _closed(settings, given)


def _rate(settings: Settings, given: Collection[str]) -> Expectation:
    qps, d, n = settings.qps or 0.0, settings.duration_s, settings.num_requests
    ramp = settings.arrival.ramp if settings.arrival is not None else None
    if ramp is None:
        profile = RateProfile(qps)
        rate = f"{qps:g} qps"
    else:
        profile = RateProfile(qps, start_qps=ramp.start_qps, ramp_s=ramp.duration_s, steps=ramp.steps)
        rate = f"a rate rising from {ramp.start_qps:g} to {qps:g} qps over {ramp.duration_s:g} s"
    by_count = float(profile.inverse(np.array(float(n))))
    at_duration = float(profile.cumulative(np.array(d)))
    if settings.scenario == Scenario.CONSTANT:  # exact: query i is due at i/qps
        by_count = n / qps
        issue = max(n, math.ceil(d * qps - 1e-9)) / qps
    else:
        issue = max(by_count, d)
    cap = settings.max_concurrency
    sim = _sim_latency_s(settings, 1)
    if sim is not None:  # Little's law: about qps x latency requests run together
        batch = max(1, math.ceil(qps * sim[0]))
        sim = _sim_latency_s(settings, min(batch, cap) if cap is not None else batch)
    tail = sim[0] if sim is not None else None
    total = issue + tail if tail is not None else None
    capped = ""
    if cap is not None and tail is not None and qps * tail > cap:
        # the cap lets through cap / latency queries a second: the queries wait and the run stretches
        queries = max(n, math.ceil(at_duration))
        total = max(total or 0.0, queries * tail / cap + tail)
        capped = (f" --max-concurrency {cap} lets through only ~{cap / tail:.3g} queries/s here (at "
                  f"~{_secs(tail)} each on the built-in simulator), so queries wait for a slot and the "
                  "run stretches.")
    elif cap is not None:
        capped = (f" With --max-concurrency {cap}, queries due while {cap} are in flight wait for a "
                  "slot, which can stretch the run.")
    head = f"expect ~{_secs(total)}" if total is not None else f"expect ~{_secs(issue)} + the last responses"
    if by_count > d:
        line = (f"{head}: {n:,} queries at {rate}, set by --num-requests {n:,}"
                f"{_origin('num_requests', given)}; --duration {d:g} is the smaller bound. Lower "
                "--num-requests to shorten.")
        bound = "num_requests"
    else:
        line = (f"{head}: --duration {d:g} at {rate} (~{at_duration:,.0f} queries; --num-requests {n:,} is "
                "the smaller bound). Lower --duration to shorten.")
        bound = "duration_s"
    if sim is not None:
        from loadgen.servers.sim.config import SimConfig, capacity_rps

        lens = settings.input_len.mean, settings.output_len.mean
        most = capacity_rps(SimConfig.from_dict(settings.sim), *lens)
        if qps > most and not capped:
            line += (f" The built-in simulator serves at most ~{most:.3g} req/s, below {qps:g}: its queue "
                     "will grow and the run end later than this.")
    return Expectation(total, issue, bound, line + capped)


def _offline(settings: Settings, given: Collection[str]) -> Expectation:
    n, d, cap = settings.num_requests, settings.duration_s, settings.max_concurrency
    sim = _sim_latency_s(settings, min(n, cap or n))
    checked = (f" --duration {d:g} is checked, not waited for: a run that ends sooner is INVALID (raise "
               "--num-requests)." if d > 0 else "")
    sent = f"{n:,} samples sent at once (--num-requests {n:,}{_origin('num_requests', given, paren=False)})"
    if sim is None:
        return Expectation(None, 0.0, "server", (
            f"expect: {sent}{f', at most {cap} in flight (--max-concurrency)' if cap else ''}; the run "
            f"lasts as long as the server takes to finish them ({n:,} / its throughput). Lower "
            f"--num-requests to shorten.{checked}"))
    latency, slots = sim
    slots = min(slots, cap or slots)
    waves = math.ceil(n / slots)
    total = waves * latency
    return Expectation(total, 0.0, "num_requests", (
        f"expect ~{_secs(total)}: {sent}, {waves:,} wave(s) of {min(n, slots)}"
        f"{f' (--max-concurrency {cap})' if cap else ''} on the built-in simulator "
        f"at ~{_secs(latency)} each. Lower "
        f"--num-requests to shorten.{checked}"))


def _closed(settings: Settings, given: Collection[str]) -> Expectation:
    sc, n, d = settings.scenario, settings.num_requests, settings.duration_s
    streams = settings.concurrency if sc == Scenario.CONCURRENCY else 1
    per_stream = math.ceil(n / streams)
    in_row = (f"{per_stream:,} queries in a row per user" if sc == Scenario.CONCURRENCY
              else f"{n:,} queries in a row" + (f" of {settings.samples_per_query} samples each"
                                                 if sc == Scenario.MULTISTREAM else ""))
    hard = settings.hard_stop_s
    stop = f"hard stop at --max-duration {hard:g} s" + ("" if "max_duration_s" in given else " (the default)")
    rule = (f"a closed loop runs until both --num-requests {n:,}{_origin('num_requests', given)} and "
            f"--duration {d:g} are met")
    batch = streams * (settings.samples_per_query if sc == Scenario.MULTISTREAM else 1)
    sim = _sim_latency_s(settings, batch)
    if sim is None:
        return Expectation(None, None, "server", (
            f"expect at least {_secs(d)}: {rule}; how long {in_row} take depends on the server's latency; "
            f"{stop}."))
    latency, slots = sim
    latency *= math.ceil(batch / slots)  # more requests than the simulator's slots: they queue
    by_count = per_stream * latency
    # a stream stops issuing once both minimums are met; its last query then still has to finish
    total = max(by_count, math.ceil(d / latency) * latency if latency > 0 else d)
    bound = "num_requests" if by_count >= d else "duration_s"
    flag = "--num-requests" if by_count >= d else "--duration"
    known = (f"{rule}; on the built-in simulator a query takes ~{_secs(latency)}, so {in_row} take "
             f"~{_secs(by_count)}")
    if total > hard:
        return Expectation(hard + latency, None, "max_duration_s", (
            f"expect ~{_secs(hard + latency)}: {known}, but the {stop} comes first: the run will stop early "
            "and be INVALID. Raise --max-duration or lower --num-requests."))
    return Expectation(total, None, bound, (
        f"expect ~{_secs(total)}: {known} and {flag} decides. To shorten, lower {flag}; {stop}."))


def _replay(settings: Settings) -> Expectation:
    rp = settings.replay
    if rp is not None and rp.duration_s is not None and rp.target_qps is None:
        span = rp.duration_s / rp.speedup
        return Expectation(None, span, "replay", (
            f"expect ~{_secs(span)} + the last responses: the trace window replay.duration_s "
            f"{rp.duration_s:g} s at speedup {rp.speedup:g} (--duration and --num-requests do not apply to a "
            "replay). Narrow the "
            "window or raise replay.speedup to shorten."))
    return Expectation(None, None, "replay", (
        "expect: as long as the trace's window (its last arrival, after replay.speedup or target_qps), plus "
        "the last responses; --duration and --num-requests do not apply to a replay. Set replay.duration_s "
        "to shorten."))


def check_max_duration(settings: Settings, issue_s: float | None, *, exact: bool = False) -> None:
    """Open loops: a schedule due past ``--max-duration`` is refused (ConfigError) instead of cut short.

    A closed loop stops at its hard stop; an open loop's schedule is fixed before the clock starts, so
    a schedule that runs past ``max_duration_s`` would only ever be a run stopped early. ``issue_s``:
    when its last query is due (the expectation up front, the real schedule when ``exact``)."""
    limit = settings.max_duration_s
    rated = settings.scenario in (Scenario.SERVER, Scenario.CONSTANT)
    if limit is None or issue_s is None or not rated or issue_s <= limit:
        return
    what = "is due at" if exact else "is expected at"
    raise ConfigError(
        f"the schedule's last query {what} {issue_s:,.1f} s, past max_duration_s (--max-duration) "
        f"{limit:g} s: an open loop's schedule is fixed before the start, so lower --num-requests or "
        "--duration (whichever is the larger bound) or raise --max-duration"
    )

"""THE verdict of a run: LoadGen's checks (:mod:`loadgen.metrics.mlperf`), loadgen's own
(:mod:`loadgen.metrics.beyond`: failed or token-less requests, retries, a run that was interrupted or
stopped early, a client that was the bottleneck, an open-loop server that did not keep up), decided in
one place (:func:`_verdict`).

VALID exactly when every check passed and no reason was given; a failed check always carries its
reason. ``report.json``'s ``validity``, ``summary.txt``, the console and the HTML all show this one.
"""

from __future__ import annotations

from collections.abc import Iterable

from loadgen.metrics.beyond import beyond_loadgen, sustained
from loadgen.metrics.mlperf import loadgen_checks, measure, token_mode
from loadgen.metrics.mlperf_result import MlperfParams, MlperfResult
from loadgen.records import RequestRecord

__all__ = ["evaluate"]


def evaluate(
    records: Iterable[RequestRecord],
    params: MlperfParams,
    *,
    client_limited: str | None = None,
    stopped_early: str | None = None,
    interrupted: bool = False,
) -> MlperfResult:
    """Judge a run the way LoadGen would, plus loadgen's own checks (see the module docstring).

    Warm-up records are ignored. Latency statistics cover completed samples; any failed sample makes
    the result INVALID. ``client_limited`` is the runner's reason the client was the bottleneck, or
    None; ``stopped_early`` why issuing ended before the trace did (a hard stop, ``--max-error-rate``,
    a signal) and ``interrupted`` whether a signal did it: either makes the result INVALID.

    The verdict and its reasons never disagree: ``valid`` is True exactly when ``reasons`` is empty
    (see :func:`_verdict`).
    """
    measured = [r for r in records if not r.warmup]
    done = [r for r in measured if r.ok]
    result = MlperfResult(params=params, valid=False, reasons=[], checks={},
                          token_latencies=token_mode(params, done),
                          stopped_early=stopped_early, interrupted=interrupted)
    s, query_lat = measure(result, measured, done)
    loadgen_checks(result, measured, s, query_lat)
    if measured and params.scenario == "Server" and params.check_sustained:
        sustained(result, measured)
    beyond_loadgen(result, measured, s, client_limited)
    _verdict(result)
    return result



def _verdict(result: MlperfResult) -> None:
    """The one place the verdict is decided: VALID exactly when every check passed and no reason was
    given. A failed check always comes with its own reason; should one ever come without (a bug), a
    reason naming the check is added, so that ``valid == (not reasons)`` holds whatever happens."""
    failed = [name for name, ok in result.checks.items() if not ok]
    if failed and not result.reasons:
        result.reasons.append(f"Check(s) failed: {', '.join(failed)} (loadgen gave no reason: a bug).")
    result.valid = not failed and not result.reasons

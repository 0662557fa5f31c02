"""The figures of ``report.html`` drawn from request records: one function per figure.

Each takes the :class:`RunData` of the measured records and returns the figure's HTML; the order in
which :func:`run_figures` places them (and their names, in :data:`RUN_FIGURES`) is the page's.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loadgen.metrics import latency as metrics
from loadgen.records import RequestRecord
from loadgen.report.html.page import figure_html, log_if_wide
from loadgen.report.html.svgplot import PALETTE, Axis, Chart, RefLine, Series, Style, cdf

__all__ = ["RUN_FIGURES", "RunData", "run_figures"]

#: Figures of ``report.html`` always drawn when the run has records.
RUN_FIGURES = (
    "ttft_cdf", "e2e_cdf", "itl_cdf", "issue_delay_cdf",
    "inflight", "output_tokens_per_s", "completed_per_s", "ttft_vs_time",
)

_NS_PER_S = 1e9
_NS_PER_MS = 1e6
_MAX_SCATTER = 5000


@dataclass
class RunData:
    """What the figures draw: the measured records, their arrays, and the SLO reference lines.

    ``weight``: how many requests each record stands for (a sampled long run) in the rate plots;
    ``mean_tps``: the run's mean output tokens/s (a reference line), if known."""

    measured: list[RequestRecord]
    arrays: metrics.RequestArrays
    ttft_ref: list[RefLine]
    tpot_ref: list[RefLine]
    weight: float
    mean_tps: float | None

    @classmethod
    def of(cls, records: list[RequestRecord], slo: dict[str, float], weight: float,
           mean_tps: float | None) -> RunData:
        measured = [r for r in records if not r.warmup]
        return cls(
            measured, metrics.RequestArrays.from_records(measured),
            [RefLine(slo["ttft_ms"], f"SLO {slo['ttft_ms']:g} ms")] if "ttft_ms" in slo else [],
            [RefLine(slo["tpot_ms"], f"TPOT SLO {slo['tpot_ms']:g} ms")] if "tpot_ms" in slo else [],
            weight, mean_tps,
        )

    @property
    def end_s(self) -> float:
        return float(self.arrays.end.max()) / _NS_PER_S if len(self.arrays) else 1.0


def _cdf_chart(title: str, xlabel: str, data: Sequence[tuple[str, np.ndarray]],
               refs: Sequence[RefLine] = (), ylabel: str = "requests at or below (%)") -> Chart:
    chart = Chart(title, Axis(xlabel, log=True), Axis(ylabel, lo=0, hi=100))
    for k, (name, values) in enumerate(data):
        x, y = cdf(values)
        chart.add(Series(f"{name} (n={np.asarray(values).size:,})", x, y, dashed=k % 2 == 1))
    chart.vlines.extend(refs)
    chart.hlines.append(RefLine(99.0, "p99", color="#666666"))
    return chart


def _bins(times_s: np.ndarray, weights: np.ndarray | None, end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-second rates in 1 s bins from 0 to ``end_s``; the last, partial bin is divided by its width."""
    nbins = max(1, math.ceil(end_s))
    edges = np.arange(nbins + 1, dtype=np.float64)
    counts, _ = np.histogram(np.clip(times_s, 0, nbins - 1e-9), bins=edges, weights=weights)
    widths = np.ones(nbins)
    widths[-1] = max(end_s - (nbins - 1), 1e-3)
    return edges[:-1] + widths / 2, counts / widths


# ---- latency distributions ---------------------------------------------------------------------------


def ttft_cdf(d: RunData) -> str:
    a = d.arrays
    return figure_html("ttft_cdf", _cdf_chart(
        "Time to first token, CDF", "TTFT (ms)",
        [("from sent", metrics.ttft_ns(a, "sent") / _NS_PER_MS),
         ("from scheduled", metrics.ttft_ns(a, "scheduled") / _NS_PER_MS)], d.ttft_ref),
        "Completed requests. 'From scheduled' includes the client's own lateness (coordinated omission).")


def e2e_cdf(d: RunData) -> str:
    a = d.arrays
    return figure_html("e2e_cdf", _cdf_chart(
        "End-to-end latency, CDF", "E2E latency (ms)",
        [("from sent", metrics.e2e_ns(a, "sent") / _NS_PER_MS),
         ("from scheduled", metrics.e2e_ns(a, "scheduled") / _NS_PER_MS)]),
        "Request sent (or scheduled) to the end of its stream, completed requests.")


def itl_cdf(d: RunData) -> str:
    return figure_html("itl_cdf", _cdf_chart(
        "Inter-token latency and TPOT, CDF", "time per token (ms)",
        [("ITL, per token", metrics.itl_ns(d.measured) / _NS_PER_MS),
         ("TPOT, per request", metrics.tpot_ns(d.arrays) / _NS_PER_MS)],
        d.tpot_ref, ylabel="samples at or below (%)"),
        "ITL pools every gap between content chunks (a chunk of k tokens counts k gaps of 1/k); TPOT is "
        "(last token − first token) / (tokens − 1) per request.")


def issue_delay_cdf(d: RunData) -> str:
    delay = metrics.issue_delay_ns(d.arrays) / _NS_PER_MS
    return figure_html("issue_delay_cdf", _cdf_chart(
        "Issue delay (sent − scheduled), CDF", "issue delay (ms)",
        [("all issued requests", np.maximum(delay, 1e-3))]),
        "How late the client sent each request; values under 1 µs are drawn at 1 µs. A long tail here means "
        "the client, not the server, set the pace.")


# ---- over the run ------------------------------------------------------------------------------------


def inflight(d: RunData) -> str:
    """+1 at sent, −1 at end, as a step function."""
    a = d.arrays
    t = np.concatenate([a.sent, a.end]) / _NS_PER_S
    step = np.concatenate([np.ones(len(a)), -np.ones(len(a))]) * d.weight
    order = np.lexsort((-step, t))  # at equal times count the arrival first (no dip below zero)
    tx, level = t[order], np.cumsum(step[order])
    if tx.size > 4000:  # sample the step function on a fixed grid: same shape, bounded size
        grid = np.linspace(tx[0], tx[-1], 2000)
        level = level[np.searchsorted(tx, grid, side="right") - 1]
        tx = grid
    chart = Chart("Requests in flight", Axis("time since run start (s)", zero=True),
                  Axis("requests in flight", zero=True))
    chart.add(Series("in flight (sent, not ended)", tx, level, style="step"))
    return figure_html("inflight", chart, "Reconstructed from each request's sent and end times.")


def output_tokens_per_s(d: RunData) -> str:
    # flat accumulators, not two small numpy arrays per request (20,000 plotted requests: ~9 MB less)
    tok_t, tok_w = array("q"), array("d")
    for r in d.measured:
        n = len(r.chunk_ns)
        if n:
            given = r.chunk_tokens[:n]
            counts = [max(float(k), 1.0) for k in given] + [1.0] * (n - len(given))
            if r.output_tokens > 0:  # usage or tokenizer counts are better than chunk counts
                scale = r.output_tokens / math.fsum(counts)
                counts = [c * scale for c in counts]
            tok_t.extend(r.chunk_ns)
            tok_w.extend(counts)
        elif r.ok and r.output_tokens > 0:
            tok_t.append(r.end_ns)
            tok_w.append(float(r.output_tokens))
    times = np.frombuffer(tok_t, dtype=np.int64) / _NS_PER_S if tok_t else np.empty(0)
    weights = np.frombuffer(tok_w, dtype=np.float64) * d.weight if tok_w else np.empty(0)
    bx, by = _bins(times, weights, d.end_s)
    tps = Chart("Output tokens per second", Axis("time since run start (s)", zero=True),
                Axis("output tokens/s", zero=True))
    tps.add(Series("output tokens/s (1 s bins)", bx, by, style="linepoints" if bx.size <= 120 else "line"))
    if d.mean_tps:
        tps.hlines.append(RefLine(d.mean_tps, f"run mean {d.mean_tps:,.0f}", color="#666666"))
    return figure_html("output_tokens_per_s", tps, "Tokens counted when their chunk arrived.")


def completed_per_s(d: RunData) -> str:
    a, end_s = d.arrays, d.end_s
    done = Chart("Requests completed per second", Axis("time since run start (s)", zero=True),
                 Axis("requests/s", zero=True))
    cx, cy = _bins(a.end[a.ok] / _NS_PER_S, None, end_s)
    cy = cy * d.weight
    style: Style = "linepoints" if cx.size <= 120 else "line"
    done.add(Series("completed (1 s bins)", cx, cy, style=style))
    if (~a.ok).any():
        fx, fy = _bins(a.end[~a.ok] / _NS_PER_S, None, end_s)
        fy = fy * d.weight
        done.add(Series("failed (1 s bins)", fx, fy, style=style, color=PALETTE[1], dashed=True))
    return figure_html("completed_per_s", done, "By the time each request ended.")


def ttft_vs_time(d: RunData) -> str:
    a = d.arrays
    mask = a.ok & a.has_first_token
    sched_s = a.scheduled[mask] / _NS_PER_S
    ttft = (a.first_token[mask] - a.sent[mask]) / _NS_PER_MS
    failed_x = a.scheduled[~a.ok] / _NS_PER_S
    failed_y = (a.end[~a.ok] - a.sent[~a.ok]) / _NS_PER_MS
    stride = max(1, math.ceil(ttft.size / _MAX_SCATTER))
    scatter = Chart("TTFT of each request over the run",
                    Axis("scheduled time (s since run start)", zero=True),
                    Axis("TTFT (ms)", log=log_if_wide(np.concatenate([ttft, failed_y]).tolist())))
    scatter.add(Series("completed: TTFT from sent", sched_s[::stride], ttft[::stride], style="scatter"))
    if failed_x.size:
        scatter.add(Series("failed: time to error", failed_x, failed_y, style="scatter", color=PALETTE[1],
                           marker="diamond"))
    scatter.hlines.extend(RefLine(r.value, r.label) for r in d.ttft_ref)
    return figure_html("ttft_vs_time", scatter,
                       "One point per request at its scheduled time"
                       + (f" (every {stride}th request drawn)" if stride > 1 else "") + ".")


def run_figures(d: RunData) -> list[str]:
    """The two grids of record-based figures, in :data:`RUN_FIGURES` order."""
    return [
        "<h2>Latency distributions</h2><div class='grid'>",
        ttft_cdf(d), e2e_cdf(d), itl_cdf(d), issue_delay_cdf(d),
        "</div><h2>Over the run</h2><div class='grid'>",
        inflight(d), output_tokens_per_s(d), completed_per_s(d), ttft_vs_time(d),
        "</div>",
    ]

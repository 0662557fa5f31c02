"""Live Prometheus metrics of a run: latency histograms, request/token counters, load gauges, GPU power.

Everything lives in the exporter's **own** :class:`prometheus_client.CollectorRegistry`; importing this
module registers nothing globally. Every series carries the constant labels ``run_id``, ``scenario``
and ``model`` (and nothing secret: no URL, no API key).

Metrics (seconds and joules, Prometheus base units):

===================================  =========  ==========================================================
``loadgen_ttft_seconds``             histogram  first content chunk − sent, completed requests
``loadgen_time_to_first_answer_``    histogram  first answer chunk (not thinking) − sent; = TTFT for a model
  ``seconds``                                   that does not think
``loadgen_itl_seconds``              histogram  gaps between content chunks; a k-token chunk is k samples
                                                of gap/k (the definition of
                                                :func:`loadgen.metrics.latency.itl_ns`)
``loadgen_tpot_seconds``             histogram  (last chunk − first token) / (output tokens − 1), n ≥ 2
``loadgen_e2e_seconds``              histogram  stream end − sent, completed requests
``loadgen_requests_total{status}``   counter    finished requests; status "ok" or the record's error class
``loadgen_input_tokens_total``       counter    prompt tokens of finished requests
``loadgen_output_tokens_total``      counter    output tokens of finished requests (best known count)
``loadgen_in_flight``                gauge      started − finished; with worker processes, the count they
                                                report every tick (:meth:`Exporter.set_in_flight`)
``loadgen_target_qps``               gauge      offered rate the scenario aims at (0 when closed-loop)
``loadgen_issue_delay_seconds``      gauge      **largest** issue delay (sent − scheduled) seen in the last
                                                ``issue_delay_window_s`` to 2× that (default 5–10 s): a
                                                max, so one late send is never averaged away between scrapes
``loadgen_gpu_power_watts{gpu}``     gauge      last sampled board power
``loadgen_gpu_power_mean_watts``     gauge      energy since the sampler started / the time since its first
  ``{gpu}``                                     sample (absent until a second sample)
``loadgen_gpu_power_peak_watts``     gauge      highest sampled board power since the sampler started
  ``{gpu}``
``loadgen_gpu_energy_joules_total``  counter    energy used since the GPU sampler started (NVML's energy
  ``{gpu}``                                     counter delta, else integrated power); set, not added
``loadgen_joules_per_output_token``  gauge      Σ GPU energy / output tokens so far (absent until both > 0)
``loadgen_output_tokens_per_joule``  gauge      output tokens so far / Σ GPU energy (absent until both > 0)
===================================  =========  ==========================================================

A traffic mix (``classes:``, :mod:`loadgen.workload.mix`) adds the label ``class`` (the class's name) to
the five latency histograms and to the request and token counters, one series per class; a run without
classes has no such label.

Warm-up records (``warmup=True``) only count as finished for ``loadgen_in_flight``; everything else
counts measured requests, so the totals agree with the run's report.

Cost: :meth:`Exporter.request_finished` runs on the event loop once per finished request. The
histograms are plain Python bucket arrays under one short-held ``threading.Lock`` (the scrape runs in
the HTTP server's thread), not one ``Histogram.observe`` per ITL sample.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import urllib.error
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    push_to_gateway,
    start_http_server,
    write_to_textfile,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import basic_auth_handler, default_handler

from loadgen.records import RequestRecord

log = logging.getLogger(__name__)

#: Histogram upper bounds in seconds: 1 ms … 60 s, roughly 1-1.5-2-3-5-7.5 per decade.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.010, 0.015, 0.020, 0.030, 0.050, 0.075, 0.100, 0.150, 0.200,
    0.300, 0.500, 0.750, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
)
CONST_LABELS = ("run_id", "scenario", "model")
_HISTOGRAMS = (  # name, help; the order request_finished unpacks them in
    ("loadgen_ttft_seconds", "Time to first token from send, completed requests, s."),
    ("loadgen_time_to_first_answer_seconds",
     "Time to the first answer chunk (after any thinking) from send, s."),
    ("loadgen_itl_seconds", "Inter-token latency; a k-token chunk counts k gaps/k, s."),
    ("loadgen_tpot_seconds", "Time per output token after the first, s."),
    ("loadgen_e2e_seconds", "End-to-end latency from send, completed requests, s."),
)
_NS = 1e-9


def _scrub(value: str) -> str:
    """Drop ``user:password@`` from anything URL-shaped, so a label never carries credentials."""
    if "://" in value and "@" in value:
        parts = urlsplit(value)
        if parts.username or parts.password:
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            return urlunsplit(parts._replace(netloc=netloc))
    return value


class _Histogram:
    """A fixed-bucket histogram fed from the event loop and read by the scrape thread.

    ``bounds`` are finite upper bounds (``le``); index ``len(bounds)`` is the +Inf bucket. Counts are
    per bucket (not cumulative) until :meth:`family` accumulates them. The caller holds the lock.
    """

    __slots__ = ("bounds", "count", "counts", "doc", "name", "sum")

    def __init__(self, name: str, doc: str, bounds: Sequence[float]) -> None:
        self.name, self.doc, self.bounds = name, doc, list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, weight: int = 1) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le is "≤").
        self.counts[bisect.bisect_left(self.bounds, value)] += weight
        self.sum += value * weight
        self.count += weight

    def add_to(self, fam: HistogramMetricFamily, values: list[str]) -> None:
        """This histogram as ``fam``'s series with label ``values`` (cumulative buckets)."""
        running, buckets = 0, []
        for bound, n in zip([*self.bounds, float("inf")], self.counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        fam.add_metric(values, buckets, self.sum)


class _Collector:
    """Yields the histograms and the GPU metrics from the exporter's lock-protected state."""

    def __init__(self, exporter: Exporter) -> None:
        self._exp = exporter

    def collect(self) -> Iterator[Metric]:
        exp = self._exp
        labels = exp.labels
        with exp._lock:
            hists = exp._families()
            gpus = dict(exp._gpu)
            tokens = exp._tokens_out
        yield from hists
        names, values = [*labels, "gpu"], list(labels.values())
        power = GaugeMetricFamily("loadgen_gpu_power_watts", "Last sampled GPU board power, W.", labels=names)
        mean = GaugeMetricFamily("loadgen_gpu_power_mean_watts",
                                 "GPU energy since the sampler started / time since its first sample, W.",
                                 labels=names)
        peak = GaugeMetricFamily("loadgen_gpu_power_peak_watts",
                                 "Highest sampled GPU board power since the sampler started, W.",
                                 labels=names)
        energy = CounterMetricFamily(
            "loadgen_gpu_energy_joules",
            "GPU energy since the sampler started, J (NVML energy counter delta, else integrated power).",
            labels=names,
        )
        total_j = 0.0
        for gpu, state in sorted(gpus.items()):
            key = [*values, gpu]
            if state.watts is not None:
                power.add_metric(key, state.watts)
            if state.peak_watts is not None:
                peak.add_metric(key, state.peak_watts)
            if state.joules is not None:
                energy.add_metric(key, state.joules)
                total_j += state.joules
                elapsed = state.last_s - state.first_s
                if elapsed > 0:
                    mean.add_metric(key, state.joules / elapsed)
        yield from (power, mean, peak, energy)
        per_token = GaugeMetricFamily(
            "loadgen_joules_per_output_token", "Sum of GPU energy / output tokens so far, J.",
            labels=list(labels),
        )
        per_joule = GaugeMetricFamily(
            "loadgen_output_tokens_per_joule", "Output tokens so far / sum of GPU energy, 1/J.",
            labels=list(labels),
        )
        if total_j > 0 and tokens > 0:
            per_token.add_metric(values, total_j / tokens)
            per_joule.add_metric(values, tokens / total_j)
        yield per_token
        yield per_joule


@dataclass
class _GpuState:
    """What the exporter knows of one GPU; times are the exporter's clock (s)."""

    first_s: float
    last_s: float
    watts: float | None = None
    peak_watts: float | None = None
    joules: float | None = None


class Exporter:
    """Prometheus metrics of one run. Thread-safe: the runner feeds it, a scrape thread reads it.

    ``clock`` (seconds, monotonic) is injectable for the issue-delay window and the mean GPU power.
    """

    def __init__(
        self, run_id: str, scenario: str, model: str, *, issue_delay_window_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic, classes: Sequence[str] | None = None,
    ) -> None:
        self.labels = {"run_id": _scrub(run_id), "scenario": _scrub(scenario), "model": _scrub(model)}
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._clock = clock
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

        # One set of histograms per traffic class (labelled class=NAME), or one set without the label.
        self._classes = tuple(classes) if classes else None
        self._sets = {c: [_Histogram(name, doc, LATENCY_BUCKETS_S) for name, doc in _HISTOGRAMS]
                      for c in (self._classes or (None,))}
        self._default = next(iter(self._sets.values()))
        self._gpu: dict[str, _GpuState] = {}
        self._tokens_out = 0  # mirror of loadgen_output_tokens_total for joules per token

        names = list(CONST_LABELS)
        per_class = [*names, "class"] if self._classes else names
        reg = self.registry
        self._requests = Counter(
            "loadgen_requests", "Finished requests by status (ok or error class).", [*per_class, "status"],
            registry=reg,
        )
        self._input_tokens = Counter("loadgen_input_tokens", "Prompt tokens sent.", per_class, registry=reg)
        self._output_tokens = Counter("loadgen_output_tokens", "Output tokens received.", per_class,
                                      registry=reg)
        in_flight = Gauge("loadgen_in_flight", "Requests started and not finished.", names, registry=reg)
        self._started = self._finished = 0
        self._reported_in_flight: int | None = None  # set_in_flight: counted elsewhere (worker processes)
        target = Gauge("loadgen_target_qps", "Offered request rate, queries/s.", names, registry=reg)
        delay = Gauge(
            "loadgen_issue_delay_seconds",
            f"Largest issue delay (sent - scheduled) in the last {issue_delay_window_s:g}-"
            f"{2 * issue_delay_window_s:g} s, s.", names, registry=reg,
        )
        in_flight.labels(**self.labels).set_function(self._in_flight_now)
        self._target_qps = target.labels(**self.labels)
        # (status, class) -> the request counter's child; class -> the token counters' children
        self._by_status: dict[tuple[str, str | None], Any] = {}
        self._tokens_by: dict[str | None, tuple[Any, Any]] = {}
        for cls in self._classes or (None,):  # every series present (at 0) from the first scrape
            self._by_status[("ok", cls)] = self._requests.labels(**self._labels_of(cls), status="ok")
            self._tokens_of(cls)
        # Two tumbling windows: the gauge reads max(previous, current), i.e. the max of the last 1-2 windows.
        self._delay_window_s = issue_delay_window_s
        self._delay_epoch = int(clock() // issue_delay_window_s)
        self._delay_cur = 0.0
        self._delay_prev = 0.0
        delay.labels(**self.labels).set_function(self._issue_delay_now)
        reg.register(_Collector(self))

    # ---- feeding ------------------------------------------------------------------------------------

    def request_started(self) -> None:
        with self._lock:
            self._started += 1

    def set_in_flight(self, n: int) -> None:
        """The requests in flight, counted by whoever issues them (worker processes, which call no
        :meth:`request_started` here): from now on ``loadgen_in_flight`` shows ``n``."""
        with self._lock:
            self._reported_in_flight = n

    def _in_flight_now(self) -> float:
        with self._lock:
            reported = self._reported_in_flight
            return float(self._started - self._finished if reported is None else reported)

    def request_finished(self, record: RequestRecord) -> None:
        """Count one finished request (call once per request, never per chunk)."""
        with self._lock:
            self._finished += 1
        if record.warmup:
            return
        self.observe_issue_delay(record.issue_delay_ns * _NS)
        status = "ok" if record.error_class is None else record.error_class
        cls = record.cls if self._classes else None
        child = self._by_status.get((status, cls))
        if child is None:
            child = self._by_status[(status, cls)] = self._requests.labels(**self._labels_of(cls),
                                                                           status=status)
        child.inc()
        tokens_of = self._tokens_by.get(cls) or self._tokens_of(cls)
        if record.input_tokens:
            tokens_of[0].inc(record.input_tokens)
        if record.output_tokens:
            tokens_of[1].inc(record.output_tokens)
            with self._lock:
                self._tokens_out += record.output_tokens
        if record.error_class is not None:
            return
        first = record.first_token_ns
        chunks, tokens = record.chunk_ns, record.chunk_tokens
        ntok = len(tokens)
        ttft, ttfa, itl, tpot, e2e = self._sets.get(record.cls, self._default) if self._classes \
            else self._default
        with self._lock:
            e2e.observe((record.end_ns - record.sent_ns) * _NS)
            if first is None:
                return
            ttft.observe((first - record.sent_ns) * _NS)
            if record.first_answer_ns is not None:
                ttfa.observe((record.first_answer_ns - record.sent_ns) * _NS)
            if len(chunks) >= 2:
                # Inlined _Histogram.observe: this loop is the per-token part of the exporter's cost.
                counts, bounds, find = itl.counts, itl.bounds, bisect.bisect_left
                total, n, prev = 0.0, 0, chunks[0]
                for i in range(1, len(chunks)):
                    t = chunks[i]
                    k = tokens[i] if i < ntok and tokens[i] > 0 else 1
                    counts[find(bounds, (t - prev) * _NS / k)] += k
                    total += (t - prev) * _NS
                    n += k
                    prev = t
                itl.sum += total
                itl.count += n
            if record.output_tokens >= 2 and chunks:
                tpot.observe((chunks[-1] - first) * _NS / (record.output_tokens - 1))

    def _tokens_of(self, cls: str | None) -> tuple[Any, Any]:
        lab = self._labels_of(cls)
        pair = self._tokens_by[cls] = (self._input_tokens.labels(**lab), self._output_tokens.labels(**lab))
        return pair

    def _labels_of(self, cls: str | None) -> dict[str, str]:
        return self.labels if not self._classes else {**self.labels, "class": cls or ""}

    def _families(self) -> list[HistogramMetricFamily]:
        """The latency histograms, one family each, a series per class (the caller holds the lock)."""
        out = []
        for i, (name, doc) in enumerate(_HISTOGRAMS):
            fam = HistogramMetricFamily(name, doc, labels=list(self._labels_of(None)))
            for cls, hists in self._sets.items():
                hists[i].add_to(fam, list(self._labels_of(cls).values()))
            out.append(fam)
        return out

    def set_target_qps(self, qps: float) -> None:
        self._target_qps.set(qps)

    def observe_issue_delay(self, seconds: float) -> None:
        """Note one issue delay (sent − scheduled), s; the gauge shows the recent maximum."""
        with self._lock:
            self._roll_delay_window()
            self._delay_cur = max(self._delay_cur, seconds)

    def set_gpu(self, gpu: str | int, *, power_watts: float | None = None,
                energy_joules: float | None = None) -> None:
        """Latest reading of one GPU: board power, W, and energy since the sampler started, J (the
        first reading of a GPU is taken as the sampler's start, for the mean power)."""
        now = self._clock()
        with self._lock:
            state = self._gpu.get(str(gpu))
            if state is None:
                state = self._gpu[str(gpu)] = _GpuState(first_s=now, last_s=now)
            state.last_s = now
            if power_watts is not None:
                state.watts = power_watts
                state.peak_watts = power_watts if state.peak_watts is None else max(state.peak_watts,
                                                                                     power_watts)
            if energy_joules is not None:
                state.joules = energy_joules

    def gpu_callback(self) -> Callable[[Iterable[tuple[str, float | None, float | None]]], None]:
        """An ``on_sample`` for :class:`loadgen.observe.gpu.GpuSampler`: (gpu, watts, joules) triples."""

        def on_sample(readings: Iterable[tuple[str, float | None, float | None]]) -> None:
            for gpu, watts, joules in readings:
                self.set_gpu(gpu, power_watts=watts, energy_joules=joules)

        return on_sample

    def _roll_delay_window(self) -> None:
        epoch = int(self._clock() // self._delay_window_s)
        if epoch != self._delay_epoch:
            self._delay_prev = self._delay_cur if epoch == self._delay_epoch + 1 else 0.0
            self._delay_cur = 0.0
            self._delay_epoch = epoch

    def _issue_delay_now(self) -> float:
        with self._lock:
            self._roll_delay_window()
            return max(self._delay_prev, self._delay_cur)

    # ---- output -------------------------------------------------------------------------------------

    def metric_names(self) -> set[str]:
        """Every sample name this exporter can expose (``_bucket``, ``_sum``, ``_count``, ``_total`` …)."""
        names: set[str] = set()
        for fam in self.registry.collect():
            if fam.type == "histogram":
                names.update(f"{fam.name}{s}" for s in ("_bucket", "_sum", "_count"))
            elif fam.type == "counter":
                names.update((f"{fam.name}_total", f"{fam.name}_created"))
            else:
                names.add(fam.name)
        return names

    def start_http(self, host: str = "127.0.0.1", port: int = 9400) -> int:
        """Serve ``/metrics`` from a daemon thread; returns the bound port (``port=0`` picks a free one).

        Raises ``OSError`` when the address is taken (the CLI reports it).
        """
        if self._server is not None:
            raise RuntimeError("the exporter is already serving")
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_port)

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_port)

    def stop(self) -> None:
        """Stop serving (idempotent); returns once the server thread has ended."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def push(self, url: str, job: str = "loadgen", timeout: float = 10.0) -> bool:
        """Push every metric to a Pushgateway, grouped by ``job`` and ``run_id``.

        ``user:password@`` in the URL becomes basic auth. Never raises for network or HTTP errors: it
        logs a warning (with the credentials removed from the URL) and returns False.
        """
        parts = urlsplit(url if "://" in url else f"http://{url}")
        user, password = parts.username, parts.password
        clean = _scrub(urlunsplit(parts))
        handler: Callable[..., Callable[[], None]] = default_handler
        if user is not None:

            def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                        data: bytes) -> Callable[[], None]:
                return basic_auth_handler(url, method, timeout, headers, data, user, password or "")

        try:
            push_to_gateway(clean, job=job, registry=self.registry, timeout=timeout,
                            grouping_key={"run_id": self.labels["run_id"]}, handler=handler)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            log.warning("could not push metrics to the Pushgateway at %s: %s", clean, _scrub(str(reason)))
            return False
        return True

    def write_textfile(self, path: str | Path) -> None:
        """Write the metrics in text format (atomically: temp file + rename), e.g. for node_exporter."""
        write_to_textfile(str(path), self.registry)

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""GPU telemetry: NVML sampled from a background thread, summarised over the measured window.

The seam is :class:`NvmlBackend` (the dozen NVML calls used here); :class:`PynvmlBackend` is the real one
(package ``nvidia-ml-py``, imported lazily), tests use a fake. NVML calls block (tens of µs to ms), so
they run in a **thread**, never on the event loop.

Which GPUs: ``gpus`` (NVML indices) when given, else ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-`` UUID
prefixes; like CUDA, parsing stops at the first entry that names no device; ``MIG-`` entries are not
resolved), else every GPU NVML sees. Indices are NVML's (PCI bus order, as ``nvidia-smi``); CUDA's own
ordinals agree when ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` or all GPUs are the same model.

Clock: sample times are ``clock()`` integer ns (default ``time.perf_counter_ns``, the clock of request
records before they are made relative to the run start); windows are given in the same clock.

Energy over a window (``energy_method``):

* ``"counter"``: the delta of NVML's total-energy counter (mJ since driver load; Volta and newer),
  linearly interpolated at the window edges. Preferred: the driver integrates power far faster than we
  sample.
* ``"power_integral"``: the trapezoidal integral of sampled board power where the counter is not
  supported. Note that NVML's power reading is itself a ~1 s average on many boards, so short windows
  blur.

Unavailability is data, never an exception: ``result()`` then returns ``{"available": False, "reason":
...}`` with reason ``"pynvml not installed"``, ``"NVML could not initialise: ..."`` or ``"no GPU
visible ..."``. An unexpected exception inside the sampling thread is re-raised by :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

#: Sampled fields per GPU, in column order.
FIELDS = ("power_w", "energy_j", "util_pct", "mem_used_mib", "sm_clock_mhz", "temp_c")
_POWER, _ENERGY = 0, 1
MAX_SERIES_POINTS = 2000

#: (gpu label, power W, energy J since the sampler started) for each GPU, after every sweep.
SampleCallback = Callable[[list[tuple[str, float | None, float | None]]], None]


class NvmlError(Exception):
    """An NVML call failed (the backend translates its library's errors into this)."""


class NvmlNotSupported(NvmlError):
    """This device does not support the query (e.g. the energy counter on pre-Volta GPUs)."""


class NvmlBackend(Protocol):
    """The NVML calls the sampler uses. Handles are opaque. Errors: :class:`NvmlError` and subclasses."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def device_count(self) -> int: ...
    def handle(self, index: int) -> Any: ...
    def name(self, handle: Any) -> str: ...
    def uuid(self, handle: Any) -> str: ...
    def power_mw(self, handle: Any) -> int: ...
    def energy_mj(self, handle: Any) -> int: ...
    def utilization_pct(self, handle: Any) -> int: ...
    def memory_used_bytes(self, handle: Any) -> int: ...
    def sm_clock_mhz(self, handle: Any) -> int: ...
    def temperature_c(self, handle: Any) -> int: ...


class PynvmlBackend:
    """:class:`NvmlBackend` over ``pynvml``. Construction raises ``ImportError`` without the package."""

    def __init__(self) -> None:
        import pynvml

        self._nv = pynvml

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        nv = self._nv
        try:
            return fn(*args)
        except nv.NVMLError as exc:
            if getattr(exc, "value", None) == nv.NVML_ERROR_NOT_SUPPORTED:
                raise NvmlNotSupported(str(exc)) from exc
            raise NvmlError(str(exc)) from exc

    def init(self) -> None:
        self._call(self._nv.nvmlInit)

    def shutdown(self) -> None:
        self._call(self._nv.nvmlShutdown)

    def device_count(self) -> int:
        return int(self._call(self._nv.nvmlDeviceGetCount))

    def handle(self, index: int) -> Any:
        return self._call(self._nv.nvmlDeviceGetHandleByIndex, index)

    def name(self, handle: Any) -> str:
        name = self._call(self._nv.nvmlDeviceGetName, handle)
        return name.decode() if isinstance(name, bytes) else str(name)

    def uuid(self, handle: Any) -> str:
        uuid = self._call(self._nv.nvmlDeviceGetUUID, handle)
        return uuid.decode() if isinstance(uuid, bytes) else str(uuid)

    def power_mw(self, handle: Any) -> int:
        return int(self._call(self._nv.nvmlDeviceGetPowerUsage, handle))

    def energy_mj(self, handle: Any) -> int:
        return int(self._call(self._nv.nvmlDeviceGetTotalEnergyConsumption, handle))

    def utilization_pct(self, handle: Any) -> int:
        return int(self._call(self._nv.nvmlDeviceGetUtilizationRates, handle).gpu)

    def memory_used_bytes(self, handle: Any) -> int:
        return int(self._call(self._nv.nvmlDeviceGetMemoryInfo, handle).used)

    def sm_clock_mhz(self, handle: Any) -> int:
        return int(self._call(self._nv.nvmlDeviceGetClockInfo, handle, self._nv.NVML_CLOCK_SM))

    def temperature_c(self, handle: Any) -> int:
        return int(self._call(self._nv.nvmlDeviceGetTemperature, handle, self._nv.NVML_TEMPERATURE_GPU))


def visible_indices(backend: NvmlBackend, env_value: str | None) -> list[int]:
    """NVML indices named by a ``CUDA_VISIBLE_DEVICES`` value (``None``: all devices)."""
    count = backend.device_count()
    if env_value is None:
        return list(range(count))
    uuids: list[str] | None = None
    out: list[int] = []
    for raw in env_value.split(","):
        entry = raw.strip()
        if entry.isdigit() and int(entry) < count:
            index = int(entry)
        elif entry.upper().startswith("GPU-"):
            if uuids is None:
                uuids = [backend.uuid(backend.handle(i)).upper() for i in range(count)]
            matches = [i for i, u in enumerate(uuids) if u.startswith(entry.upper())]
            if len(matches) != 1:
                break
            index = matches[0]
        else:  # CUDA ignores everything from the first invalid entry on ("-1" hides all GPUs)
            break
        if index in out:
            break
        out.append(index)
    return out


def _series_stats(values: npt.NDArray[np.float64]) -> dict[str, float | None]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "max": None}
    return {"mean": float(finite.mean()), "max": float(finite.max())}


def _trapezoid(t_s: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
    return float(np.sum((y[1:] + y[:-1]) * 0.5 * np.diff(t_s))) if t_s.size >= 2 else 0.0


def _window_curve(times: npt.NDArray[np.int64], values: npt.NDArray[np.float64], start: int, end: int
                  ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """Finite samples of ``values`` clipped to [start, end], with interpolated edge points (t in s)."""
    ok = np.isfinite(values)
    t, v = times[ok], values[ok]
    if t.size < 2:
        return None
    lo, hi = max(start, int(t[0])), min(end, int(t[-1]))
    if hi <= lo:
        return None
    inner = (t > lo) & (t < hi)
    tt = np.concatenate(([lo], t[inner], [hi])).astype(np.float64)
    vv = np.concatenate(([np.interp(lo, t, v)], v[inner], [np.interp(hi, t, v)]))
    return tt * 1e-9, vv


def _downsample(t: npt.NDArray[np.float64], cols: npt.NDArray[np.float64], limit: int
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Bin means down to ``limit`` points (means keep the area under the power curve)."""
    if t.size <= limit:
        return t, cols
    starts = np.linspace(0, t.size, limit + 1).astype(np.int64)[:-1]
    counts = np.diff(np.append(starts, t.size)).astype(np.float64)
    return np.add.reduceat(t, starts) / counts, np.add.reduceat(cols, starts, axis=0) / counts[:, None]


def _json_list(values: npt.NDArray[np.float64], digits: int = 3) -> list[float | None]:
    return [round(float(x), digits) if math.isfinite(x) else None for x in values]


class GpuSampler:
    """Samples every visible GPU each ``interval_s`` into bounded arrays, from a daemon thread.

    ``capacity`` bounds the rows kept; when full, every other row is dropped (the resolution halves,
    the whole run stays covered). ``on_sample`` is called from the sampling thread after each sweep
    (feed :meth:`loadgen.observe.exporter.Exporter.gpu_callback`); it must not block.
    """

    def __init__(
        self, backend: NvmlBackend | None = None, interval_s: float = 0.1, gpus: list[int] | None = None,
        *, capacity: int = 100_000, on_sample: SampleCallback | None = None,
        clock: Callable[[], int] = time.perf_counter_ns, env: Mapping[str, str] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self._backend = backend
        self._requested = gpus
        self._capacity = max(capacity, 4)
        self._on_sample = on_sample
        self._clock = clock
        self._env = os.environ if env is None else env
        self.available = False
        self.reason: str | None = "not started"
        self.devices: list[dict[str, Any]] = []
        self._handles: list[Any] = []
        self._lock = threading.Lock()  # guards the sample arrays (readers vs the sampling thread)
        self._sweep_lock = threading.Lock()  # one sweep at a time (thread vs sample_now)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._window: tuple[int, int] | None = None
        self._times = np.empty(0, dtype=np.int64)
        self._values = np.empty((0, 0, len(FIELDS)))
        self._n = 0
        self._unsupported: list[set[int]] = []
        self._energy0: list[float | None] = []
        self._integral: list[float] = []
        self.errors = 0

    # ---- lifecycle ----------------------------------------------------------------------------------

    def _open(self) -> str | None:
        """Initialise NVML and pick the GPUs; returns why not, or None."""
        if self._backend is None:
            try:
                self._backend = PynvmlBackend()
            except ImportError:
                return "pynvml not installed"
        backend = self._backend
        try:
            backend.init()
        except NvmlError as exc:
            return f"NVML could not initialise: {exc}"
        try:
            if self._requested is not None:
                count = backend.device_count()
                indices = [i for i in dict.fromkeys(self._requested) if 0 <= i < count]
                where = f"gpus={self._requested}, NVML sees {count}"
            else:
                env = self._env.get("CUDA_VISIBLE_DEVICES")
                indices = visible_indices(backend, env)
                where = "NVML sees none" if env is None else f"CUDA_VISIBLE_DEVICES={env!r}"
            if not indices:
                backend.shutdown()
                return f"no GPU visible ({where})"
            self._handles = [backend.handle(i) for i in indices]
            self.devices = [
                {"index": i, "name": backend.name(h), "uuid": backend.uuid(h)}
                for i, h in zip(indices, self._handles, strict=True)
            ]
        except NvmlError as exc:
            backend.shutdown()
            return f"NVML could not list GPUs: {exc}"
        return None

    def start(self) -> bool:
        """Open NVML, take a first sample and start the thread; False (see ``reason``) without GPUs."""
        if self._thread is not None:
            raise RuntimeError("the GPU sampler is already running")
        reason = self._open()
        self.available, self.reason = reason is None, reason
        if reason is not None:
            return False
        n_gpu = len(self._handles)
        self._times = np.zeros(self._capacity, dtype=np.int64)
        self._values = np.full((self._capacity, n_gpu, len(FIELDS)), np.nan)
        self._n = 0
        self._unsupported = [set() for _ in range(n_gpu)]
        self._energy0 = [None] * n_gpu
        self._integral = [0.0] * n_gpu
        self._stop.clear()
        self.sample_now()
        self._thread = threading.Thread(target=self._loop, name="loadgen-gpu-sampler", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Take a last sample, end the thread, shut NVML down. Re-raises a failure of the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()
        if self._failure is None:
            self.sample_now()
        assert self._backend is not None
        with contextlib.suppress(NvmlError):  # nothing left to release that we could act on
            self._backend.shutdown()
        if self._failure is not None:
            raise self._failure

    def latest_power_w(self) -> float | None:
        """The last sweep's power summed over the GPUs, W (None before a sweep, or without GPUs); for
        live views (the dashboard), safe from any thread."""
        with self._lock:
            if not self.available or self._n == 0:
                return None
            row = np.array(self._values[self._n - 1, :, _POWER])
        return None if np.isnan(row).all() else float(np.nansum(row))

    def __enter__(self) -> GpuSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def mark_window(self, start_ns: int, end_ns: int) -> None:
        """Set the default window of :meth:`result` (``clock()`` ns)."""
        self._window = (start_ns, end_ns)

    # ---- sampling thread ----------------------------------------------------------------------------

    def _loop(self) -> None:
        interval = round(self.interval_s * 1e9)
        next_t = self._clock() + interval
        try:
            while not self._stop.wait(max(0, next_t - self._clock()) * 1e-9):
                self.sample_now()
                # Absolute targets; after a stall (slow NVML) skip the missed ticks instead of bursting.
                next_t = max(next_t + interval, self._clock())
        except BaseException as exc:  # surfaced by stop(): a failure here must not vanish
            self._failure = exc

    def _read(self, gpu: int, handle: Any) -> list[float]:
        backend = self._backend
        assert backend is not None
        readers: Sequence[tuple[Callable[[Any], int], float]] = (
            (backend.power_mw, 1e-3), (backend.energy_mj, 1e-3), (backend.utilization_pct, 1.0),
            (backend.memory_used_bytes, 1 / 2**20), (backend.sm_clock_mhz, 1.0), (backend.temperature_c, 1.0),
        )
        row = [math.nan] * len(FIELDS)
        skip = self._unsupported[gpu]
        for col, (read, scale) in enumerate(readers):
            if col in skip:
                continue
            try:
                row[col] = read(handle) * scale
            except NvmlNotSupported:
                skip.add(col)
            except NvmlError:
                self.errors += 1
        return row

    def sample_now(self) -> None:
        """Take one sample of every GPU now (also done by :meth:`start` and :meth:`stop`); call it at
        a window's edges for exact boundaries. Blocks for the NVML calls (run it off the event loop)."""
        if not self.available:
            return
        with self._sweep_lock:
            self._sweep()

    def _sweep(self) -> None:
        t = self._clock()
        rows = [self._read(g, h) for g, h in enumerate(self._handles)]
        with self._lock:
            if self._n == self._capacity:
                keep = self._times[: self._n : 2].size
                self._times[:keep] = self._times[: self._n : 2]
                self._values[:keep] = self._values[: self._n : 2]
                self._values[keep:] = np.nan
                self._n = keep
            prev_t = self._times[self._n - 1] if self._n else None
            prev = self._values[self._n - 1] if self._n else None
            self._times[self._n] = t
            self._values[self._n] = rows
            self._n += 1
        readings: list[tuple[str, float | None, float | None]] = []
        for g, row in enumerate(rows):
            power, energy = row[_POWER], row[_ENERGY]
            if prev is not None and prev_t is not None and math.isfinite(power) and math.isfinite(
                    prev[g, _POWER]):
                self._integral[g] += (power + prev[g, _POWER]) * 0.5 * (t - prev_t) * 1e-9
            if math.isfinite(energy) and self._energy0[g] is None:
                self._energy0[g] = energy
            e0 = self._energy0[g]
            since = energy - e0 if e0 is not None and math.isfinite(energy) else self._integral[g]
            readings.append((str(self.devices[g]["index"]), power if math.isfinite(power) else None, since))
        if self._on_sample is not None:
            self._on_sample(readings)

    # ---- results ------------------------------------------------------------------------------------

    def snapshot(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Copies of the sample times (ns) and values ``[row, gpu, field]`` so far."""
        with self._lock:
            return self._times[: self._n].copy(), self._values[: self._n].copy()

    def result(self, window_start_ns: int | None = None, window_end_ns: int | None = None,
               output_tokens: int | None = None, t0_ns: int | None = None) -> dict[str, Any]:
        """Summary over [start, end] (default: :meth:`mark_window`, else every sample).

        Per GPU and in total: energy (J) and how it was measured, mean power (energy / covered time) and
        peak sample, utilisation/memory/SM clock/temperature mean and max, and a time series of at most
        2,000 points with times in s from ``t0_ns`` (default: the window start). ``covered_s`` is the
        part of the window inside the sampled span; energy covers only that part.
        """
        if not self.available:
            return {"available": False, "reason": self.reason}
        times, values = self.snapshot()
        if window_start_ns is None or window_end_ns is None:
            start, end = self._window or (int(times[0]), int(times[-1]))
        else:
            start, end = window_start_ns, window_end_ns
        t0 = start if t0_ns is None else t0_ns
        in_win = (times >= start) & (times <= end)
        covered = max(0, min(end, int(times[-1])) - max(start, int(times[0]))) * 1e-9
        gpus, methods = [], set()
        for g, dev in enumerate(self.devices):
            gpu = _gpu_summary(times, values[:, g, :], start=start, end=end, covered=covered, in_win=in_win,
                               t0=t0)
            methods.add(gpu["energy_method"])
            gpus.append({**dev, **gpu})
        total_j = sum(g["energy_j"] for g in gpus)
        row_power = np.nansum(values[in_win][:, :, _POWER], axis=1) if in_win.any() else np.empty(0)
        total: dict[str, Any] = {
            "energy_j": total_j,
            "energy_method": methods.pop() if len(methods) == 1 else "mixed",
            "power_w": {"mean": total_j / covered if covered > 0 else None,
                        "peak": float(row_power.max()) if row_power.size else None},
            "joules_per_output_token": total_j / output_tokens if output_tokens and total_j > 0 else None,
            "output_tokens_per_joule": output_tokens / total_j if output_tokens and total_j > 0 else None,
        }
        return {
            "available": True, "reason": None, "interval_s": self.interval_s,
            "window_s": (end - start) * 1e-9,
            "covered_s": covered, "sample_count": int(in_win.sum()), "errors": self.errors,
            "gpus": gpus, "total": total,
        }


def _gpu_summary(times: npt.NDArray[np.int64], vals: npt.NDArray[np.float64], *, start: int, end: int,
                 covered: float, in_win: npt.NDArray[np.bool_], t0: int) -> dict[str, Any]:
    power = _window_curve(times, vals[:, _POWER], start, end)
    integral = _trapezoid(*power) if power is not None else 0.0
    energy = _window_curve(times, vals[:, _ENERGY], start, end)
    counter = float(energy[1][-1] - energy[1][0]) if energy is not None else None
    win = vals[in_win]
    t_s, cols = _downsample(((times[in_win] - t0) * 1e-9).astype(np.float64), win, MAX_SERIES_POINTS)
    series = {"t_s": _json_list(t_s, 4)}
    series.update({name: _json_list(cols[:, c]) for c, name in enumerate(FIELDS) if c != _ENERGY})
    energy_j = counter if counter is not None else integral
    peak = _series_stats(win[:, _POWER])["max"] if power is not None else None
    return {
        "energy_j": energy_j,
        "energy_method": "counter" if counter is not None else "power_integral",
        "energy_counter_j": counter,
        "energy_integral_j": integral if power is not None else None,
        "power_w": {"mean": energy_j / covered if covered > 0 else None, "peak": peak},
        **{name: _series_stats(win[:, c]) for c, name in enumerate(FIELDS) if c > _ENERGY},
        "samples": series,
    }

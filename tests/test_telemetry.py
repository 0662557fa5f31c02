"""GPU sampler over a fake NVML: known power curves, the two energy methods, GPU selection, unavailability."""

from __future__ import annotations

import sys
import time

import pytest

from loadgen.observe.gpu import GpuSampler, NvmlError, NvmlNotSupported, PynvmlBackend

S = 1_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.ns = 1000 * S

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += round(seconds * S)


class RealClock:
    """FakeNvml's clock interface (``.ns``, with t = 0 at 1000 s) on the real monotonic clock, for a
    sampler that runs on its own thread in real time."""

    def __init__(self) -> None:
        self._origin = time.perf_counter_ns()

    @property
    def ns(self) -> int:
        return time.perf_counter_ns() - self._origin + 1000 * S


class FakeNvml:
    """GPUs whose power is ``power(gpu, t_s)`` of a fake clock; the energy counter is its exact integral
    (``energy(gpu, t_s)``, J) unless ``energy_supported`` is False."""

    def __init__(self, clock: FakeClock, count: int = 2, *, power=None, energy=None,
                 energy_supported: bool = True, util_supported: bool = True, init_error: str | None = None):
        self.clock, self.count = clock, count
        self.power = power or (lambda g, t: 100.0 + 10.0 * t)  # W, linear: trapezoids are exact
        self.energy = energy or (lambda g, t: 100.0 * t + 5.0 * t * t)  # J, ∫ of the default power
        self.energy_supported, self.util_supported = energy_supported, util_supported
        self.init_error = init_error
        self.calls: dict[str, int] = {}
        self.shut = 0

    def _t(self) -> float:
        return (self.clock.ns - 1000 * S) / S

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def init(self) -> None:
        if self.init_error:
            raise NvmlError(self.init_error)

    def shutdown(self) -> None:
        self.shut += 1

    def device_count(self) -> int:
        return self.count

    def handle(self, index: int) -> int:
        return index

    def name(self, h: int) -> str:
        return "Fake H100"

    def uuid(self, h: int) -> str:
        return f"GPU-{h}{h}{h}{h}aaaa-0000"

    def power_mw(self, h: int) -> int:
        return round(self.power(h, self._t()) * 1000)

    def energy_mj(self, h: int) -> int:
        self._count("energy")
        if not self.energy_supported:
            raise NvmlNotSupported("Not Supported")
        return 5_000_000_000 + round(self.energy(h, self._t()) * 1000)

    def utilization_pct(self, h: int) -> int:
        self._count("util")
        if not self.util_supported:
            raise NvmlNotSupported("Not Supported")
        return 50 + h

    def memory_used_bytes(self, h: int) -> int:
        return 1024 * 2**20

    def sm_clock_mhz(self, h: int) -> int:
        return 1980

    def temperature_c(self, h: int) -> int:
        return 40


def sampled(fake: FakeNvml, clock: FakeClock, seconds: float, step: float = 0.1, **kw) -> GpuSampler:
    """A sampler whose thread never ticks (huge interval): the test drives samples on the fake clock."""
    sampler = GpuSampler(fake, interval_s=1e6, clock=clock, env={}, **kw)
    assert sampler.start()
    for _ in range(round(seconds / step)):
        clock.advance(step)
        sampler.sample_now()
    sampler.stop()
    return sampler


def test_counter_path_gives_the_known_integral() -> None:
    clock = FakeClock()
    fake = FakeNvml(clock)
    sampler = sampled(fake, clock, 10.0)
    # window [2.05 s, 7.05 s] (between samples): ∫ 100 + 10 t dt = 500 + 5 (7.05² − 2.05²) = 727.5 J
    res = sampler.result(1000 * S + int(2.05 * S), 1000 * S + int(7.05 * S), output_tokens=1000)
    assert res["available"] is True
    gpu = res["gpus"][0]
    assert gpu["energy_method"] == "counter"
    assert gpu["energy_j"] == pytest.approx(727.5, rel=1e-3)  # interpolated edges of a quadratic counter
    assert gpu["energy_integral_j"] == pytest.approx(727.5, rel=1e-9)  # linear power: trapezoids exact
    assert gpu["power_w"]["mean"] == pytest.approx(727.5 / 5, rel=1e-3)
    assert gpu["power_w"]["peak"] == pytest.approx(170.0)  # last sample inside: t = 7.0 s
    assert gpu["util_pct"] == {"mean": 50.0, "max": 50.0}
    assert gpu["mem_used_mib"]["max"] == 1024
    assert gpu["index"] == 0 and gpu["name"] == "Fake H100"
    total = res["total"]
    assert total["energy_method"] == "counter"
    assert total["energy_j"] == pytest.approx(2 * 727.5, rel=1e-3)
    assert total["power_w"]["peak"] == pytest.approx(340.0)
    assert total["joules_per_output_token"] == pytest.approx(1.455, rel=1e-3)
    assert total["output_tokens_per_joule"] == pytest.approx(1 / 1.455, rel=1e-3)
    assert res["covered_s"] == pytest.approx(5.0)
    assert gpu["samples"]["t_s"][0] == pytest.approx(0.05)  # sample at 2.1 s, relative to the window start
    assert len(gpu["samples"]["power_w"]) == 50


def test_counter_is_preferred_over_integrated_power() -> None:
    """A board whose power reading lags (here: reads half the true power) still gets the right energy."""
    clock = FakeClock()
    fake = FakeNvml(clock, count=1, power=lambda g, t: 150.0, energy=lambda g, t: 300.0 * t)
    gpu = sampled(fake, clock, 4.0).result()["gpus"][0]
    assert gpu["energy_counter_j"] == pytest.approx(1200.0)
    assert gpu["energy_integral_j"] == pytest.approx(600.0)
    assert gpu["energy_j"] == gpu["energy_counter_j"]


def test_integral_path_when_counter_unsupported() -> None:
    clock = FakeClock()
    fake = FakeNvml(clock, count=1, energy_supported=False, util_supported=False)
    sampler = sampled(fake, clock, 10.0)
    res = sampler.result(1000 * S, 1010 * S)
    gpu = res["gpus"][0]
    assert gpu["energy_method"] == "power_integral" and res["total"]["energy_method"] == "power_integral"
    assert gpu["energy_counter_j"] is None
    assert gpu["energy_j"] == pytest.approx(1500.0)  # ∫0..10 100 + 10 t dt
    assert gpu["util_pct"] == {"mean": None, "max": None}
    assert fake.calls["energy"] == 1 and fake.calls["util"] == 1  # not asked again after NotSupported


def test_window_from_mark_window_and_partial_coverage() -> None:
    clock = FakeClock()
    sampler = sampled(FakeNvml(clock, count=1), clock, 10.0)
    sampler.mark_window(1005 * S, 1020 * S)  # ends 10 s after the last sample
    res = sampler.result()
    assert res["window_s"] == pytest.approx(15.0) and res["covered_s"] == pytest.approx(5.0)
    assert res["gpus"][0]["energy_j"] == pytest.approx(500 + 5 * (100 - 25), rel=1e-6)


def test_on_sample_feeds_energy_since_start() -> None:
    clock = FakeClock()
    seen: list = []
    sampled(FakeNvml(clock, count=2, energy_supported=False), clock, 2.0, on_sample=seen.append)
    assert len(seen) == 22  # start, 20 driven samples, stop
    last = dict((gpu, (w, j)) for gpu, w, j in seen[-1])
    assert last["1"][0] == pytest.approx(120.0)
    assert last["1"][1] == pytest.approx(220.0)  # integrated: ∫0..2 100 + 10 t dt


def test_series_downsampled_and_storage_bounded() -> None:
    clock = FakeClock()
    sampler = sampled(FakeNvml(clock, count=1), clock, 500.0, step=0.1, capacity=3000)
    res = sampler.result()
    assert len(res["gpus"][0]["samples"]["power_w"]) <= 2000
    assert res["sample_count"] <= 3000
    assert res["covered_s"] == pytest.approx(500.0)  # compaction keeps the whole run
    assert res["gpus"][0]["energy_j"] == pytest.approx(100 * 500 + 5 * 500**2, rel=1e-6)


@pytest.mark.parametrize(("env", "expected"), [
    ("2,0", [2, 0]),
    (" 3 ", [3]),
    ("1,7,2", [1]),  # CUDA stops at the first invalid entry
    ("GPU-2222", [2]),  # UUID prefix
    ("GPU-1111aaaa-0000,0", [1, 0]),
])
def test_cuda_visible_devices(env: str, expected: list[int]) -> None:
    clock = FakeClock()
    sampler = GpuSampler(FakeNvml(clock, count=4), interval_s=1e6, clock=clock,
                         env={"CUDA_VISIBLE_DEVICES": env})
    assert sampler.start()
    sampler.stop()
    assert [d["index"] for d in sampler.devices] == expected
    assert [g["index"] for g in sampler.result()["gpus"]] == expected


@pytest.mark.parametrize("env", ["", "-1", "GPU-ffff", "MIG-abcd"])
def test_cuda_visible_devices_hiding_everything(env: str) -> None:
    clock = FakeClock()
    fake = FakeNvml(clock, count=2)
    sampler = GpuSampler(fake, clock=clock, env={"CUDA_VISIBLE_DEVICES": env})
    assert sampler.start() is False
    res = sampler.result()
    assert res == {"available": False, "reason": f"no GPU visible (CUDA_VISIBLE_DEVICES={env!r})"}
    assert fake.shut == 1
    sampler.stop()  # harmless


def test_explicit_gpus_override_env() -> None:
    clock = FakeClock()
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    sampler = GpuSampler(FakeNvml(clock, count=4), gpus=[3, 1], clock=clock, env=env)
    assert sampler.start()
    sampler.stop()
    assert [d["index"] for d in sampler.devices] == [3, 1]


def test_unavailable_reasons(monkeypatch) -> None:
    clock = FakeClock()
    broken = GpuSampler(FakeNvml(clock, init_error="Driver Not Loaded"), clock=clock, env={})
    assert not broken.start()
    assert broken.result() == {"available": False, "reason": "NVML could not initialise: Driver Not Loaded"}

    none = GpuSampler(FakeNvml(clock, count=0), clock=clock, env={})
    assert not none.start() and none.reason == "no GPU visible (NVML sees none)"

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    missing = GpuSampler(env={})
    assert not missing.start()
    assert missing.result() == {"available": False, "reason": "pynvml not installed"}


def test_real_pynvml_without_a_gpu_is_a_reason_not_a_crash() -> None:
    pytest.importorskip("pynvml")
    sampler = GpuSampler(PynvmlBackend(), interval_s=0.05)
    if sampler.start():
        sampler.stop()
        pytest.skip("this machine has a GPU; the no-GPU path is not reachable here")
    assert sampler.reason is not None
    assert sampler.reason.startswith(("NVML could not initialise: ", "no GPU visible"))
    assert sampler.result()["available"] is False


def test_thread_samples_on_its_own_and_failures_surface() -> None:
    fake = FakeNvml(FakeClock(), count=1)
    sampler = GpuSampler(fake, interval_s=0.01, env={})
    assert sampler.start()
    time.sleep(0.3)
    sampler.stop()
    assert sampler.result()["sample_count"] >= 5

    def boom(g: int, t: float) -> float:
        raise RuntimeError("bug in the sampler")

    failing = GpuSampler(FakeNvml(FakeClock(), count=1), interval_s=0.01, env={})
    assert failing.start()
    failing._backend.power = boom  # the first sweep in start() succeeded; the thread's sweeps fail
    time.sleep(0.1)
    with pytest.raises(RuntimeError, match="bug in the sampler"):
        failing.stop()

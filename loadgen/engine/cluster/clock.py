"""Clock offsets between hosts: a UDP time echo on each actor's node, and the driver's estimate.

The driver sends a ping at ``t1`` (its clock), the echo stamps its own clock ``t2`` and the driver
receives the reply at ``t3``. If the two legs took equally long, ``offset = t2 − (t1 + t3) / 2``; in
any case the true offset lies within ``(t3 − t1) / 2`` of that, so the ping with the smallest round
trip gives the tightest bound (the minimum-RTT filter NTP uses), and half its RTT is the uncertainty
the report states. Over loopback a round trip is ~20 µs; a Ray remote call is ~600 µs, which is why
the pings do not go through Ray.

``skew_ns`` is a test seam: an echo that adds it reads like a host whose monotonic clock started
``skew_ns`` earlier, and the actor that owns it converts times it is given back by the same amount.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass

PINGS = 64
_REPLY = struct.Struct("!8sq")


def unnice() -> int:
    """Run the calling thread at niceness 0 where allowed, and return its niceness. Ray starts its
    workers at 15 (``RAY_worker_niceness``): on a busy node such a thread waits behind every other
    process, which reads as issue delay (10-20 ms seen on a 2-core host) and as ping delay. On Linux
    niceness is per thread, so each thread that times something calls this itself."""
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):  # PermissionError without CAP_SYS_NICE: stays as it was
        os.setpriority(os.PRIO_PROCESS, tid, 0)
    return os.getpriority(os.PRIO_PROCESS, tid)


class TimeEcho:
    """Answers each 8-byte ping with the ping and this host's ``perf_counter_ns() + skew_ns``."""

    def __init__(self, host: str, skew_ns: int = 0) -> None:
        self.skew_ns = skew_ns
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self.address: tuple[str, int] = self._sock.getsockname()
        self._thread = threading.Thread(target=self._serve, name="loadgen-time-echo", daemon=True)
        self._thread.start()

    def now_ns(self) -> int:
        return time.perf_counter_ns() + self.skew_ns

    def _serve(self) -> None:
        unnice()
        while True:
            try:
                data, peer = self._sock.recvfrom(64)
                self._sock.sendto(_REPLY.pack(data[:8], self.now_ns()), peer)
            except OSError:  # closed
                return

    def close(self) -> None:
        self._sock.close()


@dataclass(frozen=True)
class ClockOffset:
    """The remote clock minus the driver's, at the ping with the smallest round trip."""

    offset_ns: int
    uncertainty_ns: int  # half that round trip: the true offset is within ± this
    at_ns: int  # the driver's clock at that ping

    def to_dict(self) -> dict[str, float]:
        return {"offset_ms": self.offset_ns / 1e6, "uncertainty_ms": self.uncertainty_ns / 1e6}


def measure_offset(address: tuple[str, int], pings: int = PINGS, timeout_s: float = 0.5) -> ClockOffset:
    """``pings`` round trips to a :class:`TimeEcho` (blocking; lost replies are skipped)."""
    best: tuple[int, int, int] | None = None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(address)
        for _ in range(pings):
            nonce = os.urandom(8)
            t1 = time.perf_counter_ns()
            sock.send(nonce)
            try:
                while True:
                    got, t2 = _REPLY.unpack(sock.recv(64))
                    if got == nonce:  # a late reply to an earlier ping is not this one's
                        break
            except (TimeoutError, OSError, struct.error):
                continue
            t3 = time.perf_counter_ns()
            if best is None or t3 - t1 < best[0]:
                best = (t3 - t1, t2 - (t1 + t3) // 2, t1)
    if best is None:
        raise OSError(f"no reply from the clock echo at {address[0]}:{address[1]} (UDP)")
    rtt, offset, at = best
    return ClockOffset(offset, (rtt + 1) // 2, at)


def drift_ppm(start: ClockOffset, end: ClockOffset) -> float | None:
    """How fast the remote clock ran against the driver's between two measurements, in parts per
    million (None when they are too close together to say)."""
    span = end.at_ns - start.at_ns
    return (end.offset_ns - start.offset_ns) / span * 1e6 if span > 0 else None

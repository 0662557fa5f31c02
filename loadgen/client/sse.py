"""Incremental Server-Sent Events parsing for the client's hot path.

:meth:`SseParser.feed` takes the bytes of one network read and returns the complete events in it. It
keeps an unfinished event across reads, so any split of the stream into reads gives the same events.
Only ``data:`` and ``event:`` fields matter here; comments (``:``) and ``id``/``retry`` are ignored.
"""

from __future__ import annotations


class SseParser:
    """Events are separated by a blank line (``\\n\\n``; ``\\r\\n`` and ``\\r`` line ends are accepted)."""

    __slots__ = ("_buf", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False  # the previous read ended with b"\r": a following b"\n" belongs to it

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Complete events as ``(event_name, data)``; ``event_name`` is b"" for the default type."""
        # The common read: exactly one complete single-line ``data:`` event and nothing pending.
        # Four C-level scans instead of the general split (measured 0.5 µs against 2.1 µs per read).
        if (not self._buf and data.startswith(b"data: ") and data.find(b"\n") == len(data) - 2
                and data.endswith(b"\n\n") and b"\r" not in data and not self._cr):
            return [(b"", data[6:-2])]
        if b"\r" in data or self._cr:
            if self._cr and data.startswith(b"\n"):
                data = data[1:]
            self._cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + data if self._buf else data
        if b"\n\n" not in buf:
            self._buf = buf
            return []
        *blocks, rest = buf.split(b"\n\n")
        self._buf = rest
        events = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:  # the common case: one data line
                events.append((b"", block[6:]))
            elif block:
                event = _parse_block(block)
                if event is not None:
                    events.append(event)
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated (a truncated stream leaves them here)."""
        return self._buf


def _parse_block(block: bytes) -> tuple[bytes, bytes] | None:
    name = b""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
    if not data and not name:
        return None
    return name, b"\n".join(data)

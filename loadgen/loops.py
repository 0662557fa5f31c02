"""The event loop loadgen runs on: uvloop when it is installed, else asyncio's default.

Chosen by whoever starts a loop (the CLI, :func:`loadgen.engine.runner.run`, a worker process, the
simulator); importing loadgen never sets a global event-loop policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop.new_event_loop`` when importable, else None (``asyncio.Runner``'s default loop)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop

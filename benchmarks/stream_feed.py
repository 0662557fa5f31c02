"""CPU per streamed chat chunk of the client's stream reader (``StreamState.feed``), as a ratio against a
reference in the same run: the reader as it was at commit caa0cf4, before reasoning-aware reading, so a
change to the hot path shows up. Needs the git history:

    .venv/bin/python benchmarks/stream_feed.py
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadgen.client import stream  # noqa: E402
from loadgen.client.protocol import Chat  # noqa: E402
from loadgen.records import RequestRecord  # noqa: E402

CHUNK = (b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m","choices":'
         b'[{"index":0,"delta":{"content":" w0001"},"logprobs":null,"finish_reason":null,'
         b'"stop_reason":null}],"usage":null}\n\n')


def reference() -> Any:
    path = Path("/tmp/loadgen-stream-feed-reference.py")
    path.write_text(subprocess.run(["git", "show", "caa0cf4:loadgen/client/client.py"], cwd=REPO, check=True,
                                   capture_output=True, text=True).stdout)
    spec = importlib.util.spec_from_file_location("loadgen_reference_client", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def per_chunk_us(make: Callable[[RequestRecord], Any], chunks: int = 128, streams: int = 800) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(streams):
            state = make(RequestRecord(index=0, sample=0, query=0, scheduled_ns=0, sent_ns=0, end_ns=0))
            for i in range(chunks):
                state.feed(CHUNK, i)
        best = min(best, (time.perf_counter() - start) / (chunks * streams))
    return best * 1e6


def main() -> None:
    old = reference()
    ref = per_chunk_us(lambda r: old.StreamState(r, Chat.text, False))
    now = per_chunk_us(lambda r: stream.StreamState(r, Chat.text, False, Chat.thinking))
    print(f"reference (caa0cf4) {ref:.3f} us/chunk, now {now:.3f} us/chunk, ratio {now / ref:.3f}")


if __name__ == "__main__":
    main()

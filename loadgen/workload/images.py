"""Image inputs for chat: synthetic PNGs made here, or the files of a local folder, sent as base64 data
URLs in OpenAI content parts (``{"type": "image_url", "image_url": {"url": "data:image/png;base64,…"}}``).

::

    dataset = with_images(dataset, ImageSpec(count=2, width=512, height=512), seed=0)

Every synthetic image is distinct (its pixels come from the request's own seed), so a server's
multimodal cache cannot flatter a run; it is a random 16×16 tile repeated over the picture, so the PNG
stays small (a few KB for 512×512) and building it costs about a millisecond. Its pixel size, which sets
the image tokens a vision model spends, is exactly what was asked. For realistic bytes on the wire, point
``folder`` at real pictures: they are sent as they are, in name order, cycling. The images are built when
the prompts are, before the clock starts, never on the load path.
"""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.errors import ConfigError
from loadgen.specs import ImageSpec
from loadgen.workload.samples import Dataset

__all__ = ["IMAGE_TYPES", "folder_images", "png", "with_images"]

#: File suffixes a folder may hold, and the media type each is sent as.
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif"}
_TILE = 16


def png(width: int, height: int, seed: int) -> bytes:
    """An RGB PNG of ``width`` × ``height`` pixels: a random tile from ``seed``, repeated."""
    tile = np.random.default_rng(seed).integers(0, 256, size=(_TILE, _TILE, 3), dtype=np.uint8)
    reps = (-(-height // _TILE), -(-width // _TILE), 1)
    pixels = np.tile(tile, reps)[:height, :width]
    raw = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # filter byte 0 (None) on each row
    raw[:, 1:] = pixels.reshape(height, 3 * width)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def folder_images(folder: Path) -> list[tuple[bytes, str]]:
    """``(bytes, media type)`` of every image file in ``folder``, by name. ConfigError naming the folder."""
    if not folder.is_dir():
        raise ConfigError(f"images.folder {folder}: not a folder; give a folder of "
                          f"{', '.join(sorted(IMAGE_TYPES))} files (--image-folder)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_TYPES and p.is_file())
    if not files:
        raise ConfigError(f"images.folder {folder}: no image files ({', '.join(sorted(IMAGE_TYPES))}); "
                          "put pictures there or drop --image-folder for synthetic ones")
    return [(p.read_bytes(), IMAGE_TYPES[p.suffix.lower()]) for p in files]


def _part(data: bytes, media: str) -> dict[str, Any]:
    url = f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def with_images(dataset: Dataset, spec: ImageSpec, seed: int) -> Dataset:
    """``dataset`` with ``spec.count`` images after the text of each prompt's last user message."""
    files = folder_images(spec.folder) if spec.folder is not None else None
    samples, sizes, k = [], [], 0
    for i, s in enumerate(dataset.samples):
        parts, nbytes = [], 0
        for j in range(spec.count):
            if files is not None:
                data, media = files[k % len(files)]
                k += 1
            else:
                data, media = png(spec.width, spec.height, seed * 1_000_003 + i * spec.count + j), "image/png"
            parts.append(_part(data, media))
            nbytes += len(data)
        sizes.append(nbytes)
        samples.append(replace(s, messages=_attach(s.as_messages(), parts)))
    images = {"per_request": spec.count, "source": str(spec.folder) if files is not None else "synthetic",
              "bytes_per_request_mean": float(np.mean(sizes)) if sizes else 0.0,
              "bytes_per_request_max": int(max(sizes, default=0))}
    if files is None:
        images |= {"width": spec.width, "height": spec.height, "distinct": len(samples) * spec.count}
    else:
        images["files"] = len(files)
    return replace(dataset, samples=samples, images=images)


def _attach(messages: list[dict[str, Any]], parts: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None:
        messages.append({"role": "user", "content": parts})
    else:
        text = messages[last].get("content")
        text_parts = [{"type": "text", "text": text}] if isinstance(text, str) and text else []
        messages[last] = {**messages[last], "content": text_parts + parts}
    return tuple(messages)

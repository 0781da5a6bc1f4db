"""The record schema: what one LMDB value holds, and helpers to pack/unpack it.

A record is a plain dict that msgpack can serialise (never pickle). Field conventions:

    id            str     unique within the store
    image         bytes   PNG (RGB); ``width``/``height`` give its size in pixels
    objects       list    each: box [x0, y0, x1, y1] in pixels (float), category (str),
                          plus any attributes (shape, colour, size, depth, mask PNG bytes ...)
    captions      list[str]
    ...                   task-specific fields (refs, vqa, ...) documented by whoever writes them

Images and masks are PNG bytes inside the record so a record is self-contained; decoding happens
in the example builder (in DataLoader workers), not in the store.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

SCHEMA_VERSION = 1
META_KEY = b"__meta__"


def png_bytes(array: np.ndarray) -> bytes:
    """Encode an HxW (uint8/uint16) or HxWx3 (uint8) array as PNG."""
    img = Image.fromarray(np.ascontiguousarray(array))  # uint16 becomes mode "I;16"
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes, *, what: str = "image") -> np.ndarray:
    """Decode PNG bytes to an array; a corrupt value raises ValueError naming ``what``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I"):
                return np.asarray(img, dtype=np.uint16) if img.mode != "I" else np.asarray(img).astype(np.uint16)
            return np.asarray(img)
    except Exception as e:  # PIL raises several types for bad data
        raise ValueError(f"{what}: not a decodable PNG ({e})") from e


def decode_rgb(data: bytes, *, what: str = "image") -> np.ndarray:
    """Decode image bytes (any format PIL reads) to HxWx3 uint8."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as e:
        raise ValueError(f"{what}: not a decodable image ({e})") from e

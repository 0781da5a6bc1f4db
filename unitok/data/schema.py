"""The record schema: what one LMDB value holds, and helpers to pack/unpack it.

A record is a plain dict that msgpack can serialise (never pickle). Field conventions:

    id            str     unique within the store
    image         bytes   PNG (RGB); ``width``/``height`` give its size in pixels
    objects       list    each: box [x0, y0, x1, y1] in pixels (float), category (str),
                          plus any attributes (shape, colour, size, depth, mask PNG bytes ...)
    captions      list[str]
    segmentation  bytes   PNG L (H, W): class ids, 0 = background (optional)
    depth         bytes   PNG I;16 (H, W): 1/``DEPTH_SCALE`` metres (the store's meta ``depth_scale`` if it
                          has one), 0 = no reading (optional)
    ...                   task-specific fields (refs, vqa, ...) documented by whoever writes them

Images and masks are PNG bytes inside the record so a record is self-contained; decoding happens
in the example builder (in DataLoader workers), not in the store.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

SCHEMA_VERSION = 1
META_KEY = b"__meta__"
DEPTH_SCALE = 1000  # depth-map units per metre: uint16 millimetres, so up to 65.5 m


_PNG_DIRECT_MAX_PIXELS = 256 * 256


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_direct(a: np.ndarray) -> bytes:
    """A plain PNG (no filtering, zlib level 1) written directly: for small images PIL's per-call overhead
    is most of the cost (a 64x64 mask: 0.4 ms through PIL, 25 us here)."""
    if a.dtype == np.uint16:
        rows, colour_type, depth = a.astype(">u2").view(np.uint8), 0, 16
    else:
        rows, colour_type, depth = a, (2 if a.ndim == 3 else 0), 8
    h, w = a.shape[:2]
    data = np.zeros((h, 1 + rows.size // h), np.uint8)  # filter byte 0 (None) per row
    data[:, 1:] = rows.reshape(h, -1)
    header = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(data.tobytes(), 1)) \
        + _chunk(b"IEND", b"")


def png_bytes(array: np.ndarray) -> bytes:
    """Encode an HxW (uint8/uint16) or HxWx3 (uint8) array as PNG."""
    a = np.ascontiguousarray(array)
    plain = (a.ndim == 2 and a.dtype in (np.uint8, np.uint16)) or (a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8)
    if plain and 0 < a.shape[0] * a.shape[1] <= _PNG_DIRECT_MAX_PIXELS:
        return _png_direct(a)
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


def depth_metres(values: np.ndarray, scale: float = DEPTH_SCALE) -> np.ndarray:
    """A depth map's stored values (uint16 units of 1/``scale`` m) -> float32 metres; 0 (no reading) stays 0."""
    return values.astype(np.float32) / float(scale)


def decode_rgb(data: bytes, *, what: str = "image") -> np.ndarray:
    """Decode image bytes (any format PIL reads) to HxWx3 uint8."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(to_rgb(img))
    except Exception as e:
        raise ValueError(f"{what}: not a decodable image ({e})") from e


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any image PIL opens as 8-bit RGB, with its values rescaled rather than clipped.

    PIL's own ``convert("RGB")`` clips 16-bit and integer images at 255 (a 16-bit PNG turns all
    white) and float images too. Here 16-bit and ``I`` (32-bit integer, which is how 16-bit files
    often open) images are read on the 16-bit scale, 0-65535 -> 0-255; float (``F``) images as
    [0, 1] when every value is in [0, 1], else as PIL's 0-255 scale, clipped. Alpha is dropped."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        if img.mode == "F":
            scale = 255.0 if a.size and a.min() >= 0 and a.max() <= 1 else 1.0
        else:
            scale = 255.0 / 65535.0
        grey = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode in ("La", "RGBa"):  # premultiplied alpha: PIL converts these only via their plain forms
        img = img.convert(img.mode[:-1] + "A")
    return img.convert("RGB")

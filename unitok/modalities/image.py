"""Input images for the encoder: decode, resize to the model's square input, normalise.

Images enter the model as ViT patch embeddings of this tensor. Boxes are tokenized relative to
the *original* width/height, so the resize does not move them.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..data.schema import to_rgb
from ..errors import InputError

MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding
# The input-size policy of every surface (CLI, Pipeline, demo): a side under MIN_SIDE pixels holds too
# little to resize from and is refused; anything larger is resized to the model's input (downscaled).
MIN_SIDE = 8
ACCEPTED = ("PNG/JPEG/... bytes, a path (Pipeline), a PIL image, an HxW or HxWxC numpy array, or a CxHxW "
            "or HxWxC torch tensor (C = 1, 3 or 4), uint8 (0-255), uint16 (0-65535) or float in [0, 1]")


def load_image(data: bytes | np.ndarray | torch.Tensor | Image.Image, *, what: str = "image") -> Image.Image:
    """Accept image bytes, a PIL image, a numpy array or a torch tensor; return an 8-bit RGB PIL image.

    Every mode PIL opens is rescaled to 8 bit (a 16-bit PNG is not clipped to white: ``to_rgb``)."""
    if isinstance(data, Image.Image):
        return to_rgb(data)
    if isinstance(data, torch.Tensor):
        return _array_image(data.detach().cpu().numpy(), what, channels_first=True)
    if isinstance(data, np.ndarray):
        return _array_image(data, what, channels_first=False)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"{what}: a {type(data).__name__} is not an image; give {ACCEPTED}")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} is larger than the {MAX_PIXELS} pixels allowed")
        img.load()
    except Exception as e:
        raise InputError(f"{what}: not a readable image ({e})") from e
    return to_rgb(img)


def _array_image(a: np.ndarray, what: str, *, channels_first: bool) -> Image.Image:
    """HxW, HxWxC or (tensors) CxHxW arrays of uint8, uint16 or float in [0, 1] -> RGB."""
    kind = "tensor" if channels_first else "array"
    if a.ndim == 3 and channels_first and a.shape[0] in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # CxHxW -> HxWxC
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
        raise InputError(f"{what}: a {kind} of shape {tuple(a.shape)} is not an image; give {ACCEPTED}")
    if a.ndim == 3:
        a = a[..., 0] if a.shape[2] == 1 else a[..., :3]  # alpha dropped
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = np.rint(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        lo, hi = (float(np.min(a)), float(np.max(a))) if a.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo and hi <= 1.0):
            raise InputError(f"{what}: a float {kind} must hold values in [0, 1], this one spans [{lo:g}, {hi:g}] "
                             "(scale it, or give uint8 0-255)")
        a = np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise InputError(f"{what}: a {kind} of dtype {a.dtype} is not an image; give {ACCEPTED}")
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise InputError(f"{what}: {a.shape[1]}x{a.shape[0]} is larger than the {MAX_PIXELS} pixels allowed")
    img = Image.fromarray(np.ascontiguousarray(a))
    return img if img.mode == "RGB" else img.convert("RGB")


def check_size(img: Image.Image, *, what: str = "image") -> Image.Image:
    """The size policy for user input: each side at least ``MIN_SIDE`` pixels (larger is downscaled)."""
    if min(img.size) < MIN_SIDE:
        raise InputError(f"{what} is {img.width}x{img.height} pixels; images must be at least {MIN_SIDE} pixels a side")
    return img


def image_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> (3, size, size) float in [-1, 1]."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float().div_(127.5).sub_(1.0)

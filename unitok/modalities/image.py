"""Input images for the encoder: decode, resize to the model's square input, normalise.

Images enter the model as ViT patch embeddings of this tensor. Boxes are tokenized relative to
the *original* width/height, so the resize does not move them.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding


def load_image(data: bytes | np.ndarray | Image.Image, *, what: str = "image") -> Image.Image:
    """Accept PNG/JPEG bytes, an HxWx3 uint8 array or a PIL image; return an RGB PIL image."""
    if isinstance(data, Image.Image):
        return data.convert("RGB")
    if isinstance(data, np.ndarray):
        if data.ndim != 3 or data.shape[2] not in (3, 4) or data.dtype != np.uint8:
            raise ValueError(f"{what}: expected an HxWx3 uint8 array, got shape {data.shape} dtype {data.dtype}")
        return Image.fromarray(data[..., :3])
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} is larger than the {MAX_PIXELS} pixels allowed")
        img.load()
    except Exception as e:
        raise ValueError(f"{what}: not a readable image ({e})") from e
    return img.convert("RGB")


def image_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> (3, size, size) float in [-1, 1]."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float().div_(127.5).sub_(1.0)

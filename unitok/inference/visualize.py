"""Render a structured output for people: boxes drawn, masks overlaid, depth colour-mapped."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..modalities.image import load_image
from ..tasks.outputs import Boxes, DenseMap, GeneratedImage, Label, Region, Text

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def depth_colormap(depth: np.ndarray) -> np.ndarray:
    """Near = warm, far = cool; a small built-in ramp so no plotting library is needed."""
    d = depth.astype(np.float32)
    valid = d > 0
    lo, hi = (float(d[valid].min()), float(d[valid].max())) if valid.any() else (0.0, 1.0)
    t = np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1)
    stops = np.array([[180, 4, 38], [244, 109, 67], [254, 224, 144], [171, 217, 233], [69, 117, 180], [49, 54, 149]], np.float32)
    x = t * (len(stops) - 1)
    i = np.clip(x.astype(int), 0, len(stops) - 2)
    f = (x - i)[..., None]
    rgb = stops[i] * (1 - f) + stops[i + 1] * f
    rgb[~valid] = 0
    return rgb.astype(np.uint8)


def segmentation_overlay(image: Image.Image, classes: np.ndarray, alpha: float = 0.5) -> Image.Image:
    base = np.asarray(load_image(image), dtype=np.float32)
    cls = np.asarray(Image.fromarray(classes.astype(np.uint8)).resize(image.size, Image.NEAREST))
    colours = np.array([(0, 0, 0)] + PALETTE, np.float32)[np.clip(cls, 0, len(PALETTE))]
    mask = (cls > 0)[..., None]
    out = np.where(mask, base * (1 - alpha) + colours * alpha, base)
    return Image.fromarray(out.astype(np.uint8))


def _auto_scale(size: tuple[int, int], scale: int | None) -> int:
    """Small images are enlarged (nearest neighbour) to about 256 pixels a side, so boxes and text read."""
    return scale or max(1, 256 // max(size))


def visualize(output, image=None, *, scale: int | None = None, region=None) -> Image.Image:
    """A PIL image showing ``output`` on ``image`` (path, bytes, array or PIL). ``region``: the
    ``[x0, y0, x1, y1]`` box a region task was asked about, drawn with its answer."""
    if isinstance(output, GeneratedImage):
        img = Image.fromarray(output.image)
        scale = _auto_scale(img.size, scale)
        return img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if isinstance(image, str):
        with open(image, "rb") as f:
            image = f.read()
    base = load_image(image) if image is not None else Image.new("RGB", (64, 64))
    scale = _auto_scale(base.size, scale)
    big = base.resize((base.width * scale, base.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    if isinstance(output, (Boxes, Region)):
        boxes = output.boxes if isinstance(output, Boxes) else [output.box]
        for k, b in enumerate(boxes):
            colour = PALETTE[k % len(PALETTE)]
            draw.rectangle([b.x0 * scale, b.y0 * scale, b.x1 * scale - 1, b.y1 * scale - 1], outline=colour, width=2)
            if b.label:
                draw.text((b.x0 * scale + 2, b.y0 * scale + 1), f"{b.label} {b.score:.2f}", fill=colour)
    elif isinstance(output, DenseMap):
        if output.kind == "depth":
            return Image.fromarray(depth_colormap(output.values)).resize(big.size, Image.NEAREST)
        return segmentation_overlay(big, output.values)
    elif isinstance(output, (Text, Label)):
        text = output.text if isinstance(output, Text) else output.label
        if region is not None:
            x0, y0, x1, y1 = (float(v) * scale for v in region)
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=PALETTE[0], width=2)
        canvas = Image.new("RGB", (big.width, big.height + 40), (255, 255, 255))
        canvas.paste(big, (0, 0))
        ImageDraw.Draw(canvas).text((4, big.height + 4), text[:80], fill=(0, 0, 0))
        return canvas
    return big

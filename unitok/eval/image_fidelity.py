"""Image fidelity of text-to-image generation: are the requested coloured shapes in the picture?

``add(GeneratedImage, reference)``; the reference lists the requested objects, either
``{"objects": [{"colour": "red", "shape": "circle"}, ...]}`` ("color" is accepted too) or a list of
``(colour, shape)`` pairs. Option ``palette={name: (r, g, b)}`` (required) names the colours.

How an image is judged
  1. Colour: every pixel takes the nearest palette colour (Euclidean RGB) if it lies within
     ``colour_tolerance``, else none. Palette names listed in ``background`` are colours, not objects
     (pass the scene backgrounds there so dark or grey pixels are not read as objects).
  2. Regions: 8-connected components of each object colour, of at least ``min_area`` (a fraction of
     the image) pixels; smaller specks are noise.
  3. Shape: a region is cropped to its bounding box, resampled to a 16x16 occupancy grid and
     compared (soft IoU) with templates drawn in a unit box: circle (inscribed disc), square (full
     box), triangle (apex up, down, left or right), diamond (rhombus through the edge midpoints),
     cross (plus sign, bars 0.38 of the extent thick). The region's shape is the best template, if its
     IoU is at least ``min_shape_iou`` and the box is not elongated beyond ``max_aspect``. Area
     ratios alone cannot tell a triangle from a diamond (both fill half their box); templates can.
  4. Matching: each requested (colour, shape) takes at most one region of that colour and shape,
     one-to-one and greedily in request order.

Keys, micro-averaged over the set:
  ``colour_recall``   requested objects whose colour appears as some region;
  ``object_recall``   requested objects matched by a region of the right colour and shape;
  ``object_precision`` matched regions / all object-coloured regions (penalises extra objects);
  ``fidelity``        F1 of object_recall and object_precision. Primary: ``fidelity``.

Calibration: unoccluded shapes drawn like the synthetic world's (64 and 128 px images, radii 5 to
30 px) are all classified correctly; the world's own rendered scenes, with their occlusions and
touching same-colour objects, score fidelity ~0.87 against their object lists, which is therefore
roughly the ceiling a perfect generator reaches on such crowded scenes.

Limits: an object occluded by another, or two touching objects of one colour (they merge into one
region), fail the shape test; shapes other than the five templates cannot be requested; colours are
judged in RGB against a fixed palette, so a generator that shifts hues beyond the tolerance fails
even when a person would accept the colour. It measures what was asked for, not image quality
(use FID-style metrics for that, which need a pretrained network this project does not ship).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from unitok.tasks.outputs import GeneratedImage

from .base import Evaluator
from .registry import register_evaluator

GRID = 16  # side of the occupancy grid a region is compared on
_SUPERSAMPLE = 4


def _unit_samples(n: int) -> np.ndarray:
    """Sample positions in [0, 1): ``n`` per grid cell along each axis, at sub-cell centres."""
    return (np.arange(GRID * n) + 0.5) / (GRID * n)


def _occupancy(inside: np.ndarray, n: int) -> np.ndarray:
    """Average a (GRID*n, GRID*n) boolean sample grid down to (GRID, GRID) occupancy in [0, 1]."""
    return inside.reshape(GRID, n, GRID, n).mean(axis=(1, 3))


def _templates() -> dict[str, list[np.ndarray]]:
    n = 8
    v, u = np.meshgrid(_unit_samples(n), _unit_samples(n), indexing="ij")  # rows (y), columns (x)
    up = np.abs(u - 0.5) <= 0.5 * v  # apex at the top centre, base along the bottom
    shapes = {
        "circle": [(u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25],
        "square": [np.ones_like(u, dtype=bool)],
        "triangle": [up, up[::-1], up.T, up.T[:, ::-1]],
        "diamond": [np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5],
        "cross": [(np.abs(u - 0.5) <= 0.19) | (np.abs(v - 0.5) <= 0.19)],
    }
    return {name: [_occupancy(m, n) for m in masks] for name, masks in shapes.items()}


TEMPLATES = _templates()
SHAPES = tuple(TEMPLATES)


def shape_scores(region: np.ndarray) -> dict[str, float]:
    """Soft IoU of a boolean region mask (cropped to its bounding box) with each shape template."""
    h, w = region.shape
    samples = _unit_samples(_SUPERSAMPLE)
    rows = np.minimum((samples * h).astype(np.int64), h - 1)
    cols = np.minimum((samples * w).astype(np.int64), w - 1)
    occ = _occupancy(region[rows[:, None], cols[None, :]], _SUPERSAMPLE)
    return {
        name: max(float(np.minimum(occ, t).sum() / np.maximum(occ, t).sum()) for t in variants)
        for name, variants in TEMPLATES.items()
    }


def connected_regions(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """8-connected components of a boolean HxW mask, each as (row indices, column indices)."""
    h, w = mask.shape
    flat = mask.ravel().tolist()
    seen = [False] * (h * w)
    regions = []
    for start in np.flatnonzero(mask).tolist():
        if seen[start]:
            continue
        seen[start] = True
        stack, members = [start], []
        while stack:
            i = stack.pop()
            members.append(i)
            y, x = divmod(i, w)
            for ny in (y - 1, y, y + 1):
                if 0 <= ny < h:
                    for nx in (x - 1, x, x + 1):
                        j = ny * w + nx
                        if 0 <= nx < w and flat[j] and not seen[j]:
                            seen[j] = True
                            stack.append(j)
        idx = np.asarray(members)
        regions.append((idx // w, idx % w))
    return regions


def _requests(reference: Any) -> list[tuple[str, str]]:
    items = reference.get("objects") if isinstance(reference, Mapping) else reference
    if not isinstance(items, (list, tuple)):
        raise TypeError(
            "image_fidelity: reference must be {'objects': [{'colour', 'shape'}, ...]} or a list of "
            f"(colour, shape) pairs, got {type(reference).__name__}"
        )
    out = []
    for item in items:
        if isinstance(item, Mapping):
            colour, shape = item.get("colour", item.get("color")), item.get("shape")
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            colour, shape = item
        else:
            raise TypeError(f"image_fidelity: cannot read a (colour, shape) request from {item!r}")
        out.append((str(colour), str(shape)))
    return out


def _image(value: Any) -> np.ndarray:
    array = value.image if isinstance(value, GeneratedImage) else value
    if not isinstance(array, np.ndarray) or array.ndim != 3 or array.shape[2] != 3:
        raise TypeError("image_fidelity: prediction must be a GeneratedImage (HxWx3 uint8)")
    if array.dtype.kind == "f" and array.size and float(array.max()) <= 1.0:
        array = array * 255.0  # a float image in [0, 1]
    return array.astype(np.float64)


@register_evaluator("image_fidelity")
class ImageFidelityEvaluator(Evaluator):
    primary = "fidelity"

    def __init__(
        self,
        *,
        palette: Mapping[str, tuple[int, int, int]] | None = None,
        background: list[str] | tuple[str, ...] = (),
        colour_tolerance: float = 80.0,
        min_area: float = 0.004,
        min_shape_iou: float = 0.6,
        max_aspect: float = 1.5,
    ):
        if not palette:
            raise ValueError("image_fidelity: needs option palette={colour name: (r, g, b)}")
        unknown = [b for b in background if b not in palette]
        if unknown:
            raise ValueError(f"image_fidelity: background colours {unknown} are not in the palette")
        self.names = list(palette)
        self.rgb = np.asarray([palette[n] for n in self.names], dtype=np.float64)  # (K, 3)
        self.background = set(background)
        self.colour_tolerance = colour_tolerance
        self.min_area = min_area
        self.min_shape_iou = min_shape_iou
        self.max_aspect = max_aspect
        super().__init__()

    def _reset_state(self) -> None:
        self.requested = self.colour_found = self.matched = self.regions = 0

    def describe(self, image: Any) -> list[dict[str, Any]]:
        """The object regions seen in ``image``: colour, shape (or None), template scores, box, area."""
        pixels = _image(image)
        h, w, _ = pixels.shape
        dist = np.linalg.norm(pixels.reshape(-1, 1, 3) - self.rgb[None], axis=2)  # (H*W, K)
        nearest = dist.argmin(axis=1)
        nearest[dist.min(axis=1) > self.colour_tolerance] = -1
        nearest = nearest.reshape(h, w)
        found = []
        for k, name in enumerate(self.names):
            if name in self.background:
                continue
            for ys, xs in connected_regions(nearest == k):
                if ys.size < self.min_area * h * w:
                    continue
                y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
                crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
                crop[ys - y0, xs - x0] = True
                scores = shape_scores(crop)
                best = max(scores, key=scores.get)
                aspect = max(crop.shape) / min(crop.shape)
                ok = scores[best] >= self.min_shape_iou and aspect <= self.max_aspect
                found.append(
                    {"colour": name, "shape": best if ok else None, "scores": scores,
                     "box": (int(x0), int(y0), int(x1), int(y1)), "area": int(ys.size)}
                )  # fmt: skip
        return found

    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        requests = _requests(reference)
        for colour, shape in requests:
            if colour not in self.names or colour in self.background:
                objects = [n for n in self.names if n not in self.background]
                raise ValueError(f"image_fidelity: requested colour {colour!r} is not an object colour: {objects}")
            if shape not in TEMPLATES:
                raise ValueError(f"image_fidelity: requested shape {shape!r} unknown; known: {', '.join(SHAPES)}")
        regions = self.describe(prediction)
        used = [False] * len(regions)
        for colour, shape in requests:
            self.colour_found += any(r["colour"] == colour for r in regions)
            candidates = [
                i for i, r in enumerate(regions) if not used[i] and r["colour"] == colour and r["shape"] == shape
            ]
            if candidates:
                used[max(candidates, key=lambda i: regions[i]["scores"][shape])] = True
                self.matched += 1
        self.requested += len(requests)
        self.regions += len(regions)
        self.count += 1

    def compute(self) -> dict[str, float]:
        self._require_examples()
        # Empty denominators are vacuously perfect: nothing requested, nothing missed.
        recall = self.matched / self.requested if self.requested else 1.0
        precision = self.matched / self.regions if self.regions else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            "fidelity": f1,
            "colour_recall": self.colour_found / self.requested if self.requested else 1.0,
            "object_recall": recall,
            "object_precision": precision,
        }

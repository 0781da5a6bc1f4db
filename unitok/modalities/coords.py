"""Pix2Seq coordinate quantization.

Convention (one for the whole project): a coordinate ``v`` in pixels along an axis of ``extent``
pixels (width for x, height for y) maps to the bin

    bin = round(v / extent * (bins - 1)),   clipped to [0, bins - 1]

and a bin maps back to ``bin / (bins - 1) * extent``. So bin 0 is the image's left/top edge and
bin ``bins-1`` its right/bottom edge (pixel-edge convention: a box over column 0 only is [0, 1)).
Round-trip error is at most ``extent / (2 * (bins - 1))`` pixels. Coordinates are normalised by
the image size, so the same tokens mean the same place at any resolution.
Boxes are written x0, y0, x1, y1 (Pix2Seq writes y first; xyxy matches the records).
"""
from __future__ import annotations

from typing import Sequence


class CoordQuantizer:
    def __init__(self, bins: int):
        if bins < 2:
            raise ValueError(f"coordinate bins must be >= 2, got {bins}")
        self.bins = bins

    def quantize(self, value: float, extent: float) -> int:
        b = round(float(value) / float(extent) * (self.bins - 1))
        return min(max(b, 0), self.bins - 1)

    def dequantize(self, b: int, extent: float) -> float:
        return b / (self.bins - 1) * float(extent)

    def max_error(self, extent: float) -> float:
        return extent / (2 * (self.bins - 1))

    def quantize_box(self, box: Sequence[float], width: float, height: float) -> list[int]:
        x0, y0, x1, y1 = box
        return [self.quantize(x0, width), self.quantize(y0, height), self.quantize(x1, width), self.quantize(y1, height)]

    def dequantize_box(self, bins: Sequence[int], width: float, height: float) -> list[float]:
        b0, b1, b2, b3 = bins
        return [self.dequantize(b0, width), self.dequantize(b1, height), self.dequantize(b2, width), self.dequantize(b3, height)]

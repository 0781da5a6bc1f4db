"""Structured outputs: what a target format parses a token sequence into, and what evaluators score.

These types are the contract between tasks, inference and eval. Coordinates are pixels of the
input image, xyxy, with the pixel-edge convention (a box covering only column 0 is [0, 1)).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Text:
    text: str


@dataclass
class Label:
    label: str
    score: float | None = None


@dataclass
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    label: str = ""
    score: float = 1.0

    @property
    def xyxy(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass
class Boxes:
    boxes: list[Box] = field(default_factory=list)


@dataclass
class Region:
    box: Box


@dataclass
class GeneratedImage:
    image: np.ndarray  # HxWx3 uint8

    def pil(self):
        """The image as a PIL image."""
        from PIL import Image

        return Image.fromarray(self.image)


@dataclass
class DenseMap:
    """A per-pixel map: class indices (segmentation, with ``classes`` naming them) or depth values."""

    values: np.ndarray  # HxW; int64 class ids or float32 depth
    kind: str  # "segmentation" | "depth" | "mask"
    classes: list[str] | None = None

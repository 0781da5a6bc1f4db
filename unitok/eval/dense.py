"""Dense prediction metrics: segmentation mIoU and monocular depth errors.

Both take ``add(DenseMap, DenseMap)`` (a bare HxW array is accepted too). A prediction whose size
differs from the reference's is resized to it by nearest neighbour (dense outputs decoded from a
code grid need not come back at the reference resolution); metrics are always at reference size.

``miou`` accumulates one confusion matrix over the whole set (not a mean of per-image IoUs):
  IoU_c = TP_c / (TP_c + FP_c + FN_c) for every class c present in the references or the
  predictions; ``miou`` is their mean, ``pixel_accuracy`` = TP / valid pixels. Reference pixels equal
  to ``ignore_index`` (default 255; ``None`` to keep all) are left out; a *predicted* ``ignore_index``
  is no class, so it only costs the reference class a false negative. ``per_class=True`` adds
  ``iou/<class>`` keys, named by the reference's ``classes`` when it has them.
  Keys: ``miou``, ``pixel_accuracy``. Primary: ``miou``.

``depth`` (metres) over valid pixels, reference > 0 and finite (and <= ``max_depth`` if set);
predictions are clipped to ``min_depth`` so ratios stay finite. Per-image values are averaged over
images, the NYUv2/KITTI convention (Eigen et al. 2014):
  abs_rel = mean |p - g| / g, rmse = sqrt(mean (p - g)^2), delta_k = fraction of max(p/g, g/p) < 1.25^k.
  Keys: ``abs_rel``, ``rmse`` (lower is better), ``delta1``, ``delta2``, ``delta3``. Primary: ``delta1``.

The formulas are ``unitok.metrics`` (``confusion_counts``, ``class_ious``, ``depth_errors``), which the
VQ-VAE trainer's round-trip measurement uses too.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from unitok.metrics import DEPTH_KEYS, class_ious, confusion_counts, depth_errors, pixel_accuracy
from unitok.tasks.outputs import DenseMap

from .base import Evaluator
from .registry import register_evaluator


SEGMENTATION_KINDS = ("segmentation", "mask")


def _values(
    value: Any, *, metric: str, role: str, kinds: tuple[str, ...]
) -> tuple[np.ndarray, list[str] | None]:
    if isinstance(value, DenseMap):
        if value.kind not in kinds:
            raise ValueError(f"{metric}: {role} is a {value.kind!r} map; expected one of {kinds}")
        array, classes = np.asarray(value.values), value.classes
    elif isinstance(value, np.ndarray):
        array, classes = value, None
    else:
        raise TypeError(f"{metric}: {role} must be a DenseMap (or HxW array), got {type(value).__name__}")
    if array.ndim != 2:
        raise ValueError(f"{metric}: {role} must be HxW, got shape {array.shape}")
    return array, classes


def resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an HxW array to ``shape`` (sampling pixel centres)."""
    if array.shape == shape:
        return array
    h, w = array.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return array[rows[:, None], cols[None, :]]


@register_evaluator("miou")
class SegmentationEvaluator(Evaluator):
    primary = "miou"

    def __init__(self, *, ignore_index: int | None = 255, per_class: bool = False):
        self.ignore_index = ignore_index
        self.per_class = per_class
        super().__init__()

    def _reset_state(self) -> None:
        self.pairs: dict[tuple[int, int], int] = {}  # (reference class, predicted class) -> pixels
        self.class_names: list[str] | None = None

    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        ref, classes = _values(reference, metric="miou", role="reference", kinds=SEGMENTATION_KINDS)
        pred, _ = _values(prediction, metric="miou", role="prediction", kinds=SEGMENTATION_KINDS)
        try:
            counts = confusion_counts(ref, resize_nearest(pred, ref.shape), ignore_index=self.ignore_index)
        except ValueError as e:
            raise ValueError(f"miou: {e}") from None
        for pair, n in counts.items():
            self.pairs[pair] = self.pairs.get(pair, 0) + n
        if classes and self.class_names is None:
            self.class_names = list(classes)
        self.count += 1

    def compute(self) -> dict[str, float]:
        self._require_examples()
        if sum(self.pairs.values()) == 0:
            raise ValueError("miou: every reference pixel was ignored")
        ious = class_ious(self.pairs, ignore_index=self.ignore_index)
        out = {"miou": float(np.mean(list(ious.values()))), "pixel_accuracy": pixel_accuracy(self.pairs)}
        if self.per_class:
            for c, iou in ious.items():
                name = self.class_names[c] if self.class_names and c < len(self.class_names) else str(c)
                out[f"iou/{name}"] = float(iou)
        return out


@register_evaluator("depth")
class DepthEvaluator(Evaluator):
    primary = "delta1"
    lower_is_better = frozenset({"abs_rel", "rmse"})

    def __init__(self, *, min_depth: float = 1e-3, max_depth: float | None = None):
        if min_depth <= 0:
            raise ValueError(f"depth: min_depth must be > 0, got {min_depth}")
        self.min_depth = min_depth
        self.max_depth = max_depth
        super().__init__()

    def _reset_state(self) -> None:
        self.sums = dict.fromkeys(DEPTH_KEYS, 0.0)
        self.images = 0  # images with at least one valid pixel

    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        gt, _ = _values(reference, metric="depth", role="reference", kinds=("depth",))
        pred, _ = _values(prediction, metric="depth", role="prediction", kinds=("depth",))
        errors = depth_errors(resize_nearest(pred, gt.shape), gt, min_depth=self.min_depth, max_depth=self.max_depth)
        self.count += 1
        if errors is None:
            return
        for key, value in errors.items():
            self.sums[key] += value
        self.images += 1

    def compute(self) -> dict[str, float]:
        self._require_examples()
        if self.images == 0:
            raise ValueError("depth: no reference pixel was valid (> 0) in any image")
        return {key: total / self.images for key, total in self.sums.items()}

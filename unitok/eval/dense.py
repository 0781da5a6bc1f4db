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
"""
from __future__ import annotations

from typing import Any

import numpy as np

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
        pred = resize_nearest(pred, ref.shape)
        ref, pred = ref.astype(np.int64).ravel(), pred.astype(np.int64).ravel()
        keep = ref >= 0 if self.ignore_index is None else (ref >= 0) & (ref != self.ignore_index)
        if np.any(pred[keep] < 0):
            raise ValueError("miou: predicted class ids must be non-negative")
        # Sparse confusion counts: class ids need not be small or contiguous.
        pairs, counts = np.unique(np.stack([ref[keep], pred[keep]], axis=1), axis=0, return_counts=True)
        for (r, p), n in zip(pairs.tolist(), counts.tolist()):
            self.pairs[(r, p)] = self.pairs.get((r, p), 0) + n
        if classes and self.class_names is None:
            self.class_names = list(classes)
        self.count += 1

    def compute(self) -> dict[str, float]:
        self._require_examples()
        ids = sorted({c for pair in self.pairs for c in pair} - {self.ignore_index})
        total = sum(self.pairs.values())
        if total == 0:
            raise ValueError("miou: every reference pixel was ignored")
        tp = {c: self.pairs.get((c, c), 0) for c in ids}
        ref_count = dict.fromkeys(ids, 0)
        pred_count = dict.fromkeys(ids, 0)
        for (r, p), n in self.pairs.items():
            ref_count[r] = ref_count.get(r, 0) + n
            if p in pred_count:
                pred_count[p] += n
        ious = {c: tp[c] / (ref_count[c] + pred_count[c] - tp[c]) for c in ids}
        out = {"miou": float(np.mean(list(ious.values()))), "pixel_accuracy": sum(tp.values()) / total}
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
        self.sums = dict.fromkeys(("abs_rel", "rmse", "delta1", "delta2", "delta3"), 0.0)
        self.images = 0  # images with at least one valid pixel

    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        gt, _ = _values(reference, metric="depth", role="reference", kinds=("depth",))
        pred, _ = _values(prediction, metric="depth", role="prediction", kinds=("depth",))
        gt = gt.astype(np.float64)
        pred = resize_nearest(pred, gt.shape).astype(np.float64)
        valid = np.isfinite(gt) & (gt > 0)
        if self.max_depth is not None:
            valid &= gt <= self.max_depth
        self.count += 1
        if not valid.any():
            return
        g = gt[valid]
        p = np.clip(np.nan_to_num(pred[valid], nan=self.min_depth), self.min_depth, self.max_depth)
        ratio = np.maximum(p / g, g / p)
        self.sums["abs_rel"] += float(np.mean(np.abs(p - g) / g))
        self.sums["rmse"] += float(np.sqrt(np.mean((p - g) ** 2)))
        for k in (1, 2, 3):
            self.sums[f"delta{k}"] += float(np.mean(ratio < 1.25**k))
        self.images += 1

    def compute(self) -> dict[str, float]:
        self._require_examples()
        if self.images == 0:
            raise ValueError("depth: no reference pixel was valid (> 0) in any image")
        return {key: total / self.images for key, total in self.sums.items()}

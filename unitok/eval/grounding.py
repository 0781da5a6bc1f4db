"""Visual grounding accuracy: the fraction of predicted regions with IoU >= T to the reference.

``add(Region | Box | Boxes, Region | Box)``; a `Boxes` prediction is judged by its best-scoring box,
and a missing prediction (``None`` or empty `Boxes`) has IoU 0. IoU uses the pixel-edge convention of
``unitok.tasks.outputs`` (area = width * height). The threshold comes from the metric name
(``grounding_acc@0.5``) or the ``iou_threshold`` option; an IoU exactly at the threshold counts.

Keys: ``acc@T`` (e.g. ``acc@0.5``) and ``mean_iou``. Primary: ``acc@T``.
"""
from __future__ import annotations

from typing import Any

from .base import Evaluator, as_box, box_iou
from .registry import register_evaluator


@register_evaluator("grounding_acc")
class GroundingEvaluator(Evaluator):
    suffix_option = "iou_threshold"
    primary = "acc@0.5"  # the default threshold's key; each instance names its own

    def __init__(self, *, iou_threshold: float = 0.5):
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"grounding_acc: iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)
        self.primary = f"acc@{self.iou_threshold:g}"
        super().__init__()

    def _reset_state(self) -> None:
        self.hits = 0
        self.iou_sum = 0.0

    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        ref = as_box(reference, metric=self.metric or "grounding_acc")
        if ref is None:
            raise ValueError("grounding_acc: the reference region is missing")
        pred = as_box(prediction, metric=self.metric or "grounding_acc")
        iou = box_iou(pred, ref) if pred is not None else 0.0
        self.hits += iou >= self.iou_threshold
        self.iou_sum += iou
        self.count += 1

    def compute(self) -> dict[str, float]:
        self._require_examples()
        return {self.primary: self.hits / self.count, "mean_iou": self.iou_sum / self.count}

"""COCO-style detection mAP, computed by pycocotools on ground truth and detections built in memory.

One ``add`` per image: ``prediction`` is `Boxes` (each box with ``label`` and ``score``),
``reference`` is `Boxes` (the ground truth; scores ignored). Categories are the labels seen in the
references (plus the ``categories`` option, if given), so the evaluator works for any label set.

Semantics worth knowing:
* COCO AP is computed per category and averaged over categories that have ground truth.
  A prediction whose label is not a ground-truth category can match nothing: it earns no
  true positive, and the object it should have found stays missed (lower AP and recall). It
  cannot lower another class's precision, because no class owns it; that is COCOeval's
  behaviour too, which this evaluator keeps rather than inventing a cross-class penalty.
* Images with no ground-truth boxes still take part: detections there are false positives.
* Boxes are pixel xyxy (pixel-edge convention), converted to COCO's xywh; IoU is pycocotools'.

Keys: ``map`` (AP@[.5:.95]), ``map@0.5``, ``map@0.75``, ``ar@100`` (recall, 100 detections/image).
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

from unitok.tasks.outputs import Box, Boxes

from .base import Evaluator
from .registry import register_evaluator


def _boxes(value: Any, *, role: str) -> list[Box]:
    if value is None and role == "prediction":
        return []  # an output that did not parse detects nothing
    if isinstance(value, Boxes):
        return list(value.boxes)
    if isinstance(value, (list, tuple)) and all(isinstance(b, Box) for b in value):
        return list(value)
    raise TypeError(f"coco_map: {role} must be Boxes (or a list of Box), got {type(value).__name__}")


def _xywh(box: Box) -> list[float]:
    return [float(box.x0), float(box.y0), max(float(box.x1 - box.x0), 0.0), max(float(box.y1 - box.y0), 0.0)]


@register_evaluator("coco_map")
class CocoDetectionEvaluator(Evaluator):
    primary = "map"

    def __init__(self, *, categories: list[str] | None = None):
        self.fixed_categories = list(categories or [])
        super().__init__()

    def _reset_state(self) -> None:
        self.images: dict[Any, tuple[list[Box], list[Box]]] = {}  # image_id -> (predictions, references)

    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        key = self.count if image_id is None else image_id
        if key in self.images:
            raise ValueError(f"coco_map: image {key!r} added twice; add all of an image's boxes at once")
        self.images[key] = (_boxes(prediction, role="prediction"), _boxes(reference, role="reference"))
        self.count += 1

    def compute(self) -> dict[str, float]:
        self._require_examples()
        names = list(self.fixed_categories)
        for _, refs in self.images.values():
            names += [b.label for b in refs if b.label not in names]
        cat_ids = {name: i + 1 for i, name in enumerate(names)}

        images, annotations, detections = [], [], []
        for img_id, (preds, refs) in enumerate(self.images.values(), start=1):
            # COCO wants an image size; bbox evaluation never uses it, so cover every box.
            extent = [b.x1 for b in preds + refs] + [b.y1 for b in preds + refs] + [1.0]
            side = int(max(extent)) + 1
            images.append({"id": img_id, "width": side, "height": side})
            for box in refs:
                xywh = _xywh(box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": img_id,
                        "category_id": cat_ids[box.label],
                        "bbox": xywh,
                        "area": xywh[2] * xywh[3],
                        "iscrowd": 0,
                    }
                )
            for box in preds:
                if box.label in cat_ids:  # see module docstring: unknown labels can match nothing
                    detections.append(
                        {
                            "image_id": img_id,
                            "category_id": cat_ids[box.label],
                            "bbox": _xywh(box),
                            "score": float(box.score),
                        }
                    )

        if not annotations:
            raise ValueError("coco_map: the references hold no boxes, so there is nothing to detect")
        if not detections:
            return {"map": 0.0, "map@0.5": 0.0, "map@0.75": 0.0, "ar@100": 0.0}

        from pycocotools.coco import COCO  # here: loading the metric registry should not load pycocotools
        from pycocotools.cocoeval import COCOeval

        # pycocotools reports progress with print(); keep evaluation quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            categories = [{"id": i, "name": n} for n, i in cat_ids.items()]
            gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
            gt.createIndex()
            dt = gt.loadRes(detections)
            coco_eval = COCOeval(gt, dt, iouType="bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        stats = coco_eval.stats  # [AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl]
        return {
            "map": _clean(stats[0]),
            "map@0.5": _clean(stats[1]),
            "map@0.75": _clean(stats[2]),
            "ar@100": _clean(stats[8]),
        }


def _clean(value: float) -> float:
    # COCOeval uses -1 for "no ground truth in this slice"; with ground truth present it cannot occur
    # for the all-area slices used here, but never let the sentinel leak into a results table.
    return max(float(value), 0.0)

"""Exact-match accuracy for labels and short answers.

``add(Label | Text | str, reference)``: the reference is a str, or a list of strs. Both sides are
compared after ``strip().lower()`` only, so "Red " matches "red" but "a red" does not (use
``vqa_accuracy`` for answer normalisation). A ``None`` prediction is wrong.

Option ``references`` (a task spec's ``metric_options: {references: ...}``) says how a list of
references is used; a single str reference is the same under all three:

* ``any`` (the default): right if the prediction equals any of them, for references that are
  alternatives (several acceptable answers);
* ``all``: right only if it equals every one of them (references that must all agree);
* ``first``: only the first counts; the rest are ignored (e.g. two captions per image, of which the
  first is the one the task asks for).

Keys: ``accuracy``. Primary: ``accuracy``.
"""
from __future__ import annotations

from typing import Any

from .base import Evaluator, as_text, as_texts
from .registry import register_evaluator

REFERENCE_MODES = ("any", "all", "first")


def _norm(text: str) -> str:
    return text.strip().lower()


@register_evaluator("accuracy")
class AccuracyEvaluator(Evaluator):
    primary = "accuracy"

    def __init__(self, *, references: str = "any") -> None:
        if references not in REFERENCE_MODES:
            raise ValueError(f"references: expected one of {', '.join(REFERENCE_MODES)}, got {references!r}")
        self.references = references
        super().__init__()

    def _reset_state(self) -> None:
        self.correct = 0

    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        refs = [_norm(r) for r in as_texts(reference, metric="accuracy")]
        if prediction is not None:
            pred = _norm(as_text(prediction, metric="accuracy"))
            if self.references == "first":
                self.correct += pred == refs[0]
            elif self.references == "all":
                self.correct += all(pred == r for r in refs)
            else:
                self.correct += pred in refs
        self.count += 1

    def compute(self) -> dict[str, float]:
        self._require_examples()
        return {"accuracy": self.correct / self.count}

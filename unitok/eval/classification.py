"""Exact-match accuracy for labels and short answers.

``add(Label | Text | str, reference)``: the reference is a str, or a list of acceptable strs. Both
sides are compared after ``strip().lower()`` only, so "Red " matches "red" but "a red" does not
(use ``vqa_accuracy`` for answer normalisation). A ``None`` prediction is wrong.

Keys: ``accuracy``. Primary: ``accuracy``.
"""
from __future__ import annotations

from typing import Any

from .base import Evaluator, as_text, as_texts
from .registry import register_evaluator


def _norm(text: str) -> str:
    return text.strip().lower()


@register_evaluator("accuracy")
class AccuracyEvaluator(Evaluator):
    primary = "accuracy"

    def _reset_state(self) -> None:
        self.correct = 0

    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        refs = {_norm(r) for r in as_texts(reference, metric="accuracy")}
        if prediction is not None:
            self.correct += _norm(as_text(prediction, metric="accuracy")) in refs
        self.count += 1

    def compute(self) -> dict[str, float]:
        self._require_examples()
        return {"accuracy": self.correct / self.count}

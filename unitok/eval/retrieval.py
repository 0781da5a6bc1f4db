"""Retrieval recall@k from candidate scores (image->text or text->image).

``add(scores, reference)``: ``scores`` is a 1-D array, one score per candidate (higher = better
match); ``reference`` is the index of the true candidate. For a whole query x candidate score
matrix use ``add_matrix(scores, targets)``.

The rank of the true candidate is 1 + the number of *other* candidates scoring at least as high:
ties are broken against the true candidate, so a model that scores everything alike gets no credit.
Non-finite scores (NaN) count as the worst score.

Keys: ``r@1``, ``r@5``, ``r@10`` (fraction of queries whose true candidate ranks within k; with
fewer than k candidates r@k is trivially 1) and ``mrr`` (mean reciprocal rank). Primary: ``r@1``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import Evaluator
from .registry import register_evaluator

KS = (1, 5, 10)


@register_evaluator("retrieval")
class RetrievalEvaluator(Evaluator):
    primary = "r@1"

    def _reset_state(self) -> None:
        self.ranks: list[int] = []

    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        scores = np.asarray(prediction, dtype=np.float64)
        if scores.ndim != 1 or scores.size == 0:
            raise ValueError(f"retrieval: scores must be a non-empty 1-D array, got shape {scores.shape}")
        target = int(reference)
        if not 0 <= target < scores.size:
            raise ValueError(f"retrieval: true index {target} outside 0..{scores.size - 1}")
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        others = np.delete(scores, target)
        self.ranks.append(1 + int(np.sum(others >= scores[target])))
        self.count += 1

    def add_matrix(self, scores: Any, targets: Sequence[int]) -> None:
        """Add every row of a (queries, candidates) score matrix; ``targets[i]`` is row i's answer."""
        matrix = np.asarray(scores, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != len(targets):
            raise ValueError(f"retrieval: expected a ({len(targets)}, candidates) matrix, got {matrix.shape}")
        for row, target in zip(matrix, targets):
            self.add(row, target)

    def compute(self) -> dict[str, float]:
        self._require_examples()
        ranks = np.asarray(self.ranks)
        out = {f"r@{k}": float(np.mean(ranks <= k)) for k in KS}
        out["mrr"] = float(np.mean(1.0 / ranks))
        return out

"""The `Evaluator` interface and the conversions every evaluator shares.

The contract itself (what `add` takes, what `compute` returns) is documented in `registry.py`.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Sequence

from unitok.tasks.outputs import Box, Boxes, Label, Region, Text


class Evaluator(abc.ABC):
    """Accumulates (prediction, reference) pairs, then reduces them to flat ``{key: float}`` metrics."""

    #: key of the headline number in ``compute()``'s result; every primary is higher-is-better
    primary: ClassVar[str] = ""
    #: keys of ``compute()`` where smaller is better (error measures); everything else is higher-is-better
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    #: for parametric metrics (``grounding_acc@0.5``): the option that the ``@`` suffix sets
    suffix_option: ClassVar[str] = ""
    #: the metric string this evaluator was built from (set by ``build_evaluator``)
    metric: str = ""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self.count = 0
        self._reset_state()

    @abc.abstractmethod
    def _reset_state(self) -> None:
        """Clear the accumulated state (subclasses); ``count`` is handled here."""

    @abc.abstractmethod
    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        """Record one example (and bump ``count``). ``image_id`` matters where examples group by image."""

    @abc.abstractmethod
    def compute(self) -> dict[str, float]:
        """Reduce what was added to metrics. Raises ValueError if nothing was added."""

    def __len__(self) -> int:
        return self.count

    def _require_examples(self) -> None:
        if self.count == 0:
            raise ValueError(f"{self.metric or type(self).__name__}: compute() called before any add()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(metric={self.metric!r}, examples={self.count})"


def as_text(value: Any, *, metric: str) -> str:
    """The answer string of a prediction: `Text`, `Label` or plain str. ``None`` (no parse) is ``""``."""
    if value is None:
        return ""
    if isinstance(value, Text):
        return value.text
    if isinstance(value, Label):
        return value.label
    if isinstance(value, str):
        return value
    raise TypeError(f"{metric}: expected Text, Label or str, got {type(value).__name__}")


def as_texts(value: Any, *, metric: str) -> list[str]:
    """A reference that may hold one answer or several (a str, or a list of str/Text/Label)."""
    if isinstance(value, (str, Text, Label)):
        return [as_text(value, metric=metric)]
    if isinstance(value, Sequence) and value and not isinstance(value, (bytes, bytearray)):
        return [as_text(v, metric=metric) for v in value]
    raise TypeError(f"{metric}: expected a reference str or a non-empty list of str, got {value!r}")


def as_box(value: Any, *, metric: str) -> Box | None:
    """One box from a `Box`, a `Region`, `Boxes` (its best-scoring box) or 4 numbers; ``None`` if absent."""
    if value is None:
        return None
    if isinstance(value, Box):
        return value
    if isinstance(value, Region):
        return value.box
    if isinstance(value, Boxes):
        return max(value.boxes, key=lambda b: b.score) if value.boxes else None
    if isinstance(value, Sequence) and len(value) == 4 and not isinstance(value, str):
        return Box(*(float(v) for v in value))
    raise TypeError(f"{metric}: expected Region, Box or Boxes, got {type(value).__name__}")


def box_iou(a: Box, b: Box) -> float:
    """IoU of two xyxy boxes with the pixel-edge convention (area = width * height, no +1)."""
    iw = min(a.x1, b.x1) - max(a.x0, b.x0)
    ih = min(a.y1, b.y1) - max(a.y0, b.y0)
    inter = max(iw, 0.0) * max(ih, 0.0)
    area_a = max(a.x1 - a.x0, 0.0) * max(a.y1 - a.y0, 0.0)
    area_b = max(b.x1 - b.x0, 0.0) * max(b.y1 - b.y0, 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0

"""Evaluation: one evaluator per metric, built by name from the registry.

    from unitok.eval import build_evaluator
    ev = build_evaluator("grounding_acc@0.5")
    ev.add(Region(Box(0, 0, 10, 10)), Region(Box(0, 0, 10, 8)))
    ev.compute()  # {"acc@0.5": 1.0, "mean_iou": 0.8}

The contract and the list of metrics are in `unitok.eval.registry`. This layer reads only the
structured outputs of `unitok.tasks.outputs`; it never imports training code.
"""
from .base import Evaluator
from .registry import EVALUATORS, build_evaluator, evaluate, metric_names, primary_key, register_evaluator
from .report import format_summary, format_table, write_results

# Importing the metric modules registers their evaluators.
from . import captions, classification, dense, detection, grounding  # noqa: E402,F401  isort: skip
from . import image_fidelity, retrieval, vqa  # noqa: E402,F401  isort: skip

__all__ = [
    "EVALUATORS",
    "Evaluator",
    "build_evaluator",
    "evaluate",
    "format_summary",
    "format_table",
    "metric_names",
    "primary_key",
    "register_evaluator",
    "write_results",
]

"""The evaluator registry: metric name (as written in a task spec's ``metric:``) -> `Evaluator` class.

Contract
--------
An evaluator is registered with ``@register_evaluator(name)`` on a subclass of `Evaluator`
(``unitok/eval/base.py``) and built with ``build_evaluator(metric, **options)``:

* ``__init__(self, *, <options>)``: keyword-only options (a task spec's metric options). Unknown
  options fail in ``build_evaluator`` with the list of accepted ones.
* ``add(prediction, reference, *, image_id=None)``: one example. ``prediction`` is a structured
  output of ``unitok.tasks.outputs`` (``Text``, ``Label``, ``Box``, ``Boxes``, ``Region``,
  ``GeneratedImage``, ``DenseMap``); ``reference`` is whatever the metric documents (a str, a
  list of str, an output object, a dict). ``image_id`` only matters where examples group by image
  (``coco_map``: one ``add`` per image). A ``None`` prediction (output that did not parse) counts
  as a wrong answer wherever that is well defined.
* ``compute() -> dict[str, float]``: flat keys (``map``, ``map@0.5``, ``bleu4``, ``cider``,
  ``accuracy`` ...); may be called repeatedly; raises ValueError when nothing was added.
  ``reset()`` forgets the examples.
* class attribute ``primary``: the headline key of ``compute()``. Every primary is
  higher-is-better, so checkpoint selection can maximise it; error measures (depth ``abs_rel``,
  ``rmse``) are listed in ``lower_is_better``.

A parametric metric such as ``grounding_acc@0.5`` is registered once under its stem
(``grounding_acc``); the class names the option its ``@`` suffix fills in ``suffix_option``
(here ``iou_threshold``), so ``grounding_acc@0.7`` needs no new registration.

Metrics (see each module for the exact definitions and references):

=================  ======================  =========================================  ===========
metric             prediction              reference                                  primary
=================  ======================  =========================================  ===========
coco_map           Boxes                   Boxes                                      map
caption            Text                    list[str]                                  cider
vqa_accuracy       Text / Label            list[str] of human answers (or one str)    accuracy
grounding_acc@T    Region / Box            Region / Box                               acc@T
accuracy           Label / Text            str or list[str] (option ``references``)   accuracy
miou               DenseMap(segmentation)  DenseMap                                   miou
depth              DenseMap(depth)         DenseMap                                   delta1
retrieval          1-D candidate scores    int, index of the true candidate          r@1
image_fidelity     GeneratedImage          {"objects": [{colour, shape}]} / pairs     fidelity
=================  ======================  =========================================  ===========
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

from unitok.registry import Registry, RegistryError

from .base import Evaluator

EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator")


def register_evaluator(name: str) -> Callable[[type[Evaluator]], type[Evaluator]]:
    """Class decorator: register an `Evaluator` subclass under metric ``name``."""

    def add(cls: type[Evaluator]) -> type[Evaluator]:
        if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
            raise TypeError(f"evaluator {name!r} must be an Evaluator subclass, got {cls!r}")
        if not cls.primary:
            raise TypeError(f"evaluator {name!r} ({cls.__qualname__}) does not name its primary key")
        return EVALUATORS.register(name, cls)

    return add


def metric_names() -> list[str]:
    """Every metric string form a task spec may use (parametric ones shown as ``stem@T``)."""
    return [f"{n}@T" if EVALUATORS.get(n).suffix_option else n for n in EVALUATORS.names()]


def build_evaluator(metric: str, **options: Any) -> Evaluator:
    """The evaluator for ``metric`` (e.g. ``"coco_map"``, ``"grounding_acc@0.5"``) with ``options``."""
    stem, at, suffix = metric.partition("@")
    if metric in EVALUATORS:
        cls, stem, at = EVALUATORS.get(metric), metric, ""
    elif stem in EVALUATORS:
        cls = EVALUATORS.get(stem)
    else:
        raise RegistryError(f"unknown evaluator {metric!r}; known: {', '.join(metric_names())}")
    if at:
        if not cls.suffix_option:
            raise ValueError(f"metric {metric!r}: {stem!r} takes no '@' parameter")
        if cls.suffix_option in options:
            raise ValueError(f"metric {metric!r}: {cls.suffix_option!r} given both as '@{suffix}' and as option")
        try:
            options[cls.suffix_option] = float(suffix)
        except ValueError:
            raise ValueError(f"metric {metric!r}: '@{suffix}' is not a number") from None
    accepted = [
        p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"metric {metric!r}: unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    evaluator = cls(**options)
    evaluator.metric = metric
    return evaluator


def evaluate(metric: str, pairs: Iterable[tuple], **options: Any) -> dict[str, float]:
    """Build ``metric``'s evaluator, add every ``(prediction, reference[, image_id])``, compute."""
    evaluator = build_evaluator(metric, **options)
    for pair in pairs:
        if len(pair) == 3:
            evaluator.add(pair[0], pair[1], image_id=pair[2])
        elif len(pair) == 2:
            evaluator.add(pair[0], pair[1])
        else:
            raise ValueError(f"{metric}: expected (prediction, reference[, image_id]), got {len(pair)} items")
    return evaluator.compute()


def primary_key(metric: str) -> str:
    """The key of ``metric``'s headline number in its results (``"coco_map"`` -> ``"map"``,
    ``"grounding_acc@0.5"`` -> ``"acc@0.5"``), without building an evaluator."""
    stem, at, suffix = metric.partition("@")
    cls = EVALUATORS.get(metric if metric in EVALUATORS else stem)
    if at and cls.suffix_option:
        return f"{cls.primary.partition('@')[0]}@{float(suffix):g}"
    return cls.primary

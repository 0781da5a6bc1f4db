"""Evaluate a model on task datasets with each task's own metric (the spec's ``metric:``), and against
two baselines that say how much of a score the inputs earned:

* **blind**: the same examples with the inputs withheld (`blind`): every input image, second image and
  video frame becomes a flat canvas of the evaluated images' mean colour; a task with no image input
  (text-to-image) gets an empty prompt instead. ``vision_gain`` is the metric minus its blind value.
* **constant**: for tasks that answer with one string (free text, closed-set labels), always answering
  the most frequent target of the train split (`most_frequent_targets`), scored by the same evaluator
  on the same references.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from ..data.store import RecordStore
from ..eval import build_evaluator
from ..tasks.examples import Example, ExampleBuilder, resolve
from ..tasks.outputs import Label, Text
from .predictor import Predictor

log = logging.getLogger(__name__)

#: target formats whose answer is one string, so a constant answer can be scored
CONSTANT_FORMATS = ("text", "label")


def eval_examples(predictor: Predictor, task: str, store: RecordStore, max_examples: int | None) -> Iterator[Example]:
    """Every (record, item) of the store in order, up to ``max_examples``."""
    builder, n = predictor.builders[task], 0
    for i in range(len(store)):
        record = store[i]
        for item in builder.items(record):
            if max_examples is not None and n >= max_examples:
                return
            yield builder.build(record, item)
            n += 1


# ------------------------------------------------------------------ baselines
def blind(example: Example, fill: torch.Tensor | None = None) -> Example:
    """``example`` with its inputs withheld, everything else (task, target, reference) kept.

    With images (image, second image, video frames, a masked image): each becomes a flat canvas of
    ``fill``, a (3,) colour in the model's [-1, 1] input space (default 0, mid-grey); the prompt stays,
    so a question or a region box still reaches the model. Without images (text-to-image): the prompt
    becomes empty, the unconditional input that ``prompt_dropout`` trains for classifier-free guidance.
    """
    if example.images is None:
        return replace(example, prompt=[])
    colour = torch.zeros(3) if fill is None else torch.as_tensor(fill, dtype=example.images.dtype)
    canvas = colour.view(1, 3, 1, 1).expand_as(example.images).clone()
    return replace(example, images=canvas)


class MeanColour:
    """Running per-channel mean of the input images of examples (every slot, every pixel)."""

    def __init__(self) -> None:
        self.total, self.pixels = torch.zeros(3, dtype=torch.float64), 0

    def add(self, example: Example) -> None:
        if example.images is not None:
            self.total += example.images.double().sum(dim=(0, 2, 3))
            self.pixels += example.images.shape[0] * example.images.shape[2] * example.images.shape[3]

    @property
    def value(self) -> torch.Tensor | None:
        """(3,) mean in [-1, 1], or None if no example had an image."""
        return (self.total / self.pixels).float() if self.pixels else None


def gain(key: str, value: float, baseline: float, lower_is_better: Iterable[str] = ()) -> float:
    """How much better ``value`` is than ``baseline``: > 0 means better, for either direction of metric."""
    return baseline - value if key in lower_is_better else value - baseline


def target_strings(builder: ExampleBuilder, record: dict, item: Any = None) -> list[str]:
    """The answer strings a record (and ``each`` item) offers as targets: every reference of a text
    field (captions: each caption), or the label of a label field."""
    value = resolve(builder.spec.target.field, record, item)
    reference = builder.format.reference(value, builder.context())
    return [reference] if isinstance(reference, str) else [str(r) for r in reference]


def most_frequent_targets(builders: Mapping[str, ExampleBuilder], records: Iterable[dict], *,
                          max_records: int = 2000) -> dict[str, tuple[str, int]]:
    """{task: (answer, count)}: each task's most frequent target string over the first ``max_records``
    records, in one pass (every ``each`` item and every reference of a list-valued field counts once;
    ties go to the answer seen first). Only tasks whose format answers with one string (`CONSTANT_FORMATS`)
    and that met at least one target are in the result."""
    counts = {task: Counter() for task, b in builders.items() if b.spec.target.format in CONSTANT_FORMATS}
    if not counts:
        return {}
    for n, record in enumerate(records):
        if n >= max_records:
            break
        for task, counter in counts.items():
            builder = builders[task]
            for item in builder.items(record):
                counter.update(target_strings(builder, record, item))
    return {task: c.most_common(1)[0] for task, c in counts.items() if c}


def most_frequent_target(builder: ExampleBuilder, records: Iterable[dict], *, max_records: int = 2000) -> tuple[str, int] | None:
    """(answer, count) of one task (see `most_frequent_targets`), or None."""
    return most_frequent_targets({"_": builder}, records, max_records=max_records).get("_")


def _constant_prediction(fmt: str, answer: str):
    return Label(answer) if fmt == "label" else Text(answer)


# ------------------------------------------------------------------ evaluation
def evaluate_tasks(predictor: Predictor, stores: dict[str, RecordStore], *, max_examples: int | None = None,
                   batch_size: int = 32, progress: bool = True, reference_logp: bool = False,
                   blind_pass: bool = False, constants: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """{task: {metric key: value, ...}} for every task in ``stores``.

    ``reference_logp``: also ``ref_logp``, the mean per-token log-likelihood the model gives the reference
    target (teacher forced), a smooth measure that moves even where a task's metric is still at 0.

    ``blind_pass``: also score every example blind (`blind`, the fill being the mean colour of the task's
    evaluated input images), adding ``primary`` (the metric's headline key), ``blind`` ({key: value} for
    the metric keys, ``ref_logp`` and retrieval), ``gain`` ({key: value - blind, signed so > 0 means the
    inputs helped, also for lower-is-better keys}), ``vision_gain`` (``gain`` of the primary key) and
    ``blind_fill_rgb`` (the fill colour in 0..255).

    ``constants``: {task: answer}: also score always answering ``answer`` on the same references, as
    ``constant`` ({metric key: value}) and ``constant_answer``.
    """
    results = {}
    for task, store in stores.items():
        spec = predictor.tasks[task]
        evaluator = build_evaluator(spec.metric, **spec.metric_options)
        mean = MeanColour()
        bar = tqdm(desc=f"eval {task}", total=max_examples, disable=not progress or None, leave=False)
        keep = bool(spec.retrieval_pool or reference_logp)
        seen: list[Example] = []  # kept for the scoring passes below
        references: list[tuple[Any, str]] = []  # for the constant baseline
        for batch in _batches(eval_examples(predictor, task, store, max_examples), batch_size):
            _predict_into(evaluator, predictor, batch)
            for e in batch:
                mean.add(e)
                references.append((e.reference, e.record_id))
            if keep:
                seen.extend(batch)
            bar.update(len(batch))
        bar.close()
        metrics = {k: float(v) for k, v in evaluator.compute().items()}
        results[task] = metrics
        if reference_logp:
            metrics["ref_logp"] = _reference_logp(predictor, seen, batch_size)
        if spec.retrieval_pool:
            metrics.update({f"retrieval_{k}": v for k, v in retrieval(predictor, seen, spec.retrieval_pool).items()})
        extra: dict[str, Any] = {}
        if blind_pass:
            fill = mean.value
            blind_ev = build_evaluator(spec.metric, **spec.metric_options)
            bar = tqdm(desc=f"eval {task} (blind)", total=max_examples, disable=not progress or None, leave=False)
            for batch in _batches((blind(e, fill) for e in eval_examples(predictor, task, store, max_examples)), batch_size):
                _predict_into(blind_ev, predictor, batch)
                bar.update(len(batch))
            bar.close()
            blind_metrics = {k: float(v) for k, v in blind_ev.compute().items()}
            blind_seen = [blind(e, fill) for e in seen]
            if reference_logp:
                blind_metrics["ref_logp"] = _reference_logp(predictor, blind_seen, batch_size)
            if spec.retrieval_pool:
                blind_metrics.update({f"retrieval_{k}": v
                                      for k, v in retrieval(predictor, blind_seen, spec.retrieval_pool).items()})
            gains = {k: gain(k, metrics[k], blind_metrics[k], evaluator.lower_is_better)
                     for k in metrics if k in blind_metrics}
            extra.update(primary=evaluator.primary, blind=blind_metrics, gain=gains,
                         vision_gain=gains.get(evaluator.primary),
                         blind_fill_rgb=None if fill is None else [round((float(c) + 1) * 127.5, 1) for c in fill])
        answer = (constants or {}).get(task)
        if answer is not None and references:
            const_ev = build_evaluator(spec.metric, **spec.metric_options)
            prediction = _constant_prediction(spec.target.format, answer)
            for reference, record_id in references:
                const_ev.add(prediction, reference, image_id=record_id)
            extra.update(primary=evaluator.primary, constant={k: float(v) for k, v in const_ev.compute().items()},
                         constant_answer=answer)
        metrics.update(extra)
        log.info("eval %s: %s", task, metrics)
    return results


def _batches(examples: Iterable[Example], size: int) -> Iterator[list[Example]]:
    batch: list[Example] = []
    for e in examples:
        batch.append(e)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _reference_logp(predictor: Predictor, examples: list[Example], batch_size: int) -> float:
    logps = [s[0] for j in range(0, len(examples), batch_size)
             for s in predictor.score(examples[j:j + batch_size], [[e.target[:-1]] for e in examples[j:j + batch_size]])]
    return sum(logps) / max(1, len(logps))


def _predict_into(evaluator, predictor: Predictor, examples: list[Example]) -> None:
    for e, p in zip(examples, predictor.predict(examples)):
        evaluator.add(p.output, e.reference, image_id=e.record_id)


def retrieval(predictor: Predictor, examples: list[Example], pool: int) -> dict[str, float]:
    """Input-to-target retrieval by candidate scoring (e.g. image-to-text for captions).

    The examples are cut into consecutive pools of ``pool`` (the last, if smaller than half a pool, joins
    the one before, as COCO's 1k test folds do); within a pool every example's own target is ranked among
    the targets of all examples of the pool by the model's length-normalised log-likelihood."""
    evaluator = build_evaluator("retrieval")
    starts = list(range(0, len(examples), pool))
    if len(starts) > 1 and len(examples) - starts[-1] < pool / 2:
        starts.pop()
    for i, start in enumerate(starts):
        group = examples[start:starts[i + 1] if i + 1 < len(starts) else len(examples)]
        candidates = [e.target[:-1] for e in group]  # drop eos: scoring appends it
        for j in range(0, len(group), 8):  # 8 queries x pool candidates per batched pass
            rows = group[j:j + 8]
            for k, scores in enumerate(predictor.score(rows, [candidates] * len(rows))):
                evaluator.add(scores, j + k)
    return {k: float(v) for k, v in evaluator.compute().items() if k in ("r@1", "r@5")}

"""Evaluate a model on task datasets with each task's own metric (the spec's ``metric:``)."""
from __future__ import annotations

import logging
from collections.abc import Iterator

from tqdm import tqdm

from ..data.store import RecordStore
from ..eval import build_evaluator
from ..tasks.examples import Example
from .predictor import Predictor

log = logging.getLogger(__name__)


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


def evaluate_tasks(predictor: Predictor, stores: dict[str, RecordStore], *, max_examples: int | None = None,
                   batch_size: int = 32, progress: bool = True,
                   reference_logp: bool = False) -> dict[str, dict[str, float]]:
    """{task: {metric key: value}} for every task in ``stores``. With ``reference_logp``, also
    ``ref_logp``: the mean per-token log-likelihood the model gives the reference target (teacher
    forced), a smooth measure that moves even where a task's metric is still at 0."""
    results = {}
    for task, store in stores.items():
        spec = predictor.tasks[task]
        evaluator = build_evaluator(spec.metric, **spec.metric_options)
        pending: list[Example] = []
        bar = tqdm(desc=f"eval {task}", total=max_examples, disable=not progress or None, leave=False)
        seen: list[Example] = []  # kept for the scoring passes below
        for example in eval_examples(predictor, task, store, max_examples):
            pending.append(example)
            if spec.retrieval_pool or reference_logp:
                seen.append(example)
            if len(pending) == batch_size:
                _predict_into(evaluator, predictor, pending)
                bar.update(len(pending))
                pending = []
        if pending:
            _predict_into(evaluator, predictor, pending)
            bar.update(len(pending))
        bar.close()
        results[task] = {k: float(v) for k, v in evaluator.compute().items()}
        if reference_logp:
            logps = [s[0] for j in range(0, len(seen), batch_size)
                     for s in predictor.score(seen[j:j + batch_size], [[e.target[:-1]] for e in seen[j:j + batch_size]])]
            results[task]["ref_logp"] = sum(logps) / max(1, len(logps))
        if spec.retrieval_pool:
            results[task].update({f"retrieval_{k}": v for k, v in retrieval(predictor, seen, spec.retrieval_pool).items()})
        log.info("eval %s: %s", task, results[task])
    return results


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

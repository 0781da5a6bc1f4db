"""Evaluate a model on task datasets with each task's own metric (the spec's ``metric:``)."""
from __future__ import annotations

import logging
from typing import Iterator

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
                   batch_size: int = 32, progress: bool = True) -> dict[str, dict[str, float]]:
    """{task: {metric key: value}} for every task in ``stores``."""
    results = {}
    for task, store in stores.items():
        spec = predictor.tasks[task]
        evaluator = build_evaluator(spec.metric, **spec.metric_options)
        pending: list[Example] = []
        bar = tqdm(desc=f"eval {task}", total=max_examples, disable=not progress or None, leave=False)

        def flush() -> None:
            for e, p in zip(pending, predictor.predict(pending)):
                evaluator.add(p.output, e.reference, image_id=e.record_id)
            bar.update(len(pending))
            pending.clear()

        for example in eval_examples(predictor, task, store, max_examples):
            pending.append(example)
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
        bar.close()
        results[task] = {k: float(v) for k, v in evaluator.compute().items()}
        log.info("eval %s: %s", task, results[task])
    return results

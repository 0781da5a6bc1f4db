"""Training data: the task mixture as a map-style dataset indexed by (task, record, seed).

The sampler is stateless: batch ``b`` of rank ``r`` is drawn from a generator seeded with
``(seed, b, r)``. Resuming at step s simply starts at batch ``s * accumulate``, which makes the
data order after a restart identical to an uninterrupted run, with any number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from torch.utils.data import Dataset, Sampler

from ..data.store import RecordStore
from ..tasks.examples import Example, ExampleBuilder


@dataclass
class TaskSource:
    builder: ExampleBuilder
    store: RecordStore
    indices: list[int] | None = None  # the records the spec's ``where`` keeps (None: every record)

    def __len__(self) -> int:
        return len(self.store) if self.indices is None else len(self.indices)

    def record(self, i: int) -> dict:
        return self.store[i if self.indices is None else self.indices[i]]

    @classmethod
    def filtered(cls, builder: ExampleBuilder, store: RecordStore) -> "TaskSource":
        """A source over the records with at least one example passing the spec's ``where`` (a scan of
        the store, once); a filter that keeps nothing is an error naming the task and the store."""
        if not builder.spec.where:
            return cls(builder, store)
        keep = [i for i in range(len(store)) if builder.items(store[i])]
        if not keep:
            raise ValueError(f"task {builder.spec.name} ({builder.spec.source}): where {builder.spec.where} keeps "
                             f"no record of {store.path}")
        return cls(builder, store, keep)


class MixtureDataset(Dataset):
    def __init__(self, sources: list[TaskSource]):
        self.sources = sources

    def __len__(self) -> int:  # nominal; the sampler is infinite
        return sum(len(s) for s in self.sources)

    def __getitem__(self, index: tuple[int, int, int]) -> Example:
        task, record_index, seed = index
        source = self.sources[task]
        rng = np.random.default_rng(seed)
        record = source.record(record_index)
        items = source.builder.items(record)
        item = items[int(rng.integers(len(items)))] if items else None
        return source.builder.build(record, item, rng=rng)


def mixture_probs(weights: list[float], temperature: float) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64) ** (1.0 / temperature)
    if w.sum() <= 0:
        raise ValueError("every task has weight 0: nothing to train on")
    return w / w.sum()


class MixtureSampler(Sampler):
    """Yields batches of (task, record, seed) forever, from ``start_batch`` on."""

    def __init__(self, sizes: list[int], probs: np.ndarray, batch_size: int, *, seed: int, rank: int = 0,
                 start_batch: int = 0):
        self.sizes, self.probs, self.batch_size = sizes, probs, batch_size
        self.seed, self.rank, self.start_batch = seed, rank, start_batch

    def batch(self, b: int) -> list[tuple[int, int, int]]:
        g = np.random.default_rng([self.seed, b, self.rank])
        tasks = g.choice(len(self.sizes), size=self.batch_size, p=self.probs)
        return [(int(t), int(g.integers(self.sizes[t])), int(g.integers(2**31))) for t in tasks]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        b = self.start_batch
        while True:
            yield self.batch(b)
            b += 1

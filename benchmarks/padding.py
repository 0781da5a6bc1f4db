"""Padding waste of mixed batches, and training speed with rows grouped by shape vs one padded batch.

    python benchmarks/padding.py --config configs/tiny.yaml --batches 60 --timed 12 --out benchmarks/results/padding.json

Draws ``--batches`` batches of the config's whole task mixture exactly as training does (the
``MixtureSampler`` at the mixture's proportions), and reports the useful-token fraction (real tokens
over the tokens computed, encoder and decoder) of one padded batch vs the groups of ``split_rows``.
Then times ``--timed`` full training steps (forward, backward, AdamW) both ways on the same batches,
interleaved so that both see the same machine load, and reports examples/s and their ratio.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import unitok  # noqa: F401  (before torch: sets OMP_WAIT_POLICY)
import torch

from unitok import recipes
from unitok.config import load_config
from unitok.tasks.examples import Batch, ExampleBuilder, collate, select_rows, split_rows
from unitok.train.data import MixtureDataset, MixtureSampler, TaskSource, mixture_probs
from unitok.train.trainer import Trainer


def token_counts(batch: Batch, patches: int) -> tuple[int, int, int, int]:
    """(real encoder tokens, computed encoder tokens, real decoder tokens, computed decoder tokens)."""
    real_img = int(batch.image_mask.sum()) * patches if batch.image_mask is not None else 0
    all_img = batch.image_mask.numel() * patches if batch.image_mask is not None else 0
    real_dec = int((batch.target != 0).sum())
    return (real_img + int(batch.prompt_mask.sum()), all_img + batch.prompt_mask.numel(), real_dec, batch.target.numel())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--timed", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    run = load_config(args.config, {"data.root": str(tmp / "data"), "data.world.train": 300, "data.world.val": 10,
                                    "train.bf16": False})
    tasks = recipes.load_run_tasks(run)
    recipes.prepare_data(run, tasks, splits=("train",))
    codec = recipes.build_codec(run)
    stores = recipes.open_stores(run, tasks, "train")
    tasks = recipes.with_resolved_choices(tasks, stores)
    sources = [TaskSource(ExampleBuilder.for_model(s, codec, run.model_settings(), meta=stores[n].meta), stores[n])
               for n, s in tasks.items()]
    data = MixtureDataset(sources)
    probs = mixture_probs([s.weight for s in tasks.values()], run.tasks.temperature)
    sampler = MixtureSampler([len(s.store) for s in sources], probs, run.train.batch_size, seed=0)
    batches = [collate([data[i] for i in sampler.batch(b)]) for b in range(args.batches)]
    patches = run.model_settings().num_patches

    fractions = {}
    for name, parts_of in (("padded", lambda b: [b]), ("grouped", lambda b: [select_rows(b, r) for r in split_rows(b)])):
        totals = [0, 0, 0, 0]
        for batch in batches:
            for part in parts_of(batch):
                totals = [t + c for t, c in zip(totals, token_counts(part, patches))]
        fractions[name] = {"encoder": totals[0] / totals[1], "decoder": totals[2] / totals[3]}
        print(f"{name:8s} useful tokens: encoder {fractions[name]['encoder']:.3f}  decoder {fractions[name]['decoder']:.3f}")

    trainer = Trainer(run, tmp / "run", codec, tasks, sources, resume=False)
    seconds = {"padded": 0.0, "grouped": 0.0}
    for i, batch in enumerate(batches[:args.timed + 1]):
        for grouped in ((False, True) if i % 2 else (True, False)):
            trainer.cfg.group_rows = grouped
            t = time.perf_counter()
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer._micro_step(batch, 1.0)
            trainer.optimizer.step()
            if i:  # the first batch warms up both ways
                seconds["grouped" if grouped else "padded"] += time.perf_counter() - t
    rows = args.timed * run.train.batch_size
    speed = {k: rows / v for k, v in seconds.items()}
    print(f"examples/s: padded {speed['padded']:.1f}  grouped {speed['grouped']:.1f}  ratio {speed['grouped'] / speed['padded']:.2f}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"config": args.config, "batches": args.batches, "timed": args.timed,
                                              "threads": args.threads, "useful_token_fraction": fractions,
                                              "examples_per_s": speed,
                                              "speedup": speed["grouped"] / speed["padded"]}, indent=1) + "\n")


if __name__ == "__main__":
    main()

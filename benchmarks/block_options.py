"""Training step time of the model's block options, as ratios against the default measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/block_options.py --out benchmarks/results/block_options.json

Builds the micro model (d_model 128, 2 + 2 layers, 4 heads, the tiny config's 64 px images, 8 px patches,
``deep`` stem) once per arm: ``model.block`` sequential (the baseline) and parallel, and
``model.video_attention`` divided, all on one fixed synthetic batch of 4-frame clips (a short prompt, a
short target). Times ``--reps`` training steps (forward, cross-entropy, backward) per arm, the arms
interleaved so that each sees the same machine load, and reports each arm's median step and its ratio to
the baseline's median. Machines are noisy: read the ratios, not the absolute times.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import unitok  # noqa: F401  (before torch: sets OMP_WAIT_POLICY)
import torch
import torch.nn.functional as F

from unitok.model.config import ModelConfig
from unitok.model.transformer import UniTokModel

MICRO = {"d_model": 128, "n_heads": 4, "enc_layers": 2, "dec_layers": 2, "image_size": 64, "patch_size": 8,
         "patch_stem": "deep"}
ARMS = {"sequential, joint": {}, "parallel, joint": {"block": "parallel"},
        "sequential, divided": {"video_attention": "divided"}}
VOCAB = 1000


def batch(size: int, frames: int, prompt_len: int, target_len: int) -> tuple:
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, VOCAB, (size, prompt_len), generator=g)
    images = torch.randn(size, frames, 3, MICRO["image_size"], MICRO["image_size"], generator=g)
    target = torch.randint(0, VOCAB, (size, target_len + 1), generator=g)
    return prompt, torch.ones_like(prompt, dtype=torch.bool), images, torch.ones(size, frames, dtype=torch.bool), target


def step(model: UniTokModel, data: tuple) -> float:
    prompt, prompt_mask, images, image_mask, target = data
    t = time.perf_counter()
    model.zero_grad(set_to_none=True)
    logits = model(prompt, prompt_mask, target[:, :-1], images, image_mask)
    F.cross_entropy(logits.flatten(0, 1), target[:, 1:].flatten()).backward()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--target-len", type=int, default=16)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--out")
    args = ap.parse_args()
    data = batch(args.batch_size, args.frames, args.prompt_len, args.target_len)
    models = {}
    for name, options in ARMS.items():
        torch.manual_seed(0)
        models[name] = UniTokModel(ModelConfig(vocab_size=VOCAB, max_images=max(4, args.frames), **MICRO, **options))
        step(models[name], data)  # warm-up
    times = {name: [] for name in ARMS}
    for rep in range(args.reps):
        order = list(ARMS) if rep % 2 == 0 else list(reversed(ARMS))
        for name in order:
            times[name].append(step(models[name], data))
    base = statistics.median(times["sequential, joint"])
    result = {"threads": torch.get_num_threads(), "args": vars(args), "arms": {}}
    for name in ARMS:
        median = statistics.median(times[name])
        result["arms"][name] = {"params": models[name].num_params(), "median_ms": 1000 * median, "ratio": median / base}
        print(f"{name:22s} params {models[name].num_params():>9,}  step {1000 * median:7.1f} ms  "
              f"ratio {median / base:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

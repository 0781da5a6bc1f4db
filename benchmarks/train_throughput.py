"""Training throughput of a config, fp32 vs bf16 autocast, measured in one run (plus raw matmul rates).

    python benchmarks/train_throughput.py --config configs/tiny.yaml --steps 8 --out benchmarks/results/train_throughput.json

Reports examples/s of full training steps (forward, backward, AdamW) on real batches of the config's
task mixture, the bf16/fp32 ratio, the parameter count, the fp32/bf16 matmul GFLOPS of this machine,
and model FLOPs utilisation (FLOPs counted by torch's FlopCounterMode, over the measured matmul rate).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import unitok  # noqa: F401  (before torch: sets OMP_WAIT_POLICY)
import torch
from torch.utils.flop_counter import FlopCounterMode

from unitok import recipes
from unitok.config import load_config
from unitok.model.transformer import UniTokModel
from unitok.runtime import cpu_has_native_bf16
from unitok.tasks.examples import ExampleBuilder, collate
from unitok.train.data import MixtureDataset, TaskSource
from unitok.train.trainer import model_config_for, weighted_loss


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--modes", default="fp32,bf16", help="comma list of fp32,bf16 (bf16 is slow without native bf16)")
    ap.add_argument("--out")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    overrides = {"data.root": str(tmp / "data"), "data.world.train": 200, "data.world.val": 10}
    overrides.update({k: json.loads(v) if v[:1].isdigit() else v for k, v in (s.split("=", 1) for s in args.set)})
    run = load_config(args.config, overrides)
    tasks = recipes.load_run_tasks(run)
    recipes.prepare_data(run, tasks, splits=("train",))
    codec = recipes.build_codec(run)
    stores = recipes.open_stores(run, tasks, "train")
    tasks = recipes.with_resolved_choices(tasks, stores)
    cfg = model_config_for(run, codec)
    data = MixtureDataset([TaskSource(ExampleBuilder.for_model(s, codec, cfg, meta=stores[n].meta), stores[n])
                           for n, s in tasks.items()])
    batches = [collate([data[(i % len(tasks), (b * 7 + i) % len(stores[list(tasks)[i % len(tasks)]]), b * 1000 + i)]
                        for i in range(args.batch_size)]) for b in range(args.steps + 2)]
    results = {"config": args.config, "params": None, "batch_size": args.batch_size, "steps": args.steps,
               "threads": torch.get_num_threads(), "native_bf16": cpu_has_native_bf16()}
    results["matmul_gflops_fp32"] = matmul_gflops(torch.float32)
    modes = args.modes.split(",")
    if "bf16" in modes:
        results["matmul_gflops_bf16"] = matmul_gflops(torch.bfloat16)
    for mode in modes:
        torch.manual_seed(0)
        model = UniTokModel(cfg)
        results["params"] = model.num_params()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        with FlopCounterMode(display=False) as counter:  # model FLOPs of one step (forward + backward)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                b = batches[0]
                logits = model(b.prompt, b.prompt_mask, b.target_in, b.images, b.image_mask, b.patch_mask)
            weighted_loss(logits, b.target, b.weights).backward()
        opt.zero_grad(set_to_none=True)
        flops_per_example = counter.get_total_flops() / args.batch_size
        for i, b in enumerate(batches):
            if i == 2:  # two warm-up steps
                t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                logits = model(b.prompt, b.prompt_mask, b.target_in, b.images, b.image_mask, b.patch_mask)
            weighted_loss(logits, b.target, b.weights).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        rate = args.steps * args.batch_size / (time.perf_counter() - t0)
        results[f"{mode}_examples_per_s"] = rate
        # MFU: achieved model FLOP/s over the matmul rate of the same dtype, measured in this run.
        results[f"{mode}_mfu"] = rate * flops_per_example / (results[f"matmul_gflops_{mode}"] * 1e9)
        results["gflops_per_example"] = flops_per_example / 1e9
    if len(modes) == 2:
        results["bf16_over_fp32"] = results["bf16_examples_per_s"] / results["fp32_examples_per_s"]
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

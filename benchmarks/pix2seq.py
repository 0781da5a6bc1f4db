"""Pix2Seq sequence augmentation on a micro detection model: recall and mAP with and without it.

Two micro models (the test suite's micro recipe: d_model 128, 2+2 layers) are trained on the same
world data, seed and step count, for detection only:

* ``plain``: ``tasks/detection.yaml`` as shipped (record order, eos weight 1, stop at eos);
* ``pix2seq``: the same task with ``target.noise_boxes`` (training sequences padded with
  ``<noise>``-labelled jittered / random boxes whose coordinates get loss weight 0) and a low
  ``target.eos_weight``; decoded over the whole box budget (``decoding.min_tokens``), noise-labelled
  boxes dropped, each kept box scored by its label probability.

Each model is evaluated on the val split with the standard decoding (stop at eos) and with the
full-budget decoding, so the table separates the effect of training from that of decoding.

    python benchmarks/pix2seq.py --steps 600 --out benchmarks/results/pix2seq.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import unitok  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

# isort: split
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unitok import recipes
from unitok.checkpoint import load_checkpoint
from unitok.config import load_config
from unitok.eval import build_evaluator
from unitok.inference.evaluate import eval_examples
from unitok.inference.predictor import Predictor

MICRO = {"model.d_model": 128, "model.enc_layers": 2, "model.dec_layers": 2, "model.n_heads": 4,
         "train.lr": 2e-3, "train.warmup": 30, "train.batch_size": 32, "train.save_every": 100000,
         "train.log_every": 100, "train.num_workers": 0, "train.eval_examples": 10}


def spec_variant(noise_boxes: int, eos_weight: float, budget: int) -> dict:
    spec = yaml.safe_load((REPO / "tasks" / "detection.yaml").read_text())
    if noise_boxes:
        spec["target"].update(noise_boxes=noise_boxes, eos_weight=eos_weight)
        spec["decoding"].update(max_tokens=budget, min_tokens=budget - 4)
    return spec


def evaluate(predictor: Predictor, store, n: int, **overrides) -> dict:
    evaluator = build_evaluator("coco_map")
    examples = list(eval_examples(predictor, "detection", store, n))
    boxes = 0
    for start in range(0, len(examples), 50):
        batch = examples[start:start + 50]
        for e, p in zip(batch, predictor.predict(batch, **overrides)):
            evaluator.add(p.output, e.reference, image_id=e.record_id)
            boxes += len(p.output.boxes)
    result = {k: round(float(v), 4) for k, v in evaluator.compute().items()}
    result["boxes_per_image"] = round(boxes / len(examples), 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--train-images", type=int, default=1000)
    ap.add_argument("--val-images", type=int, default=200)
    ap.add_argument("--noise-boxes", type=int, default=10, help="pix2seq: objects per training sequence")
    ap.add_argument("--eos-weight", type=float, default=0.1)
    ap.add_argument("--budget", type=int, default=50, help="pix2seq: max_tokens (min_tokens = budget - 4)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--work", type=Path, help="keep data and runs here (default: a temporary directory)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="pix2seq-"))
    results = {"command": " ".join(["python", "benchmarks/pix2seq.py"] + sys.argv[1:]), "steps": args.steps,
               "train_images": args.train_images, "val_images": args.val_images, "runs": {}}
    variants = {"plain": spec_variant(0, 1.0, args.budget),
                "pix2seq": spec_variant(args.noise_boxes, args.eos_weight, args.budget)}
    results["specs"] = {name: {"target": v["target"], "decoding": v["decoding"]} for name, v in variants.items()}
    for name, spec in variants.items():
        tasks = work / name / "tasks"
        tasks.mkdir(parents=True, exist_ok=True)
        (tasks / "detection.yaml").write_text(yaml.safe_dump(spec))
        run = load_config(REPO / "configs" / "tiny.yaml", {
            **MICRO, "data.root": str(work / "data"), "tokenizers.text": str(work / "text.model"),
            "tasks.dir": str(tasks), "tasks.names": ["detection"],
            "data.world.train": args.train_images, "data.world.val": args.val_images})
        if not (work / "text.model").exists():
            recipes.train_text_tokenizer(run)
        t0 = time.perf_counter()
        recipes.train(run, work / name / "run", steps=args.steps, resume=False)
        train_s = time.perf_counter() - t0
        ckpt = load_checkpoint(work / name / "run" / "checkpoint")
        store = recipes.open_stores(run, ckpt.tasks, "eval")["detection"]
        predictor = Predictor(ckpt.model, ckpt.codec, ckpt.tasks)
        budget = ckpt.tasks["detection"].decoding.max_tokens
        results["runs"][name] = {
            "train_s": round(train_s, 1),
            "stop at eos": evaluate(predictor, store, args.val_images, min_tokens=0),
            "whole budget": evaluate(predictor, store, args.val_images, max_tokens=args.budget, min_tokens=args.budget - 4),
            "spec decoding": {"max_tokens": budget, "min_tokens": ckpt.tasks["detection"].decoding.min_tokens},
        }
        print(name, json.dumps(results["runs"][name]), flush=True)
    results["total_s"] = round(time.perf_counter() - started, 1)
    print("| model | decoding | mAP | mAP@0.5 | AR@100 (recall) | boxes / image |\n|---|---|---:|---:|---:|---:|")
    for name, run in results["runs"].items():
        for decoding in ("stop at eos", "whole budget"):
            r = run[decoding]
            print(f"| {name} | {decoding} | {r['map']:.3f} | {r['map@0.5']:.3f} | {r['ar@100']:.3f} | {r['boxes_per_image']} |")
    print(f"total {results['total_s']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

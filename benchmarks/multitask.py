"""Multitask vs single-task at the same model size and the same training budget.

The Unified-IO / OFA claim: one model trained on a task mixture matches specialists of the same size.
This trains, on the same world data and seed, models of one size (by default the test suite's micro size,
d_model 128 with 2+2 layers, so that the ten runs fit in about 20 minutes on 2 CPU cores; ``--size tiny``
uses ``configs/tiny.yaml``'s architecture unchanged):

* ``multitask``: one model on detection + caption + vqa + segmentation, mixed by the specs' weights
  (vqa 2, the others 1: 40% / 20% / 20% / 20% of the examples);
* ``multitask_shared_ffn``: the same with the Multiway FFN experts off (one FFN for every token);
* ``multitask_uniform``: the same with the task weights flattened (temperature 100: 25% each);
* ``single/<task>``: one model per task, with the **same** budget (steps x batch) as the multitask model;
* ``single_share/<task>``: one model per task with the multitask model's share of that budget for the
  task, i.e. as many examples of its task as the multitask model saw.

Each model is evaluated on the first ``--eval-examples`` of the val split with each task's metric.

    python benchmarks/multitask.py --steps 600 --out benchmarks/results/multitask.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import unitok  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

# isort: split
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unitok import recipes
from unitok.config import load_config

TASKS = ["detection", "caption", "vqa", "segmentation"]
SIZES = {"micro": {"model.d_model": 128, "model.enc_layers": 2, "model.dec_layers": 2, "model.n_heads": 4,
                   "train.lr": 2e-3},
         "tiny": {}}
PRIMARY = {"detection": "map@0.5", "caption": "cider", "vqa": "accuracy", "segmentation": "miou"}


def run_one(name: str, tasks: list[str], steps: int, args, **extra) -> dict:
    out = Path(args.runs) / name
    overrides = {"tasks.names": tasks, "train.steps": steps, "train.batch_size": args.batch_size,
                 "train.warmup": min(100, steps // 10), "train.save_every": 10**6, "train.log_every": 50,
                 "train.eval_examples": args.eval_examples, "train.seed": args.seed, **SIZES[args.size], **extra}
    run = load_config(args.config, overrides)
    t0 = time.perf_counter()
    _, results = recipes.train(run, out, resume=False)
    wall = time.perf_counter() - t0
    row = {"tasks": tasks, "size": args.size, "steps": steps, "batch_size": args.batch_size, "wall_s": round(wall, 1),
           "metrics": results, **{k: v for k, v in extra.items()}}
    print(f"{name}: {json.dumps({t: round(results[t][PRIMARY[t]], 4) for t in tasks})}  ({wall:.0f} s)", flush=True)
    return row


def table(rows: dict) -> str:
    head = ["task (metric)", "multitask", "multitask, shared FFN", "multitask, uniform mix",
            "single-task, same budget", "single-task, the multitask model's share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    def cell(key: str, t: str) -> str:
        r = rows.get(key)
        return f"{r['metrics'][t][PRIMARY[t]]:.3f}" if r and t in r["metrics"] else "-"

    for t in TASKS:
        keys = ("multitask", "multitask_shared_ffn", "multitask_uniform", f"single/{t}", f"single_share/{t}")
        lines.append(f"| {t} ({PRIMARY[t]}) | " + " | ".join(cell(k, t) for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/tiny.yaml", help="model size and data (its tasks are replaced)")
    ap.add_argument("--size", choices=sorted(SIZES), default="micro")
    ap.add_argument("--steps", type=int, default=600, help="the multitask model's steps; the budget of every run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-examples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/multitask")
    ap.add_argument("--only", nargs="*", help="run only these rows (e.g. multitask single/detection)")
    ap.add_argument("--out", default="benchmarks/results/multitask.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from unitok.tasks.spec import load_tasks
    from unitok.train.data import mixture_probs

    run = load_config(args.config)
    weights = [s.weight for s in load_tasks(run.tasks.dir, TASKS).values()]
    share = dict(zip(TASKS, mixture_probs(weights, run.tasks.temperature)))
    plan = {"multitask": (TASKS, args.steps, {}),
            "multitask_shared_ffn": (TASKS, args.steps, {"model.multiway": False}),
            "multitask_uniform": (TASKS, args.steps, {"tasks.temperature": 100.0})}
    plan.update({f"single/{t}": ([t], args.steps, {}) for t in TASKS})
    plan.update({f"single_share/{t}": ([t], round(args.steps * share[t]), {}) for t in TASKS})
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() and args.only else {}
    for name, (tasks, steps, extra) in plan.items():
        if args.only and name not in args.only:
            continue
        rows[name] = run_one(name, tasks, steps, args, **extra)
        out.parent.mkdir(parents=True, exist_ok=True)  # written after every run: a long sweep loses nothing
        out.write_text(json.dumps({"config": args.config, "size": args.size, "steps": args.steps, "batch_size": args.batch_size,
                                   "eval_examples": args.eval_examples, "seed": args.seed, "rows": rows}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()

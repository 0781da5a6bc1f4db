"""Fine-tuning from the shipped default against training from scratch, on data the default never saw.

    python benchmarks/finetune_vs_scratch.py --steps 600 --out benchmarks/results/finetune_vs_scratch.json

The data and the two task specs are those of ``docs/finetune.md``: world scenes of another seed (7),
repainted in the shifted palette, exported to COCO files and imported back (captions + boxes, and the
questions as JSON Lines); ``shapes_caption`` (CIDEr) and ``shapes_count`` (accuracy). Both arms run the
same steps, batch and evaluation schedule on the same data, one after the other:

* ``finetune``: ``unitok train --init checkpoints/default`` at the page's lr (3e-4);
* ``scratch``: the default's own model and vocabulary (``configs/tiny.yaml``'s ``model`` and
  ``tokenizers``), randomly initialised, at the lr the default was trained with (1e-3).

Minutes are training wall-clock, summed from ``log.csv`` (each logged window's examples / examples per
second), so evaluation time is left out of both arms. Each task's row says when the fine-tuned run first
reached the from-scratch run's final score, as a fraction of the from-scratch run's time (the goal is
a third or less). A final ``unitok eval`` of both checkpoints on 100 val examples adds each task's blind
score (every input image replaced by a flat canvas). Writes ``--out`` (JSON) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "finetune.md"
DEFAULT = REPO / "checkpoints" / "default"
TASKS = ("shapes_caption", "shapes_count")


def unitok(*args: str) -> None:
    cmd = [sys.executable, "-m", "unitok.cli", *map(str, args)]
    print("$ unitok " + " ".join(map(str, args)), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def doc_specs() -> dict[str, str]:
    """The task specs of docs/finetune.md (its yaml blocks that start with ``# my_tasks/<name>.yaml``)."""
    blocks = re.findall(r"^```yaml\n(# my_tasks/(\w+)\.yaml\n.*?)^```", DOC.read_text(), flags=re.S | re.M)
    specs = {name: body for body, name in blocks}
    assert set(specs) == set(TASKS), f"{DOC} should hold the specs {TASKS}, has {sorted(specs)}"
    return specs


def prepare(work: Path, n_train: int, n_val: int) -> tuple[Path, Path]:
    """Build, export and import the page's dataset under ``work``; returns (data root, tasks dir)."""
    data, tasks = work / "data", work / "my_tasks"
    if not (data / "shapes_qa" / "val").exists():
        for split, n in (("train", n_train), ("val", n_val)):
            unitok("data", "build", "world", "--seed", 7, "--split", split, "--n", n, "--out", work / "world7" / split)
            coco = work / "coco" / split
            unitok("data", "export", "coco", work / "world7" / split, "--out", coco, "--palette", "shifted")
            unitok("data", "import", "coco", "--instances", coco / "instances.json", "--captions", coco / "captions.json",
                   "--images", coco / "images", "--out", data / "shapes" / split)
            unitok("data", "import", "jsonl", "--path", coco / "questions.jsonl", "--out", data / "shapes_qa" / split)
    tasks.mkdir(parents=True, exist_ok=True)
    for name, body in doc_specs().items():
        (tasks / f"{name}.yaml").write_text(body)
    return data, tasks


def config(arm: str, data: Path, tasks: Path, args) -> dict:
    train = {"steps": args.steps, "batch_size": 16, "warmup": 20, "log_every": 10, "save_every": args.steps,
             "eval_every": args.eval_every, "eval_examples": 50, "seed": 0, "bf16": False, "num_workers": 2,
             "lr": 3.0e-4 if arm == "finetune" else 1.0e-3}
    cfg = {"data": {"root": str(data)}, "tasks": {"dir": str(tasks), "names": list(TASKS)}, "train": train}
    if arm == "scratch":  # the default's own architecture and vocabulary, from random weights
        tiny = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
        cfg["model"] = tiny["model"]
        cfg["tokenizers"] = {k: str(REPO / v) if isinstance(v, str) else v for k, v in tiny["tokenizers"].items()}
    return cfg


def curve(run: Path) -> dict:
    """{task: [(step, minutes of training so far, metric)]} from the run's log.csv and eval.csv."""
    cfg = json.loads((run / "checkpoint" / "config.json").read_text())["run"]["train"]
    batch, minutes, clock = cfg["batch_size"], {0: 0.0}, 0.0
    last = 0
    for row in csv.DictReader((run / "log.csv").open()):
        step = int(row["step"])
        clock += (step - last) * batch / float(row["examples_per_s"]) / 60
        minutes[step], last = clock, step
    out: dict[str, list] = {t: [] for t in TASKS}
    for row in csv.DictReader((run / "eval.csv").open()):
        step = int(row["step"])
        when = minutes[max(s for s in minutes if s <= step)]
        for task, key in (("shapes_caption", "cider"), ("shapes_count", "accuracy")):
            value = row.get(f"eval/{task}/{key}")
            if value not in (None, ""):
                out[task].append((step, round(when, 2), float(value)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--work", default=str(REPO / "build" / "finetune_vs_scratch"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "finetune_vs_scratch.json"))
    args = p.parse_args()
    work = Path(args.work)
    data, tasks = prepare(work, args.n_train, args.n_val)
    result = {"command": "python benchmarks/finetune_vs_scratch.py " + " ".join(sys.argv[1:]),
              "steps": args.steps, "batch_size": 16, "arms": {}}
    for arm in ("finetune", "scratch"):
        run = work / "runs" / arm
        cfg_path = work / f"{arm}.yaml"
        cfg = config(arm, data, tasks, args)
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        t0 = time.perf_counter()
        unitok("train", "--config", cfg_path, "--out", run, "--fresh", *(["--init", DEFAULT] if arm == "finetune" else []))
        wall = time.perf_counter() - t0
        unitok("eval", "--checkpoint", run / "checkpoint", "--max-examples", 100, "--data-root", data, "--no-constant",
               "--out", run / "final")
        final = json.loads((run / "final" / "metrics.json").read_text())
        result["arms"][arm] = {"lr": cfg["train"]["lr"], "wall_s": round(wall), "curve": curve(run),
                               "final": {t: {"value": final[t][final[t]["primary"]],
                                             "blind": final[t]["blind"][final[t]["primary"]]} for t in TASKS}}
    rows = ["| task | metric | scratch final (blind) | fine-tune final (blind) | fine-tune at step 50 | "
            "fine-tune reaches scratch's final at | fraction of scratch's time |", "|---|---|---:|---:|---:|---:|---:|"]
    for task, key in (("shapes_caption", "CIDEr"), ("shapes_count", "accuracy")):
        ft, sc = result["arms"]["finetune"], result["arms"]["scratch"]
        target, total = sc["curve"][task][-1][2], sc["curve"][task][-1][1]
        reached = next(((s, m) for s, m, v in ft["curve"][task] if v >= target), None)
        frac = None if reached is None else round(reached[1] / total, 3)
        result.setdefault("summary", {})[task] = {"scratch_final_in_training": target, "reached_at": reached,
                                                  "fraction_of_scratch_time": frac}
        rows.append(f"| {task} | {key} | {sc['final'][task]['value']:.3f} ({sc['final'][task]['blind']:.3f}) | "
                    f"{ft['final'][task]['value']:.3f} ({ft['final'][task]['blind']:.3f}) | {ft['curve'][task][0][2]:.3f} | "
                    + (f"step {reached[0]}, {reached[1]:.1f} min | {frac:.2f} |" if reached else "never | - |"))
    result["table"] = "\n".join(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(result["table"])


if __name__ == "__main__":
    main()

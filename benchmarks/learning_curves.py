"""Per-task learning curves of a training run: val metric against training examples seen, beside the
task's blind baseline and chance where the final evaluation reported them.

    python benchmarks/learning_curves.py --run runs/default --metrics checkpoints/default/metrics.json \
        --out benchmarks/results/learning_curves_default

Reads the run's ``eval.csv`` (written every ``train.eval_every`` steps) and ``config.json`` (batch size),
and writes ``<out>.json`` ({task: {metric, examples: [...], values: [...], blind, constant}}) and
``<out>.png`` (one panel per task; needs matplotlib: ``pip install -e ".[bench]"``).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path



def curves(run: Path, metrics: dict | None) -> dict:
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    train = config["run"]["train"]
    batch = train["batch_size"] * train.get("accumulate", 1)
    rows = list(csv.DictReader((run / "eval.csv").open()))
    tasks = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("eval/")})
    out = {}
    for task in tasks:
        final = (metrics or {}).get(task, {})
        key = final.get("primary")
        if key is None:  # no final metrics: the first key this task logged
            key = next(k.split("/", 2)[2] for k in rows[0] if k.startswith(f"eval/{task}/"))
        column = f"eval/{task}/{key}"
        points = [(int(r["step"]) * batch, float(r[column])) for r in rows if r.get(column) not in (None, "")]
        out[task] = {"metric": key, "examples": [p[0] for p in points], "values": [p[1] for p in points],
                     "final": final.get(key), "blind": final.get("blind", {}).get(key),
                     "constant": (final.get("constant") or {}).get(key)}
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(data)
    cols = 4
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4 * cols, 2.8 * math.ceil(n / cols)), squeeze=False)
    for ax, (task, c) in zip(axes.flat, data.items()):
        ax.plot([e / 1000 for e in c["examples"]], c["values"], marker="o", label="val")
        if c["blind"] is not None:
            ax.axhline(c["blind"], color="grey", linestyle="--", label="blind (final)")
        if c["constant"] is not None:
            ax.axhline(c["constant"], color="orange", linestyle=":", label="constant answer")
        ax.set_title(f"{task}: {c['metric']}", fontsize=9)
        ax.set_xlabel("training examples (k)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a training run directory (eval.csv, checkpoint/)")
    ap.add_argument("--metrics", type=Path, help="metrics.json of the final `unitok eval` (blind, constant)")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix")
    args = ap.parse_args()
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    data = curves(args.run, metrics)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    plot(data, args.out.with_suffix(".png"))
    for task, c in data.items():
        print(f"{task:22s} {c['metric']:10s} " + " ".join(f"{v:.3f}" for v in c["values"]) + f"  blind {c['blind']}")


if __name__ == "__main__":
    main()

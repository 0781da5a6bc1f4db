"""docs/finetune.md, run end to end at micro scale: a COCO export of world scenes the default never saw (seed 7,
the shifted palette), imported, two task specs, a fine-tune from checkpoints/default, eval and predict.

The commands and files come from the page itself: every `unitok` line of its bash blocks runs, in order,
through the CLI's entry point (in this process, so torch is imported once), and every yaml block that starts
with ``# <file>`` is written. Only sizes shrink: fewer scenes, steps and eval examples.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from unitok import cli

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "finetune.md"
PARENT = REPO / "checkpoints" / "default"

# The page's sizes -> micro sizes; train runs get a micro schedule on top of the page's config.
MICRO = [(r"--n 400\b", "--n 12"), (r"--n 100\b", "--n 6"), (r"--max-examples 100\b", "--max-examples 4"),
         (r"(?<![\w/])checkpoints/default\b", str(PARENT))]
MICRO_TRAIN = ["train.steps=2", "train.batch_size=8", "train.log_every=1", "train.eval_every=0", "train.save_every=2",
               "train.eval_examples=2", "train.num_workers=0", "train.bf16=false"]


def walkthrough(doc: Path = DOC) -> tuple[dict[str, str], list[str]]:
    """({file: text} of the yaml blocks that name a file, [the unitok commands of the bash blocks])."""
    files, commands = {}, []
    for lang, body in re.findall(r"^```(\w+)\n(.*?)^```", doc.read_text(), flags=re.S | re.M):
        first = body.splitlines()[0] if body.strip() else ""
        if lang == "yaml" and re.fullmatch(r"# [\w./-]+\.yaml", first):
            files[first[2:]] = body
        elif lang == "bash":
            commands += [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.startswith("unitok ")]
    return files, commands


def micro(command: str) -> list[str]:
    for pattern, repl in MICRO:
        command = re.sub(pattern, repl, command)
    args = shlex.split(command)[1:]
    return args + ["--set", *MICRO_TRAIN] if args[0] == "train" else args


def run(args: list[str], capsys) -> str:
    cli.main(args)
    return capsys.readouterr().out


def first_loss(run_dir: Path) -> float:
    header, first = (run_dir / "log.csv").read_text().splitlines()[:2]
    row = dict(zip(header.split(","), first.split(",")))
    assert row["step"] == "1"
    return float(row["loss"])


@pytest.mark.skipif(not (PARENT / "model.safetensors").exists(), reason="needs the shipped checkpoints/default")
def test_the_finetune_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    files, commands = walkthrough()
    assert {"my_tasks/shapes_caption.yaml", "my_tasks/shapes_count.yaml", "shapes.yaml"} <= set(files)
    assert any(c.startswith("unitok train ") and "--init checkpoints/default" in c for c in commands)
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text)
    out = {}
    for command in commands:
        args = micro(command)
        out.setdefault(tuple(args[:2]), []).append(run(args, capsys))

    # the export holds the shifted palette's pixels and the flat questions; the import grouped them by image
    from unitok.data.store import RecordStore

    shapes, qa = RecordStore("data/shapes/train"), RecordStore("data/shapes_qa/train")
    assert len(shapes) == len(qa) == 12 and all(r["vqa"] for r in qa)
    assert sum(len(r["vqa"]) for r in qa) == len(Path("build/shapes_coco/train/questions.jsonl").read_text().splitlines())
    assert "two" in qa.meta["answers"] and shapes[0]["image"] == qa[0]["image"]
    assert "vqa" in out[("data", "inspect")][0] and "items" in out[("data", "inspect")][0]
    assert out[("tasks", "check")][0].count("ok    ") == 2

    # fine-tuned from the default's weights: its first loss is far below a run from scratch of the same model
    parent = json.loads((PARENT / "config.json").read_text())["run"]
    tokenizers = {k: str(REPO / v) if isinstance(v, str) else v for k, v in parent["tokenizers"].items()}
    scratch = [f"model.{k}={json.dumps(v)}" for k, v in parent["model"].items()]
    scratch += [f"tokenizers.{k}={v}" for k, v in tokenizers.items()]
    run(["train", "--config", "shapes.yaml", "--out", "runs/scratch", "--set", *MICRO_TRAIN, *scratch], capsys)
    tuned, fresh = first_loss(Path("runs/shapes")), first_loss(Path("runs/scratch"))
    assert tuned < fresh / 3, (tuned, fresh)

    # eval wrote metrics for both tasks, with their baselines
    metrics = json.loads(Path("runs/shapes/checkpoint/metrics.json").read_text())
    assert metrics["shapes_caption"]["primary"] == "cider" and "cider" in metrics["shapes_caption"]["blind"]
    assert metrics["shapes_count"]["primary"] == "accuracy" and 0 <= metrics["shapes_count"]["accuracy"] <= 1
    # predict routes each prompt to its task: a caption, and a label from the answer vocabulary
    caption, count = (json.loads(text) for text in out[("predict", "--checkpoint")])
    assert caption["type"] == "Text" and caption["output"]["text"]
    assert count["type"] == "Label" and count["output"]["label"] in qa.meta["answers"]

"""Evaluation against baselines: the blind pass (inputs withheld), ``vision_gain``, and the constant answer."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unitok.eval import format_summary, format_table, write_results
from unitok.inference.evaluate import MeanColour, blind, gain, most_frequent_target, most_frequent_targets
from unitok.tasks.examples import Example, ExampleBuilder
from unitok.tasks.formats import FORMATS
from unitok.tasks.spec import load_task

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "checkpoints" / "default"


def example(images=None, prompt=(5, 6, 7)) -> Example:
    return Example("t", list(prompt), images, [9, 2], [1.0, 1.0], 64.0, 64.0, reference=["a b"], record_id="r0")


# --------------------------------------------------------------------------- the blind transform


def test_blind_blanks_every_image_slot_with_the_fill_and_keeps_the_prompt():
    images = torch.rand(3, 3, 16, 16) * 2 - 1  # image, second image, a frame
    e = example(images)
    fill = torch.tensor([0.5, -0.25, 0.0])
    b = blind(e, fill)
    assert b.images.shape == images.shape
    assert torch.equal(b.images, fill.view(1, 3, 1, 1).expand(3, 3, 16, 16))
    assert b.prompt == [5, 6, 7] and b.target == e.target and b.reference == e.reference and b.task == "t"
    assert torch.equal(e.images, images)  # the original is untouched
    assert torch.equal(blind(e).images, torch.zeros_like(images))  # no fill given: mid-grey


def test_blind_keeps_the_patch_mask_of_masked_image_modelling():
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, :10] = True
    e = example(torch.rand(1, 3, 16, 16))
    e.patch_mask = mask
    b = blind(e, torch.tensor([0.1, 0.2, 0.3]))
    assert torch.equal(b.patch_mask, mask) and torch.allclose(b.images[0, :, 3, 3], torch.tensor([0.1, 0.2, 0.3]))


def test_blind_text_only_task_loses_its_prompt():
    b = blind(example(None, prompt=(11, 12, 13)), torch.zeros(3))
    assert b.prompt == [] and b.images is None and b.target == [9, 2]


def test_mean_colour_over_every_slot_and_pixel():
    mean = MeanColour()
    assert mean.value is None
    a = torch.zeros(1, 3, 4, 4)
    a[:, 0] = 1.0
    b = torch.zeros(2, 3, 4, 4)
    b[:, 1] = -1.0
    mean.add(example(a))
    mean.add(example(b))
    mean.add(example(None))  # text-only examples add nothing
    assert torch.allclose(mean.value, torch.tensor([1 / 3, -2 / 3, 0.0]))


def test_gain_is_positive_when_the_input_helped_for_either_direction():
    assert gain("delta1", 0.9, 0.5) == pytest.approx(0.4)
    assert gain("abs_rel", 0.1, 0.3, {"abs_rel", "rmse"}) == pytest.approx(0.2)  # lower error with the image
    assert gain("abs_rel", 0.3, 0.1, {"abs_rel", "rmse"}) == pytest.approx(-0.2)


# --------------------------------------------------------------------------- constant answers


def builder(name: str) -> ExampleBuilder:
    return ExampleBuilder(load_task(REPO / "tasks" / f"{name}.yaml", formats=FORMATS), None, image_size=64,
                          max_prompt_len=64)


def test_constant_is_the_most_frequent_train_target():
    records = [{"captions": ["a red circle.", "one circle."]}, {"captions": ["a red circle."]},
               {"captions": ["two squares.", "one circle."]}, {"captions": ["one circle."]}]
    assert most_frequent_target(builder("caption"), records) == ("one circle.", 3)
    assert most_frequent_target(builder("caption"), records, max_records=2) == ("a red circle.", 2)  # scan cap
    regions = [{"regions": [{"description": "a square"}, {"description": "a dot"}]},
               {"regions": [{"description": "a dot"}]}]
    assert most_frequent_target(builder("region_caption"), regions) == ("a dot", 2)  # every `each` item counts
    itm = [{"itm": [{"text": "x", "match": True}, {"text": "y", "match": False}]}, {"itm": [{"text": "z", "match": False}]}]
    assert most_frequent_target(builder("itm"), itm) == ("no", 2)  # a label's values mapping applies


def test_constant_only_for_single_string_answers():
    found = most_frequent_targets({"caption": builder("caption"), "detection": builder("detection")},
                                  [{"captions": ["a"], "objects": []}])
    assert found == {"caption": ("a", 1)}


# --------------------------------------------------------------------------- report


RESULTS = {
    "caption": {"bleu4": 0.5, "cider": 0.8, "ref_logp": -0.6, "retrieval_r@1": 0.3, "primary": "cider",
                "blind": {"bleu4": 0.2, "cider": 0.3, "ref_logp": -1.0, "retrieval_r@1": 0.02},
                "gain": {"bleu4": 0.3, "cider": 0.5, "ref_logp": 0.4, "retrieval_r@1": 0.28}, "vision_gain": 0.5,
                "blind_fill_rgb": [120.0, 121.5, 119.0], "constant": {"bleu4": 0.1, "cider": 0.05},
                "constant_answer": "three shapes."},
    "depth": {"abs_rel": 0.1, "delta1": 0.9, "primary": "delta1", "blind": {"abs_rel": 0.4, "delta1": 0.5},
              "gain": {"abs_rel": 0.3, "delta1": 0.4}, "vision_gain": 0.4},
}


def test_table_has_blind_gain_and_constant_columns(tmp_path):
    table = format_table(RESULTS)
    lines = table.splitlines()
    assert lines[0] == "| task | metric | value | blind | gain | constant |"
    assert "| caption | cider | 0.8000 | 0.3000 | 0.5000 | 0.0500 |" in lines
    assert "| caption | ref_logp | -0.6000 | -1.0000 | 0.4000 |  |" in lines
    assert "| depth | abs_rel | 0.1000 | 0.4000 | 0.3000 |  |" in lines
    rows = [line.split(" | ")[1] for line in lines[2:] if line.startswith("| ")]
    assert rows == ["bleu4", "cider", "ref_logp", "retrieval_r@1", "abs_rel", "delta1"]  # baselines are columns
    assert '- caption: "three shapes."' in table
    json_path, md_path = write_results(RESULTS, tmp_path)
    assert json.loads(json_path.read_text()) == RESULTS and md_path.read_text() == table
    summary = format_summary(RESULTS).splitlines()
    assert summary[2:] == ["| caption | cider | 0.8000 | 0.3000 | 0.5000 | 0.0500 |",
                           "| caption | retrieval_r@1 | 0.3000 | 0.0200 | 0.2800 |  |",
                           "| depth | delta1 | 0.9000 | 0.5000 | 0.4000 |  |"]


def test_table_without_baselines_keeps_three_columns():
    assert format_table({"vqa": {"accuracy": 1.0}}) == "| task | metric | value |\n|---|---|---:|\n| vqa | accuracy | 1.0000 |\n"


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A run config of the default checkpoint over a tiny world: 6 val and 24 train records (the train
    store written, so that the CLI, which reads the checkpoint's own config, finds it)."""
    from unitok.checkpoint import load_checkpoint
    from unitok.config import parse_config
    from unitok.recipes import build_world_store

    root = tmp_path_factory.mktemp("blind") / "data"
    run = load_checkpoint(CKPT).run.model_dump(exclude={"source"})
    run["data"]["root"] = str(root)
    run["data"]["world"].update(val=6, train=24)
    run = parse_config(run, source=str(CKPT / "config.json"))
    for split, n in (("val", 6), ("train", 24)):
        build_world_store("world", split, n, root / "world" / split, seed=run.data.world.seed, size=run.data.world.size)
    return root, run


def test_train_records_are_generated_when_a_world_store_is_missing(tiny_root, tmp_path):
    from unitok.data.store import RecordStore
    from unitok.recipes import train_records

    root, run = tiny_root
    stored = list(train_records(root, "world", "train", run))
    generated = list(train_records(tmp_path, "world", "train", run))  # no store there: the same records, made
    assert len(stored) == len(generated) == 24 and [r["id"] for r in generated] == [r["id"] for r in stored]
    assert generated[3]["captions"] == RecordStore(root / "world" / "train")[3]["captions"]
    assert train_records(tmp_path, "coco", "train", run) is None  # not a world: nothing to generate


def test_evaluate_checkpoint_reports_blind_gain_and_constant(tiny_root):
    from unitok.recipes import evaluate_checkpoint

    root, run = tiny_root
    tasks = ["caption", "depth", "text_to_image", "vqa_closed"]
    results = evaluate_checkpoint(CKPT, run, tasks=tasks, split="val", max_examples=4, data_root=str(root))
    assert set(results) == set(tasks)
    for task, m in results.items():
        assert set(m["blind"]) <= set(m) and m["primary"] in m["blind"], task
        assert m["vision_gain"] == pytest.approx(m[m["primary"]] - m["blind"][m["primary"]]), task
    assert "retrieval_r@1" in results["caption"]["blind"] and "ref_logp" in results["caption"]["blind"]
    depth = results["depth"]
    assert depth["gain"]["abs_rel"] == pytest.approx(depth["blind"]["abs_rel"] - depth["abs_rel"])
    assert results["text_to_image"]["blind_fill_rgb"] is None  # no image input: the prompt is what is withheld
    assert len(results["depth"]["blind_fill_rgb"]) == 3
    # the constant answer: caption (text) and vqa_closed (label), from the 24 generated train records
    assert results["caption"]["constant_answer"] and "cider" in results["caption"]["constant"]
    assert "accuracy" in results["vqa_closed"]["constant"]
    assert "constant" not in results["depth"] and "constant" not in results["text_to_image"]


def test_cli_eval_no_blind_omits_the_baseline_fields(tiny_root, tmp_path):
    root, _ = tiny_root
    env_cmd = [sys.executable, "-m", "unitok.cli", "eval", "--checkpoint", str(CKPT), "--tasks", "classification",
               "--split", "val", "--max-examples", "4", "--data-root", str(root)]
    proc = subprocess.run(env_cmd + ["--no-blind", "--no-constant", "--out", str(tmp_path / "quick")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "quick" / "metrics.json").read_text())["classification"]
    assert "accuracy" in metrics and not {"blind", "gain", "vision_gain", "constant"} & set(metrics)
    assert (tmp_path / "quick" / "metrics.md").read_text().splitlines()[0] == "| task | metric | value |"
    proc = subprocess.run(env_cmd + ["--out", str(tmp_path / "full")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())["classification"]
    assert {"blind", "gain", "vision_gain", "constant", "constant_answer"} <= set(metrics)
    assert "| task | metric | value | blind | gain | constant |" in proc.stdout  # the compact table
    assert "| classification | accuracy |" in proc.stdout

"""Every task spec in tasks/ trains a few steps and evaluates on a nano model; a new task is one YAML."""
from __future__ import annotations

import math
import shutil
import textwrap
from pathlib import Path

import pytest

from unitok import recipes
from unitok.config import load_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

NANO = {"model.d_model": 64, "model.enc_layers": 1, "model.dec_layers": 1, "model.n_heads": 2,
        "train.batch_size": 8, "train.warmup": 2, "train.log_every": 2, "train.save_every": 100,
        "train.num_workers": 0, "train.eval_examples": 3,
        "data.world.train": 24, "data.world.val": 6,
        "tokenizers.image": str(REPO / "tokenizers" / "image_vq"), "tokenizers.dense": str(REPO / "tokenizers" / "dense_vq")}


def nano_run(tmp: Path, tasks_dir: Path, names=None):
    return load_config(REPO / "configs" / "tiny.yaml", {
        **NANO, "data.root": str(tmp / "data"), "tokenizers.text": str(tmp / "text.model"),
        "tasks.dir": str(tasks_dir), "tasks.names": names})


@pytest.fixture(scope="module")
def nano_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nano")
    run = nano_run(tmp, REPO / "tasks")
    recipes.train_text_tokenizer(run)
    recipes.prepare_data(run, recipes.load_run_tasks(run))
    return tmp


def test_every_task_spec_trains_and_evaluates(nano_world):
    run = nano_run(nano_world, REPO / "tasks")
    _, results = recipes.train(run, nano_world / "all", steps=4)
    specs = recipes.load_run_tasks(run)
    assert set(results) == set(specs) and len(specs) >= 17
    for task, metrics in results.items():
        assert metrics, task
        assert all(math.isfinite(v) for v in metrics.values()), (task, metrics)


def test_a_new_task_is_one_yaml_file(nano_world, tmp_path):
    """A question type the built-in tasks don't ask (the colour of a given region), over the same data."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(REPO / "tasks" / "caption.yaml", tasks)
    (tasks / "region_colour.yaml").write_text(textwrap.dedent("""
        name: region_colour
        data: world
        each: objects
        prompt: ["what colour is the {shape} at {region}?"]
        inputs: {image: image, region: box}
        target: {format: label, field: colour, choices: "meta:colours"}
        metric: accuracy
    """))
    run = nano_run(nano_world, tasks, ["caption", "region_colour"])
    trainer, results = recipes.train(run, tmp_path / "run", steps=3)
    assert 0.0 <= results["region_colour"]["accuracy"] <= 1.0
    assert trainer.tasks["region_colour"].target.choices[:2] == ["red", "green"]  # meta:colours resolved from the store

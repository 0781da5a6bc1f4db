"""Shared fixtures. The expensive one, ``trained``, trains a micro model once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import unitok  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads; see unitok/__init__.py)
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A micro model: the tiny recipe shrunk so a few hundred steps fit in a CI minute or two.
MICRO = {
    "model.d_model": 128, "model.enc_layers": 2, "model.dec_layers": 2, "model.n_heads": 4,
    "train.lr": 2e-3, "train.warmup": 30, "train.batch_size": 32, "train.save_every": 100,
    "train.log_every": 25, "train.num_workers": 2, "train.eval_examples": 100, "train.eval_every": 0,
    "data.world.train": 1000, "data.world.val": 100,
}


def micro_config(tmp: Path, **extra):
    from unitok.config import load_config

    overrides = {**MICRO, "data.root": str(tmp / "data"), "tokenizers.text": str(tmp / "text.model"),
                 "tasks.dir": str(tmp / "tasks"), "tasks.names": ["caption", "detection"], **extra}
    return load_config(REPO / "configs" / "tiny.yaml", overrides)


@pytest.fixture(scope="session")
def micro_world(tmp_path_factory):
    """A small world (train/val stores), a text tokenizer trained on it, and the caption + detection
    specs with detection weighted up (it needs more steps than captioning to learn)."""
    import shutil

    import yaml

    from unitok import recipes

    tmp = tmp_path_factory.mktemp("micro")
    tasks = tmp / "tasks"
    tasks.mkdir()
    shutil.copy(REPO / "tasks" / "caption.yaml", tasks)
    spec = yaml.safe_load((REPO / "tasks" / "detection.yaml").read_text())
    (tasks / "detection.yaml").write_text(yaml.safe_dump({**spec, "weight": 3.0}))
    run = micro_config(tmp)
    recipes.train_text_tokenizer(run)
    recipes.prepare_data(run, recipes.load_run_tasks(run))
    return tmp, run


@pytest.fixture(scope="session")
def trained(micro_world):
    """(run config, run dir, final eval results) of a micro model trained for 600 steps."""
    from unitok import recipes

    tmp, run = micro_world
    out = tmp / "run"
    _, results = recipes.train(run, out, steps=600)
    return run, out, results

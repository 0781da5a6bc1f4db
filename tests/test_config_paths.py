"""Paths in a run config mean the same files from any directory: a relative path written in a config file is
relative to its project (the file's folder, or the one above `configs/`), one given on the command line to the
current directory. A missing tokenizer is an error naming it, never a tokenizer trained on the spot."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from unitok import recipes
from unitok.config import load_config, project_root

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def test_configs_in_configs_folder_resolve_against_the_project_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = load_config(TINY)
    assert project_root(TINY) == REPO
    assert run.resolve(run.tokenizers.text) == REPO / "tokenizers" / "text.model"
    assert run.resolve(run.data.root) == REPO / "data" and run.resolve(run.tasks.dir) == REPO / "tasks"
    assert set(recipes.load_run_tasks(run)) == {p.stem for p in (REPO / "tasks").glob("*.yaml")}
    assert recipes.store_path(run, "world", "val") == REPO / "data" / "world" / "val"
    assert run.model_dump()["data"]["root"] == "data"  # recorded as written: a checkpoint holds no machine's path


def test_a_config_beside_its_files_and_command_line_paths(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "my_tasks").mkdir(parents=True)
    (project / "my.yaml").write_text("data: {root: stores}\ntasks: {dir: my_tasks}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = load_config(project / "my.yaml")
    assert run.resolve(run.tasks.dir) == project / "my_tasks" and run.resolve(run.data.root) == project / "stores"
    run = load_config(project / "my.yaml", {"data.root": "mine", "tokenizers.text": str(tmp_path / "t.model"),
                                            "train.init": "ckpt"})
    assert run.resolve(run.data.root) == elsewhere / "mine"  # typed on the command line: the current directory
    assert run.resolve(run.tokenizers.text) == tmp_path / "t.model"
    assert run.resolve(run.train.init) == elsewhere / "ckpt"


def test_a_missing_tokenizer_is_an_error_naming_it_and_nothing_is_trained_or_built(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    config = project / "run.yaml"
    config.write_text(json.dumps({
        "tokenizers": {"text": "tokenizers/missing.model"}, "data": {"root": "data", "world": {"train": 8, "val": 4}},
        "tasks": {"dir": str(REPO / "tasks"), "names": ["caption"]},
        "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1},
        "train": {"steps": 1, "batch_size": 2, "num_workers": 0, "eval_examples": 1}}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        recipes.train(load_config(config), tmp_path / "run", eval_examples=1)
    assert f"{config}: field 'tokenizers.text'" in str(e.value)
    assert str(project / "tokenizers" / "missing.model") in str(e.value) and "unitok tokenizers train" in str(e.value)
    assert not (project / "tokenizers").exists() and not (tmp_path / "tokenizers").exists()  # no SentencePiece run
    assert not (project / "data").exists()  # it failed before building any data


def test_a_missing_vq_tokenizer_names_the_field(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"tokenizers: {{text: {REPO / 'tokenizers' / 'text.model'}, image: nowhere/image_vq}}\n")
    with pytest.raises(FileNotFoundError, match=r"field 'tokenizers\.image'.*nowhere.*--what image"):
        recipes.build_codec(load_config(config))

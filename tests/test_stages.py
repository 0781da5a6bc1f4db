"""Training stages (``train.stages``): config checks that name the field, a two-stage micro run whose
second stage trains only tasks the first did not, and exact resume across the stage boundary."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, micro_config
from unitok import recipes
from unitok.checkpoint import load_checkpoint
from unitok.config import ConfigError, parse_config
from unitok.model.transformer import UniTokModel
from unitok.train.trainer import Trainer, lr_at

# Two 6-step stages of a nano model: captioning with the decoder fixed, then detection alone at another lr
# with the encoder fixed (so the decoder, frozen at first, trains in the second stage).
STAGES = [{"name": "pretrain", "steps": 6, "warmup": 2, "tasks": {"names": ["caption"]}, "freeze": ["decoder"]},
          {"name": "finetune", "steps": 6, "lr": 5e-4, "warmup": 3, "tasks": {"names": ["detection"]},
           "freeze": ["encoder"]}]
NANO = {"model.d_model": 64, "model.enc_layers": 1, "model.dec_layers": 1, "model.n_heads": 2,
        "train.batch_size": 8, "train.num_workers": 0, "train.log_every": 1, "train.save_every": 4,
        "train.eval_examples": 2, "train.steps": 12}


def staged_config(micro_world, stages=STAGES, **extra):
    tmp, _ = micro_world
    return micro_config(tmp, **{**NANO, "train.stages": stages, **extra})


def rows(out) -> list[dict]:
    return list(csv.DictReader((out / "log.csv").open()))


def trainer_state(out) -> dict:
    return json.loads((out / "checkpoint" / "trainer.json").read_text())


@pytest.fixture(scope="module")
def staged(micro_world, tmp_path_factory):
    """(run config, run dir, final eval results) of an uninterrupted two-stage run."""
    run = staged_config(micro_world)
    out = tmp_path_factory.mktemp("staged")
    _, results = recipes.train(run, out)
    return run, out, results


# ---------------------------------------------------------------------------------------------- config
def _error(train: dict, tasks: dict | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config({"tasks": tasks or {}, "train": train}, source="run.yaml")
    return str(e.value)


def test_stage_config_errors_name_the_field():
    two = [{"name": "a", "steps": 3}, {"name": "b", "steps": 2}]
    assert "field 'train.stages[1].steps'" in _error({"stages": [two[0], {"name": "b", "steps": 0}]})
    assert "field 'train.stages[0].name': Field required" in _error({"stages": [{"steps": 3}]})
    assert "field 'train.stages[1].name': 'a' already names stage 0" in _error({"stages": [two[0], {"name": "a", "steps": 2}]})
    assert "field 'train.stages[0].lrr': Extra inputs" in _error({"stages": [{**two[0], "lrr": 1e-3}]})
    assert "field 'train.stages[1].lr'" in _error({"stages": [two[0], {**two[1], "lr": -1}]})
    assert "field 'train.stages[0].tasks.temperature'" in _error({"stages": [{**two[0], "tasks": {"temperature": 0}}]})
    assert "field 'train.stages[0].tasks.dir': Extra inputs" in _error({"stages": [{**two[0], "tasks": {"dir": "x"}}]})
    assert "field 'train.stages[0].tasks.weights.vqa'" in _error({"stages": [{**two[0], "tasks": {"weights": {"vqa": -1}}}]})
    # a weight for a task the stage does not train; the stage's names come from the top-level tasks section
    assert re.search(r"field 'train.stages\[1\].tasks.weights': \['vqa'\] not among the stage's tasks \['caption'\]",
                     _error({"stages": [two[0], {**two[1], "tasks": {"weights": {"vqa": 2.0}}}]}, {"names": ["caption"]}))
    assert "field 'train.steps': 7, but train.stages add up to 5 steps" in _error({"steps": 7, "stages": two})


def test_stages_inherit_what_they_leave_out_and_no_stages_is_one_stage():
    run = parse_config({"tasks": {"names": ["caption", "vqa"], "temperature": 2.0},
                        "train": {"lr": 1e-3, "warmup": 10, "freeze": ["stem"], "stages": [
                            {"name": "a", "steps": 30},
                            {"name": "b", "steps": 20, "lr": 1e-4, "warmup": 0, "freeze": [],
                             "tasks": {"names": ["detection"], "weights": {"detection": 3.0}, "temperature": 1.0}}]}},
                       source="run.yaml")
    a, b = run.stage_plan()
    assert (a.start, a.end, a.lr, a.warmup, a.tasks, a.temperature, a.freeze) == (0, 30, 1e-3, 10, ("caption", "vqa"), 2.0, ("stem",))
    assert (b.start, b.end, b.lr, b.warmup, b.tasks, b.weights, b.temperature, b.freeze) == \
        (30, 50, 1e-4, 0, ("detection",), {"detection": 3.0}, 1.0, ())
    assert run.train.steps == 50 and run.task_names() == ["caption", "vqa", "detection"]
    single = parse_config({"tasks": {"names": ["caption"]}, "train": {"steps": 40}}, source="run.yaml")
    [only] = single.stage_plan()
    assert (only.start, only.steps, only.tasks, only.field) == (0, 40, None, "train")
    assert single.task_names() == ["caption"]


def test_readme_stage_example_is_a_valid_config():
    """The README's ``train.stages`` example, put in place of the tiny recipe's schedule."""
    readme = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "stages:" in b)
    data = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    del data["train"]["steps"]  # the stages say how long the run is
    data["train"].update(yaml.safe_load(block)["train"])
    run = parse_config(data, source="README.md")
    assert len(run.stage_plan()) >= 2
    known = {p.stem for p in (REPO / "tasks").glob("*.yaml")}
    assert set(run.task_names()) <= known


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_each_stage_trains_its_own_tasks_on_its_own_schedule(staged):
    run, out, results = staged
    log = rows(out)
    assert [int(r["step"]) for r in log] == list(range(1, 13))
    stage_of = {int(r["step"]): r["stage"] for r in log}
    assert stage_of == {s: "pretrain" if s <= 6 else "finetune" for s in range(1, 13)}
    for name, tasks in (("pretrain", {"caption"}), ("finetune", {"detection"})):
        sampled = {k.removeprefix("loss/") for r in log if r["stage"] == name for k, v in r.items() if k.startswith("loss/") and v}
        assert sampled == tasks, name
    # each stage has its own warmup + cosine over its own steps; the second starts a fresh warmup
    min_ratio = run.train.min_lr_ratio
    expected = [lr_at(i, base=run.train.lr, warmup=2, total=6, min_ratio=min_ratio) for i in range(6)] + \
               [lr_at(i, base=5e-4, warmup=3, total=6, min_ratio=min_ratio) for i in range(6)]
    assert [float(r["lr"]) for r in log] == pytest.approx(expected, rel=1e-5)
    state = trainer_state(out)
    assert (state["step"], state["stage"], state["stage_step"]) == (12, "finetune", 6)
    assert state["stages"] == [{"name": "pretrain", "steps": 6}, {"name": "finetune", "steps": 6}]
    # the final evaluation covers every stage's tasks, not only the last stage's
    assert set(results) == {"caption", "detection"}
    assert {k.split("/")[1] for k in rows(out)[0] if k.startswith("loss/")} == {"caption", "detection"}
    assert {p.stem for p in (out / "checkpoint" / "tasks").glob("*.yaml")} == {"caption", "detection"}


class Killed(Exception):
    pass


@pytest.mark.slow
def test_a_run_killed_at_the_boundary_and_mid_stage_resumes_exactly(staged, tmp_path, monkeypatch):
    run, ref, _ = staged
    out = tmp_path / "killed"

    def kill_after(method: str, step: int):
        original = getattr(Trainer, method)

        def wrapped(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if self.step == step:
                raise Killed(f"{method} at step {step}")
        monkeypatch.setattr(Trainer, method, wrapped)

    kill_after("save", 6)  # right at the boundary: stage 1's last checkpoint, before stage 2's first step
    with pytest.raises(Killed):
        recipes.train(run, out)
    state = trainer_state(out)
    assert (state["step"], state["stage"], state["stage_step"]) == (6, "pretrain", 6)
    at_boundary = load_file(str(out / "checkpoint" / "model.safetensors"))
    monkeypatch.undo()

    kill_after("_log", 10)  # mid stage 2, two steps past its last checkpoint (step 8)
    with pytest.raises(Killed):
        recipes.train(run, out)
    state = trainer_state(out)
    assert (state["step"], state["stage"], state["stage_step"]) == (8, "finetune", 2)
    assert int(rows(out)[-1]["step"]) == 10  # rows past the checkpoint, cut back on resume
    monkeypatch.undo()

    recipes.train(run, out)
    strip = lambda log: [{k: v for k, v in r.items() if k != "examples_per_s"} for r in log]  # noqa: E731
    assert strip(rows(out)) == strip(rows(ref))  # same data, schedule, optimizer state: the same curve
    a, b = load_file(str(ref / "checkpoint" / "model.safetensors")), load_file(str(out / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ta, tb = (load_file(str(d / "checkpoint" / "trainer.safetensors")) for d in (ref, out))
    assert ta.keys() == tb.keys() and any(k.startswith("optimizer.") for k in ta)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)  # optimizer and random state (loaders seed their own workers)
    assert trainer_state(out) == trainer_state(ref)
    # stage 1 kept the decoder as initialised; stage 2 kept the encoder as stage 1 left it and trained the decoder
    cfg = load_checkpoint(out / "checkpoint").model.cfg
    torch.manual_seed(run.train.seed)  # as the Trainer does before building the model
    initial = UniTokModel(cfg).state_dict()
    encoder, decoder = ([k for k in b if k.startswith(part)] for part in ("encoder.", "decoder."))
    assert decoder and all(torch.equal(at_boundary[k], initial[k]) for k in decoder)
    assert any(not torch.equal(at_boundary[k], initial[k]) for k in encoder)
    assert all(torch.equal(b[k], at_boundary[k]) for k in encoder)
    assert any(not torch.equal(b[k], at_boundary[k]) for k in decoder)


@pytest.mark.slow
def test_resume_keeps_the_stages_begun_and_may_add_stages(staged, micro_world, tmp_path):
    _, ref, _ = staged
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    longer = [STAGES[0], {**STAGES[1], "steps": 8}]
    with pytest.raises(ConfigError, match=r"field 'train.stages': .* is at step 6 of stage 'finetune': the stages it has "
                                          r"begun \(pretrain \(6 steps\), finetune \(6 steps\)\) cannot change"):
        recipes.train(staged_config(micro_world, longer, **{"train.steps": 14}), out)
    with pytest.raises(ConfigError, match="field 'train.stages': .* cannot change, and this config has none"):
        recipes.train(micro_config(micro_world[0], **NANO), out)
    bad = [STAGES[0], {**STAGES[1], "freeze": ["encoders"]}]
    with pytest.raises(ValueError, match=r"train.stages\[1\].freeze: 'encoders' matches no parameter"):
        recipes.train(staged_config(micro_world, bad), tmp_path / "bad")
    with pytest.raises(ValueError, match=r"train.freeze: 'encoders' matches no parameter"):  # no stages: as before
        recipes.train(micro_config(micro_world[0], **{**NANO, "train.freeze": ["encoders"]}), tmp_path / "bad")
    # a stage added after the finished ones: the run goes on into it
    third = [*STAGES, {"name": "again", "steps": 2, "warmup": 0, "tasks": {"names": ["caption"]}}]
    _, results = recipes.train(staged_config(micro_world, third, **{"train.steps": 14}), out)
    log = rows(out)
    assert [(int(r["step"]), r["stage"]) for r in log[-3:]] == [(12, "finetune"), (13, "again"), (14, "again")]
    assert all(r["loss/caption"] and not r["loss/detection"] for r in log[-2:])
    assert set(results) == {"caption", "detection"}


@pytest.mark.slow
def test_two_process_ddp_ranks_agree_across_a_stage_boundary(micro_world, tmp_path):
    """Under DDP a parameter frozen in one stage and trained in the next is still reduced across ranks."""
    _, run = micro_world
    overrides = {**NANO, "data.root": run.data.root, "tokenizers.text": run.tokenizers.text, "tasks.dir": run.tasks.dir,
                 "train.stages": STAGES}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                           str(REPO / "tests" / "ddp_worker.py"), str(REPO / "configs" / "tiny.yaml"), str(tmp_path),
                           json.dumps(overrides)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [(int(r["step"]), r["stage"]) for r in rows(tmp_path)][5:7] == [(6, "pretrain"), (7, "finetune")]

"""Multi-process training with torchrun + DDP (gloo on CPU), and exact resume after SIGKILL."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

NANO = {"model.d_model": 64, "model.enc_layers": 1, "model.dec_layers": 1, "model.n_heads": 2,
        "train.batch_size": 8, "train.warmup": 5, "train.log_every": 5, "train.save_every": 10,
        "train.num_workers": 1, "train.eval_examples": 4}


def nano(micro_world, **extra) -> dict:
    tmp, run = micro_world
    return {**NANO, "data.root": run.data.root, "tokenizers.text": run.tokenizers.text,
            "tasks.dir": run.tasks.dir, "tasks.names": ["caption", "detection"], **extra}


def test_two_process_ddp_ranks_hold_identical_weights(micro_world, tmp_path):
    overrides = nano(micro_world, **{"train.steps": 6})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                           str(REPO / "tests" / "ddp_worker.py"), str(REPO / "configs" / "tiny.yaml"), str(tmp_path),
                           json.dumps(overrides)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    saved = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(saved[k], a[k]) for k in a)  # rank 0 saved what every rank holds
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert int(rows[-1]["step"]) == 6


def _train_cmd(out: Path, overrides: dict) -> list[str]:
    sets = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return [sys.executable, "-m", "unitok.cli", "train", "--config", str(REPO / "configs" / "tiny.yaml"),
            "--out", str(out), "--set", *sets]


def _losses(out: Path) -> dict[int, str]:
    return {int(r["step"]): r["loss"] for r in csv.DictReader((out / "log.csv").open())}


def test_sigkill_mid_run_then_resume_continues_exactly(micro_world, tmp_path):
    overrides = nano(micro_world, **{"train.steps": 40})
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_train_cmd(ref, overrides), check=True, capture_output=True, cwd=REPO, timeout=600)

    proc = subprocess.Popen(_train_cmd(killed, overrides), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "checkpoint" / "trainer.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = json.loads(state.read_text())["step"]
    assert 20 <= stopped_at < 40, "the run was killed mid-way"
    subprocess.run(_train_cmd(killed, overrides), check=True, capture_output=True, cwd=REPO, timeout=600)

    assert json.loads(state.read_text())["step"] == 40
    assert _losses(killed) == _losses(ref)  # same data order, optimizer state and RNG: the same loss curve
    a = load_file(str(ref / "checkpoint" / "model.safetensors"))
    b = load_file(str(killed / "checkpoint" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for name in ("optimizer.0.exp_avg", "optimizer.0.exp_avg_sq"):
        ta = load_file(str(ref / "checkpoint" / "trainer.safetensors"))
        tb = load_file(str(killed / "checkpoint" / "trainer.safetensors"))
        assert torch.equal(ta[name], tb[name])


def test_extending_a_finished_run_keeps_its_schedule(micro_world, tmp_path):
    """A larger --steps on a finished run must not reshape the cosine (a warm restart): the schedule
    stays the run's first, and the extra steps train at its final learning rate."""
    from unitok import recipes
    from unitok.config import load_config

    overrides = nano(micro_world, **{"train.steps": 10, "train.log_every": 1, "train.save_every": 5, "train.lr": 1e-3,
                                     "train.min_lr_ratio": 0.1})
    run = load_config(REPO / "configs" / "tiny.yaml", overrides)
    recipes.train(run, tmp_path, eval_examples=1)
    first = {int(r["step"]): float(r["lr"]) for r in csv.DictReader((tmp_path / "log.csv").open())}
    recipes.train(run, tmp_path, steps=14, eval_examples=1)
    lrs = {int(r["step"]): float(r["lr"]) for r in csv.DictReader((tmp_path / "log.csv").open())}
    assert {s: lrs[s] for s in first} == first  # the first 10 steps are untouched
    assert [lrs[s] for s in range(11, 15)] == pytest.approx([1e-4] * 4)  # then the floor, not a new warmup
    assert json.loads((tmp_path / "checkpoint" / "trainer.json").read_text())["schedule_steps"] == 10

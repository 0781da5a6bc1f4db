"""The shipped default checkpoint still does every task: each task's metric, on a fixed held-out subset of
the world's val split, stays above a floor set just under what the committed checkpoint reached.

The floors are in ``checkpoints/default/ci_floors.json`` with the values they came from. After
retraining the default checkpoint, rewrite them with::

    python tests/test_default_checkpoint.py --write-floors
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "checkpoints" / "default"
FLOORS = CKPT / "ci_floors.json"
SUBSET = {"split": "val", "records": 64, "examples": 48}  # the first 64 val records; 48 examples per task
MARGIN = 0.85  # floors sit 15% below what was reached: float and thread-count noise must not fail CI
# vision_gain (metric minus its blind value) gets a floor where the checkpoint shows one this clearly; the
# floor is half of it, since a difference of two scores on 48 examples is noisier than either.
GAIN_SHOWN, GAIN_MARGIN = 0.1, 0.5


def subset_metrics(data_root: Path) -> dict[str, dict[str, float]]:
    from unitok.checkpoint import load_checkpoint
    from unitok.config import parse_config
    from unitok.recipes import evaluate_checkpoint

    run = load_checkpoint(CKPT).run.model_dump(exclude={"source"})
    run["data"]["root"] = str(data_root)
    run["data"]["world"][SUBSET["split"]] = SUBSET["records"]
    run["train"]["bf16"] = False  # fp32 on every CPU: the floors must not depend on AVX512-BF16
    return evaluate_checkpoint(CKPT, parse_config(run, source=str(CKPT / "config.json")), split=SUBSET["split"],
                               max_examples=SUBSET["examples"], data_root=str(data_root),
                               blind=True, constant=False)


# Where a task's headline metric is still 0 on the subset, the floor goes on one of these instead (the
# first that is above 0), so that no floor is a floor of 0, a test that cannot fail.
SECONDARY = ("map@0.5", "ar@100", "mean_iou", "pixel_accuracy", "bleu1", "colour_recall", "object_recall")


def guarded_keys(metrics: dict[str, float], primary: str) -> list[str]:
    """The keys a task's floors go on: its headline metric (or a secondary one above 0), retrieval R@1
    where reported, and always ``ref_logp`` (the reference's log-likelihood, which moves before any
    metric does)."""
    keys = [next((k for k in (primary, *SECONDARY) if floor_of(metrics.get(k, 0.0)) > 0), None)]
    keys += [k for k in ("retrieval_r@1",) if floor_of(metrics.get(k, 0.0)) > 0]
    keys += [k for k in ("vision_gain",) if metrics.get(k, 0.0) >= GAIN_SHOWN]
    return [k for k in keys if k] + ["ref_logp"]


def floor_of(reached: float, key: str = "") -> float:
    """Just under ``reached``: (1 - MARGIN) of its magnitude below it (log-likelihoods are negative);
    a vision gain keeps GAIN_MARGIN of itself."""
    if key == "vision_gain":
        return math.floor(reached * GAIN_MARGIN * 1000) / 1000
    return math.floor((reached - (1 - MARGIN) * abs(reached)) * 1000) / 1000


def test_floor_rules_never_set_a_floor_that_cannot_fail():
    assert floor_of(0.5) == 0.425 and floor_of(-1.0) == -1.15  # below what was reached, either sign
    assert guarded_keys({"map": 0.0003, "map@0.5": 0.02, "ref_logp": -2.0}, "map")[0] == "map@0.5"  # floor 0.000: no
    keys = guarded_keys({"accuracy": 0.0, "ref_logp": -0.7}, "accuracy")
    assert keys == ["ref_logp"]  # a metric at 0 gets no floor; the log-likelihood always does
    keys = guarded_keys({"map": 0.0, "map@0.5": 0.02, "ar@100": 0.1, "ref_logp": -2.0}, "map")
    assert keys == ["map@0.5", "ref_logp"]
    keys = guarded_keys({"cider": 0.6, "retrieval_r@1": 0.3, "ref_logp": -0.5}, "cider")
    assert keys == ["cider", "retrieval_r@1", "ref_logp"]
    # a vision gain gets a floor only where the checkpoint shows one, and it stays above 0
    assert guarded_keys({"accuracy": 0.9, "vision_gain": 0.4, "ref_logp": -0.1}, "accuracy") == ["accuracy", "vision_gain", "ref_logp"]
    assert guarded_keys({"accuracy": 0.5, "vision_gain": 0.02, "ref_logp": -0.1}, "accuracy") == ["accuracy", "ref_logp"]
    assert floor_of(0.4, "vision_gain") == 0.2


def test_default_checkpoint_meets_its_floors(tmp_path):
    if not FLOORS.exists():
        pytest.fail(f"{FLOORS} is missing: the default checkpoint ships with its CI floors")
    floors = json.loads(FLOORS.read_text())
    assert floors["subset"] == SUBSET, "the subset changed; rewrite the floors (see the module docstring)"
    from unitok.checkpoint import load_checkpoint

    assert set(floors["floors"]) == set(load_checkpoint(CKPT).tasks), "every shipped task has a floor"
    metrics = subset_metrics(tmp_path / "data")
    below = []
    for task, keys in floors["floors"].items():
        for key, floor in keys.items():
            got = metrics[task][key]
            if not got >= floor:
                below.append(f"{task} {key} = {got:.4f} < floor {floor:.4f} (reached {floors['reached'][task][key]:.4f})")
    assert not below, "the default checkpoint regressed:\n" + "\n".join(below)


def test_predict_and_pipeline_use_the_default_when_no_checkpoint_is_named(tmp_path):
    import subprocess

    from unitok.data.world import WorldConfig, make_scene
    from unitok.inference.pipeline import Pipeline

    pipe = Pipeline.from_pretrained()
    assert Path(pipe.source) == CKPT and len(pipe.tasks) == len(list((REPO / "tasks").glob("*.yaml")))
    scene = tmp_path / "scene.png"
    scene.write_bytes(make_scene(WorldConfig(seed=0), 5, "test")["image"])
    proc = subprocess.run([sys.executable, "-m", "unitok.cli", "predict", "--image", str(scene), "--prompt",
                           "detect the shapes."], capture_output=True, text=True, cwd=tmp_path)  # not the repo root
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["type"] == "Boxes"


def test_app_serves_the_default_when_no_checkpoint_is_named():
    import os
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "UNITOK_CHECKPOINT"}
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, config = time.monotonic() + 180, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                config = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(1)
        assert config is not None, f"app.py did not come up: {proc.stderr.read() if proc.poll() is not None else ''}"
        # Every task of the shipped checkpoint has its API endpoint.
        for task in (REPO / "tasks").glob("*.yaml"):
            assert f'"/{task.stem}"' in config or f'"{task.stem}"' in config, task.stem
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def write_floors() -> None:
    import tempfile

    from unitok.checkpoint import load_checkpoint
    from unitok.eval import primary_key

    tasks = load_checkpoint(CKPT).tasks
    metrics = subset_metrics(Path(tempfile.mkdtemp()) / "data")
    floors, reached = {}, {}
    for task, m in metrics.items():
        keys = guarded_keys(m, primary_key(tasks[task].metric))
        reached[task] = {k: m[k] for k in keys}
        floors[task] = {k: floor_of(m[k], k) for k in keys}
    FLOORS.write_text(json.dumps({"subset": SUBSET, "margin": MARGIN, "floors": floors, "reached": reached,
                                  "command": "python tests/test_default_checkpoint.py --write-floors"}, indent=1) + "\n")
    print(json.dumps(floors, indent=1))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-floors"]:
        write_floors()
    else:
        sys.exit(f"usage: python {sys.argv[0]} --write-floors")

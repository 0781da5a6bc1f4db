"""The `unitok` console script, run as a user would (subprocess)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def unitok(*args, check=True, cwd=REPO):
    proc = subprocess.run([sys.executable, "-m", "unitok.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"unitok {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_tasks_list_and_check():
    out = unitok("tasks", "list").stdout
    assert "detection" in out and "caption" in out
    assert "ok" in unitok("tasks", "check").stdout


# What `unitok --help`, `tasks list` and `tasks check` must start without: each costs from 0.1 s (pycocotools) to
# over a second (torch) of a command that needs none of them.
HEAVY = ("torch", "gradio", "vector_quantize_pytorch", "sentencepiece", "safetensors", "einops", "pycocotools",
         "pycocoevalcap")


@pytest.mark.parametrize("args", [["--help"], ["tasks", "list"], ["tasks", "check"]])
def test_quick_commands_start_without_heavy_imports(args):
    """The imports, not a time, are asserted: a time depends on the machine and what else runs on it."""
    script = ("import json, sys\nfrom unitok import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit as e:\n"
              "    assert not e.code, e.code\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert not loaded & set(HEAVY), f"unitok {' '.join(args)} imported {sorted(loaded & set(HEAVY))}"


def test_tasks_check_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndata: world\nprompt: [x]\ntarget: {format: boxes, field: objects}\nmetric: coco_map\n")
    proc = unitok("tasks", "check", bad, check=False)
    assert proc.returncode == 1
    assert f"{bad}: field 'target.label'" in proc.stdout
    unknown_metric = tmp_path / "m.yaml"
    unknown_metric.write_text("name: m\ndata: world\nprompt: [x]\ntarget: {format: text, field: captions}\nmetric: blue\n")
    assert "m.yaml: field 'metric': unknown evaluator 'blue'" in unitok("tasks", "check", unknown_metric, check=False).stdout


def test_tasks_check_warns_when_exact_match_accuracy_meets_a_list_field(tmp_path):
    """A spec scoring a caption list with exact-match accuracy checks fine, with a warning line naming the
    file and the field, once the data is there to show that the field is a list."""
    spec = tmp_path / "first_caption.yaml"
    spec.write_text("name: first_caption\ndata: world\nprompt: [x]\ninputs: {image: image}\n"
                    "target: {format: text, field: captions}\nmetric: accuracy\n")
    quiet = unitok("tasks", "check", spec, "--data-root", tmp_path / "data")
    assert quiet.stdout.strip() == f"ok    {spec}"  # no store: nothing to see, nothing to warn about
    unitok("data", "build", "world", "--split", "val", "--n", 2, "--out", tmp_path / "data" / "world" / "val", "--size", 32)
    loud = unitok("tasks", "check", spec, "--data-root", tmp_path / "data")
    assert loud.returncode == 0
    assert f"WARN  {spec}: field 'target.field': warning: 'captions' is a list" in loud.stdout


def test_data_build_inspect_show(tmp_path):
    store = tmp_path / "w"
    unitok("data", "build", "world", "--split", "val", "--n", 6, "--out", store, "--size", 48)
    assert "6" in unitok("data", "inspect", store).stdout
    png = tmp_path / "r.png"
    unitok("data", "show", store, "--index", 2, "--out", png)
    assert png.stat().st_size > 0
    raw = tmp_path / "raw.png"
    unitok("data", "show", store, "--index", 2, "--out", raw, "--image-only")
    from PIL import Image

    from unitok.data.store import RecordStore

    assert Image.open(raw).size == (48, 48) and raw.read_bytes() == RecordStore(store)[2]["image"]
    again = unitok("data", "build", "world", "--n", 2, "--out", store, check=False)
    assert again.returncode != 0 and "already exists" in again.stderr


@pytest.mark.slow
def test_predict_and_eval_on_a_trained_checkpoint(trained, tmp_path):
    run, out, _ = trained
    from unitok.data.store import RecordStore

    record = RecordStore(Path(run.data.root) / "world" / "val")[1]
    image = tmp_path / "scene.png"
    image.write_bytes(record["image"])
    proc = unitok("predict", "--checkpoint", out / "checkpoint", "--image", image, "--prompt", "detect the shapes.",
                  "--save-vis", tmp_path / "vis.png")
    result = json.loads(proc.stdout)
    assert result["type"] == "Boxes" and all(len(b) >= 6 for b in result["output"]["boxes"])
    assert (tmp_path / "vis.png").exists()
    bad = unitok("predict", "--checkpoint", out / "checkpoint", "--image", image, "--prompt", "sing", check=False)
    assert bad.returncode != 0 and "no task matches the prompt 'sing'" in bad.stderr
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    bad = unitok("predict", "--checkpoint", out / "checkpoint", "--image", corrupt, "--prompt", "describe the image.", check=False)
    assert bad.returncode != 0 and "not a readable image" in bad.stderr
    unitok("eval", "--checkpoint", out / "checkpoint", "--tasks", "detection", "--max-examples", 20,
           "--data-root", run.data.root, "--out", tmp_path / "ev")
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 <= metrics["detection"]["map@0.5"] <= 1
    assert (tmp_path / "ev" / "metrics.md").read_text().count("|") > 4


def test_export_writes_a_release_copy_and_refuses_changed_training_fields(trained, tmp_path):
    run, out, _ = trained
    import yaml

    from unitok.checkpoint import load_checkpoint

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name in ("caption", "detection"):
        spec = yaml.safe_load((Path(run.tasks.dir) / f"{name}.yaml").read_text())
        if name == "caption":
            spec["decoding"]["max_tokens"] = 20  # evaluation-side: refreshed on export
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    proc = unitok("export", "--checkpoint", out / "checkpoint", "--out", tmp_path / "rel", "--tasks-dir", tasks,
                  "--dtype", "bfloat16")
    assert "exported" in proc.stdout
    rel = tmp_path / "rel"
    assert not (rel / "trainer.safetensors").exists() and not (rel / "trainer.json").exists()
    src = (out / "checkpoint" / "model.safetensors").stat().st_size
    assert (rel / "model.safetensors").stat().st_size < 0.6 * src  # bf16 halves the weights
    ckpt = load_checkpoint(rel)
    assert ckpt.tasks["caption"].decoding.max_tokens == 20
    assert ckpt.tasks["detection"].target == load_checkpoint(out / "checkpoint").tasks["detection"].target
    spec = yaml.safe_load((tasks / "detection.yaml").read_text())
    spec["target"]["field"] = "regions"  # training-side: the export must refuse it, naming file and field
    (tasks / "detection.yaml").write_text(yaml.safe_dump(spec))
    bad = unitok("export", "--checkpoint", out / "checkpoint", "--out", tmp_path / "rel2", "--tasks-dir", tasks,
                 check=False)
    assert bad.returncode != 0 and "detection.yaml: field 'target'" in bad.stderr
    assert not (tmp_path / "rel2").exists()

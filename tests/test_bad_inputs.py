"""Bad input gets a clear error that names the file, field or record at fault, and loses nothing.

Each case asserts the kind of error and what its message names; the checkpoint cases also assert
that nothing pickled runs and that a kill while saving leaves the last good checkpoint in use.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from unitok.checkpoint import COMPLETE, CheckpointError, load_checkpoint, recover_dir, save_checkpoint
from unitok.cli import build_parser
from unitok.config import ConfigError, load_config
from unitok.modalities.codec import Codec
from unitok.modalities.text import TextTokenizer
from unitok.model.config import ModelConfig
from unitok.model.transformer import UniTokModel
from unitok.tasks.examples import ExampleBuilder, ExampleError
from unitok.tasks.formats import FORMATS
from unitok.tasks.spec import load_task, parse_task

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.build(TextTokenizer.from_file(REPO / "tokenizers" / "text.model"), 32)


@pytest.fixture()
def checkpoint(codec, tmp_path) -> Path:
    torch.manual_seed(0)
    model = UniTokModel(ModelConfig(vocab_size=codec.vocab.size, d_model=32, n_heads=2, enc_layers=1, dec_layers=1,
                                    image_size=16, patch_size=4))
    tasks = {"caption": load_task(REPO / "tasks" / "caption.yaml", formats=FORMATS)}
    return save_checkpoint(tmp_path / "ckpt", model, codec, tasks)


# -- examples ----------------------------------------------------------------------------------------------------

def _objects(n: int) -> list[dict]:
    return [{"box": [i, i, i + 4, i + 4], "category": "circle"} for i in range(n)]


def test_a_record_with_more_objects_than_the_target_holds_keeps_those_that_fit(codec):
    """Pix2Seq caps the objects per image; a 30-object record must not fail mid-run."""
    spec = load_task(REPO / "tasks" / "detection.yaml", formats=FORMATS)
    builder = ExampleBuilder(spec, codec, image_size=32, max_prompt_len=32, max_target_len=64)
    record = {"id": "crowded", "width": 64, "height": 64, "image": _png(), "objects": _objects(30)}
    for rng in (np.random.default_rng(0), None):
        e = builder.build(record, rng=rng)
        assert len(e.target) <= 64
        kept = e.target[:-1]
        assert len(kept) % 5 == 0 and 0 < len(kept) // 5 < 30  # whole objects: 4 coordinates + "circle"
    assert len(builder.build(record).reference.boxes) == 30  # evaluation still scores against every object


def test_an_over_long_text_target_names_the_record_and_the_limit(codec):
    spec = load_task(REPO / "tasks" / "caption.yaml", formats=FORMATS)
    builder = ExampleBuilder(spec, codec, image_size=32, max_prompt_len=32, max_target_len=16)
    record = {"id": "wordy", "width": 8, "height": 8, "image": _png(), "captions": ["a red circle " * 20]}
    with pytest.raises(ExampleError, match=r"record 'wordy'.*exceeds the model's max_target_len=16"):
        builder.build(record)


def test_masked_text_on_an_empty_text_is_an_error_not_a_hang(codec):
    spec = parse_task({"name": "mlm", "data": "world", "prompt": ["fill in: {masked}"], "metric": "span_accuracy",
                       "target": {"format": "masked_text", "field": "caption"}}, source="<mlm>", formats=FORMATS)
    builder = ExampleBuilder(spec, codec, image_size=32, max_prompt_len=32, max_target_len=32)
    with pytest.raises(ExampleError, match=r"record 'blank'.*empty"):
        builder.build({"id": "blank", "caption": ""}, rng=np.random.default_rng(0))


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


# -- configs and the command line -------------------------------------------------------------------------------

def test_repeated_set_flags_all_apply():
    args = build_parser().parse_args(["train", "--set", "train.lr=1e-4", "--set", "train.steps=3"])
    assert args.set == ["train.lr=1e-4", "train.steps=3"]


@pytest.mark.parametrize("overrides, names", [
    ({"model.d_model": "wide"}, "model.d_model must be an integer"),
    ({"model.multiway": "yes"}, "model.multiway must be a boolean"),
    ({"model.experts": ["vision", "text"]}, r"model.experts must be \['text', 'vision'\]"),
    ({"train.save_dtype": "bfloat16"}, "unitok export --dtype bfloat16"),
])
def test_config_mistakes_name_the_field(overrides, names):
    with pytest.raises(ConfigError, match=names):
        load_config(TINY, overrides)


def test_older_run_records_with_float32_save_dtype_still_load():
    assert load_config(TINY, {"train.save_dtype": "float32"}).train.steps > 0


# -- checkpoints -------------------------------------------------------------------------------------------------

def test_nan_weights_are_refused_naming_the_weight(checkpoint):
    weights = load_file(str(checkpoint / "model.safetensors"))
    weights["dec_norm.weight"][3] = float("nan")
    save_file(weights, str(checkpoint / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: weight 'dec_norm.weight' has NaN"):
        load_checkpoint(checkpoint)


def test_a_truncated_weights_file_is_named(checkpoint):
    f = checkpoint / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file"):
        load_checkpoint(checkpoint)


class _Trap:
    def __reduce__(self):
        return (os.makedirs, (str(Path(os.environ["UNITOK_TRAP"])),))


def test_a_pickled_weights_file_is_refused_and_never_unpickled(checkpoint, tmp_path, monkeypatch):
    trap = tmp_path / "pickle-ran"
    monkeypatch.setenv("UNITOK_TRAP", str(trap))
    (checkpoint / "model.safetensors").write_bytes(pickle.dumps({"w": _Trap()}))
    with pytest.raises(CheckpointError, match="torch.save"):
        load_checkpoint(checkpoint)
    assert not trap.exists()


def test_a_kill_between_the_renames_leaves_the_new_checkpoint_in_place(checkpoint, codec):
    """save: write .tmp, rename the old copy away, rename .tmp into place. Killed after the first rename,
    the next run finds no checkpoint/: recover_dir puts the finished temporary back."""
    ckpt = load_checkpoint(checkpoint)
    parent = checkpoint.parent
    newer = parent / ".ckpt.tmp-999"
    shutil.copytree(checkpoint, newer)
    (newer / COMPLETE).write_text("")
    (newer / "marker").write_text("new")
    os.replace(checkpoint, parent / ".ckpt.old-999")
    assert recover_dir(checkpoint) == checkpoint
    assert (checkpoint / "marker").read_text() == "new"
    assert sorted(p.name for p in parent.iterdir()) == ["ckpt"]  # the old copy is cleaned up
    assert load_checkpoint(checkpoint).model.cfg == ckpt.model.cfg


def test_a_kill_mid_write_keeps_the_previous_checkpoint_and_cleans_up(checkpoint):
    parent = checkpoint.parent
    half = parent / ".ckpt.tmp-998"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")  # never finished: no completion mark
    os.replace(checkpoint, parent / ".ckpt.old-998")
    assert recover_dir(checkpoint) == checkpoint
    assert sorted(p.name for p in parent.iterdir()) == ["ckpt"]
    load_checkpoint(checkpoint)  # the previous, intact copy
    # With the checkpoint in place, stale temporaries are removed and nothing is replaced
    (parent / ".ckpt.tmp-997").mkdir()
    assert recover_dir(checkpoint) is None and sorted(p.name for p in parent.iterdir()) == ["ckpt"]


def test_training_checkpoints_are_float32(checkpoint):
    meta = json.loads((checkpoint / "config.json").read_text())
    assert meta["format_version"] == 1
    assert {t.dtype for t in load_file(str(checkpoint / "model.safetensors")).values()} == {torch.float32}

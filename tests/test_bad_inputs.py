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
from unitok.errors import UniTokError
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


@pytest.mark.parametrize("objects, says", [
    ("abc", "TypeError"),                                       # not a list of objects
    ([{"box": [1, 2, 9, 9]}], "KeyError: category"),            # an object without its label
    ([{"box": [1, 2, 3], "category": "circle"}], "expected 4"),  # a box of three numbers
])
def test_a_record_of_the_wrong_shape_names_the_record_and_the_field(codec, objects, says):
    """A record that decodes but whose field has the wrong shape fails naming task, record and field, in
    training (rng) and in evaluation alike, not with a bare TypeError from inside the format."""
    spec = load_task(REPO / "tasks" / "detection.yaml", formats=FORMATS)
    builder = ExampleBuilder(spec, codec, image_size=16, max_prompt_len=64, max_target_len=128)
    record = {"id": "rec-7", "image": _png(), "width": 8, "height": 8, "objects": objects}
    for rng in (np.random.default_rng(0), None):
        with pytest.raises(ExampleError, match=rf"task detection .*record 'rec-7': field 'objects' .*{says}"):
            builder.build(record, rng=rng)


def test_a_corrupt_image_in_a_record_names_the_record(codec):
    spec = load_task(REPO / "tasks" / "caption.yaml", formats=FORMATS)
    builder = ExampleBuilder(spec, codec, image_size=16, max_prompt_len=64)
    with pytest.raises(UniTokError, match=r"record 'rec-3' image: not a readable image"):
        builder.build({"id": "rec-3", "image": b"\x89PNG half a file", "captions": ["a red circle"]},
                      rng=np.random.default_rng(0))


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


@pytest.mark.parametrize("text, overrides, says", [
    ("model: {d_model: 3\ntrain: [", {}, r"bad.yaml: not valid YAML"),
    (None, {"train.stepz": 3}, r"field 'train.stepz': Extra inputs are not permitted"),
    (None, {"train.steps": -3}, r"field 'train.steps': Input should be greater than or equal to 1"),
])
def test_a_malformed_config_file_or_field_is_named(tmp_path, text, overrides, says):
    path = TINY
    if text is not None:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError, match=says):
        load_config(path, overrides)


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


def test_a_missing_weight_is_named(checkpoint):
    weights = load_file(str(checkpoint / "model.safetensors"))
    weights.pop("dec_norm.weight")
    save_file(weights, str(checkpoint / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: missing weight 'dec_norm.weight'"):
        load_checkpoint(checkpoint)


@pytest.fixture()
def micro_pipe(codec, tmp_path):
    """A Pipeline over a micro checkpoint with two tasks and a 16-token prompt budget."""
    from unitok.inference.pipeline import Pipeline

    torch.manual_seed(0)
    model = UniTokModel(ModelConfig(vocab_size=codec.vocab.size, d_model=32, n_heads=2, enc_layers=1, dec_layers=1,
                                    image_size=16, patch_size=4, max_prompt_len=16))
    tasks = {n: load_task(REPO / "tasks" / f"{n}.yaml", formats=FORMATS) for n in ("caption", "vqa")}
    return Pipeline.from_pretrained(save_checkpoint(tmp_path / "micro", model, codec, tasks))


def test_pipeline_requests_that_cannot_run_name_what_is_wrong(micro_pipe):
    from unitok.errors import InputError
    from unitok.inference.pipeline import UnknownPromptError

    with pytest.raises(InputError, match=r"task vqa: prompt of \d+ tokens exceeds the model's max_prompt_len=16"):
        micro_pipe("question: " + "what colour is the big red circle? " * 10, image=_png())
    with pytest.raises(UnknownPromptError, match=r"unknown task 'nope'; this checkpoint has: caption, vqa"):
        micro_pipe("describe the image.", task="nope", image=_png())
    with pytest.raises(InputError, match=r"^image: not a readable image"):
        micro_pipe("describe the image.", image=b"\x89PNG garbage")
    assert isinstance(micro_pipe("describe the image.", image=_png()).text, str)  # nothing broken by the above


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

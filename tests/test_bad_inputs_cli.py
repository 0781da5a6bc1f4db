"""Bad input at the surfaces (the `unitok` command line and `Pipeline`) gets one clear error naming the
flag, key, file or request at fault, before the model loads where that is cheap; odd but valid input
(16-bit images, tensors, bytes prompts) is read correctly. The other cases are in test_bad_inputs.py.
"""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unitok.checkpoint import CheckpointError
from unitok.cli import main
from unitok.config import ConfigError
from unitok.data.schema import decode_rgb
from unitok.data.store import StoreError, StoreWriter
from unitok.errors import DecodingError, InputError, RequestError, UniTokError
from unitok.generation.options import DecodingOptions
from unitok.inference.pipeline import Pipeline, UnknownPromptError
from unitok.modalities.image import MIN_SIDE, load_image
from unitok.modalities.vocab import VocabularyMismatch
from unitok.modalities.vq.config import TokenizerSpecError
from unitok.recipes import build_world_store
from unitok.registry import RegistryError
from unitok.tasks.examples import ExampleError
from unitok.tasks.outputs import Text
from unitok.tasks.spec import TaskSpecError

REPO = Path(__file__).resolve().parents[1]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


GREY16 = 20000  # a 16-bit grey: 20000 / 65535 of white, 78 in 8 bit
PNG16 = _png(Image.fromarray(np.full((32, 32), GREY16, np.uint16)))  # opens as mode I;16


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.from_pretrained()  # the shipped checkpoint


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from unitok.data.world import WorldConfig, make_scene

    path = tmp_path_factory.mktemp("scene") / "scene.png"
    path.write_bytes(make_scene(WorldConfig(seed=0), 0, "test")["image"])
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    build_world_store("world", "val", 3, root / "world" / "val", size=32)
    return root


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """`unitok ARGV` in this process: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model fails the test: the CLI must refuse the input before it loads one."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(load))


# -- 1. one error family, one line on the command line -----------------------------------------------------------

@pytest.mark.parametrize("error, base", [
    (CheckpointError, ValueError), (ExampleError, ValueError), (TaskSpecError, ValueError), (ConfigError, ValueError),
    (StoreError, ValueError), (RegistryError, KeyError), (VocabularyMismatch, ValueError),
    (TokenizerSpecError, ValueError), (UnknownPromptError, ValueError), (DecodingError, TypeError),
    (InputError, ValueError), (RequestError, ValueError),
])
def test_user_errors_are_unitok_errors_and_keep_their_old_base(error, base):
    assert issubclass(error, UniTokError) and issubclass(error, base)


def test_the_cli_prints_a_user_error_in_one_line_with_status_2_and_the_traceback_with_debug(tmp_path):
    missing = tmp_path / "missing.png"
    cmd = [sys.executable, "-m", "unitok.cli", "predict", "--image", str(missing), "--prompt", "describe the image."]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr == f"unitok: error: --image: cannot read image file {missing}: No such file or directory\n"
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, cwd=REPO)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "InputError" in debug.stderr


# -- 2. predict checks its inputs before the model loads ----------------------------------------------------------

@pytest.mark.parametrize("make, flags, says", [
    (None, ["--image", "{tmp}/none.png"], "--image: cannot read image file"),
    (b"\x89PNG\r\n\x1a\n broken", ["--image", "{file}"], "--image {file}: not a readable image"),
    (_png(Image.new("RGB", (1, 1))), ["--image", "{file}"], f"is 1x1 pixels; images must be at least {MIN_SIDE}"),
    (_png(Image.new("RGB", (64, 4))), ["--video", "{scene}", "{file}"], "--video (frame 1) {file} is 64x4 pixels"),
    (None, ["--image", "{scene}", "--image2", "{tmp}"], "--image2: cannot read image file"),
])
def test_predict_refuses_a_bad_image_before_loading_the_model(no_model, capsys, tmp_path, scene, make, flags, says):
    file = tmp_path / "input.png"
    if make is not None:
        file.write_bytes(make)
    fill = {"tmp": tmp_path, "file": file, "scene": scene}
    code, _, err = run_cli(capsys, "predict", "--prompt", "describe the image.", *(f.format(**fill) for f in flags))
    assert code == 2 and err.startswith("unitok: error: ") and says.format(**fill) in err and err.count("\n") == 1


# -- 3. images and prompts ----------------------------------------------------------------------------------------

def test_a_16_bit_png_is_rescaled_not_white_in_every_surface(pipe):
    want = round(GREY16 * 255 / 65535)
    assert Image.open(io.BytesIO(PNG16)).mode == "I;16"
    assert np.unique(np.asarray(load_image(PNG16))).tolist() == [want]  # Pipeline, CLI, records, demo
    assert np.unique(decode_rgb(PNG16)).tolist() == [want]  # VQ tokenizer training
    assert np.unique(np.asarray(load_image(Image.open(io.BytesIO(PNG16))))).tolist() == [want]  # a PIL image
    example = pipe.example("describe the image.", image=PNG16)
    assert example.images.max() < 0  # [-1, 1] input: mid grey, where a clipped image is all 1.0 (white)


def test_data_show_draws_a_16_bit_image_grey(tmp_path, capsys):
    with StoreWriter(tmp_path / "s", {}) as w:
        w.add({"id": "deep", "image": PNG16, "width": 32, "height": 32})
    code, _, err = run_cli(capsys, "data", "show", tmp_path / "s", "--out", tmp_path / "r.png")
    assert code == 0, err
    drawn = np.asarray(Image.open(tmp_path / "r.png").convert("RGB"))
    assert tuple(drawn[10, 10]) == (78, 78, 78)  # inside the (scaled) image, not white


def test_pipeline_refuses_an_image_under_the_minimum_size(pipe):
    with pytest.raises(InputError, match=rf"image is 1x1 pixels; images must be at least {MIN_SIDE} pixels a side"):
        pipe("describe the image.", image=_png(Image.new("RGB", (1, 1))))
    with pytest.raises(InputError, match="video frame 0 is 7x40 pixels"):
        pipe(task="action", video=[np.zeros((40, 7, 3), np.uint8)] * 2)


def test_pipeline_takes_torch_tensors_chw_or_hwc_uint8_or_float(pipe, scene):
    rgb = np.array(Image.open(scene).convert("RGB"))
    want = pipe.example("describe the image.", image=scene.read_bytes()).images
    for tensor in (torch.from_numpy(rgb).permute(2, 0, 1), torch.from_numpy(rgb),
                   torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, torch.from_numpy(rgb).float() / 255):
        assert torch.allclose(pipe.example("describe the image.", image=tensor).images, want, atol=1e-6)
    assert isinstance(pipe("describe the image.", image=torch.from_numpy(rgb).permute(2, 0, 1)), Text)
    with pytest.raises(InputError, match=r"image: a float tensor must hold values in \[0, 1\], this one spans \[\d+, \d+\]"):
        pipe.example("describe the image.", image=torch.from_numpy(rgb).float())
    with pytest.raises(InputError, match=r"image: a tensor of shape \(2, 32, 32\) is not an image; give .*torch tensor"):
        pipe.example("describe the image.", image=torch.zeros(2, 32, 32))


def test_a_bytes_prompt_is_read_as_utf8_or_refused(pipe, scene):
    assert pipe.example(b"describe the image.", image=scene).task == "caption"
    assert pipe.example("question: what colour is the circle?".encode(), image=scene).task == "vqa"
    with pytest.raises(InputError, match="prompt: bytes that are not UTF-8 text"):
        pipe(b"describe \xff the image.", image=scene)
    with pytest.raises(InputError, match="prompt: expected text .* got a int"):
        pipe(42, image=scene)


def test_the_cli_refuses_a_prompt_that_is_not_utf8(no_model, capsys, scene):
    bad = b"describe \xff the image.".decode("utf-8", "surrogateescape")  # how such an argv entry arrives
    code, _, err = run_cli(capsys, "predict", "--image", scene, "--prompt", bad)
    assert code == 2 and "--prompt: not valid UTF-8 text" in err


# -- 4. decoding options ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("decoding, says", [
    ({"max_tokens": 2.5}, "max_tokens must be an integer, got 2.5"),
    ({"seed": "zero"}, "seed must be an integer or null, got 'zero'"),
    ({"beam_size": True}, "beam_size must be an integer, got True"),
    ({"top_p": "high"}, "top_p must be a finite number, got 'high'"),
])
def test_a_wrongly_typed_decoding_option_is_refused_naming_the_key(pipe, scene, decoding, says):
    with pytest.raises(DecodingError, match=says):
        DecodingOptions().replace(**decoding)
    with pytest.raises(DecodingError, match=says):
        pipe("describe the image.", image=scene, decoding=decoding)


@pytest.mark.parametrize("decode, says", [
    ("beam_width=4", "unknown decoding option(s) ['beam_width']"),
    ("max_tokens=2.5", "max_tokens must be an integer, got 2.5"),
    ("seed=abc", "seed must be an integer or null, got 'abc'"),
    ("seed", "expected KEY=VALUE, got 'seed'"),
])
def test_a_bad_decode_flag_is_one_line_listing_the_valid_keys(no_model, capsys, scene, decode, says):
    code, _, err = run_cli(capsys, "predict", "--image", scene, "--prompt", "describe the image.", "--decode", decode)
    assert code == 2 and err.count("\n") == 1
    assert f"--decode: " in err and says in err and "max_tokens (int)" in err and "seed (int or null)" in err


# -- 5. Pipeline.batch says which request failed ------------------------------------------------------------------

def test_batch_names_the_bad_request_or_returns_its_error_in_place(pipe, scene):
    good = {"prompt": "describe the image.", "image": scene}
    requests = [good, {"prompt": "describe the image.", "image": _png(Image.new("RGB", (2, 2)))},
                {**good, "decoding": {"max_tokens": 3}}]
    with pytest.raises(RequestError, match=r"request 1: image is 2x2 pixels") as raised:
        pipe.batch(requests)
    assert raised.value.index == 1 and isinstance(raised.value.error, InputError)
    outs = pipe.batch(requests, errors="return")
    assert isinstance(outs[0], Text) and isinstance(outs[2], Text)
    assert isinstance(outs[1], RequestError) and outs[1].index == 1 and "2x2 pixels" in str(outs[1])
    assert outs[0].text == pipe(**good).text  # the good requests ran as they would alone
    assert outs[2].text == pipe(**good, decoding={"max_tokens": 3}).text
    bad_option = pipe.batch([good, {**good, "decoding": {"max_tokens": 2.5}}], errors="return")
    assert isinstance(bad_option[0], Text) and "request 1: decoding options: max_tokens" in str(bad_option[1])


# -- 6. data and task commands ------------------------------------------------------------------------------------

def test_data_show_with_an_index_out_of_range_gives_the_store_size(capsys, store, tmp_path):
    for flags in ([], ["--image-only"]):
        code, _, err = run_cli(capsys, "data", "show", store / "world" / "val", "--index", 7,
                               "--out", tmp_path / "r.png", *flags)
        assert code == 2 and "--index 7 is out of range" in err and "holds 3 records (indexes 0 to 2)" in err


def test_data_show_does_not_overwrite_an_existing_file_without_force(capsys, store, tmp_path):
    out = tmp_path / "notes.png"
    out.write_bytes(b"precious")
    code, _, err = run_cli(capsys, "data", "show", store / "world" / "val", "--out", out)
    assert code == 2 and f"--out {out} already exists; pass --force" in err and out.read_bytes() == b"precious"
    code, _, err = run_cli(capsys, "data", "show", store / "world" / "val", "--out", out, "--force")
    assert code == 0, err
    assert Image.open(out).size[0] > 0


def test_data_import_names_an_option_the_importer_does_not_take(capsys, tmp_path):
    code, _, err = run_cli(capsys, "data", "import", "coco", "--instances", tmp_path / "a.json", "--images", tmp_path,
                           "--split", "train", "--out", tmp_path / "s")
    assert code == 2 and "data import coco: --split is not an option of this importer" in err
    assert "it takes --instances, --images, --captions, --dataset" in err
    code, _, err = run_cli(capsys, "data", "import", "coco", "--instances", tmp_path / "a.json", "--out", tmp_path / "s")
    assert code == 2 and "data import coco needs --images" in err
    assert not (tmp_path / "s").exists()


def _spec(path: Path, name: str, prompt: str = "describe the image.", field: str = "captions") -> Path:
    path.write_text(f"name: {name}\ndata: world\nprompt: [{prompt!r}]\ninputs: {{image: image}}\n"
                    f"target: {{format: text, field: {field}}}\nmetric: caption\n")
    return path


def test_tasks_check_flags_duplicate_and_misnamed_specs(capsys, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = _spec(tmp_path / "a" / "story.yaml", "story"), _spec(tmp_path / "b" / "story.yaml", "story")
    misnamed = _spec(tmp_path / "a" / "tale.yaml", "fable")
    code, out, _ = run_cli(capsys, "tasks", "check", first, second, misnamed, "--data-root", tmp_path / "none")
    assert code == 1
    assert f"ok    {first}" in out
    assert f"FAIL  {second}: field 'name': 'story' is also the name of {first}" in out
    assert f"FAIL  {misnamed}: field 'name': 'fable' must match the file name 'tale'" in out


def test_tasks_check_names_a_binary_file_and_checks_the_others(capsys, tmp_path):
    binary = tmp_path / "blob.yaml"
    binary.write_bytes(bytes(range(256)))
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"name: nul\n\x00\x00")
    fine = _spec(tmp_path / "fine.yaml", "fine")
    code, out, _ = run_cli(capsys, "tasks", "check", binary, nul, fine, "--data-root", tmp_path / "none")
    assert code == 1
    assert f"FAIL  {binary}: not a UTF-8 text file" in out and f"FAIL  {nul}: a binary file" in out
    assert f"ok    {fine}" in out


def test_tasks_check_finds_template_and_target_fields_the_data_lacks(capsys, tmp_path, store):
    prompt = _spec(tmp_path / "p.yaml", "p", prompt="describe the {colour} image.")
    target = _spec(tmp_path / "t.yaml", "t", field="caption")
    good = _spec(tmp_path / "g.yaml", "g", prompt="describe the {background} image.")
    code, out, _ = run_cli(capsys, "tasks", "check", prompt, target, good, "--data-root", store)
    assert code == 1
    where = store / "world" / "val"
    assert f"FAIL  {prompt}: field 'prompt': 'colour' is not a field of the records in {where}" in out
    assert f"FAIL  {target}: field 'target.field': 'caption' is not a field of the records in {where}" in out
    assert "record fields: background, captions," in out
    assert f"ok    {good}" in out
    # Without the store there is nothing to compare with: the same specs pass
    code, out, _ = run_cli(capsys, "tasks", "check", prompt, target, "--data-root", tmp_path / "none")
    assert code == 0, out

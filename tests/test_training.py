"""End to end: a micro model trained for 300 steps really learns, checkpoints reload exactly, and the
Pipeline returns boxes inside the image. One training run (``trained`` fixture) serves them all."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unitok import recipes
from unitok.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from unitok.data.schema import png_bytes
from unitok.data.store import RecordStore
from unitok.inference.evaluate import evaluate_tasks
from unitok.inference.pipeline import Pipeline, UnknownPromptError
from unitok.inference.predictor import Predictor
from unitok.modalities.vocab import VocabularyMismatch
from unitok.tasks.outputs import Boxes, Text

pytestmark = pytest.mark.slow


def test_trained_model_beats_an_untrained_one_by_a_clear_margin(trained):
    run, out, results = trained
    ckpt = load_checkpoint(out / "checkpoint")
    fresh = recipes.build_codec(run)
    torch.manual_seed(0)
    from unitok.model.transformer import UniTokModel

    untrained = UniTokModel(ckpt.model.cfg)
    stores = recipes.open_stores(run, ckpt.tasks, "eval")
    base = evaluate_tasks(Predictor(untrained, fresh, ckpt.tasks), stores, max_examples=100, progress=False)
    # Captioning learns fast; Pix2Seq detection from scratch is slow, so 600 CPU steps localise well
    # but still confuse shape labels often: the mAP margin is small in absolute terms, the
    # localisation margin (best IoU of each predicted box with a true one) is large.
    assert results["caption"]["cider"] >= base["caption"]["cider"] + 0.5, (results, base)
    assert results["caption"]["bleu4"] > base["caption"]["bleu4"] + 0.2
    # mAP@0.5 measured 0.012 (0.020 with the old init: gpt2) on 100 val images at this budget: a start,
    # not yet a skill; the localisation margin below is the one that shows detection training works.
    assert results["detection"]["map@0.5"] >= base["detection"]["map@0.5"] + 0.005, (results, base)
    # Image-to-text retrieval by candidate scoring (caption.yaml's retrieval_pool: 50; chance r@5 = 0.1).
    # Generated captions are good long before the caption likelihood tells scenes apart well: measured
    # 0.16 trained against 0.10 untrained, so this only asserts that it has started to.
    assert results["caption"]["retrieval_r@5"] > base["caption"]["retrieval_r@5"], (results, base)
    assert localisation(ckpt.model, ckpt.codec, ckpt.tasks, stores) >= localisation(untrained, fresh, ckpt.tasks, stores) + 0.25


def localisation(model, codec, tasks, stores, n: int = 60) -> float:
    """Mean over predicted boxes of their best IoU with a true box (label ignored)."""
    predictor = Predictor(model, codec, {"detection": tasks["detection"]})
    builder = predictor.builders["detection"]
    examples = [builder.build(stores["detection"][i]) for i in range(n)]
    ious = []
    for e, p in zip(examples, predictor.predict(examples)):
        for b in p.output.boxes:
            ious.append(max((_iou(b.xyxy, t.xyxy) for t in e.reference.boxes), default=0.0))
    return sum(ious) / max(1, len(ious))


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_loss_log_is_written_and_falls(trained):
    _, out, _ = trained
    import csv

    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["step"]) for r in rows][-1] == 600
    assert float(rows[-1]["loss"]) < 0.6 * float(rows[0]["loss"])
    assert {"loss/caption", "loss/detection", "examples_per_s"} <= set(rows[0])


def test_checkpoint_reloads_to_identical_outputs(trained, tmp_path):
    _, out, _ = trained
    a = load_checkpoint(out / "checkpoint")
    save_checkpoint(tmp_path / "copy", a.model, a.codec, a.tasks, a.run)
    b = load_checkpoint(tmp_path / "copy")
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(40, 200, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.bool)
    images = torch.randn(2, 1, 3, 64, 64, generator=g)
    target = torch.randint(0, a.codec.vocab.size, (2, 10), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(a.model(prompt, mask, target, images), b.model(prompt, mask, target, images), rtol=0, atol=0)
    assert json.loads((tmp_path / "copy" / "vocab.json").read_text()) == a.codec.vocab.to_dict()
    assert not list(tmp_path.glob(".copy.*")), "temporary directories are cleaned up"


def test_checkpoint_from_another_vocabulary_is_refused(trained, tmp_path):
    _, out, _ = trained
    a = load_checkpoint(out / "checkpoint")
    from unitok.modalities.vocab import Vocabulary

    other = Vocabulary.build(text_size=a.codec.text.size, coord_bins=128, meta=a.codec.vocab.meta)
    with pytest.raises(VocabularyMismatch, match="block 'coords': size 128 vs 64"):
        load_checkpoint(out / "checkpoint", expect_vocab=other)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_pipeline_routes_prompts_and_boxes_lie_inside_the_image(trained):
    run, out, _ = trained
    pipe = Pipeline.from_pretrained(out / "checkpoint")
    store = RecordStore(recipes.store_path(run, "world", "val"))
    record = store[0]
    det = pipe("Detect the shapes", image=record["image"])
    assert isinstance(det, Boxes) and det.boxes
    for b in det.boxes:
        assert 0 <= b.x0 <= b.x1 <= record["width"] and 0 <= b.y0 <= b.y1 <= record["height"]
        assert b.label in {"circle", "square", "triangle", "diamond", "cross"}
    # Boxes come back in the *input* image's pixels: a 2x upscaled image gives 2x coordinates.
    from PIL import Image
    import io

    big = Image.open(io.BytesIO(record["image"])).resize((128, 128), Image.NEAREST)
    det_big = pipe("detect the shapes.", image=big)
    assert all(b.x1 <= 128 and b.y1 <= 128 for b in det_big.boxes)
    assert max(b.x1 for b in det_big.boxes) > 64 or max(b.x1 for b in det.boxes) <= 32
    cap = pipe("describe the image.", image=record["image"])
    assert isinstance(cap, Text) and cap.text
    mixed = pipe.batch([{"prompt": "describe the image.", "image": record["image"]},
                        {"prompt": "detect the shapes.", "image": record["image"]}])
    assert isinstance(mixed[0], Text) and isinstance(mixed[1], Boxes)
    # Batching with another task does not change a row's result (scores up to float rounding).
    assert [(b.xyxy, b.label) for b in mixed[1].boxes] == [(b.xyxy, b.label) for b in det.boxes]
    assert [b.score for b in mixed[1].boxes] == pytest.approx([b.score for b in det.boxes], rel=1e-4)
    # Decoding settings: the spec's by default, overridden per call or per request.
    short = pipe("describe the image.", image=record["image"], decoding={"max_tokens": 2})
    assert len(short.text) < len(cap.text)
    beam1 = pipe("describe the image.", image=record["image"], decoding={"strategy": "beam", "beam_size": 1})
    assert beam1.text == cap.text
    both = pipe.batch([{"prompt": "describe the image.", "image": record["image"], "decoding": {"max_tokens": 2}},
                       {"prompt": "describe the image.", "image": record["image"]}])
    assert [both[0].text, both[1].text] == [short.text, cap.text]
    with pytest.raises(TypeError, match="unknown decoding option.*'beam_width'"):
        pipe("describe the image.", image=record["image"], decoding={"beam_width": 4})
    with pytest.raises(UnknownPromptError, match="caption: 'describe the image.'"):
        pipe("sing me a song", image=record["image"])
    with pytest.raises(ValueError, match="not a readable image"):
        pipe("describe the image.", image=b"\x89PNG garbage")
    noise = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    assert isinstance(pipe("describe the image.", image=png_bytes(noise)), Text)

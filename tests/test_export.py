"""`unitok data export coco`: a store as COCO files that the importers read back exactly, and world scenes
repainted in another palette (pixels a model trained on the default world never saw)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from unitok.data.export import SHIFTED_PALETTE, ExportError, export_coco
from unitok.data.importers import import_coco, import_jsonl
from unitok.data.schema import decode_png
from unitok.data.store import RecordStore, StoreWriter
from unitok.data.world import COLOURS, BACKGROUNDS, WorldConfig, iter_world, world_meta

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("world") / "train"
    cfg = WorldConfig(seed=7, size=48)
    with StoreWriter(path, world_meta(cfg, "train")) as w:
        w.extend(iter_world(cfg, 5, "train"))
    return path


def test_export_then_import_gives_back_every_box_mask_caption_and_question(world, tmp_path):
    counts = export_coco(world, tmp_path / "coco")
    source = list(RecordStore(world))
    assert counts == {"images": 5, "objects": sum(len(r["objects"]) for r in source),
                      "captions": sum(len(r["captions"]) for r in source), "questions": sum(len(r["vqa"]) for r in source)}
    files = tmp_path / "coco"
    import_coco(files / "instances.json", files / "images", tmp_path / "s", captions=files / "captions.json")
    import_jsonl(files / "questions.jsonl", tmp_path / "q")
    shapes, qa = list(RecordStore(tmp_path / "s")), list(RecordStore(tmp_path / "q"))
    assert [r["id"] for r in shapes] == [r["id"] for r in qa] == ["1", "2", "3", "4", "5"]
    for src, got, q in zip(source, shapes, qa, strict=True):
        assert got["image"] == src["image"] == q["image"]  # bytes as stored
        assert got["captions"] == src["captions"]
        assert q["vqa"] == src["vqa"]  # one record per image again, questions in order
        for a, b in zip(src["objects"], got["objects"], strict=True):
            assert a["box"] == b["box"] and a["category"] == b["category"]
            assert np.array_equal(decode_png(a["mask"]) > 127, decode_png(b["mask"]) > 127)
    assert RecordStore(tmp_path / "s").meta["categories"] == RecordStore(world).meta["categories"]
    assert set(RecordStore(tmp_path / "q").meta["answers"]) == {q["answer"] for r in source for q in r["vqa"]}


def test_shifted_palette_repaints_objects_and_background(world, tmp_path):
    export_coco(world, tmp_path / "coco", palette="shifted")
    instances = json.loads((tmp_path / "coco" / "instances.json").read_text())
    for k, record in enumerate(RecordStore(world)):
        before = decode_png(record["image"]).astype(int)
        after = decode_png((tmp_path / "coco" / "images" / instances["images"][k]["file_name"]).read_bytes()).astype(int)
        covered = np.zeros(before.shape[:2], bool)
        for obj in record["objects"]:
            mask = decode_png(obj["mask"]) > 127
            assert (after[mask] == SHIFTED_PALETTE[obj["colour"]]).all()
            covered |= mask
        shift = np.subtract(SHIFTED_PALETTE[record["background"]], BACKGROUNDS[record["background"]])
        inside = (before[~covered] + shift >= 0).all(1) & (before[~covered] + shift <= 255).all(1)
        assert (after[~covered][inside] == before[~covered][inside] + shift).all()
        assert not any((after == rgb).all(2).any() for rgb in COLOURS.values())  # no pixel of the old palette left
    with pytest.raises(ExportError, match="already exists"):
        export_coco(world, tmp_path / "coco")


def test_repainting_needs_world_scenes(world, tmp_path):
    export_coco(world, tmp_path / "coco")
    files = tmp_path / "coco"
    import_coco(files / "instances.json", files / "images", tmp_path / "s")
    with pytest.raises(ExportError, match=r"/s: metadata has no 'palette'"):
        export_coco(tmp_path / "s", tmp_path / "again", palette="shifted")
    assert not (tmp_path / "again").exists()  # nothing half-written
    with pytest.raises(ExportError, match="unknown palette 'pastel'; known: shifted"):
        export_coco(world, tmp_path / "again", palette="pastel")

"""Importers: COCO / VQA v2 / RefCOCO / JSONL round trips from world scenes, and bad input reporting."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from unitok.data.importers import (REPORT_NAME, DataImportError, import_coco, import_coco_captions, import_dataset,
                                   import_jsonl, import_refcoco, import_vqa)
from unitok.data.schema import decode_png, png_bytes
from unitok.data.store import RecordStore, StoreError
from unitok.data.world import SHAPES, WorldConfig, make_scene

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

N_SCENES = 6
# COCO ids need not be contiguous nor in list order: the store lists categories in id order.
CATEGORY_IDS = {"circle": 7, "square": 2, "triangle": 11, "diamond": 3, "cross": 5}


def _mask(obj: dict) -> np.ndarray:
    return decode_png(obj["mask"], what="mask") > 127


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major mask, starting with a 0-run."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> dict:
    """A COCO-format copy of a few world scenes: image files, instances (polygon, RLE and
    uncompressed-RLE masks), captions; plus the expected objects for each image."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    cfg = WorldConfig(seed=3, size=48)
    images, anns, caps, expected = [], [], [], {}
    for i in range(N_SCENES):
        scene = make_scene(cfg, i)
        image_id = 100 + i
        name = f"{i:04d}.png"
        (root / "images" / name).write_bytes(scene["image"])
        images.append({"id": image_id, "file_name": name, "width": scene["width"], "height": scene["height"]})
        want = []
        for k, obj in enumerate(scene["objects"]):
            x0, y0, x1, y1 = obj["box"]
            mask = _mask(obj)
            ann = {"id": 1000 * image_id + k, "image_id": image_id, "category_id": CATEGORY_IDS[obj["category"]],
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0, "area": float(mask.sum())}
            style = (i + k) % 3
            if style == 0:  # polygon: the box outline; what pycocotools rasterises is the reference
                poly = [[x0, y0, x1, y0, x1, y1, x0, y1]]
                ann["segmentation"] = poly
                mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, *mask.shape))).astype(bool)
            elif style == 1:  # compressed RLE of the world's own mask
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:  # uncompressed RLE, as COCO stores crowd regions
                ann["segmentation"], ann["iscrowd"] = _uncompressed_rle(mask), 1
            anns.append(ann)
            want.append({**ann, "box": obj["box"], "category": obj["category"], "mask": mask})
        expected[image_id] = {"objects": want, "captions": scene["captions"], "image": scene["image"]}
        caps += [{"id": 10 * image_id + k, "image_id": image_id, "caption": c} for k, c in enumerate(scene["captions"])]
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for name, cid in CATEGORY_IDS.items()]
    instances = {"images": images, "annotations": anns, "categories": categories}
    _write_json(root / "instances.json", instances)
    _write_json(root / "captions.json", {"images": images, "annotations": caps})
    return {"root": root, "instances": instances, "captions": caps, "expected": expected}


def test_coco_instances_and_captions_round_trip_losslessly(coco, tmp_path):
    root = coco["root"]
    report = import_coco(root / "instances.json", root / "images", tmp_path / "store",
                         captions=root / "captions.json")
    assert report.records == N_SCENES and report.skipped == 0
    store = RecordStore(tmp_path / "store")
    assert store.meta["categories"] == [n for n, _ in sorted(CATEGORY_IDS.items(), key=lambda kv: kv[1])]
    assert store.meta["category_ids"] == sorted(CATEGORY_IDS.values())
    assert store.meta["provenance"]["sources"]["instances"] == str((root / "instances.json").resolve())
    for record in store:
        want = coco["expected"][int(record["id"])]
        assert record["image"] == want["image"]  # original PNG bytes kept
        assert record["captions"] == want["captions"]
        assert len(record["objects"]) == len(want["objects"])
        for got, exp in zip(record["objects"], want["objects"]):
            assert got["box"] == exp["box"]
            assert got["category"] == exp["category"]
            assert got["source_id"] == exp["id"] and got["iscrowd"] == exp["iscrowd"]
            assert np.array_equal(_mask(got), exp["mask"])
    assert json.loads((tmp_path / "store" / REPORT_NAME).read_text())["records"] == N_SCENES


def test_coco_captions_alone(coco, tmp_path):
    root = coco["root"]
    import_dataset("coco_captions", captions=root / "captions.json", images=root / "images", out=tmp_path / "s")
    store = RecordStore(tmp_path / "s")
    assert store.meta["categories"] == []
    assert [r["captions"] for r in store] == [coco["expected"][100 + i]["captions"] for i in range(N_SCENES)]
    assert "objects" not in store[0]


def test_vqa_v2_round_trip(coco, tmp_path):
    root = coco["root"]
    questions = {"task_type": "Open-Ended", "data_subtype": "val2014", "questions": [
        {"image_id": 100, "question": "how many shapes?", "question_id": 1},
        {"image_id": 101, "question": "is there a circle?", "question_id": 2},
        {"image_id": 100, "question": "what colour is the background?", "question_id": 3},
    ]}
    def ten(a: str) -> list[dict]:
        return [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]

    annotations = {"annotations": [
        {"question_id": 1, "image_id": 100, "multiple_choice_answer": "2", "answer_type": "number",
         "question_type": "how many", "answers": ten("2")},
        {"question_id": 2, "image_id": 101, "multiple_choice_answer": "yes", "answer_type": "yes/no",
         "question_type": "is there a", "answers": ten("yes")[:9] + ten("no")[:1]},
        {"question_id": 3, "image_id": 100, "multiple_choice_answer": "yes", "answer_type": "other",
         "question_type": "what color is the", "answers": ten("gray")},
    ]}
    q = _write_json(tmp_path / "q.json", questions)
    a = _write_json(tmp_path / "a.json", annotations)
    (tmp_path / "imgs").mkdir()
    for image_id in (100, 101):
        official = f"COCO_val2014_{image_id:012d}.jpg"
        shutil.copy(root / "images" / f"{image_id - 100:04d}.png", tmp_path / "imgs" / official)
    report = import_vqa(q, tmp_path / "imgs", tmp_path / "s2", annotations=a)  # the official file names
    assert report.records == 2 and report.skipped == 0
    store = RecordStore(tmp_path / "s2")
    assert store.meta["answers"] == ["yes", "2"]  # by frequency, then alphabetical
    by_id = {r["id"]: r for r in store}
    assert [v["question"] for v in by_id["100"]["vqa"]] == ["how many shapes?", "what colour is the background?"]
    v = by_id["101"]["vqa"][0]
    assert (v["answer"], v["type"], v["question_id"]) == ("yes", "yes/no", 2)
    assert v["answers"] == ["yes"] * 9 + ["no"]


def test_refcoco_round_trip(coco, tmp_path):
    root = coco["root"]
    anns = coco["instances"]["annotations"]
    refs = [
        {"ref_id": 1, "ann_id": anns[0]["id"], "image_id": anns[0]["image_id"], "split": "val",
         "category_id": anns[0]["category_id"], "sentences": [{"sent": "the left one", "sent_id": 10},
                                                              {"sent": "leftmost shape", "sent_id": 11}]},
        {"ref_id": 2, "ann_id": anns[-1]["id"], "image_id": anns[-1]["image_id"], "split": "val",
         "sentences": [{"sent": "the last shape", "sent_id": 12}]},
        {"ref_id": 3, "ann_id": anns[1]["id"], "image_id": anns[1]["image_id"], "split": "train",
         "sentences": [{"sent": "train only", "sent_id": 13}]},
    ]
    r = _write_json(tmp_path / "refs.json", refs)
    report = import_refcoco(r, root / "instances.json", root / "images", tmp_path / "s", split="val")
    assert report.records == 2
    store = RecordStore(tmp_path / "s")
    records = list(store)
    assert [ref["expression"] for ref in records[0]["refs"]] == ["the left one", "leftmost shape"]
    for record in records:
        want = coco["expected"][int(record["id"])]["objects"]
        assert [o["source_id"] for o in record["objects"]] == [w["id"] for w in want]  # distractors kept
        for ref in record["refs"]:
            obj = record["objects"][ref["object"]]
            assert obj["source_id"] == {1: anns[0]["id"], 2: anns[-1]["id"]}[ref["ref_id"]]
            assert ref["box"] == obj["box"] and ref["split"] == "val"


def test_jsonl_round_trip_of_world_scenes(tmp_path):
    cfg = WorldConfig(seed=5, size=40)
    scenes = [make_scene(cfg, i) for i in range(3)]
    lines = []
    for i, scene in enumerate(scenes):
        (tmp_path / f"{i}.png").write_bytes(scene["image"])
        objects = []
        for k, obj in enumerate(scene["objects"]):
            (tmp_path / f"{i}_{k}.png").write_bytes(obj["mask"])
            objects.append({**{a: v for a, v in obj.items() if a != "mask"}, "mask": f"{i}_{k}.png"})
        seg = np.zeros((scene["height"], scene["width"]), np.uint8)
        for obj in scene["objects"]:
            seg[_mask(obj)] = SHAPES.index(obj["category"]) + 1
        (tmp_path / f"{i}_seg.png").write_bytes(png_bytes(seg))
        depth = np.full(seg.shape, 1234 + i, np.uint16)
        (tmp_path / f"{i}_depth.png").write_bytes(png_bytes(depth))
        lines.append({"image": f"{i}.png", "id": scene["id"], "captions": scene["captions"], "objects": objects,
                      "background": scene["background"], "segmentation": f"{i}_seg.png", "depth": f"{i}_depth.png",
                      "refs": [{"expression": "the first shape", "object": 0}],
                      "regions": [{"box": [0, 0, 4, 4], "description": "a corner"}],
                      "vqa": [{"question": "how many shapes?", "answer": str(len(objects)), "type": "count"}]})
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    report = import_jsonl(path, tmp_path / "s", categories=list(SHAPES))
    assert report.records == 3
    store = RecordStore(tmp_path / "s")
    assert store.meta["categories"] == list(SHAPES)
    for record, scene, line in zip(store, scenes, lines, strict=True):
        assert record["id"] == scene["id"] and record["image"] == scene["image"]
        assert record["captions"] == scene["captions"] and record["background"] == scene["background"]
        for got, exp in zip(record["objects"], scene["objects"], strict=True):
            assert {k: v for k, v in got.items() if k != "mask"} == {k: v for k, v in exp.items() if k != "mask"}
            assert np.array_equal(_mask(got), _mask(exp))
        assert record["refs"][0]["box"] == scene["objects"][0]["box"]
        assert record["regions"][0]["box"] == [0.0, 0.0, 4.0, 4.0]
        assert record["vqa"] == line["vqa"]
        assert np.array_equal(decode_png(record["depth"]), decode_png((tmp_path / line["depth"]).read_bytes()))
        assert decode_png(record["depth"]).dtype == np.uint16
    # without a category list, categories are listed in order of first appearance
    import_jsonl(path, tmp_path / "s2")
    first_seen = list(dict.fromkeys(o["category"] for s in scenes for o in s["objects"]))
    assert RecordStore(tmp_path / "s2").meta["categories"] == first_seen


# --- bad input -------------------------------------------------------------------------------------------


@pytest.fixture
def broken_coco(coco, tmp_path) -> Path:
    """A copy of the COCO fixture with one missing image and one box outside its image."""
    root = tmp_path / "broken"
    shutil.copytree(coco["root"], root)
    (root / "images" / "0002.png").unlink()
    instances = json.loads((root / "instances.json").read_text())
    instances["annotations"][0]["bbox"] = [40.0, 40.0, 20.0, 20.0]  # reaches 60 px in a 48 px image
    instances["annotations"][1]["category_id"] = 99
    _write_json(root / "instances.json", instances)
    return root


def test_coco_bad_input_raises_naming_file_and_item(broken_coco, coco, tmp_path):
    out = tmp_path / "s"
    first = coco["instances"]["annotations"][0]["id"]
    second = coco["instances"]["annotations"][1]["id"]
    with pytest.raises(DataImportError, match=rf"instances\.json: annotation {second}: unknown category_id 99"):
        import_coco(broken_coco / "instances.json", broken_coco / "images", out)
    assert not out.exists()  # nothing partial left behind
    instances = json.loads((broken_coco / "instances.json").read_text())
    instances["annotations"][1]["category_id"] = 2
    _write_json(broken_coco / "instances.json", instances)
    with pytest.raises(DataImportError, match=rf"annotation {first} \(image 100\): .*outside the 48x48 image"):
        import_coco(broken_coco / "instances.json", broken_coco / "images", out)
    assert not out.exists()


def test_coco_skip_bad_counts_and_lists(broken_coco, tmp_path):
    out = tmp_path / "s"
    report = import_coco(broken_coco / "instances.json", broken_coco / "images", out,
                         captions=broken_coco / "captions.json", skip_bad=True)
    assert report.records == N_SCENES - 1 and report.skipped == 3
    reasons = "\n".join(str(b) for b in report.bad)
    assert "unknown category_id 99" in reasons and "outside the 48x48 image" in reasons
    assert "image 102 (0002.png)" in reasons and "not found" in reasons
    written = json.loads((out / REPORT_NAME).read_text())
    assert written["skipped"] == 3 and len(written["bad"]) == 3
    assert RecordStore(out).meta["provenance"]["skipped_bad"] == 3


def test_malformed_json_names_file_line_and_column(coco, tmp_path):
    text = (coco["root"] / "instances.json").read_text()
    bad = tmp_path / "instances.json"
    bad.write_text(text[:200] + "\n,,\n" + text[200:])
    with pytest.raises(DataImportError, match=r"instances\.json: line 2 column 1: malformed JSON"):
        import_coco(bad, coco["root"] / "images", tmp_path / "s", skip_bad=True)  # a whole file cannot be skipped


def test_jsonl_bad_lines(tmp_path):
    img = np.zeros((10, 12, 3), np.uint8)
    (tmp_path / "a.png").write_bytes(png_bytes(img))
    lines = [
        json.dumps({"image": "a.png", "objects": [{"box": [0, 0, 12, 10], "category": "x"}]}),
        '{"image": "a.png", "captions": ["unterminated]',
        json.dumps({"image": "missing.png"}),
        json.dumps({"image": "a.png", "objects": [{"box": [2, 2, 14.5, 5], "category": "y"}]}),
        json.dumps({"image": "a.png", "refs": [{"expression": "it", "object": 3}]}),
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataImportError, match=r"d\.jsonl: line 2: malformed JSON at column"):
        import_jsonl(path, tmp_path / "s")
    assert not (tmp_path / "s").exists()
    report = import_dataset("jsonl", path=path, out=tmp_path / "s", skip_bad=True)
    assert report.records == 1
    assert [b.item for b in report.bad] == ["line 2", "line 3", "line 4", "line 5"]
    assert "not found" in report.bad[1].reason and "outside the 12x10 image" in report.bad[2].reason
    assert RecordStore(tmp_path / "s").meta["categories"] == ["x"]  # "y" came only from a skipped line
    assert json.loads((tmp_path / "s" / REPORT_NAME).read_text())["skipped"] == 4


def test_vqa_missing_image_and_orphan_annotation(coco, tmp_path):
    q = _write_json(tmp_path / "q.json", {"questions": [
        {"image_id": 100, "question": "a?", "question_id": 1}, {"image_id": 555, "question": "b?", "question_id": 2}]})
    a = _write_json(tmp_path / "a.json", {"annotations": [
        {"question_id": 1, "image_id": 100, "multiple_choice_answer": "x"},
        {"question_id": 2, "image_id": 555, "multiple_choice_answer": "y"},
        {"question_id": 9, "image_id": 100, "multiple_choice_answer": "z"}]})
    images, pattern = coco["root"] / "images", "{image_id:04d}.png"
    (tmp_path / "imgs").mkdir()
    shutil.copy(images / "0000.png", tmp_path / "imgs" / "0100.png")
    with pytest.raises(DataImportError, match=r"a\.json: question 9: annotation for a question not in"):
        import_vqa(q, tmp_path / "imgs", tmp_path / "s", annotations=a, image_pattern=pattern)
    report = import_vqa(q, tmp_path / "imgs", tmp_path / "s", annotations=a, image_pattern=pattern, skip_bad=True)
    assert report.records == 1
    assert [b.item for b in report.bad] == ["question 9", "image 555 (0555.png)"]


def test_rgb_jpeg_kept_as_is_other_images_reencoded_as_rgb_png(tmp_path):
    Image.fromarray(np.full((6, 7), 80, np.uint8)).save(tmp_path / "g.png")  # greyscale
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(tmp_path / "c.bmp")
    Image.fromarray(np.full((6, 7, 3), 200, np.uint8)).save(tmp_path / "j.jpg", quality=90)
    (tmp_path / "d.jsonl").write_text('{"image": "g.png"}\n{"image": "c.bmp"}\n{"image": "j.jpg"}\n')
    report = import_jsonl(tmp_path / "d.jsonl", tmp_path / "s")
    assert report.reencoded_images == 2
    g, c, j = RecordStore(tmp_path / "s")
    for record in (g, c):
        assert decode_png(record["image"]).shape == (6, 7, 3)
    assert j["image"] == (tmp_path / "j.jpg").read_bytes()


def test_dispatcher_and_existing_store(coco, tmp_path):
    with pytest.raises(ValueError, match="unknown import kind 'cocoa'; known kinds: coco, coco_captions, vqa, "
                                         "refcoco, jsonl"):
        import_dataset("cocoa", out=tmp_path)
    root = coco["root"]
    import_coco_captions(root / "captions.json", root / "images", tmp_path / "s")
    with pytest.raises(StoreError, match="already exists"):
        import_coco_captions(root / "captions.json", root / "images", tmp_path / "s")
    assert len(RecordStore(tmp_path / "s")) == N_SCENES  # the refused import left the store intact


# --- a flat question-per-line JSONL, wrong importers, totals in inspect ---------------------------------------


def _flat_questions(tmp_path: Path) -> tuple[Path, list[dict], list[dict]]:
    """Three world scenes as a flat JSONL: one line per question, the image repeated on each line (the
    second scene's lines interleaved with the first's), captions given on some lines only."""
    cfg = WorldConfig(seed=5, size=40)
    scenes = [make_scene(cfg, i) for i in range(3)]
    (tmp_path / "imgs").mkdir()
    lines = []
    for i, scene in enumerate(scenes):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(scene["image"])
        for k, q in enumerate(scene["vqa"][:4]):
            line = {"image": f"imgs/{i}.png", "question": q["question"], "answer": q["answer"],
                    "question_type": q["type"], "question_id": 100 * i + k}
            if k == 1:
                line["captions"] = scene["captions"]
            lines.append(line)
    lines[1], lines[4] = lines[4], lines[1]  # scene 1's first question comes before scene 0's second
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path, scenes, lines


def test_jsonl_question_lines_group_by_image_with_the_answer_vocabulary(tmp_path):
    path, scenes, lines = _flat_questions(tmp_path)
    report = import_jsonl(path, tmp_path / "s")
    assert report.records == 3 and report.skipped == 0  # one record per image, not one per question
    store = RecordStore(tmp_path / "s")
    for i, (record, scene) in enumerate(zip(store, scenes, strict=True)):
        assert record["image"] == scene["image"] and record["captions"] == scene["captions"]
        mine = [ln for ln in lines if ln["image"] == f"imgs/{i}.png"]
        assert record["vqa"] == [{k: v for k, v in ln.items() if k not in ("image", "captions")} for ln in mine]
        assert record["id"] == f"questions-{lines.index(mine[0]) + 1}"  # the file stem and its first line
        assert "question" not in record and "answer" not in record
    counts = {}
    for ln in lines:
        counts[ln["answer"]] = counts.get(ln["answer"], 0) + 1
    assert store.meta["answers"] == sorted(counts, key=lambda a: (-counts[a], a))  # most frequent first
    assert "answer_types" in store.meta
    # the native form gets the vocabulary too
    native = tmp_path / "native.jsonl"
    native.write_text(json.dumps({"image": "imgs/0.png", "vqa": [{"question": "q?", "answer": "b", "type": "t"},
                                                                  {"question": "r?", "answer": "a", "type": "t"},
                                                                  {"question": "s?", "answer": "b"}]}) + "\n")
    import_jsonl(native, tmp_path / "n")
    assert RecordStore(tmp_path / "n").meta["answers"] == ["b", "a"]
    assert RecordStore(tmp_path / "n").meta["answer_types"] == ["t"]


def test_jsonl_question_lines_that_disagree_are_reported(tmp_path):
    path, scenes, lines = _flat_questions(tmp_path)
    del lines[2]["answer"]  # line 3, a question of scene 0
    lines[6]["captions"] = ["another caption"]  # line 7: scene 1's captions came on line 6
    lines.append({"image": "imgs/9.png", "question": "where?", "answer": "nowhere"})
    lines.append({"image": "imgs/9.png", "question": "what?", "answer": "nothing"})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(DataImportError, match=r"questions\.jsonl: line 3: line has no 'answer'"):
        import_jsonl(path, tmp_path / "s")
    report = import_jsonl(path, tmp_path / "s", skip_bad=True)
    assert report.records == 3
    assert [b.item for b in report.bad] == ["line 3", "line 7", "lines 13, 14 (the questions of imgs/9.png)"]
    assert re.fullmatch(r"captions \['another caption'\] differs from \['.*\.\.\. on line 6, a question of the same "
                        r"image \(imgs/1\.png\)", report.bad[1].reason)
    assert "imgs/9.png not found; skipped with its 2 questions" in report.bad[2].reason
    store = RecordStore(tmp_path / "s")
    assert [len(r["vqa"]) for r in store] == [3, 3, 4] and store[1]["captions"] == scenes[1]["captions"]


def test_wrong_importer_errors_name_the_right_one(coco, tmp_path):
    path, _, _ = _flat_questions(tmp_path)
    root = coco["root"]
    with pytest.raises(DataImportError, match=r"questions\.jsonl: line 2 column 1: malformed JSON .*it looks like "
                                              r"JSON Lines .*use `unitok data import jsonl --path .*questions\.jsonl"):
        import_vqa(path, tmp_path / "imgs", tmp_path / "s")
    with pytest.raises(DataImportError, match=r"it looks like JSON Lines .*unitok data import jsonl"):
        import_coco(path, tmp_path / "imgs", tmp_path / "s")
    with pytest.raises(DataImportError, match=r"captions\.json: not a COCO instances file; it looks like a COCO "
                                              r"captions file: use `unitok data import coco_captions --captions"):
        import_coco(root / "captions.json", root / "images", tmp_path / "s")
    with pytest.raises(DataImportError, match=r"instances\.json: expected an object with a 'questions' list \(VQA v2 "
                                              r"format\); it looks like a COCO instances file: use `unitok data import coco"):
        import_vqa(root / "instances.json", root / "images", tmp_path / "s")
    questions = _write_json(tmp_path / "q.json", {"questions": [{"image_id": 1, "question": "a?", "question_id": 1}]})
    with pytest.raises(DataImportError, match=r"q\.json: not a COCO instances file; it looks like a VQA v2 questions "
                                              r"file: use `unitok data import vqa --questions"):
        import_coco(questions, root / "images", tmp_path / "s")
    answers = _write_json(tmp_path / "a.json", {"annotations": [{"question_id": 1, "image_id": 1,
                                                                  "multiple_choice_answer": "x"}]})
    with pytest.raises(DataImportError, match=r"a\.json: expected an object with a 'questions' list .*it looks like a "
                                              r"VQA v2 annotations file: use `.* --annotations .*a\.json"):
        import_vqa(answers, root / "images", tmp_path / "s")
    with pytest.raises(DataImportError, match=r"expected a JSON list of refs .*it looks like a COCO instances file"):
        import_refcoco(root / "instances.json", root / "instances.json", root / "images", tmp_path / "s")
    for whole in (root / "instances.json", tmp_path / "pretty.json"):  # one line, or pretty-printed
        if whole.name == "pretty.json":
            whole.write_text(json.dumps(coco["instances"], indent=2))
        with pytest.raises(DataImportError, match=rf"{whole.name}: one JSON document, not JSON Lines .*it looks like "
                                                  r"a COCO instances file: use `unitok data import coco --instances"):
            import_jsonl(whole, tmp_path / "s", skip_bad=True)  # a whole file is not a bad line to skip
    assert not (tmp_path / "s").exists()


def test_inspect_counts_list_items(tmp_path):
    from unitok.data.tools import inspect

    path, scenes, lines = _flat_questions(tmp_path)
    import_jsonl(path, tmp_path / "s")
    rows = {ln.split()[0]: ln for ln in inspect(tmp_path / "s").splitlines() if ln.startswith("  ")}
    assert rows["vqa"].split()[1:3] == ["3/3", str(len(lines))]  # 3 records hold all 12 questions
    assert rows["captions"].split()[1:3] == ["3/3", str(sum(len(s["captions"]) for s in scenes))]
    assert "items" not in rows["width"]

"""A store → COCO-format files, the form most other tools (and `unitok data import`) read.

``export_coco(store, out)`` writes, from one store:

    out/images/000001.png    each record's image, its bytes as stored (``.jpg`` for JPEG); image ids 1..N
    out/instances.json       COCO instances: images, categories (ids 1..K in the store's order),
                             annotations (bbox xywh; segmentation as compressed RLE where an object has a
                             mask; area = mask pixels, else box area)      when a record has ``objects``
    out/captions.json        COCO captions                                 when a record has ``captions``
    out/questions.jsonl      one question per line, {"image": "images/000001.png", "id": "1", "question",
                             "answer", ...}: the flat form `unitok data import jsonl` groups back into
                             one record per image                          when a record has ``vqa``

``palette="shifted"`` repaints world scenes in other colours under the same names (`SHIFTED_PALETTE`):
each object's visible pixels become its colour's new RGB and the background moves by the difference of
its colour's two RGBs (keeping its gradient and noise), so the export holds pixels that a model trained
on the default world never saw, with the same words for them. It needs world records (objects with
``colour`` and ``mask``, ``background``, the store's ``palette`` metadata) and checks that every object
pixel had its colour's RGB before repainting it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .schema import decode_png, png_bytes
from .store import RecordStore

# Same names as the world's COLOURS and BACKGROUNDS, other RGB values: each still reads as its name.
SHIFTED_PALETTE = {
    "red": (190, 55, 95), "green": (95, 165, 40), "blue": (40, 145, 215), "yellow": (250, 175, 30),
    "purple": (120, 75, 175), "white": (200, 210, 222),
    "gray": (140, 128, 118), "black": (44, 38, 34), "navy": (28, 48, 104), "brown": (106, 72, 40),
}  # fmt: skip
PALETTES = {"shifted": SHIFTED_PALETTE}
# Keys a question line of the JSONL importer keeps for its image (the rest belong to the question).
IMAGE_FIELDS = ("image", "id", "width", "height", "objects", "captions", "refs", "regions", "segmentation", "depth")


class ExportError(ValueError):
    """A store cannot be exported as asked; the message names the store, the record and the field."""


def _suffix(data: bytes) -> str:
    return ".jpg" if data[:2] == b"\xff\xd8" else ".png"


def _mask(obj: dict, where: str) -> np.ndarray:
    try:
        return decode_png(obj["mask"], what=where) > 127
    except ValueError as e:
        raise ExportError(str(e)) from None


def repaint(record: dict, old: dict[str, Any], new: dict[str, Any], where: str) -> bytes:
    """The record's image with every object and the background in the ``new`` palette (see module docstring)."""
    for key in ("objects", "background"):
        if key not in record:
            raise ExportError(f"{where}: no field {key!r}; only world scenes can be repainted")
    image = decode_png(record["image"], what=f"{where} image").astype(np.int16)
    covered = np.zeros(image.shape[:2], bool)
    for k, obj in enumerate(record["objects"]):
        for key in ("colour", "mask"):
            if key not in obj:
                raise ExportError(f"{where}: objects[{k}] has no {key!r}; only world scenes can be repainted")
        for name in (obj["colour"], record["background"]):
            if name not in old or name not in new:
                raise ExportError(f"{where}: colour {name!r} is not in the store's palette and the new one")
        mask = _mask(obj, f"{where} objects[{k}].mask")
        if mask.shape != image.shape[:2] or not (image[mask] == old[obj["colour"]]).all():
            raise ExportError(f"{where}: objects[{k}]'s pixels are not all {obj['colour']} {tuple(old[obj['colour']])}, "
                              "so they cannot be repainted exactly")
        image[mask] = new[obj["colour"]]
        covered |= mask
    shift = np.asarray(new[record["background"]], np.int16) - np.asarray(old[record["background"]], np.int16)
    image[~covered] += shift
    return png_bytes(np.clip(image, 0, 255).astype(np.uint8))


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def export_coco(store: str | os.PathLike, out: str | os.PathLike, *, palette: str | None = None,
                limit: int | None = None) -> dict[str, int]:
    """Write the records of ``store`` (the first ``limit``) as COCO files under ``out`` (module docstring).
    ``out`` must not exist or be empty. Returns counts: images, objects, captions, questions."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: already exists and is not an empty directory; export into a new one")
    if palette is not None and palette not in PALETTES:
        raise ExportError(f"unknown palette {palette!r}; known: {', '.join(PALETTES)}")
    source = RecordStore(store, check_world=False)
    created = not out.exists()
    try:
        old = {k: tuple(v) for k, v in (source.meta.get("palette") or {}).items()}
        if palette is not None and not old:
            raise ExportError(f"{source.path}: metadata has no 'palette' (colour name -> RGB); only world stores "
                              "can be repainted")
        return _write(source, out, old, PALETTES.get(palette), limit)
    except BaseException:  # no half-written export: remove what this call wrote
        if created:
            shutil.rmtree(out, ignore_errors=True)
        elif out.is_dir():  # it was an empty directory: empty it again
            for p in out.iterdir():
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        raise
    finally:
        source.close()


def _write(source: RecordStore, out: Path, old: dict, new: dict | None, limit: int | None) -> dict[str, int]:
    categories: list[str] = [str(c) for c in source.meta.get("categories") or []]
    images, annotations, captions, questions = [], [], [], []
    has_objects = False
    (out / "images").mkdir(parents=True, exist_ok=True)
    n = len(source) if limit is None else min(limit, len(source))
    for i in range(n):
        record = source[i]
        where = f"{source.path}: record {record.get('id', i)!r}"
        image_id = i + 1
        data = record["image"] if new is None else repaint(record, old, new, where)
        file_name = f"{image_id:06d}{_suffix(data)}"
        (out / "images" / file_name).write_bytes(data)
        width, height = int(record["width"]), int(record["height"])
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                       "source_id": str(record.get("id", i))})
        has_objects |= "objects" in record
        for k, obj in enumerate(record.get("objects", [])):
            if "box" not in obj or "category" not in obj:
                raise ExportError(f"{where}: objects[{k}] has no 'box' or 'category'")
            category = str(obj["category"])
            if category not in categories:
                categories.append(category)
            x0, y0, x1, y1 = (float(v) for v in obj["box"])
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": categories.index(category) + 1,
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": int(obj.get("iscrowd", 0)),
                   "area": (x1 - x0) * (y1 - y0)}
            if isinstance(obj.get("mask"), (bytes, bytearray)):
                mask = _mask(obj, f"{where} objects[{k}].mask")
                ann["segmentation"], ann["area"] = _rle(mask), float(mask.sum())
            annotations.append(ann)
        captions += [{"id": len(captions) + k + 1, "image_id": image_id, "caption": c}
                     for k, c in enumerate(record.get("captions", []))]
        for k, q in enumerate(record.get("vqa", [])):
            shared = sorted(set(q) & set(IMAGE_FIELDS))
            if shared:  # the JSONL importer would read these as the image's, not the question's
                raise ExportError(f"{where}: vqa[{k}] has {shared}, which a question line keeps for its image")
            questions.append({"image": f"images/{file_name}", "id": str(image_id), **q})

    files = []
    if has_objects:
        cats = [{"id": k + 1, "name": c, "supercategory": ""} for k, c in enumerate(categories)]
        files.append(("instances.json", {"images": images, "annotations": annotations, "categories": cats}))
    if captions:
        files.append(("captions.json", {"images": images, "annotations": captions}))
    for name, content in files:
        (out / name).write_text(json.dumps(content))
    if questions:
        (out / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return {"images": len(images), "objects": len(annotations), "captions": len(captions), "questions": len(questions)}

"""COCO instances and captions JSON → records.

One record per image: ``objects`` from the instances file (bbox xywh → pixel xyxy; polygon and RLE
masks decoded with pycocotools and stored as L PNG, 255 = object), ``captions`` from the captions
file, merged by image id when both are given. Categories are listed in COCO id order; the metadata
keeps the COCO ids (``category_ids``) so predictions can be written back for COCO evaluation.
"""
from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterator

from .common import (BOX_TOLERANCE, BadInput, check_box, coco_mask, format_hint, guess_format, load_json, mask_png,
                     read_image, require, resolve, write_records)
from .report import DataImportError, ImportReport, Reporter


class CocoInstances:
    """The parsed ``images`` / ``categories`` / ``annotations`` of a COCO-format JSON file.

    Bad annotations and image entries are reported (or raised) while indexing; what remains is valid
    except for what only the image file can tell (existence, size), checked by ``load_image``.
    """

    def __init__(self, path: str | os.PathLike, reporter: Reporter, *, need_annotations: bool = True):
        self.path = Path(path)
        self.reporter = reporter
        expected = "coco" if need_annotations else "coco_captions"
        data = load_json(self.path, expected=(expected,))
        guess = guess_format(data)
        if guess not in (None, expected):  # it would fail on its first entry: say which importer it is for
            what = "instances" if need_annotations else "captions"
            raise DataImportError(self.path, "", f"not a COCO {what} file{format_hint(self.path, guess)}")
        if not isinstance(data, dict):
            raise DataImportError(self.path, "", f"top level is a {type(data).__name__}, expected an object")
        self.images: dict[int, dict] = {}  # id -> image entry, in file order
        self.categories: dict[int, dict] = {}
        self.annotations: dict[int, list[dict]] = {}  # image id -> annotations, in file order
        self._index_images(data.get("images"))
        self._index_categories(data.get("categories", []) if not need_annotations else data.get("categories"))
        if need_annotations:
            self._index_annotations(data.get("annotations"))
        self.raw = data

    def _list(self, value, key: str) -> list:
        if not isinstance(value, list):
            raise DataImportError(self.path, "", f"{key!r} is missing or not a list")
        return value

    def _index_images(self, images) -> None:
        for k, img in enumerate(self._list(images, "images")):
            try:
                image_id = require(img, "id", int, f"images[{k}]")
                require(img, "file_name", str, f"image {image_id}")
                for key in ("width", "height"):
                    if require(img, key, int, f"image {image_id}") <= 0:
                        raise BadInput(f"image {image_id} has {key} {img[key]}")
                if image_id in self.images:
                    raise BadInput(f"image id {image_id} appears twice")
            except BadInput as e:
                self.reporter.bad(self.path, f"images[{k}]", str(e))
                continue
            self.images[image_id] = img

    def _index_categories(self, categories) -> None:
        for k, cat in enumerate(self._list(categories, "categories")):
            try:
                cat_id = require(cat, "id", int, f"categories[{k}]")
                require(cat, "name", str, f"category {cat_id}")
                if cat_id in self.categories:
                    raise BadInput(f"category id {cat_id} appears twice")
            except BadInput as e:
                # A category the file cannot define makes every later reference ambiguous: stop.
                raise DataImportError(self.path, f"categories[{k}]", str(e)) from None
            self.categories[cat_id] = cat
        self.categories = dict(sorted(self.categories.items()))

    def _index_annotations(self, annotations) -> None:
        for k, ann in enumerate(self._list(annotations, "annotations")):
            item = f"annotation {ann.get('id', f'[{k}]')}" if isinstance(ann, dict) else f"annotations[{k}]"
            try:
                require(ann, "id", int, item)
                image_id = require(ann, "image_id", int, item)
                cat_id = require(ann, "category_id", int, item)
                if image_id not in self.images:
                    raise BadInput(f"unknown image_id {image_id}")
                if cat_id not in self.categories:
                    raise BadInput(f"unknown category_id {cat_id}")
                require(ann, "bbox", list, item)
            except BadInput as e:
                self.reporter.bad(self.path, item, str(e))
                continue
            self.annotations.setdefault(image_id, []).append(ann)

    @property
    def category_names(self) -> list[str]:
        return [c["name"] for c in self.categories.values()]

    def objects(self, image_id: int, tolerance: float = BOX_TOLERANCE) -> tuple[list[dict], dict[int, int]]:
        """The image's objects as records, and annotation id → object index (for referring expressions)."""
        img = self.images[image_id]
        width, height = img["width"], img["height"]
        objects, index = [], {}
        for ann in self.annotations.get(image_id, []):
            item = f"annotation {ann['id']} (image {image_id})"
            try:
                x, y, w, h = check_xywh(ann["bbox"], item)
                box = check_box([x, y, x + w, y + h], width, height, "bbox as xyxy", tolerance)
                obj = {"box": box, "category": self.categories[ann["category_id"]]["name"],
                       "category_id": ann["category_id"], "source_id": ann["id"],
                       "iscrowd": int(ann.get("iscrowd", 0))}
                if "area" in ann:
                    obj["area"] = float(ann["area"])
                seg = ann.get("segmentation")
                if seg:  # absent or empty: a box-only annotation
                    obj["mask"] = mask_png(coco_mask(seg, height, width))
            except BadInput as e:
                self.reporter.bad(self.path, item, str(e))
                continue
            index[ann["id"]] = len(objects)
            objects.append(obj)
        return objects, index

    def load_image(self, image_id: int, images_dir: Path) -> dict | None:
        """The image part of a record, or None (reported) when the file is missing, broken or mis-sized."""
        img = self.images[image_id]
        try:
            data, width, height, reencoded = read_image(images_dir / img["file_name"])
            if (width, height) != (img["width"], img["height"]):
                raise BadInput(f"image file is {width}x{height}, the JSON says {img['width']}x{img['height']}")
        except BadInput as e:
            n = len(self.annotations.get(image_id, []))
            self.reporter.bad(self.path, f"image {image_id} ({img['file_name']})",
                              f"{e}; skipped with its {n} annotations")
            return None
        self.reporter.report.reencoded_images += reencoded
        return {"id": str(image_id), "image": data, "width": width, "height": height,
                "file_name": img["file_name"], "source_id": image_id}


def check_xywh(bbox, item: str) -> tuple[float, float, float, float]:
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        raise BadInput(f"bbox {bbox!r} is not 4 numbers [x, y, width, height]")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise BadInput(f"bbox {bbox!r} has negative width or height")
    return x, y, w, h


def _captions_by_image(captions: CocoInstances, reporter: Reporter, known: set[int]) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {}
    for k, ann in enumerate(captions._list(captions.raw.get("annotations"), "annotations")):
        item = f"caption {ann.get('id', f'[{k}]')}" if isinstance(ann, dict) else f"annotations[{k}]"
        try:
            image_id = require(ann, "image_id", int, item)
            require(ann, "caption", str, item)
            if image_id not in known:
                raise BadInput(f"unknown image_id {image_id}")
        except BadInput as e:
            reporter.bad(captions.path, item, str(e))
            continue
        by_image.setdefault(image_id, []).append(ann)
    return by_image


def import_coco(instances: str | os.PathLike | None, images: str | os.PathLike, out: str | os.PathLike, *,
                captions: str | os.PathLike | None = None, skip_bad: bool = False,
                box_tolerance: float = BOX_TOLERANCE, dataset: str = "coco") -> ImportReport:
    """Import COCO ``instances`` (and/or ``captions``) JSON with image files under ``images`` into a
    new store at ``out``. Either JSON may be None, not both. Records follow the instances file's image
    order, then images only the captions file lists."""
    if instances is None and captions is None:
        raise ValueError("import_coco needs an instances JSON, a captions JSON, or both")
    kind = "coco" if instances is not None else "coco_captions"
    report = ImportReport(kind=kind, out=str(out))
    reporter = Reporter(report, skip_bad)
    images_dir = Path(images)
    inst = CocoInstances(instances, reporter) if instances is not None else None
    caps = CocoInstances(captions, reporter, need_annotations=False) if captions is not None else None

    order: dict[int, CocoInstances] = {}  # image id -> the file whose entry describes it
    for source in (inst, caps):
        for image_id in (source.images if source else {}):
            order.setdefault(image_id, source)
    caption_anns = _captions_by_image(caps, reporter, set(order)) if caps else {}

    meta = {
        "dataset": dataset,
        "categories": inst.category_names if inst else [],
        "category_ids": list(inst.categories) if inst else [],
        "supercategories": [c.get("supercategory", "") for c in inst.categories.values()] if inst else [],
        "provenance": {
            "importer": "unitok.data.importers.coco.import_coco",
            "sources": {k: resolve(v) for k, v in
                        (("instances", instances), ("captions", captions), ("images", images)) if v is not None},
            "options": {"skip_bad": skip_bad, "box_tolerance": box_tolerance},
        },
    }

    def records() -> Iterator[dict]:
        for image_id, source in order.items():
            record = source.load_image(image_id, images_dir)
            if record is None:
                continue
            if inst is not None and image_id in inst.images:  # else not annotated, which is not "no objects"
                record["objects"] = inst.objects(image_id, box_tolerance)[0]
            if caps is not None:
                anns = caption_anns.get(image_id, [])
                record["captions"] = [a["caption"] for a in anns]
                record["caption_ids"] = [a.get("id") for a in anns]
            yield record

    return write_records(out, meta, records(), report)


def import_coco_captions(captions: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike, *,
                         skip_bad: bool = False, dataset: str = "coco_captions") -> ImportReport:
    """Import a COCO captions JSON alone (one record per image, ``captions`` only)."""
    return import_coco(None, images, out, captions=captions, skip_bad=skip_bad, dataset=dataset)

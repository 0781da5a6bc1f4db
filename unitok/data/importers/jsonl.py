"""Generic JSON Lines → records: a user's own data in the record schema, one object per line.

Each line is an object with ``image`` (a path, relative to ``images`` or else to the JSONL file's
folder) and any record fields. The fields the tasks read are checked; anything else is kept as is.

    {"image": "a.png", "id": "a", "captions": ["two cats"],
     "objects": [{"box": [x0, y0, x1, y1], "category": "cat", "mask": "a_cat0.png"}],
     "refs": [{"expression": "the left cat", "object": 0}],
     "regions": [{"box": [...], "description": "a sleeping cat"}],
     "vqa": [{"question": "how many cats?", "answer": "2", "type": "number"}],
     "segmentation": "a_seg.png", "depth": "a_depth.png"}

Boxes are pixel xyxy (pixel-edge convention). ``mask`` / ``segmentation`` / ``depth`` are paths to
PNG files (single channel; depth 16-bit millimetres); masks are stored as L PNG, 255 = object. A
ref or region that names an ``object`` but no ``box`` takes the object's box.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .common import BOX_TOLERANCE, BadInput, check_box, mask_png, read_image, read_map, require, resolve, write_records
from .report import DataImportError, ImportReport, Reporter

_RESERVED = ("image", "id", "width", "height", "objects", "captions", "refs", "regions", "vqa",
             "segmentation", "depth")


class _LineParser:
    def __init__(self, base: Path, categories: list[str] | None, tolerance: float):
        self.base = base
        self.fixed = categories is not None
        self.categories: list[str] = list(categories or [])
        self._new: list[str] = []  # categories first seen on the current line, kept only if it imports
        self.tolerance = tolerance

    def _path(self, value: Any, what: str) -> Path:
        if not isinstance(value, str) or not value:
            raise BadInput(f"{what} is {value!r}, expected a file path")
        return self.base / value

    def _category(self, name: Any, what: str) -> str:
        if not isinstance(name, str):
            raise BadInput(f"{what} is {name!r}, expected a string")
        if name not in self.categories and name not in self._new:
            if self.fixed:
                raise BadInput(f"{what} {name!r} is not one of the given categories")
            self._new.append(name)
        return name

    def commit(self) -> None:
        self.categories.extend(self._new)
        self._new = []

    def record(self, obj: Any, default_id: str) -> tuple[dict, bool]:
        self._new = []
        if not isinstance(obj, dict):
            raise BadInput(f"line is a {type(obj).__name__}, expected an object")
        image, width, height, reencoded = read_image(self._path(obj.get("image"), "image"))
        for key, actual in (("width", width), ("height", height)):
            if key in obj and obj[key] != actual:
                raise BadInput(f"{key} {obj[key]!r} but the image file's is {actual}")
        rid = obj.get("id", default_id)
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise BadInput(f"id {rid!r} is not a string or integer")
        record = {k: v for k, v in obj.items() if k not in _RESERVED}
        record.update({"id": str(rid), "image": image, "width": width, "height": height})
        if "objects" in obj:
            record["objects"] = [self._object(o, width, height, f"objects[{k}]")
                                 for k, o in enumerate(require(obj, "objects", list, "line"))]
        objects = record.get("objects", [])
        if "captions" in obj:
            caps = require(obj, "captions", list, "line")
            if not all(isinstance(c, str) for c in caps):
                raise BadInput("captions must be a list of strings")
            record["captions"] = caps
        if "refs" in obj:
            record["refs"] = [self._linked(r, objects, width, height, f"refs[{k}]", "expression")
                              for k, r in enumerate(require(obj, "refs", list, "line"))]
        if "regions" in obj:
            record["regions"] = [self._linked(r, objects, width, height, f"regions[{k}]", "description")
                                 for k, r in enumerate(require(obj, "regions", list, "line"))]
        if "vqa" in obj:
            record["vqa"] = [self._vqa(q, f"vqa[{k}]") for k, q in enumerate(require(obj, "vqa", list, "line"))]
        if "segmentation" in obj:
            record["segmentation"] = self._segmentation(obj["segmentation"], width, height)
        if "depth" in obj:
            record["depth"] = read_map(self._path(obj["depth"], "depth"), width, height, "depth", depth=True)
        return record, reencoded

    def _object(self, o: Any, width: int, height: int, what: str) -> dict:
        box = check_box(require(o, "box", list, what), width, height, f"{what}.box", self.tolerance)
        out = {**o, "box": box, "category": self._category(require(o, "category", str, what), f"{what}.category")}
        if "mask" in o:
            png = read_map(self._path(o["mask"], f"{what}.mask"), width, height, f"{what}.mask")
            out["mask"] = mask_png(_decode_l(png) > 0)
        return out

    def _linked(self, r: Any, objects: list[dict], width: int, height: int, what: str, text_key: str) -> dict:
        require(r, text_key, str, what)
        out = dict(r)
        if "object" in r:
            index = require(r, "object", int, what)
            if not 0 <= index < len(objects):
                raise BadInput(f"{what}.object {index} but the line has {len(objects)} objects")
            out.setdefault("box", objects[index]["box"])
            if text_key == "description":
                out.setdefault("category", objects[index]["category"])
        if "box" not in out:
            raise BadInput(f"{what} has neither 'box' nor 'object'")
        out["box"] = check_box(out["box"], width, height, f"{what}.box", self.tolerance)
        return out

    def _vqa(self, q: Any, what: str) -> dict:
        require(q, "question", str, what)
        require(q, "answer", str, what)
        if "type" in q:
            require(q, "type", str, what)
        if "answers" in q:
            answers = require(q, "answers", list, what)
            if not all(isinstance(a, str) for a in answers):
                raise BadInput(f"{what}.answers must be a list of strings")
        return dict(q)

    def _segmentation(self, value: Any, width: int, height: int) -> bytes:
        png = read_map(self._path(value, "segmentation"), width, height, "segmentation")
        top = int(_decode_l(png).max())
        if self.fixed and top > len(self.categories):
            raise BadInput(f"segmentation has class index {top} but there are {len(self.categories)} categories "
                           "(0 = background, k = categories[k-1])")
        return png


def _decode_l(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img)


def import_jsonl(path: str | os.PathLike, out: str | os.PathLike, *, images: str | os.PathLike | None = None,
                 categories: list[str] | None = None, dataset: str | None = None, skip_bad: bool = False,
                 box_tolerance: float = BOX_TOLERANCE) -> ImportReport:
    """Import a JSONL file (one record per line) into a new store at ``out``.

    ``categories`` fixes the category list (an object of another category is bad input, and
    segmentation class k means ``categories[k-1]``); without it categories are listed in order of
    first appearance. Bad lines name their line number.
    """
    path = Path(path)
    report = ImportReport(kind="jsonl", out=str(out))
    reporter = Reporter(report, skip_bad)
    if not path.is_file():
        raise DataImportError(path, "", "file not found")
    parser = _LineParser(Path(images) if images is not None else path.parent, categories, box_tolerance)
    meta = {
        "dataset": dataset or path.stem,
        "categories": parser.categories,  # filled while lines are read when not given
        "provenance": {
            "importer": "unitok.data.importers.jsonl.import_jsonl",
            "sources": {"jsonl": resolve(path), "images": resolve(parser.base)},
            "options": {"skip_bad": skip_bad, "categories_given": categories is not None,
                        "box_tolerance": box_tolerance},
        },
    }

    def records() -> Iterator[dict]:
        ids: set[str] = set()
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    try:
                        obj = json.loads(raw.decode("utf-8"))
                    except UnicodeDecodeError as e:
                        raise BadInput(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
                    except json.JSONDecodeError as e:
                        raise BadInput(f"malformed JSON at column {e.colno} ({e.msg})") from None
                    record, reencoded = parser.record(obj, f"{path.stem}-{lineno}")
                    if record["id"] in ids:
                        raise BadInput(f"id {record['id']!r} repeats an earlier line's")
                except BadInput as e:
                    reporter.bad(path, f"line {lineno}", str(e))
                    continue
                parser.commit()
                ids.add(record["id"])
                report.reencoded_images += reencoded
                yield record

    return write_records(out, meta, records(), report)

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

A *question line* (a ``question`` key, no ``vqa`` list) is one question of an image, the flat form
many VQA-style sets ship in:

    {"image": "a.png", "question": "how many cats?", "answer": "2", "question_type": "count"}

Question lines with the same image become one record, with the questions in ``vqa`` in line order
(the native form, as the VQA v2 importer writes it), so an image is stored once. In a question line
the record fields (``id``, ``width``, ``height``, ``objects``, ``captions``, ``refs``, ``regions``,
``segmentation``, ``depth``) belong to the image and must agree between its lines; every other key
belongs to the question. Such a record's default id is ``<file stem>-<its first line>``.

When any record has questions, the metadata lists the answer vocabulary (``answers``: every ``answer``,
most frequent first, for ``choices: meta:answers``) and ``answer_types`` (the ``type`` values, in order
of first appearance), as the VQA v2 importer does.
"""
from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .common import (BOX_TOLERANCE, BadInput, check_box, format_hint, guess_format, mask_png, read_image, read_map,
                     require, resolve, write_records)
from .report import DataImportError, ImportReport, Reporter

_RESERVED = ("image", "id", "width", "height", "objects", "captions", "refs", "regions", "vqa",
             "segmentation", "depth")
# In a question line, these are the image's (shared by its lines); every other key is the question's.
_IMAGE_FIELDS = tuple(k for k in _RESERVED if k not in ("image", "vqa"))


class _QuestionGroup:
    """The question lines of one image, merged into one record's worth of fields."""

    def __init__(self, image: str, lineno: int):
        self.image = image
        self.lines: list[int] = [lineno]  # first line first
        self.fields: dict[str, Any] = {}  # the image's fields, as the lines give them
        self.given: dict[str, int] = {}  # field -> the line that first gave it
        self.questions: list[dict] = []

    def add(self, lineno: int, obj: dict, question: dict) -> None:
        """Merge one line; a record field that differs from an earlier line's is that line's problem."""
        for key in _IMAGE_FIELDS:
            if key in obj and key in self.fields and obj[key] != self.fields[key]:
                raise BadInput(f"{key} {_short(obj[key])} differs from {_short(self.fields[key])} on line "
                               f"{self.given[key]}, a question of the same image ({self.image})")
        if lineno != self.lines[0]:
            self.lines.append(lineno)
        for key in _IMAGE_FIELDS:
            if key in obj and key not in self.fields:
                self.fields[key], self.given[key] = obj[key], lineno
        self.questions.append(question)

    def record_object(self) -> dict:
        return {"image": self.image, **self.fields, "vqa": self.questions}

    def item(self) -> str:
        """How a report names the group: its line(s)."""
        if len(self.lines) == 1:
            return f"line {self.lines[0]}"
        more = f" and {len(self.lines) - 4} more" if len(self.lines) > 4 else ""
        return f"lines {', '.join(map(str, self.lines[:4]))}{more} (the questions of {self.image})"


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


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
            record["vqa"] = [self.question(q, f"vqa[{k}]") for k, q in enumerate(require(obj, "vqa", list, "line"))]
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

    def question(self, q: Any, what: str) -> dict:
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


def _refuse_json_document(path: Path) -> None:
    """Line 1 is not JSON on its own: if the whole file is one JSON document (COCO, VQA v2, ...), say
    which importer reads it, since every line would otherwise be reported as malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return
    hint = format_hint(path, guess_format(data), ("jsonl",))
    raise DataImportError(path, "", "one JSON document, not JSON Lines (one record object per line)"
                          + (hint or "; write each record as one JSON object on its own line"))


def _decode_l(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img)


def import_jsonl(path: str | os.PathLike, out: str | os.PathLike, *, images: str | os.PathLike | None = None,
                 categories: list[str] | None = None, dataset: str | None = None, skip_bad: bool = False,
                 box_tolerance: float = BOX_TOLERANCE) -> ImportReport:
    """Import a JSONL file (one record per line, or one question per line: see the module docstring)
    into a new store at ``out``.

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

    def parse(raw: bytes, first: bool) -> Any:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise BadInput(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            if first:
                _refuse_json_document(path)
            raise BadInput(f"malformed JSON at column {e.colno} ({e.msg})") from None
        if first and isinstance(obj, dict) and "image" not in obj:  # a data set's JSON file on one line
            hint = format_hint(path, guess_format(obj), ("jsonl",))
            if hint:
                raise DataImportError(path, "", f"one JSON document, not JSON Lines (one record object per line){hint}")
        return obj

    def lines() -> list[tuple[int, dict] | _QuestionGroup]:
        """Every record to write, in order of its first line: a plain line, or a group of question lines."""
        entries: list[tuple[int, dict] | _QuestionGroup] = []
        groups: dict[str, _QuestionGroup] = {}
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = parse(raw, first=not entries and not report.bad)
                    if not (isinstance(obj, dict) and "question" in obj):
                        entries.append((lineno, obj))
                        continue
                    if "vqa" in obj:
                        raise BadInput("has both 'question' (a question line) and 'vqa' (a record's question list)")
                    question = parser.question({k: v for k, v in obj.items() if k not in _RESERVED}, "line")
                    image = parser._path(obj.get("image"), "image")
                    key = os.path.normpath(image)
                    group = groups.get(key)
                    if group is None:
                        group = _QuestionGroup(obj["image"], lineno)
                        group.add(lineno, obj, question)
                        groups[key] = group
                        entries.append(group)
                    else:
                        group.add(lineno, obj, question)
                except BadInput as e:
                    reporter.bad(path, f"line {lineno}", str(e))
        return entries

    answers: Counter[str] = Counter()
    answer_types: dict[str, None] = {}

    def records() -> Iterator[dict]:
        ids: set[str] = set()
        for entry in lines():
            if isinstance(entry, _QuestionGroup):
                first, obj, item = entry.lines[0], entry.record_object(), entry.item()
                skipped = f"; skipped with its {len(entry.questions)} questions"
            else:
                (first, obj), skipped = entry, ""
                item = f"line {first}"
            try:
                record, reencoded = parser.record(obj, f"{path.stem}-{first}")
                if record["id"] in ids:
                    raise BadInput(f"id {record['id']!r} repeats an earlier line's")
            except BadInput as e:
                reporter.bad(path, item, f"{e}{skipped}")
                continue
            parser.commit()
            ids.add(record["id"])
            report.reencoded_images += reencoded
            for q in record.get("vqa", []):
                answers[q["answer"]] += 1
                if "type" in q:
                    answer_types.setdefault(q["type"])
            yield record
        if answers:  # read after the records (write_records): the answer vocabulary, as the VQA importer has it
            meta["answers"] = [a for a, _ in sorted(answers.items(), key=lambda kv: (-kv[1], kv[0]))]
            meta["answer_types"] = list(answer_types)

    return write_records(out, meta, records(), report)

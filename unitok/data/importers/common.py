"""What every importer shares: reading JSON and images with errors that name the file, checking
boxes, decoding COCO masks with pycocotools, and writing records to a store atomically."""
from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..schema import png_bytes
from ..store import StoreWriter
from .report import DataImportError, ImportReport

BOX_TOLERANCE = 1.0  # pixels a box may reach past the image edge (rounding in the source's annotations)


class BadInput(ValueError):
    """One item's problem; the importer turns it into a report entry naming the file and the item."""


# What each source format is, and the command that imports it (for errors that name the right importer).
FORMATS = {
    "coco": ("a COCO instances file", "unitok data import coco --instances {path} --images DIR --out OUT"),
    "coco_captions": ("a COCO captions file",
                      "unitok data import coco_captions --captions {path} --images DIR --out OUT"),
    "vqa_questions": ("a VQA v2 questions file",
                      "unitok data import vqa --questions {path} [--annotations ANNOTATIONS.json] --images DIR --out OUT"),
    "vqa_annotations": ("a VQA v2 annotations file",
                        "unitok data import vqa --questions QUESTIONS.json --annotations {path} --images DIR --out OUT"),
    "refcoco": ("a RefCOCO refs list",
                "unitok data import refcoco --refs {path} --instances INSTANCES.json --images DIR --out OUT"),
    "jsonl": ("JSON Lines (one object per line)", "unitok data import jsonl --path {path} --out OUT"),
}


def guess_format(data: Any) -> str | None:
    """Which of ``FORMATS`` a parsed JSON document looks like, from its top-level keys and first entry."""
    def first(value):
        return value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else {}

    if isinstance(data, list):
        return "refcoco" if {"ref_id", "ann_id", "sentences"} & set(first(data)) else None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("questions"), list):
        return "vqa_questions"
    if isinstance(data.get("refs"), list):
        return "refcoco"
    ann = first(data.get("annotations"))
    if "multiple_choice_answer" in ann or ("question_id" in ann and "answers" in ann):
        return "vqa_annotations"
    if "caption" in ann:
        return "coco_captions"
    if {"bbox", "category_id", "segmentation"} & set(ann):
        return "coco"
    if isinstance(data.get("image"), str):
        return "jsonl"  # one record of the JSON Lines form
    return None


def format_hint(path: str | os.PathLike, kind: str | None, expected: tuple[str, ...] = ()) -> str:
    """``"; it looks like <format>: use `<command>`"``, or "" when the guess is unknown or expected."""
    if kind is None or kind in expected:
        return ""
    what, command = FORMATS[kind]
    return f"; it looks like {what}: use `{command.format(path=path)}`"


def _looks_like_json_lines(text: str) -> bool:
    """Whether the first non-blank line of ``text`` is a whole JSON object on its own."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def load_json(path: str | os.PathLike, *, expected: tuple[str, ...] = ()) -> Any:
    """Parse a whole JSON file; a missing or malformed file raises ``DataImportError`` with line/column.
    A JSON Lines file (``expected`` not including ``"jsonl"``) gets a hint naming the JSONL importer."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataImportError(path, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataImportError(path, "", f"cannot read ({e})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = format_hint(path, "jsonl", expected) if _looks_like_json_lines(text) else ""
        raise DataImportError(path, f"line {e.lineno} column {e.colno}", f"malformed JSON ({e.msg}){hint}") from e


def require(obj: Any, key: str, types: type | tuple[type, ...], what: str) -> Any:
    """``obj[key]`` checked to be of ``types`` (bool is never a number here)."""
    if not isinstance(obj, dict):
        raise BadInput(f"{what} is a {type(obj).__name__}, expected an object")
    if key not in obj:
        raise BadInput(f"{what} has no {key!r}")
    value = obj[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise BadInput(f"{what}.{key} is a bool, expected {_type_names(types)}")
    if not isinstance(value, types):
        raise BadInput(f"{what}.{key} is a {type(value).__name__}, expected {_type_names(types)}")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def read_image(path: Path) -> tuple[bytes, int, int, bool]:
    """Read an image file: ``(bytes, width, height, reencoded)``.

    RGB PNG and JPEG files are stored as their original bytes (no generation loss, no growth);
    anything else (grey, palette, RGBA, other formats) is converted to RGB and re-encoded as PNG.
    The image is fully decoded once here so a truncated file is caught at import, not in training.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"image file {path} not found") from None
    except OSError as e:
        raise BadInput(f"image file {path} cannot be read ({e})") from e
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
            if img.format in ("PNG", "JPEG") and img.mode == "RGB":
                return data, width, height, False
            rgb = np.asarray(img.convert("RGB"))
    except Exception as e:  # PIL raises many types for undecodable data
        raise BadInput(f"image file {path} is not a decodable image ({e})") from e
    return png_bytes(rgb), width, height, True


def read_map(path: Path, width: int, height: int, what: str, *, depth: bool = False) -> bytes:
    """A dense map file (mask, segmentation, depth) as PNG bytes, checked against the image size.

    Masks/segmentations become 8-bit single-channel PNG; depth stays 16-bit (millimetres).
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.size != (width, height):
                raise BadInput(f"{what} {path} is {img.size[0]}x{img.size[1]}, the image is {width}x{height}")
            if depth:
                if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
                    raise BadInput(f"{what} {path} has mode {img.mode}, expected a 16-bit PNG (millimetres)")
                arr = np.asarray(img).astype(np.uint16)
            elif img.mode in ("L", "P"):
                arr = np.asarray(img).astype(np.uint8)  # palette indices are the class indices
            elif img.mode == "1":
                arr = np.asarray(img).astype(np.uint8)
            else:
                raise BadInput(f"{what} {path} has mode {img.mode}, expected a single-channel PNG")
    except BadInput:
        raise
    except FileNotFoundError:
        raise BadInput(f"{what} file {path} not found") from None
    except Exception as e:
        raise BadInput(f"{what} file {path} is not a decodable image ({e})") from e
    return png_bytes(arr)


def check_box(box: Any, width: int, height: int, what: str, tolerance: float = BOX_TOLERANCE) -> list[float]:
    """A pixel xyxy box as floats, inside the image up to ``tolerance`` pixels; else ``BadInput``."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        raise BadInput(f"{what} {box!r} is not 4 numbers")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise BadInput(f"{what} {box!r} is not finite")
    if x1 < x0 or y1 < y0:
        raise BadInput(f"{what} {box!r} has negative size")
    if x0 < -tolerance or y0 < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
        raise BadInput(f"{what} {[x0, y0, x1, y1]} lies outside the {width}x{height} image "
                       f"(tolerance {tolerance:g} px)")
    return [x0, y0, x1, y1]


def coco_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to a bool HxW mask."""
    if isinstance(segmentation, list):
        polygons = segmentation
        for k, poly in enumerate(polygons):
            # pycocotools reads a 4-number list as a box, and fewer than 3 points as garbage.
            if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly)):
                raise BadInput(f"segmentation polygon {k} is not a list of >= 3 (x, y) points")
        if not polygons:
            raise BadInput("segmentation is an empty polygon list")
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if list(size or []) != [height, width]:
            raise BadInput(f"segmentation RLE size {size} differs from the image's [height, width] "
                           f"{[height, width]}")
        if isinstance(counts, list):  # uncompressed RLE (crowd annotations)
            if sum(counts) != height * width:
                raise BadInput(f"segmentation RLE counts sum to {sum(counts)}, expected {height * width}")
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            raise BadInput(f"segmentation RLE counts is a {type(counts).__name__}")
    else:
        raise BadInput(f"segmentation is a {type(segmentation).__name__}, expected polygons or RLE")
    try:
        with warnings.catch_warnings():  # pycocotools' own numpy-2 deprecation, nothing the caller can act on
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = mask_utils.decode(rle)
    except Exception as e:
        raise BadInput(f"segmentation cannot be decoded ({e})") from e
    return np.ascontiguousarray(decoded).astype(bool)


def mask_png(mask: np.ndarray) -> bytes:
    """The record convention for object masks: L PNG, 255 where the object is."""
    return png_bytes(mask.astype(np.uint8) * 255)


def write_records(out: str | os.PathLike, meta: dict, records: Iterable[dict], report: ImportReport) -> ImportReport:
    """Write ``records`` to a new store at ``out``, then ``meta`` (read after the records, so importers
    may fill it while iterating) and ``import_report.json``. A failed import leaves no partial store."""
    out = Path(out)
    created = not out.exists()
    writer = StoreWriter(out, meta)  # refuses an existing store before anything is touched
    try:
        with writer:
            for record in records:
                writer.add(record)
                report.records += 1
            writer.meta.update(meta)
            writer.meta.setdefault("provenance", {})["skipped_bad"] = report.skipped
    except BaseException:
        for name in ("data.mdb", "lock.mdb"):
            (out / name).unlink(missing_ok=True)
        if created:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    report.write()
    return report


def resolve(path: str | os.PathLike) -> str:
    """A source path as provenance records it (absolute, so the store says where it came from)."""
    return str(Path(path).resolve())

"""RefCOCO / RefCOCO+ / RefCOCOg style data → records.

Inputs: a refs list (JSON; the original ``refs(*).p`` pickles hold the same list and must be
converted to JSON first, since an importer should not unpickle files) with ``ref_id``, ``ann_id``,
``image_id``, ``split`` and ``sentences`` [{``sent``, ``sent_id``}], plus the COCO instances JSON the
refs point into. One record per image that has refs: ``objects`` are all the image's instances (so
distractors are present), ``refs`` one entry per sentence with ``expression``, ``object`` (index into
``objects``), ``box`` and the source ids.
"""
from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterator

from .coco import CocoInstances
from .common import BOX_TOLERANCE, BadInput, format_hint, guess_format, load_json, require, resolve, write_records
from .report import DataImportError, ImportReport, Reporter


def _ref_sentences(ref: dict, item: str) -> list[dict]:
    sentences = require(ref, "sentences", list, item)
    if not sentences:
        raise BadInput("has no sentences")
    out = []
    for k, s in enumerate(sentences):
        text = require(s, "sent", str, f"{item}.sentences[{k}]")
        if not text.strip():
            raise BadInput(f"sentences[{k}] is empty")
        out.append({"expression": text, "sent_id": s.get("sent_id")})
    return out


def import_refcoco(refs: str | os.PathLike, instances: str | os.PathLike, images: str | os.PathLike,
                   out: str | os.PathLike, *, split: str | None = None, skip_bad: bool = False,
                   box_tolerance: float = BOX_TOLERANCE, dataset: str = "refcoco") -> ImportReport:
    """Import the refs of ``split`` (all refs when None) into a new store at ``out``."""
    refs, images_dir = Path(refs), Path(images)
    report = ImportReport(kind="refcoco", out=str(out))
    reporter = Reporter(report, skip_bad)
    ref_list = load_json(refs, expected=("refcoco",))
    if isinstance(ref_list, dict) and isinstance(ref_list.get("refs"), list):
        ref_list = ref_list["refs"]
    if not isinstance(ref_list, list):
        raise DataImportError(refs, "", "expected a JSON list of refs (or an object with a 'refs' list)"
                              + format_hint(refs, guess_format(ref_list), ("refcoco",)))
    inst = CocoInstances(instances, reporter)
    ann_image = {a["id"]: image_id for image_id, anns in inst.annotations.items() for a in anns}

    by_image: dict[int, list[dict]] = {}
    splits: dict[str, None] = {}
    for k, ref in enumerate(ref_list):
        item = f"ref {ref.get('ref_id', f'[{k}]')}" if isinstance(ref, dict) else f"refs[{k}]"
        try:
            ref_split = ref.get("split") if isinstance(ref, dict) else None
            if split is not None and ref_split != split:
                continue
            ann_id = require(ref, "ann_id", int, item)
            image_id = require(ref, "image_id", int, item)
            sentences = _ref_sentences(ref, item)
            if ann_id not in ann_image:
                raise BadInput(f"ann_id {ann_id} is not a (valid) annotation of {inst.path}")
            if ann_image[ann_id] != image_id:
                raise BadInput(f"image_id {image_id} but annotation {ann_id} belongs to image {ann_image[ann_id]}")
        except BadInput as e:
            reporter.bad(refs, item, str(e))
            continue
        if ref_split is not None:
            splits.setdefault(ref_split)
        for s in sentences:
            by_image.setdefault(image_id, []).append(
                {**s, "ann_id": ann_id, "ref_id": ref.get("ref_id"), "split": ref_split})

    meta = {
        "dataset": dataset,
        "categories": inst.category_names,
        "category_ids": list(inst.categories),
        "split": split,
        "splits": list(splits),
        "provenance": {
            "importer": "unitok.data.importers.refcoco.import_refcoco",
            "sources": {"refs": resolve(refs), "instances": resolve(instances), "images": resolve(images_dir)},
            "options": {"skip_bad": skip_bad, "split": split, "box_tolerance": box_tolerance},
        },
    }

    def records() -> Iterator[dict]:
        for image_id, sentences in by_image.items():
            record = inst.load_image(image_id, images_dir)
            if record is None:
                continue
            objects, index = inst.objects(image_id, box_tolerance)
            ref_entries, lost = [], set()
            for s in sentences:
                if s["ann_id"] not in index:  # its annotation was reported bad (and skipped) just now
                    if s["ref_id"] not in lost:
                        lost.add(s["ref_id"])
                        reporter.bad(refs, f"ref {s['ref_id']}", f"its annotation {s['ann_id']} was skipped")
                    continue
                obj = index[s["ann_id"]]
                ref_entries.append({"expression": s["expression"], "object": obj, "box": objects[obj]["box"],
                                    "ref_id": s["ref_id"], "sent_id": s["sent_id"], "split": s["split"]})
            if ref_entries:
                yield {**record, "objects": objects, "refs": ref_entries}

    return write_records(out, meta, records(), report)

"""VQA v2 questions (+ annotations) JSON → records, one per image with all its questions in ``vqa``.

Each ``vqa`` entry: ``question``, ``question_id``, and with annotations ``answer`` (the
``multiple_choice_answer``), ``type`` (``answer_type``: yes/no, number, other), ``answers`` (all ten
human answers, for the VQA accuracy metric) and ``question_type``. The metadata lists the answer
vocabulary (``answers``, most frequent first) for closed-vocabulary decoding.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .common import BadInput, format_hint, guess_format, load_json, read_image, require, resolve, write_records
from .report import DataImportError, ImportReport, Reporter

# The file names of the official release, e.g. COCO_val2014_000000000042.jpg.
DEFAULT_IMAGE_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"


def _entries(path: Path, data, key: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        hint = format_hint(path, guess_format(data), (f"vqa_{key}",))
        raise DataImportError(path, "", f"expected an object with a {key!r} list (VQA v2 format){hint}")
    return data[key]


def _annotation(ann: dict, item: str) -> dict:
    require(ann, "question_id", int, item)
    require(ann, "image_id", int, item)
    answer = require(ann, "multiple_choice_answer", str, item)
    entry = {"answer": answer}
    if "answer_type" in ann:
        entry["type"] = require(ann, "answer_type", str, item)
    if "question_type" in ann:
        entry["question_type"] = require(ann, "question_type", str, item)
    if "answers" in ann:
        answers = require(ann, "answers", list, item)
        entry["answers"] = [require(a, "answer", str, f"{item}.answers[{k}]") for k, a in enumerate(answers)]
    return entry


def import_vqa(questions: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike, *,
               annotations: str | os.PathLike | None = None, image_pattern: str | None = None,
               skip_bad: bool = False, dataset: str = "vqa_v2") -> ImportReport:
    """Import VQA v2 ``questions`` (and ``annotations``, absent for test splits) with images under
    ``images`` into a new store at ``out``.

    ``image_pattern`` names an image file from ``{image_id}`` and ``{data_subtype}`` (the questions
    file's); the default is the official ``COCO_{data_subtype}_{image_id:012d}.jpg``.
    """
    questions, images_dir = Path(questions), Path(images)
    report = ImportReport(kind="vqa", out=str(out))
    reporter = Reporter(report, skip_bad)
    qdata = load_json(questions, expected=("vqa_questions",))
    qlist = _entries(questions, qdata, "questions")
    subtype = qdata.get("data_subtype")
    pattern = image_pattern or DEFAULT_IMAGE_PATTERN
    if "{data_subtype" in pattern and not isinstance(subtype, str):
        raise DataImportError(questions, "", "no 'data_subtype' to name image files; pass image_pattern")

    answers_by_qid: dict[int, dict] = {}
    if annotations is not None:
        annotations = Path(annotations)
        entries = _entries(annotations, load_json(annotations, expected=("vqa_annotations",)), "annotations")
        for k, ann in enumerate(entries):
            item = f"question {ann.get('question_id', f'[{k}]')}" if isinstance(ann, dict) else f"annotations[{k}]"
            try:
                entry = _annotation(ann, item)
                if ann["question_id"] in answers_by_qid:
                    raise BadInput("annotated twice")
            except BadInput as e:
                reporter.bad(annotations, item, str(e))
                continue
            answers_by_qid[ann["question_id"]] = {**entry, "image_id": ann["image_id"]}

    by_image: dict[int, list[dict]] = {}
    seen: set[int] = set()
    for k, q in enumerate(qlist):
        item = f"question {q.get('question_id', f'[{k}]')}" if isinstance(q, dict) else f"questions[{k}]"
        try:
            qid = require(q, "question_id", int, item)
            image_id = require(q, "image_id", int, item)
            text = require(q, "question", str, item)
            if qid in seen:
                raise BadInput("appears twice")
            entry = {"question": text, "question_id": qid}
            if annotations is not None:
                ann = answers_by_qid.get(qid)
                if ann is None:
                    raise BadInput(f"has no annotation in {annotations}")
                if ann["image_id"] != image_id:
                    raise BadInput(f"image_id {image_id} but its annotation says {ann['image_id']}")
                entry.update({k: v for k, v in ann.items() if k != "image_id"})
        except BadInput as e:
            reporter.bad(questions, item, str(e))
            continue
        seen.add(qid)
        by_image.setdefault(image_id, []).append(entry)
    for qid in sorted(set(answers_by_qid) - seen):
        reporter.bad(annotations, f"question {qid}", f"annotation for a question not in {questions}")

    meta = {
        "dataset": dataset,
        "categories": [],
        "answers": [],
        "answer_types": [],
        "task_type": qdata.get("task_type"),
        "data_subtype": subtype,
        "provenance": {
            "importer": "unitok.data.importers.vqa.import_vqa",
            "sources": {k: resolve(v) for k, v in
                        (("questions", questions), ("annotations", annotations), ("images", images_dir))
                        if v is not None},
            "options": {"skip_bad": skip_bad, "image_pattern": pattern},
        },
    }

    def records() -> Iterator[dict]:
        answer_counts: Counter[str] = Counter()
        types: dict[str, None] = {}
        for image_id, entries in by_image.items():
            file_name = pattern.format(image_id=image_id, data_subtype=subtype)
            try:
                data, width, height, reencoded = read_image(images_dir / file_name)
            except BadInput as e:
                reporter.bad(questions, f"image {image_id} ({file_name})",
                             f"{e}; skipped with its {len(entries)} questions")
                continue
            report.reencoded_images += reencoded
            for entry in entries:
                if "answer" in entry:
                    answer_counts[entry["answer"]] += 1
                if "type" in entry:
                    types.setdefault(entry["type"])
            yield {"id": str(image_id), "image": data, "width": width, "height": height,
                   "file_name": file_name, "source_id": image_id, "vqa": entries}
        meta["answers"] = [a for a, _ in sorted(answer_counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        meta["answer_types"] = list(types)

    return write_records(out, meta, records(), report)

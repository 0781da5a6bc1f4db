"""Importers: public data sets and a user's own data → LMDB record stores.

Contract of every importer ``import_<kind>(sources..., out, *, skip_bad=False, ...) -> ImportReport``:
it writes a new store at ``out`` (refusing an existing one), records the sources and options under
``meta["provenance"]``, and reports every bad input item: by default the first one raises
``DataImportError`` naming the file and the item (and no partial store is left); with
``skip_bad=True`` bad items are skipped, counted and listed in the returned report and in
``<out>/import_report.json``. ``import_dataset(kind, **kwargs)`` dispatches by kind name.
"""
from __future__ import annotations

from collections.abc import Callable

from .coco import import_coco, import_coco_captions
from .jsonl import import_jsonl
from .refcoco import import_refcoco
from .report import REPORT_NAME, BadItem, DataImportError, ImportReport
from .vqa import import_vqa

IMPORTERS: dict[str, Callable[..., ImportReport]] = {
    "coco": import_coco,
    "coco_captions": import_coco_captions,
    "vqa": import_vqa,
    "refcoco": import_refcoco,
    "jsonl": import_jsonl,
}


def import_dataset(kind: str, **kwargs) -> ImportReport:
    """Run the importer named ``kind`` with ``kwargs`` (its own keyword arguments)."""
    try:
        importer = IMPORTERS[kind]
    except KeyError:
        raise ValueError(f"unknown import kind {kind!r}; known kinds: {', '.join(IMPORTERS)}") from None
    return importer(**kwargs)


__all__ = ["IMPORTERS", "REPORT_NAME", "BadItem", "DataImportError", "ImportReport", "import_coco",
           "import_coco_captions", "import_dataset", "import_jsonl", "import_refcoco", "import_vqa"]

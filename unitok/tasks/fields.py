"""Field paths: how a task spec's paths (``target.field``, ``inputs.*``, template placeholders, ``each``,
``where``) read a record and its ``each`` item. Shared by the example builder and by ``unitok tasks check``,
which looks at a store's records without building examples (so without torch).
"""
from __future__ import annotations

from typing import Any

from .formats import FORMATS
from .spec import TaskSpec

_MISSING = object()


def path_parts(path: str) -> list[str]:
    """``captions[0].text`` and ``captions.0.text`` both walk: captions, 0, text."""
    return path.replace("[", ".").replace("]", "").split(".")


def resolve(path: str, record: dict, item: Any = None) -> Any:
    """Look ``path`` up in the ``each`` item first, then in the record. Dots walk nested dicts, and an
    integer part (``captions.0``, ``captions[0]``, ``captions[-1]``) indexes a list."""
    for scope in ((item, record) if isinstance(item, dict) else (record,)):
        value = scope
        for part in path_parts(path):
            if isinstance(value, dict):
                value = value.get(part, _MISSING)
            elif isinstance(value, (list, tuple)) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
                value = value[int(part)]
            else:
                value = _MISSING
            if value is _MISSING:
                break
        if value is not _MISSING:
            return value
    if path == "item" and item is not None:
        return item
    raise KeyError(path)


def matches(where: dict[str, Any] | None, record: dict, item: Any = None) -> bool:
    """The spec's ``where`` filter: every field path has the given value (or one of a list of values);
    a missing field does not match. Values compare as they are or as text (``2`` matches ``"2"``)."""
    for path, want in (where or {}).items():
        try:
            value = resolve(path, record, item)
        except KeyError:
            return False
        options = want if isinstance(want, list) else [want]
        if not any(value == w or str(value) == str(w) for w in options):
            return False
    return True


def missing_fields(spec: TaskSpec, records: list[dict]) -> list[tuple[str, str]]:
    """The field paths ``spec`` reads that none of ``records`` has, as ``(spec field, path)`` pairs, e.g.
    ``("prompt", "colour")`` for a template's ``{colour}``: what ``tasks check`` reports before a run
    fails on it. Paths are looked up as a build does (the ``each`` item first, then the record) over
    the examples that pass ``where``; placeholders the target format fills itself (``{masked}``) and a
    ``{region}`` drawn from ``inputs.region`` are not record fields. No example: nothing to judge."""
    if not records:
        return []
    supplied = set(FORMATS.get(spec.target.format).prompt_fields) | ({"region"} if spec.inputs.region else set())
    wanted = [("prompt", p) for p in sorted(spec.placeholders() - supplied)]
    wanted += [("target.field", spec.target.field)]
    wanted += [("target.reference", spec.target.reference)] if spec.target.reference else []
    wanted += [(f"inputs.{slot}", getattr(spec.inputs, slot)) for slot in ("image", "image2", "video", "region")
               if getattr(spec.inputs, slot)]
    examples = []
    for record in records:
        try:
            items = [None] if spec.each is None else list(resolve(spec.each, record))
        except (KeyError, TypeError):
            continue
        examples += [(record, item) for item in items]
    if not examples:
        return [("each", spec.each)]

    def has(path: str, pairs) -> bool:
        for record, item in pairs:
            try:
                resolve(path, record, item)
                return True
            except KeyError:
                pass
        return False

    missing = [("where", path) for path in (spec.where or {}) if not has(path, examples)]
    kept = [(r, it) for r, it in examples if matches(spec.where, r, it)] if spec.where else examples
    if not kept:  # no example passes the filter: the fields cannot be judged (a missing filter field is named)
        return missing
    return missing + [(field, path) for field, path in wanted if not has(path, kept)]

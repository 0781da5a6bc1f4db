"""Looking at a store: ``inspect`` (what is in it), ``show`` (one record drawn to a PNG), ``stats``
(distributions). Behind ``unitok data inspect|show|stats``; PIL only, no plotting libraries."""
from __future__ import annotations

import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .schema import to_rgb
from .store import RecordStore

# Distinct, readable on dark and light backgrounds; object k gets PALETTE[k % len(PALETTE)].
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195)]


def _records(store: RecordStore, limit: int | None) -> Iterator[dict]:
    n = len(store) if limit is None else min(limit, len(store))
    for i in range(n):
        yield store[i]


def _kind(value: Any) -> str:
    """A short type name; bytes say which image format they hold."""
    if isinstance(value, (bytes, bytearray)):
        if value[:8] == b"\x89PNG\r\n\x1a\n":
            return "png"
        if value[:2] == b"\xff\xd8":
            return "jpeg"
        return "bytes"
    if isinstance(value, list):
        inner = sorted({_kind(v) for v in value})
        return f"list[{'|'.join(inner)}]" if inner else "list"
    if isinstance(value, dict):
        return "map"
    if value is None:
        return "null"
    return type(value).__name__


def _short(value: Any, width: int = 100) -> str:
    text = json.dumps(value, default=lambda v: f"<{len(v)} bytes>" if isinstance(v, bytes) else str(v))
    return text if len(text) <= width else text[: width - 3] + "..."


def inspect(path: str | os.PathLike, *, limit: int | None = None) -> str:
    """What a store holds: record count, every field (and sub-field of lists of maps) with its types, how
    many records have it and, for a list, how many items the lists hold in all (captions, questions, not
    only the records that have them), categories and the rest of the metadata. ``limit`` scans only the
    first records of a large store."""
    store = RecordStore(path, check_world=False)  # a store of an older world version can be inspected
    fields: dict[str, tuple[Counter, int]] = {}  # field -> (types, records having it)
    items: dict[str, tuple[Counter, int]] = {}  # list.subfield -> (types, items having it)
    list_sizes: Counter = Counter()  # field or list.subfield -> items of its lists, in all
    things: Counter = Counter()  # ... that are not numbers: 0 for boxes and other vectors
    scanned = 0
    for record in _records(store, limit):
        scanned += 1
        for key, value in record.items():
            types, n = fields.get(key, (Counter(), 0))
            types[_kind(value)] += 1
            fields[key] = (types, n + 1)
            if isinstance(value, list):
                list_sizes[key] += len(value)
                things[key] += sum(not isinstance(v, (int, float)) for v in value)
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for entry in value:
                    for sub, subvalue in entry.items():
                        name = f"{key}[].{sub}"
                        types, n = items.get(name, (Counter(), 0))
                        types[_kind(subvalue)] += 1
                        items[name] = (types, n + 1)
                        if isinstance(subvalue, list):
                            list_sizes[name] += len(subvalue)
                            things[name] += sum(not isinstance(v, (int, float)) for v in subvalue)
    meta = store.meta
    lines = [f"store      {store.path}",
             f"dataset    {meta.get('dataset', '?')}",
             f"records    {len(store)}" + (f" (scanned the first {scanned})" if scanned < len(store) else ""),
             f"schema     v{meta.get('schema_version')}", "",
             "fields (records having it / scanned; a list's items in all those records):"]

    def count(name: str) -> str:  # lists of things (captions, questions) are counted, of numbers (boxes) not
        numbers_only = list_sizes[name] and not things[name]
        return f"{list_sizes[name]} items" if name in list_sizes and not numbers_only else ""

    for key, (types, n) in fields.items():
        lines.append(f"  {key:<28} {n:>7}/{scanned:<7} {count(key):>13}  {', '.join(t for t, _ in types.most_common())}")
    if items:
        lines.append("")
        lines.append("list entries (entries having it / all entries of that list; a list's items in all):")
        for name, (types, n) in items.items():
            total = list_sizes[name.split("[]")[0]]
            lines.append(f"  {name:<28} {n:>7}/{total:<7} {count(name):>13}  {', '.join(t for t, _ in types.most_common())}")
    categories = meta.get("categories") or []
    lines += ["", f"categories ({len(categories)}): " + (", ".join(map(str, categories[:60]))
                                                         + (" ..." if len(categories) > 60 else ""))]
    rest = {k: v for k, v in meta.items() if k not in ("categories", "dataset", "schema_version", "count")}
    if rest:
        lines += ["", "metadata:"] + [f"  {k}: {_short(v)}" for k, v in rest.items()]
    store.close()
    return "\n".join(lines)


# --- show -----------------------------------------------------------------------------------------------


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _segmentation_panel(data: bytes) -> Image.Image:
    labels = np.asarray(_decode(data)).astype(np.int64)
    colours = np.array([(0, 0, 0)] + PALETTE * (1 + int(labels.max()) // len(PALETTE)), dtype=np.uint8)
    return Image.fromarray(colours[labels])


def _depth_panel(data: bytes) -> Image.Image:
    depth = np.asarray(_decode(data)).astype(np.float64)
    valid = depth > 0
    grey = np.zeros(depth.shape, np.uint8)
    if valid.any():
        lo, hi = depth[valid].min(), depth[valid].max()
        # Near is bright; 0 (no measurement) stays black.
        grey[valid] = (255 - 215 * (depth[valid] - lo) / max(hi - lo, 1e-9)).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _text_lines(record: dict) -> list[str]:
    lines = [(f"{record.get('id', '?')}  {record.get('width')}x{record.get('height')}  "
              f"{len(record.get('objects', []))} objects")]
    lines += [f"caption: {c}" for c in record.get("captions", [])[:3]]
    lines += [f"ref -> #{r.get('object', '?')}: {r.get('expression')}" for r in record.get("refs", [])[:4]]
    lines += [f"region: {r.get('description')}" for r in record.get("regions", [])[:3]]
    lines += [f"Q: {q.get('question')}  A: {q.get('answer')}" for q in record.get("vqa", [])[:4]]
    return lines


def show(path: str | os.PathLike, index: int, out_png: str | os.PathLike, scale: int = 4, *,
         max_side: int = 1024) -> Path:
    """Draw record ``index``: the image with object masks and labelled boxes, segmentation and depth
    as side panels when present, and its text (captions, refs, QA) below. ``scale`` magnifies small
    images (nearest neighbour) up to ``max_side`` pixels; returns the written path."""
    store = RecordStore(path, check_world=False)
    if not 0 <= index < len(store):
        raise IndexError(f"{store.path}: index {index} out of range for {len(store)} records")
    record = store[index]
    store.close()
    image = to_rgb(_decode(record["image"]))  # 16-bit images rescaled, not clipped to white
    w, h = image.size
    s = max(1e-3, min(float(scale), max_side / max(w, h)))
    size = (max(1, round(w * s)), max(1, round(h * s)))

    base = np.asarray(image).astype(np.float32)
    objects = record.get("objects", [])
    for k, obj in enumerate(objects):  # translucent masks first, so boxes and labels stay on top
        if isinstance(obj.get("mask"), (bytes, bytearray)):
            mask = np.asarray(_decode(obj["mask"])) > 127
            if mask.shape == base.shape[:2]:
                base[mask] = 0.55 * base[mask] + 0.45 * np.array(PALETTE[k % len(PALETTE)], np.float32)
    canvas = Image.fromarray(base.astype(np.uint8)).resize(size, Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, min(size) // 28))
    for k, obj in enumerate(objects):
        if "box" not in obj:
            continue
        colour = PALETTE[k % len(PALETTE)]
        x0, y0, x1, y1 = (v * s for v in obj["box"])
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=max(1, round(s / 2)))
        label = f"{k}:{obj.get('category', '?')}"
        tx0, ty0, tx1, ty1 = draw.textbbox((x0, y0), label, font=font)
        ty = y0 - (ty1 - ty0) - 2 if y0 - (ty1 - ty0) - 2 >= 0 else y0
        draw.rectangle([x0, ty, x0 + (tx1 - tx0) + 2, ty + (ty1 - ty0) + 2], fill=colour)
        draw.text((x0 + 1, ty - (ty0 - y0) + 1), label, fill=(0, 0, 0), font=font)

    panels = [canvas]
    for key, render in (("segmentation", _segmentation_panel), ("depth", _depth_panel)):
        if isinstance(record.get(key), (bytes, bytearray)):
            panels.append(render(record[key]).resize(size, Image.NEAREST))
    gap = 4
    lines = _text_lines(record)
    line_h = font.getbbox("Ag")[3] + 4
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    out = Image.new("RGB", (max(width, 320), size[1] + gap + line_h * len(lines) + gap), (255, 255, 255))
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width + gap
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((4, size[1] + gap + i * line_h), line, fill=(0, 0, 0), font=font)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    out.save(out_png)
    return out_png


# --- stats ----------------------------------------------------------------------------------------------


def _histogram(title: str, counts: Iterable[tuple[str, int]], width: int = 32, total: int | None = None) -> list[str]:
    counts = list(counts)
    if not counts:
        return [f"{title}: none"]
    top = max(c for _, c in counts) or 1
    total = sum(c for _, c in counts) if total is None else total
    label_w = max(len(str(label)) for label, _ in counts)
    lines = [f"{title} (total {total}):"]
    for label, c in counts:
        bar = "#" * max(c > 0, round(width * c / top))
        lines.append(f"  {label!s:>{label_w}} {c:>8} {100 * c / total:5.1f}% {bar}")
    return lines


def _summary(values: list[float]) -> str:
    if not values:
        return "none"
    a = np.asarray(values, dtype=np.float64)
    return (f"n={a.size} min={a.min():.3g} mean={a.mean():.3g} median={np.median(a):.3g} "
            f"p95={np.percentile(a, 95):.3g} max={a.max():.3g}")


def _binned(values: list[int], cap: int) -> list[tuple[str, int]]:
    c = Counter(min(v, cap) for v in values)
    return [(f">={cap}" if k == cap else str(k), c.get(k, 0)) for k in range(min(c), max(c) + 1)] if c else []


def stats(path: str | os.PathLike, *, limit: int | None = None, top: int = 20) -> str:
    """Distributions over a store: objects per image, categories, relative box sizes, caption and
    expression lengths, VQA answer types and answers, image sizes. ``limit`` scans the first records."""
    store = RecordStore(path, check_world=False)
    per_image, categories, box_sizes, coco_sizes = [], Counter(), Counter(), Counter()
    cap_words, ref_words, refs_per_image = [], [], []
    answer_types, answers, image_sizes = Counter(), Counter(), Counter()
    scanned = 0
    for record in _records(store, limit):
        scanned += 1
        w, h = record.get("width") or 1, record.get("height") or 1
        image_sizes[f"{w}x{h}"] += 1
        objects = record.get("objects")
        if objects is not None:
            per_image.append(len(objects))
        for obj in objects or []:
            categories[str(obj.get("category", "?"))] += 1
            if "box" in obj:
                x0, y0, x1, y1 = obj["box"]
                area = max(0.0, x1 - x0) * max(0.0, y1 - y0)
                # Relative size: sqrt of the box's share of the image, in tenths.
                box_sizes[min(9, int(10 * math.sqrt(area / (w * h))))] += 1
                coco_sizes["small (<32²)" if area < 32 ** 2 else "medium (<96²)" if area < 96 ** 2 else "large"] += 1
        cap_words += [len(c.split()) for c in record.get("captions", [])]
        if "refs" in record:
            refs_per_image.append(len(record["refs"]))
            ref_words += [len(str(r.get("expression", "")).split()) for r in record["refs"]]
        for q in record.get("vqa", []):
            answer_types[str(q.get("type", "?"))] += 1
            answers[str(q.get("answer", "?"))] += 1
    store.close()

    partial = f" (first {scanned} scanned)" if scanned < len(store) else ""
    lines = [f"store {store.path}: {len(store)} records{partial}", ""]
    lines += _histogram("image sizes", image_sizes.most_common(top), total=scanned) + [""]
    if per_image:
        lines += [f"objects per image: {_summary(per_image)}"] + _histogram("objects per image", _binned(per_image, 10))
        lines += [""] + _histogram("categories", categories.most_common(top), total=sum(categories.values()))
        if len(categories) > top:
            lines.append(f"  ... and {len(categories) - top} more categories")
        lines += [""] + _histogram("box size (sqrt of box area / image area)",
                                   [(f"{k / 10:.1f}-{(k + 1) / 10:.1f}", box_sizes.get(k, 0)) for k in range(10)])
        lines += [""] + _histogram("box size (COCO area ranges)", sorted(coco_sizes.items())) + [""]
    if cap_words:
        lines += [f"caption length (words): {_summary(cap_words)}"]
        lines += _histogram("caption length", _binned(cap_words, 30))
        lines.append("")
    if refs_per_image:
        lines += [f"refs per image: {_summary(refs_per_image)}",
                  f"expression length (words): {_summary(ref_words)}", ""]
    if answers:
        lines += _histogram("VQA answer types", answer_types.most_common()) + [""]
        lines += _histogram(f"VQA answers (top {top} of {len(answers)})", answers.most_common(top),
                            total=sum(answers.values())) + [""]
    return "\n".join(lines).rstrip() + "\n"

"""Two-image reasoning (NLVR2-style): a statement about a pair of world images, true or false.

The label is fixed first (odd indices true, so any run of consecutive pairs is balanced), then a
statement with that truth value is chosen from every template the pair can realise, template first so
that no template dominates. Truth is computed from the two object lists, which the record keeps
(``objects``, ``objects2``) so a reader can re-check it.
"""
from __future__ import annotations

from collections import Counter

from .schema import png_bytes
from .world_language import plural
from .world_scene import COLOURS, NUMBER_WORDS, SHAPES, WorldConfig, base_meta, object_records, paint, \
    sample_scene, scene_rng

PAIR_LABELS = ("false", "true")
_PAIR_STREAM = 1
_ATTEMPTS = 20


def _statements(left: list[dict], right: list[dict]) -> list[tuple[str, str, bool]]:
    """(template, statement, truth) for every statement the templates can make about this pair."""
    lshape, rshape = Counter(o["shape"] for o in left), Counter(o["shape"] for o in right)
    lcol, rcol = {o["colour"] for o in left}, {o["colour"] for o in right}
    lcombo, rcombo = {(o["colour"], o["shape"]) for o in left}, {(o["colour"], o["shape"]) for o in right}
    out = [
        ("more", "the left image has more shapes than the right image.", len(left) > len(right)),
        ("more", "the right image has more shapes than the left image.", len(right) > len(left)),
        ("same", "the two images contain the same number of shapes.", len(left) == len(right)),
    ]
    for s in SHAPES:
        out += [
            ("more_of", f"the left image has more {plural(s)} than the right image.", lshape[s] > rshape[s]),
            ("more_of", f"the right image has more {plural(s)} than the left image.", rshape[s] > lshape[s]),
            ("both", f"both images contain a {s}.", lshape[s] > 0 and rshape[s] > 0),
            ("neither", f"neither image contains a {s}.", lshape[s] == 0 and rshape[s] == 0),
        ]
    out += [("both", f"both images contain a {c} shape.", c in lcol and c in rcol) for c in COLOURS]
    out += [("exactly_one", f"exactly one image contains a {c} {s}.", ((c, s) in lcombo) != ((c, s) in rcombo))
            for c, s in sorted(lcombo | rcombo)]
    total = len(left) + len(right)
    out += [("total", f"there are {NUMBER_WORDS[k]} shapes in total.", k == total)
            for k in range(max(2, total - 2), min(len(NUMBER_WORDS), total + 3))]
    return out


def make_pair(cfg: WorldConfig, index: int, split: str = "train") -> dict:
    """Pair ``index`` of ``split``: {id, image, image2, width, height, statement, label, objects, objects2}."""
    rng = scene_rng(cfg, split, index, _PAIR_STREAM)
    want = index % 2 == 1
    for _ in range(_ATTEMPTS):
        left, right = sample_scene(cfg, rng), sample_scene(cfg, rng)
        objects, objects2 = object_records(left.shapes), object_records(right.shapes)
        options = [(t, s) for t, s, truth in _statements(objects, objects2) if truth == want]
        if options:
            break
    else:
        raise RuntimeError(f"pair {index}: no {PAIR_LABELS[want]} statement in {_ATTEMPTS} draws")
    templates = sorted({t for t, _ in options})
    template = templates[rng.integers(len(templates))]
    statements = [s for t, s in options if t == template]
    return {
        "id": f"world_pairs-{cfg.seed}-{split}-{index}",
        "image": png_bytes(paint(left.backdrop, left.shapes)),
        "image2": png_bytes(paint(right.backdrop, right.shapes)),
        "width": cfg.size,
        "height": cfg.size,
        "statement": statements[rng.integers(len(statements))],
        "label": PAIR_LABELS[want],
        "objects": objects,
        "objects2": objects2,
    }


def pairs_meta(cfg: WorldConfig, split: str = "train") -> dict:
    return {**base_meta("world_pairs", cfg, split), "labels": list(PAIR_LABELS)}

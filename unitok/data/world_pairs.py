"""Two-image reasoning (NLVR2-style): a statement about a pair of world images, true or false.

The statement is chosen before anything is known about the images: a template uniformly, then its
words (a side, a shape, a colour, a number) uniformly. The label is fixed by the index (odd indices
true, so any run of consecutive pairs is balanced). Only then are the two scenes drawn: their plans
(shapes and colours, no geometry yet) are redrawn until the statement has the wanted truth, and the
plans are laid out. So every statement string is as likely under either label, and nothing in the
wording predicts the answer (``tests/test_shortcuts.py``). Truth is computed from the two object
lists, which the record keeps (``objects``, ``objects2``) so a reader can re-check it.
"""
from __future__ import annotations

import numpy as np

from .schema import png_bytes
from .world_language import plural
from .world_scene import COLOURS, NUMBER_WORDS, SHAPES, WorldConfig, base_meta, layout, object_records, paint, \
    sample_plan, scene_rng

PAIR_LABELS = ("false", "true")
PAIR_TEMPLATES = ("more", "same", "more_of", "both", "both_colour", "neither", "exactly_one", "total")
_PAIR_STREAM = 1
_PLAN_ATTEMPTS = 400  # plan pairs drawn for one statement before another statement is chosen


def _statement(template: str, cfg: WorldConfig, rng: np.random.Generator) -> tuple[str, tuple]:
    """(statement, what it tests) for ``template``, its words drawn uniformly, independent of any image."""
    side = ("left", "right")[rng.integers(2)]
    other = "right" if side == "left" else "left"
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    if template == "more":
        return f"the {side} image has more shapes than the {other} image.", ("more", side, None)
    if template == "same":
        return "the two images contain the same number of shapes.", ("same",)
    if template == "more_of":
        return f"the {side} image has more {plural(shape)} than the {other} image.", ("more", side, shape)
    if template == "both":
        return f"both images contain a {shape}.", ("both", "shape", shape)
    if template == "both_colour":
        return f"both images contain a {colour} shape.", ("both", "colour", colour)
    if template == "neither":
        return f"neither image contains a {shape}.", ("neither", shape)
    if template == "exactly_one":
        return f"exactly one image contains a {colour} {shape}.", ("exactly_one", colour, shape)
    lo, hi = 2 * cfg.min_objects, min(2 * cfg.max_objects, len(NUMBER_WORDS) - 1)
    k = int(rng.integers(lo, hi + 1))
    return f"there are {NUMBER_WORDS[k]} shapes in total.", ("total", k)


def truth(test: tuple, left: list[tuple[str, str]], right: list[tuple[str, str]]) -> bool:
    """Whether a statement (``_statement``'s test) holds for two lists of (shape, colour)."""
    kind = test[0]
    if kind == "more":
        _, side, shape = test
        count = {"left": sum(shape in (None, s) for s, _ in left), "right": sum(shape in (None, s) for s, _ in right)}
        return count[side] > count["right" if side == "left" else "left"]
    if kind == "same":
        return len(left) == len(right)
    if kind == "both":
        k = 0 if test[1] == "shape" else 1
        return any(o[k] == test[2] for o in left) and any(o[k] == test[2] for o in right)
    if kind == "neither":
        return not any(s == test[1] for s, _ in [*left, *right])
    if kind == "exactly_one":
        combo = (test[2], test[1])
        return (combo in left) != (combo in right)
    return len(left) + len(right) == test[1]


def make_pair(cfg: WorldConfig, index: int, split: str = "train") -> dict:
    """Pair ``index`` of ``split``: {id, image, image2, width, height, statement, label, objects, objects2}."""
    rng = scene_rng(cfg, split, index, _PAIR_STREAM)
    want = index % 2 == 1
    templates = [t for t in PAIR_TEMPLATES  # a total needs number words for the world's object counts
                 if t != "total" or 2 * cfg.min_objects < len(NUMBER_WORDS)]
    while True:
        statement, test = _statement(templates[rng.integers(len(templates))], cfg, rng)
        for _ in range(_PLAN_ATTEMPTS):
            plans = sample_plan(cfg, rng), sample_plan(cfg, rng)
            if truth(test, *[[(s, c) for s, c, _ in p.objects] for p in plans]) == want:
                break
        else:
            continue
        left, right = (layout(cfg, p, rng) for p in plans)
        # Truth again from what was placed (an over-crowded config can leave a planned object out).
        if truth(test, *[[(s.shape, s.colour) for s in scene.shapes] for scene in (left, right)]) == want:
            break
    return {
        "id": f"world_pairs-{cfg.seed}-{split}-{index}",
        "image": png_bytes(paint(left.backdrop, left.shapes)),
        "image2": png_bytes(paint(right.backdrop, right.shapes)),
        "width": cfg.size,
        "height": cfg.size,
        "statement": statement,
        "label": PAIR_LABELS[want],
        "objects": object_records(left.shapes),
        "objects2": object_records(right.shapes),
    }


def pairs_meta(cfg: WorldConfig, split: str = "train") -> dict:
    return {**base_meta("world_pairs", cfg, split), "labels": list(PAIR_LABELS)}

"""Templated language about a world scene: captions, referring expressions, regions, image-text matching.

Everything here reads the object records (``world_scene.object_records``), never pixels, so each
sentence is true (or, for ITM negatives, false) by construction. Words a person could dispute are only
said with a margin: "the leftmost shape" needs the runner-up at least ``POSITION_MARGIN`` of the image
side further right; "the nearest shape" needs the runner-up at least ``DEPTH_RATIO`` times as far. The
ratio exceeds the spread of ``CARD_FACTOR``, so the visible cue (a lower base row is nearer) agrees.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .world_scene import CARD_FACTOR, COLOURS, NUMBER_WORDS, SHAPES

POSITION_MARGIN = 0.08  # fraction of the image side between the extreme object and the runner-up
DEPTH_RATIO = 1.3  # runner-up depth / extreme depth for "nearest" and "farthest"
assert DEPTH_RATIO > CARD_FACTOR[1] / CARD_FACTOR[0], "depth words must agree with the base-row cue"

# word -> (what is compared, +1 to pick the largest value / -1 the smallest)
SUPERLATIVES = {
    "leftmost": ("x", -1), "rightmost": ("x", 1), "topmost": ("y", -1), "bottommost": ("y", 1),
    "nearest": ("depth", -1), "farthest": ("depth", 1),
}


def name(o: dict) -> str:
    return f"{o['colour']} {o['shape']}"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def count_phrase(n: int, noun: str) -> str:
    return f"{NUMBER_WORDS[n]} {noun if n == 1 else plural(noun)}"


def there_are(n: int, noun: str) -> str:
    return f"there {'is' if n == 1 else 'are'} {count_phrase(n, noun)}"


def list_phrase(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def centre(o: dict) -> tuple[float, float]:
    x0, y0, x1, y1 = o["box"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def _value(o: dict, what: str) -> float:
    return {"x": centre(o)[0], "y": centre(o)[1], "depth": o["depth"]}[what]


def superlative(objects: list[dict], among: list[int], word: str, size: int) -> int | None:
    """Index (into ``objects``) that ``word`` picks out of ``among``, or None if the runner-up is too close."""
    what, sign = SUPERLATIVES[word]
    ranked = sorted(among, key=lambda i: -sign * _value(objects[i], what))
    if len(ranked) == 1:
        return ranked[0]
    best, runner = _value(objects[ranked[0]], what), _value(objects[ranked[1]], what)
    if what == "depth":
        clear = max(best, runner) >= DEPTH_RATIO * min(best, runner)
    else:
        clear = abs(best - runner) >= POSITION_MARGIN * size
    return ranked[0] if clear else None


def clearly(objects: list[dict], a: int, b: int, axis: str, size: int) -> bool:
    """Whether object a lies clearly before b along 'x' (left of) or 'y' (above)."""
    return _value(objects[b], axis) - _value(objects[a], axis) >= POSITION_MARGIN * size


# (attributes that must single an object out, template) for the non-positional expressions
_ATTRIBUTE_REFS = (
    (("colour",), "the {colour} shape"),
    (("shape",), "the {shape}"),
    (("size", "shape"), "the {size} {shape}"),
    (("size",), "the {size} shape"),
)


def ref_table(objects: list[dict], size: int) -> list[list[str]]:
    """For each object, every templated expression that picks out that object and no other.

    (colour, shape) is unique in a scene, so "the <colour> <shape>" always works; the others are
    added when their attributes, or a superlative over all shapes or over one kind of shape, single
    the object out.
    """
    table = [[f"the {name(o)}"] for o in objects]
    for keys, template in _ATTRIBUTE_REFS:
        tally = Counter(tuple(o[k] for k in keys) for o in objects)
        for o, options in zip(objects, table):
            if tally[tuple(o[k] for k in keys)] == 1:
                options.append(template.format(**o))
    groups = [("shape", list(range(len(objects))))]
    groups += [(s, [i for i, o in enumerate(objects) if o["shape"] == s]) for s in SHAPES]
    for noun, among in groups:
        if len(among) < 2:
            continue
        for word in SUPERLATIVES:
            i = superlative(objects, among, word, size)
            if i is not None:
                table[i].append(f"the {word} {noun}")
    return table


def referring_expressions(objects: list[dict], size: int, rng: np.random.Generator,
                          per_object: int = 3) -> list[dict]:
    """``refs``: up to ``per_object`` unique expressions per object, each with the object's box."""
    refs = []
    for i, (o, options) in enumerate(zip(objects, ref_table(objects, size))):
        picks = rng.choice(len(options), size=min(per_object, len(options)), replace=False)
        refs += [{"expression": options[k], "object": i, "box": list(o["box"])} for k in sorted(picks)]
    return refs


def regions(objects: list[dict]) -> list[dict]:
    """``regions``: one dense-captioning description per object, naming what hides it."""
    out = []
    for i, o in enumerate(objects):
        text = f"a {o['size']} {name(o)}"
        if o["occluded_by"]:
            text += " partly hidden by " + list_phrase([f"the {name(objects[j])}" for j in o["occluded_by"]])
        out.append({"box": list(o["box"]), "description": text, "object": i, "category": o["shape"]})
    return out


def _inventory(objects: list[dict]) -> str:
    tally = Counter(o["shape"] for o in objects)
    return list_phrase([count_phrase(tally[s], s) for s in SHAPES if tally[s]])


def _listing(objects: list[dict], background: str, template: int) -> str:
    """The captions that name every object; ITM negatives re-render them with one object altered."""
    things = list_phrase([f"a {name(o)}" for o in objects])
    if template == 0:
        return f"{count_phrase(len(objects), 'shape')} on a {background} background: {things}."
    if template == 1:
        return f"a {background} scene with " + list_phrase([f"a {o['size']} {name(o)}" for o in objects]) + "."
    return f"there {'is' if len(objects) == 1 else 'are'} {things}."


_LISTINGS = 3


def description(objects: list[dict], background: str) -> str:
    """One sentence naming every object and the background: what a text-to-image prompt should ask for."""
    return _listing(objects, background, 0)


def _relation_captions(objects: list[dict], size: int) -> list[str]:
    caps = []
    for b, o in enumerate(objects):
        caps += [f"a {name(objects[a])} partly hides a {name(o)}." for a in o["occluded_by"]]
    everyone = list(range(len(objects)))
    for word in ("leftmost", "nearest"):
        i = superlative(objects, everyone, word, size) if len(objects) > 1 else None
        if i is not None:
            caps.append(f"the {word} shape is a {name(objects[i])}.")
    return caps


def captions(objects: list[dict], background: str, size: int, rng: np.random.Generator) -> list[str]:
    """``captions``: the listing templates, a tally by shape, and up to two relation sentences."""
    caps = [_listing(objects, background, t) for t in range(_LISTINGS)]
    caps.append(f"a picture of {_inventory(objects)} on a {background} background.")
    relations = _relation_captions(objects, size)
    if relations:
        caps += [relations[k] for k in sorted(rng.choice(len(relations), min(2, len(relations)), replace=False))]
    return [caps[k] for k in rng.permutation(len(caps))]


def _swapped(objects: list[dict], rng: np.random.Generator, attribute: str) -> list[dict] | None:
    """The objects with one object's colour or shape changed to a (colour, shape) absent from the scene."""
    present = {(o["colour"], o["shape"]) for o in objects}
    k = int(rng.integers(len(objects)))
    altered = [{**objects[k], attribute: v} for v in (COLOURS if attribute == "colour" else SHAPES)]
    fresh = [a for a in altered if (a["colour"], a["shape"]) not in present]
    if not fresh:
        return None
    return [*objects[:k], fresh[rng.integers(len(fresh))], *objects[k + 1:]]


def itm(objects: list[dict], background: str, caps: list[str], rng: np.random.Generator) -> list[dict]:
    """``itm``: two true captions and hard negatives that alter one colour, one shape, or the count.

    A negative names a (colour, shape) the scene lacks or a wrong number of shapes, so it is false,
    not merely reworded.
    """
    matched = rng.choice(len(caps), size=min(2, len(caps)), replace=False)
    items = [{"text": caps[k], "match": True} for k in matched]
    negatives = []
    for attribute in ("colour", "shape"):
        altered = _swapped(objects, rng, attribute)
        if altered is not None:
            negatives.append(_listing(altered, background, int(rng.integers(_LISTINGS))))
    wrong = [n for n in (len(objects) - 1, len(objects) + 1, len(objects) + 2) if 1 <= n < len(NUMBER_WORDS)]
    n = wrong[rng.integers(len(wrong))]
    negatives.append(f"{there_are(n, 'shape')} on a {background} background.")
    items += [{"text": t, "match": False} for t in dict.fromkeys(negatives) if t not in caps]
    return items

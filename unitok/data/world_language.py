"""Templated language about a world scene: captions, referring expressions, regions, image-text matching.

Everything here reads the object records (``world_scene.object_records``), never pixels, so each
sentence is true (or, for ITM negatives, false) by construction. Words a person could dispute are only
said with a margin: "the leftmost shape" needs the runner-up at least ``POSITION_MARGIN`` of the image
side further right; "the nearest shape" needs the runner-up at least ``DEPTH_RATIO`` times as far. The
ratio exceeds the spread of ``CARD_FACTOR``, so the visible cue (a lower base row is nearer) agrees.

No sentence is guessable from its wording alone (``tests/test_shortcuts.py``): every caption names each
object's size, colour and shape and the background; an ITM negative is a true statement of the same
family with exactly one attribute changed, drawn by the same process as the positives, so each text is
about as often a match as not.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .world_scene import BACKGROUNDS, CARD_FACTOR, COLOURS, NUMBER_WORDS, SHAPES, SIZES, ground_depth

POSITION_MARGIN = 0.08  # fraction of the image side between the extreme object and the runner-up
DEPTH_RATIO = 1.3  # runner-up depth / extreme depth for "nearest" and "farthest"
assert DEPTH_RATIO > CARD_FACTOR[1] / CARD_FACTOR[0], "depth words must agree with the base-row cue"
# Depth order of two cards that neither hides, from the ground depth at their base rows (all a viewer has:
# a card's own offset from the ground, CARD_FACTOR, is not drawn). UNSETTLED_RATIO is that offset's spread,
# under which either card may be the nearer; at SETTLED_RATIO and above the lower one is surely nearer.
UNSETTLED_RATIO = CARD_FACTOR[1] / CARD_FACTOR[0]
SETTLED_RATIO = 1.25
assert SETTLED_RATIO > UNSETTLED_RATIO

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
    if what == "depth":
        return o["depth"]
    x0, y0, x1, y1 = o["box"]
    return (x0 + x1) / 2 if what == "x" else (y0 + y1) / 2


def superlative(objects: list[dict], among: list[int], word: str, size: int) -> int | None:
    """Index (into ``objects``) that ``word`` picks out of ``among``, or None if the runner-up is too close."""
    what, sign = SUPERLATIVES[word]
    values = {i: _value(objects[i], what) for i in among}
    ranked = sorted(among, key=lambda i: -sign * values[i])
    if len(ranked) == 1:
        return ranked[0]
    best, runner = values[ranked[0]], values[ranked[1]]
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


def sized_name(o: dict) -> str:
    return f"{o['size']} {o['colour']} {o['shape']}"


def _apart(a: dict, b: dict) -> bool:
    """Visible boxes at least a pixel apart: no pixel shows which of the two is painted over the other."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    return ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0


def depth_order(objects: list[dict], a: int, b: int, size: int) -> int | None:
    """+1 if the image settles that a is nearer than b, -1 that b is, 0 if it cannot settle it, None between.

    Settled: one hides the other, or both base rows are seen and the ground there differs by
    ``SETTLED_RATIO``. Unsettled: the two are apart and their grounds differ by less than
    ``UNSETTLED_RATIO``, within which the cards' hidden offsets can put either in front.
    """
    oa, ob = objects[a], objects[b]
    if a in ob["occluded_by"]:
        return 1
    if b in oa["occluded_by"]:
        return -1
    ground = ground_depth(size)
    ga, gb = float(ground[int(oa["base"]) - 1]), float(ground[int(ob["base"]) - 1])
    ratio = max(ga, gb) / min(ga, gb)
    seen = oa["box"][3] == oa["base"] and ob["box"][3] == ob["base"]
    if seen and ratio >= SETTLED_RATIO:
        return 1 if ga < gb else -1
    if ratio < UNSETTLED_RATIO and _apart(oa, ob):
        return 0
    return None


# Relation words: "the A <word> the B." Each word's opposite makes the false statement of the same pair.
OPPOSITE = {
    "is to the left of": "is to the right of", "is to the right of": "is to the left of",
    "is above": "is below", "is below": "is above",
    "is nearer to the camera than": "is farther from the camera than",
    "is farther from the camera than": "is nearer to the camera than",
}
AXIS_WORDS = {"x": ("is to the left of", "is to the right of"), "y": ("is above", "is below"),
              "depth": ("is nearer to the camera than", "is farther from the camera than")}


def relation(objects: list[dict], a: int, word: str, b: int) -> str:
    return f"the {name(objects[a])} {word} the {name(objects[b])}."


def settled_pairs(objects: list[dict], axis: str, size: int) -> list[tuple[int, int]]:
    """Ordered pairs (a, b) where the image settles that a comes first along ``axis``: left of, above, nearer."""
    out = []
    for a in range(len(objects)):
        for b in range(len(objects)):
            if a == b:
                continue
            if axis == "depth":
                if depth_order(objects, a, b, size) == 1:
                    out.append((a, b))
            elif clearly(objects, a, b, axis, size):
                out.append((a, b))
    return out


def true_relation(objects: list[dict], a: int, b: int, axis: str, rng: np.random.Generator) -> tuple[int, str, int]:
    """A true statement that a comes before b along ``axis``, in either of its two phrasings."""
    first, second = AXIS_WORDS[axis]
    return (a, first, b) if rng.integers(2) == 0 else (b, second, a)


_WHERE = (("at the top left", "at the top", "at the top right"),
          ("on the left", "in the centre", "on the right"),
          ("at the bottom left", "at the bottom", "at the bottom right"))


def where(o: dict, size: int) -> str:
    """Which third of the image, across and down, holds the centre of the object's visible box."""
    x, y = centre(o)
    return _WHERE[min(2, int(3 * y / size))][min(2, int(3 * x / size))]


def _things(objects: list[dict], size: int) -> str:
    """Every object with its size, colour and shape; a lone object also says where it is (there are only
    360 single-object scenes otherwise, so captions would repeat)."""
    if len(objects) == 1:
        return f"a {sized_name(objects[0])} {where(objects[0], size)}"
    return list_phrase([f"a {sized_name(o)}" for o in objects])


def _listing(objects: list[dict], background: str, template: int, size: int) -> str:
    """A sentence naming every object (size, colour, shape) and the background; ITM re-renders it altered."""
    things = _things(objects, size)
    if template == 0:
        return f"{count_phrase(len(objects), 'shape')} on a {background} background: {things}."
    if template == 1:
        return f"a {background} scene with {things}."
    return f"there {'is' if len(objects) == 1 else 'are'} {things} on a {background} background."


_LISTINGS = 3


def description(objects: list[dict], background: str, size: int) -> str:
    """One sentence naming every object and the background: what a text-to-image prompt should ask for."""
    return _listing(objects, background, 0, size)


def _relation_clauses(objects: list[dict], size: int) -> list[str]:
    clauses = [f"the {name(objects[a])} partly hides the {name(o)}" for o in objects for a in o["occluded_by"]]
    everyone = list(range(len(objects)))
    for word in ("leftmost", "nearest"):
        i = superlative(objects, everyone, word, size) if len(objects) > 1 else None
        if i is not None:
            clauses.append(f"the {name(objects[i])} is the {word} shape")
    return clauses


def captions(objects: list[dict], background: str, size: int, rng: np.random.Generator) -> list[str]:
    """``captions``: the listing templates and up to two listings with a relation clause added.

    Every caption names every object's size, colour and shape and the background, so two scenes share a
    caption only if they hold the same objects in the same left-to-right order on the same background.
    """
    caps = [_listing(objects, background, t, size) for t in range(_LISTINGS)]
    clauses = _relation_clauses(objects, size)
    if clauses:
        picks = sorted(rng.choice(len(clauses), min(2, len(clauses)), replace=False))
        caps += [f"a {background} scene with {_things(objects, size)}, where {clauses[k]}." for k in picks]
    return [caps[k] for k in rng.permutation(len(caps))]


ITM_FAMILIES = ("listing", "object", "count", "relation")


def _other(values, exclude, rng: np.random.Generator):
    pool = [v for v in values if v not in exclude]
    return pool[rng.integers(len(pool))] if pool else None


def _itm_listing(objects, background, size, rng, negative):
    template = int(rng.integers(_LISTINGS))
    if not negative:
        return _listing(objects, background, template, size)
    attribute = ("colour", "shape", "size", "background")[rng.integers(4)]
    if attribute == "background":
        return _listing(objects, _other(BACKGROUNDS, {background}, rng), template, size)
    k = int(rng.integers(len(objects)))
    o = objects[k]
    present = {(p["colour"], p["shape"]) for p in objects}
    if attribute == "colour":
        value = _other(COLOURS, {c for c in COLOURS if (c, o["shape"]) in present}, rng)
    elif attribute == "shape":
        value = _other(SHAPES, {s for s in SHAPES if (o["colour"], s) in present}, rng)
    else:
        value = _other(SIZES, {o["size"]}, rng)
    if value is None:
        return None
    return _listing([*objects[:k], {**o, attribute: value}, *objects[k + 1:]], background, template, size)


def _itm_object(objects, rng, negative):
    o = objects[rng.integers(len(objects))]
    if negative:
        attribute = ("colour", "shape", "size")[rng.integers(3)]
        present = {(p["size"], p["colour"], p["shape"]) for p in objects}
        vocab = {"colour": COLOURS, "shape": SHAPES, "size": SIZES}[attribute]
        value = _other(vocab, {v for v in vocab if (o[attribute] == v) or
                               (tuple({**o, attribute: v}[k] for k in ("size", "colour", "shape")) in present)}, rng)
        if value is None:
            return None
        o = {**o, attribute: value}
    return f"there is a {sized_name(o)}."


def _itm_relation(objects, size, rng, negative):
    options = [(axis, pair) for axis in AXIS_WORDS for pair in settled_pairs(objects, axis, size)]
    options += [("hides", (a, b)) for b, o in enumerate(objects) for a in o["occluded_by"]]
    if not options:
        return None
    axis, (a, b) = options[rng.integers(len(options))]
    if axis == "hides":
        if negative:
            a, b = b, a
        return f"the {name(objects[a])} partly hides the {name(objects[b])}."
    x, word, y = true_relation(objects, a, b, axis, rng)
    return relation(objects, x, OPPOSITE[word] if negative else word, y)


def _itm_text(family, objects, background, size, counts, rng, negative):
    if family == "listing":
        return _itm_listing(objects, background, size, rng, negative)
    if family == "object":
        return _itm_object(objects, rng, negative)
    if family == "count":
        n = _other(range(counts[0], counts[1] + 1), {len(objects)}, rng) if negative else len(objects)
        return None if n is None else f"{there_are(n, 'shape')}."
    return _itm_relation(objects, size, rng, negative)


def itm(objects: list[dict], background: str, size: int, counts: tuple[int, int], rng: np.random.Generator,
        per_label: int = 2) -> list[dict]:
    """``itm``: ``per_label`` matching and ``per_label`` non-matching statements, in random order.

    ``per_label`` distinct families are drawn (a full listing, one object, the count, a relation between
    two objects; a family the scene cannot state is skipped). Each gives one true statement and, by the
    same process, a second true statement with exactly one attribute changed (an object's colour, shape
    or size, the background, the count, or the relation's direction) to a value that makes it false.
    Positives and negatives are thus the same texts in distribution. ``counts``: the world's (min, max)
    object count, the range a wrong count is drawn from.
    """
    items = []
    # The families are drawn from all of them whatever the scene: a scene without a settled relation gives
    # fewer items rather than more of the others (which would tie, e.g., "there is one shape." to matches).
    for k in rng.choice(len(ITM_FAMILIES), size=min(per_label, len(ITM_FAMILIES)), replace=False):
        if ITM_FAMILIES[k] == "relation" and _itm_relation(objects, size, np.random.default_rng(0), False) is None:
            continue
        for _ in range(10):  # both or neither, so the labels stay paired
            pair = [_itm_text(ITM_FAMILIES[k], objects, background, size, counts, rng, negative) for negative in (0, 1)]
            if None not in pair:
                items += [{"text": pair[0], "match": True}, {"text": pair[1], "match": False}]
                break
    return [items[k] for k in rng.permutation(len(items))]

"""Questions and statements about a world scene: VQA with a closed answer set, and entailment.

Like ``world_language``, these read the object records only and use its margins, so every answer is
settled by what the image shows. None is guessable from its wording (``tests/test_shortcuts.py``):

* yes/no questions come with their mirror images (the same question about the other order, or the
  opposite word), so each question string is as often yes as no;
* open questions ask about exchangeable attributes (any colour, shape or size equally likely), and
  counting asks the total (uniform by the scene plan) and the count of the scene's *count focus*, a shape
  or a colour the plan holds zero to three times, uniformly (``world_scene.sample_plan``);
* entailment draws the three labels from the same templates: for each statement family a scene gets one
  entailed, one contradicted and one neutral statement. Neutral statements speak of an object the image
  does not show, or compare the depth of two cards the image cannot order (``depth_order``).
"""
from __future__ import annotations

from collections import Counter
from itertools import permutations

import numpy as np

from .world_language import AXIS_WORDS, OPPOSITE, clearly, depth_order, name, plural, ref_table, \
    settled_pairs, true_relation
from .world_scene import BACKGROUNDS, COLOURS, NUMBER_WORDS, SHAPES, SIZES

VQA_TYPES = ("colour", "shape", "size", "count", "exists", "spatial", "compare")
ENTAILMENT_LABELS = ("entailment", "neutral", "contradiction")
ENTAILMENT_FAMILIES = ("size", "position", "depth")


def answer_set(max_objects: int) -> list[str]:
    """The closed VQA answer vocabulary of a world whose scenes hold at most ``max_objects`` shapes."""
    words = {"yes", "no", *COLOURS, *BACKGROUNDS, *SHAPES, *SIZES, *NUMBER_WORDS[: max_objects + 1]}
    return sorted(words)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _absent_combos(objects: list[dict]) -> list[tuple[str, str]]:
    present = {(o["colour"], o["shape"]) for o in objects}
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]


def _pick(pool: list, k: int, rng: np.random.Generator) -> list:
    return [pool[i] for i in sorted(rng.permutation(len(pool))[:k])]


def _colour_questions(objects, background, size, rng, table):
    qs = [("what colour is the background?", background)]
    for o, refs in zip(objects, table):
        qs += [(f"what colour is {ref}?", o["colour"]) for ref in refs
               if o["colour"] not in ref.split()]
    return qs


def _shape_questions(objects, background, size, rng, table):
    qs = []
    for o, refs in zip(objects, table):
        qs += [(f"what shape is {ref.replace(' shape', ' object')}?", o["shape"])
               for ref in refs if o["shape"] not in ref.split()]
    return qs


def _size_questions(objects, background, size, rng):
    return [(f"what size is the {name(o)}?", o["size"]) for o in objects]


def _count_questions(objects, background, size, rng, focus):
    """The total, and the count of the plan's focus (uniform over zero .. COUNT_FOCUS_MAX): asking about
    any other shape or colour would mostly be answered "zero" or "one"."""
    kind, value = focus
    qs = [("how many shapes are there?", NUMBER_WORDS[len(objects)])]
    if kind == "shape":
        qs.append((f"how many {plural(value)} are there?", NUMBER_WORDS[sum(o["shape"] == value for o in objects)]))
    else:
        qs.append((f"how many {value} shapes are there?", NUMBER_WORDS[sum(o["colour"] == value for o in objects)]))
    return qs


def _exists_questions(objects, background, size, rng):
    yes = [(f"is there a {name(o)}?", "yes") for o in objects]
    no = [(f"is there a {c} {s}?", "no") for c, s in _pick(_absent_combos(objects), len(yes), rng)]
    return yes + no


def _spatial_questions(objects, background, size, rng):
    """Each clear pair gives every phrasing, both orders: as many yes as no for every question string."""
    qs = []
    for a, b in permutations(range(len(objects)), 2):
        first, second = f"the {name(objects[a])}", f"the {name(objects[b])}"
        if clearly(objects, a, b, "x", size):
            qs += [(f"is {first} to the left of {second}?", "yes"), (f"is {first} to the right of {second}?", "no"),
                   (f"is {second} to the right of {first}?", "yes"), (f"is {second} to the left of {first}?", "no")]
        if clearly(objects, a, b, "y", size):
            qs += [(f"is {first} above {second}?", "yes"), (f"is {first} below {second}?", "no"),
                   (f"is {second} below {first}?", "yes"), (f"is {second} above {first}?", "no")]
        if a in objects[b]["occluded_by"]:
            qs += [(f"is {first} in front of {second}?", "yes"), (f"is {second} in front of {first}?", "no")]
    return qs


def _compare_questions(objects, background, size, rng):
    qs = []
    rank = list(SIZES)
    for a, b in permutations(range(len(objects)), 2):
        oa, ob = objects[a], objects[b]
        if oa["size"] != ob["size"]:
            larger = rank.index(oa["size"]) > rank.index(ob["size"])
            qs.append((f"is the {name(oa)} larger than the {name(ob)}?", _yes(larger)))
        order = depth_order(objects, a, b, size)  # only when the image settles it; both orders, one yes one no
        if order:
            qs.append((f"is the {name(oa)} nearer to the camera than the {name(ob)}?", _yes(order == 1)))
    shapes = Counter(o["shape"] for o in objects)
    for s, t in permutations(SHAPES, 2):  # only unequal counts, so the two orders are one yes and one no
        if shapes[s] != shapes[t] and max(shapes[s], shapes[t]) > 1:
            qs.append((f"are there more {plural(s)} than {plural(t)}?", _yes(shapes[s] > shapes[t])))
    return qs


_VQA_BUILDERS = dict(zip(VQA_TYPES, (_colour_questions, _shape_questions, _size_questions, _count_questions,
                                     _exists_questions, _spatial_questions, _compare_questions)))


def vqa(objects: list[dict], background: str, size: int, rng: np.random.Generator, focus: tuple[str, str],
        per_type: int = 2) -> list[dict]:
    """``vqa``: up to ``per_type`` questions of each type in ``VQA_TYPES`` (fewer when a scene offers fewer).

    ``focus``: the scene plan's count focus, ("shape", s) or ("colour", c)."""
    table = ref_table(objects, size)
    out = []
    for qtype, build in _VQA_BUILDERS.items():
        extra = {"count": (focus,), "colour": (table,), "shape": (table,)}.get(qtype, ())
        pool = build(objects, background, size, rng, *extra)
        out += [{"question": q, "answer": a, "type": qtype} for q, a in _pick(pool, per_type, rng)]
    return out


def _absent(objects: list[dict], rng: np.random.Generator) -> str:
    """The name of a (colour, shape) the scene does not hold, uniformly."""
    c, s = _pick(_absent_combos(objects), 1, rng)[0]
    return f"{c} {s}"


def _about_absent(objects: list[dict], words: tuple[str, ...], rng: np.random.Generator) -> str:
    """A relation between a shown object and one the image does not show (either role): neutral."""
    shown, missing = name(objects[rng.integers(len(objects))]), _absent(objects, rng)
    first, second = (shown, missing) if rng.integers(2) == 0 else (missing, shown)
    return f"the {first} {words[rng.integers(len(words))]} the {second}."


def _size_triple(objects, size, rng):
    o = objects[rng.integers(len(objects))]
    c = objects[rng.integers(len(objects))]
    sizes = list(SIZES)
    wrong = [z for z in sizes if z != c["size"]]
    return (f"the {name(o)} is {o['size']}.", f"the {name(c)} is {wrong[rng.integers(len(wrong))]}.",
            f"the {_absent(objects, rng)} is {sizes[rng.integers(len(sizes))]}.")


def _relation_triple(objects, size, rng, axes):
    pairs = [(axis, p) for axis in axes for p in settled_pairs(objects, axis, size)]
    if not pairs:
        return None
    axis, (a, b) = pairs[rng.integers(len(pairs))]
    x, word, y = true_relation(objects, a, b, axis, rng)
    entailed = f"the {name(objects[x])} {word} the {name(objects[y])}."
    axis, (a, b) = pairs[rng.integers(len(pairs))]
    x, word, y = true_relation(objects, a, b, axis, rng)
    contradicted = f"the {name(objects[x])} {OPPOSITE[word]} the {name(objects[y])}."
    words = tuple(w for axis in axes for w in AXIS_WORDS[axis])
    unsettled = [(a, b) for a, b in permutations(range(len(objects)), 2)
                 if axes == ("depth",) and depth_order(objects, a, b, size) == 0]
    if unsettled:
        a, b = unsettled[rng.integers(len(unsettled))]
        neutral = f"the {name(objects[a])} {words[rng.integers(len(words))]} the {name(objects[b])}."
    else:
        neutral = _about_absent(objects, words, rng)
    return entailed, contradicted, neutral


def entailment(objects: list[dict], background: str, size: int, rng: np.random.Generator,
               families: int = 2) -> list[dict]:
    """``entailment``: for up to ``families`` statement families, one statement of each label.

    Families (``ENTAILMENT_FAMILIES``): "the A is <size>.", "the A is left of / right of / above / below
    the B.", "the A is nearer to / farther from the camera than the B.". Entailment: the image shows it;
    contradiction: the image shows the opposite (another size, the opposite relation word); neutral: it
    speaks of a colour and shape the image does not show, or orders two cards in depth that the image
    cannot order (apart, on nearly the same ground row: ``depth_order`` 0). All three labels use the same
    templates and vocabulary, and each family gives one of each, so no wording predicts a label.
    """
    triples = [_size_triple(objects, size, rng)]
    for axes in (("x", "y"), ("depth",)):
        t = _relation_triple(objects, size, rng, axes)
        if t is not None:
            triples.append(t)
    items = []
    for k in sorted(rng.choice(len(triples), size=min(families, len(triples)), replace=False)):
        items += [{"statement": s, "label": label}
                  for s, label in zip(triples[k], ("entailment", "contradiction", "neutral"))]
    return [items[k] for k in rng.permutation(len(items))]

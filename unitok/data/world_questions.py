"""Questions and statements about a world scene: VQA with a closed answer set, and entailment.

Like ``world_language``, these read the object records only and use its margins, so every answer is
settled by what the image shows. Each builder returns a pool of candidates in which yes and no are
about equally common (a question and its mirror image); the record keeps a few drawn from each pool.
"""
from __future__ import annotations

from collections import Counter
from itertools import permutations

import numpy as np

from .world_language import DEPTH_RATIO, clearly, name, plural, ref_table, there_are
from .world_scene import BACKGROUNDS, COLOURS, NUMBER_WORDS, SHAPES, SIZES

VQA_TYPES = ("colour", "shape", "size", "count", "exists", "spatial", "compare")
ENTAILMENT_LABELS = ("entailment", "neutral", "contradiction")
# Properties the world never renders. A statement that gives one of them to an object the image shows is
# *neutral*: nothing in the pixels supports or refutes it (the shapes are flat painted cards of no stated
# material, temperature or weight; a larger card need not be heavier).
MATERIALS = ("wood", "metal", "glass", "paper", "stone")
TEMPERATURES = ("warm", "cold")


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
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(k, len(pool)), replace=False))]


def _colour_questions(objects, background, size, rng):
    qs = [("what colour is the background?", background)]
    for o, refs in zip(objects, ref_table(objects, size)):
        qs += [(f"what colour is {ref}?", o["colour"]) for ref in refs
               if o["colour"] not in ref.split()]
    return qs


def _shape_questions(objects, background, size, rng):
    qs = []
    for o, refs in zip(objects, ref_table(objects, size)):
        qs += [(f"what shape is {ref.replace(' shape', ' object')}?", o["shape"])
               for ref in refs if o["shape"] not in ref.split()]
    return qs


def _size_questions(objects, background, size, rng):
    return [(f"what size is the {name(o)}?", o["size"]) for o in objects]


def _count_questions(objects, background, size, rng):
    shapes, colours = Counter(o["shape"] for o in objects), Counter(o["colour"] for o in objects)
    qs = [("how many shapes are there?", NUMBER_WORDS[len(objects)])]
    qs += [(f"how many {plural(s)} are there?", NUMBER_WORDS[n]) for s, n in shapes.items()]
    qs += [(f"how many {c} shapes are there?", NUMBER_WORDS[n]) for c, n in colours.items()]
    # One absent kind, so "zero" is an answer without dominating.
    absent = [f"how many {plural(s)} are there?" for s in SHAPES if s not in shapes]
    absent += [f"how many {c} shapes are there?" for c in COLOURS if c not in colours]
    return qs + [(q, "zero") for q in _pick(absent, 1, rng)]


def _exists_questions(objects, background, size, rng):
    yes = [(f"is there a {name(o)}?", "yes") for o in objects]
    no = [(f"is there a {c} {s}?", "no") for c, s in _pick(_absent_combos(objects), len(yes), rng)]
    return yes + no


def _spatial_questions(objects, background, size, rng):
    qs = []
    for a, b in permutations(range(len(objects)), 2):
        first, second = f"the {name(objects[a])}", f"the {name(objects[b])}"
        if clearly(objects, a, b, "x", size):
            qs += [(f"is {first} to the left of {second}?", "yes"), (f"is {first} to the right of {second}?", "no")]
        if clearly(objects, a, b, "y", size):
            qs += [(f"is {first} above {second}?", "yes"), (f"is {first} below {second}?", "no")]
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
        if a in ob["occluded_by"] or max(oa["depth"], ob["depth"]) >= DEPTH_RATIO * min(oa["depth"], ob["depth"]):
            qs.append((f"is the {name(oa)} nearer to the camera than the {name(ob)}?", _yes(oa["depth"] < ob["depth"])))
    shapes = Counter(o["shape"] for o in objects)
    for s, t in permutations(list(shapes), 2):
        qs.append((f"are there more {plural(s)} than {plural(t)}?", _yes(shapes[s] > shapes[t])))
    return qs


_VQA_BUILDERS = dict(zip(VQA_TYPES, (_colour_questions, _shape_questions, _size_questions, _count_questions,
                                     _exists_questions, _spatial_questions, _compare_questions)))


def vqa(objects: list[dict], background: str, size: int, rng: np.random.Generator, per_type: int = 2) -> list[dict]:
    """``vqa``: up to ``per_type`` questions of each type in ``VQA_TYPES`` (fewer when a scene offers fewer)."""
    out = []
    for qtype, build in _VQA_BUILDERS.items():
        pool = build(objects, background, size, rng)
        out += [{"question": q, "answer": a, "type": qtype} for q, a in _pick(pool, per_type, rng)]
    return out


def _facts(objects: list[dict], background: str, size: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(true statement, false statement of the same form) pairs; at least four for any scene."""
    n = len(objects)
    absent = _absent_combos(objects)
    others = [b for b in BACKGROUNDS if b != background]
    wrong = n + 1 if n + 1 < len(NUMBER_WORDS) else n - 1
    facts = [(f"the background is {background}.", f"the background is {others[rng.integers(len(others))]}."),
             (f"{there_are(n, 'shape')}.", f"{there_are(wrong, 'shape')}.")]
    for o in objects:
        c, s = absent[rng.integers(len(absent))]
        facts.append((f"there is a {name(o)}.", f"there is a {c} {s}."))
        other = [z for z in SIZES if z != o["size"]][rng.integers(len(SIZES) - 1)]
        facts.append((f"the {name(o)} is {o['size']}.", f"the {name(o)} is {other}."))
    for a, b in permutations(range(n), 2):
        first, second = f"the {name(objects[a])}", f"the {name(objects[b])}"
        if clearly(objects, a, b, "x", size):
            facts.append((f"{first} is to the left of {second}.", f"{second} is to the left of {first}."))
        if a in objects[b]["occluded_by"]:
            facts.append((f"{first} is in front of {second}.", f"{second} is in front of {first}."))
    return facts


def _neutrals(objects: list[dict]) -> list[str]:
    out = [f"the {name(o)} is made of {m}." for o in objects for m in MATERIALS]
    out += [f"the {name(o)} is {t} to the touch." for o in objects for t in TEMPERATURES]
    out += [f"the {name(a)} is heavier than the {name(b)}." for a, b in permutations(objects, 2)]
    return out


def entailment(objects: list[dict], background: str, size: int, rng: np.random.Generator,
               per_label: int = 2) -> list[dict]:
    """``entailment``: ``per_label`` statements of each label, true and false ones from distinct facts.

    entailment = the image shows it; contradiction = the image shows it is false; neutral = it gives an
    object the image shows a property the world never renders (``MATERIALS``, temperature, weight).
    """
    facts = _pick(_facts(objects, background, size, rng), 2 * per_label, rng)
    order = rng.permutation(len(facts))
    items = [{"statement": facts[k][0], "label": "entailment"} for k in order[:per_label]]
    items += [{"statement": facts[k][1], "label": "contradiction"} for k in order[per_label:]]
    items += [{"statement": s, "label": "neutral"} for s in _pick(_neutrals(objects), per_label, rng)]
    return [items[k] for k in rng.permutation(len(items))]

"""The synthetic world: determinism, geometry that agrees with itself, and language that is true.

Text is checked by small resolvers written here from the templates' meaning, not by calling the
generator's own helpers, so a generator bug cannot vouch for itself.
"""
from __future__ import annotations

import re
from collections import Counter

import msgpack
import numpy as np
import pytest

from unitok.data.schema import decode_png, decode_rgb
from unitok.data.store import RecordStore, StoreWriter
from unitok.data.store import StoreError
from unitok.data.world import (BACKGROUNDS, COLOURS, KINDS, NUMBER_WORDS, SHAPES, SIZES, WORLD_VERSION, WorldConfig,
                               iter_world, make_clip, make_pair, make_scene, meta_for, scene_of, world_meta)
from unitok.data.world_language import DEPTH_RATIO, POSITION_MARGIN
from unitok.data.world_questions import VQA_TYPES
from unitok.data.world_scene import CARD_FACTOR, OCCLUSION_MIN_FRACTION, OCCLUSION_MIN_PIXELS, count_joint, \
    ground_depth

CFG = WorldConfig(seed=3)
N_SCENES = 200
SIZE_RANK = list(SIZES)
PLURALS = {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}
NAME = r"the (\w+) (\w+)"


@pytest.fixture(scope="module")
def scenes() -> list[dict]:
    return list(iter_world(CFG, N_SCENES))


def packed(record: dict) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def centre(o: dict) -> tuple[float, float]:
    x0, y0, x1, y1 = o["box"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def find(objects: list[dict], colour: str, shape: str) -> int:
    (i,) = [k for k, o in enumerate(objects) if (o["colour"], o["shape"]) == (colour, shape)]
    return i


def clearly_before(a: dict, b: dict, axis: int, size: int) -> bool:
    return centre(b)[axis] - centre(a)[axis] >= POSITION_MARGIN * size


def resolve(expression: str, objects: list[dict], size: int) -> list[int]:
    """Indices of every object that a templated expression could mean (unique iff one)."""
    chosen = list(range(len(objects)))
    superlative = None
    for w in expression.removeprefix("the ").split():
        for attr, vocab in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES)):
            if w in vocab:
                chosen = [i for i in chosen if objects[i][attr] == w]
        if w in ("leftmost", "rightmost", "topmost", "bottommost", "nearest", "farthest"):
            superlative = w
        assert w in (*COLOURS, *SHAPES, *SIZES, "shape", "object") or w == superlative, (expression, w)
    if superlative is None or not chosen:
        return chosen
    if superlative in ("nearest", "farthest"):
        d = {i: objects[i]["depth"] for i in chosen}
        best = min(d.values()) if superlative == "nearest" else max(d.values())
        return [i for i in chosen if max(d[i], best) < DEPTH_RATIO * min(d[i], best)]
    axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}[superlative]
    v = {i: sign * centre(objects[i])[axis] for i in chosen}
    best = min(v.values())
    return [i for i in chosen if v[i] - best < POSITION_MARGIN * size]


def test_same_bytes_every_run_and_streams_differ():
    for make in (make_scene, make_pair, make_clip):
        assert packed(make(CFG, 5, "val")) == packed(make(CFG, 5, "val"))
    image = make_scene(CFG, 5)["image"]
    assert make_scene(WorldConfig(seed=4), 5)["image"] != image
    assert make_scene(CFG, 5, "test")["image"] != image
    assert make_scene(CFG, 6)["image"] != image
    with pytest.raises(ValueError, match="split"):
        make_scene(CFG, 0, "dev")


def test_config_is_validated():
    with pytest.raises(ValueError, match="size"):
        WorldConfig(size=8)
    with pytest.raises(ValueError, match="max_objects"):
        WorldConfig(max_objects=len(NUMBER_WORDS))


def test_boxes_masks_and_segmentation_agree(scenes):
    for r in scenes:
        seg = decode_png(r["segmentation"])
        assert seg.shape == (r["height"], r["width"]) and seg.dtype == np.uint8
        union = np.zeros_like(seg, dtype=bool)
        for o in r["objects"]:
            mask = decode_png(o["mask"])
            assert set(np.unique(mask)) <= {0, 255}
            m = mask == 255
            ys, xs = np.nonzero(m)
            assert o["box"] == [xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]
            assert (seg[m] == SHAPES.index(o["shape"]) + 1).all() and o["category"] == o["shape"]
            assert not (union & m).any(), "visible masks overlap"
            union |= m
        assert (union == (seg > 0)).all()
        assert [o["box"][0] for o in r["objects"]] == sorted(o["box"][0] for o in r["objects"])


def test_depth_map_holds_object_depths_in_front_of_the_ground(scenes):
    for r in scenes:
        depth = decode_png(r["depth"]).astype(np.int64)
        ground = np.round(ground_depth(r["height"]) * 1000).astype(np.int64)[:, None].repeat(r["width"], 1)
        seen = np.zeros(depth.shape, bool)
        for o in r["objects"]:
            m = decode_png(o["mask"]) == 255
            assert 1.0 < o["depth"] < 12.0
            assert (depth[m] == round(o["depth"] * 1000)).all()
            assert (depth[m] < ground[m]).all(), "an object behind the ground it stands on"
            seen |= m
        assert (depth[~seen] == ground[~seen]).all()
        assert (np.diff(ground[:, 0]) <= 0).all(), "the ground should come nearer towards the bottom"


def test_occlusion_is_a_z_buffer_of_full_shapes(scenes):
    """Re-draw each scene's full shapes; the nearest shape at a pixel must own it (and be the one painted)."""
    for index, r in enumerate(scenes):
        shapes = scene_of(CFG, index)[0].shapes
        assert len(shapes) == len(r["objects"])
        z = np.stack([np.where(s.full, s.depth, np.inf) for s in shapes])
        owner = np.where(np.isfinite(z.min(0)), z.argmin(0), -1)
        image = decode_rgb(r["image"])
        for k, s in enumerate(shapes):
            o = r["objects"][find(r["objects"], s.colour, s.shape)]
            m = decode_png(o["mask"]) == 255
            assert (m == (owner == k)).all()
            assert (image[m] == COLOURS[s.colour]).all()
            assert o["visible"] == round(m.sum() / s.full.sum(), 3) >= CFG.min_visible
            assert o["base"] == np.nonzero(s.full.any(axis=1))[0].max() + 1
        # occluded_by: the objects seen covering enough of this one's full shape to show they are in front.
        masks = [decode_png(o["mask"]) == 255 for o in r["objects"]]
        for b, o in enumerate(r["objects"]):
            full = shapes[[(s.colour, s.shape) for s in shapes].index((o["colour"], o["shape"]))].full
            least = max(OCCLUSION_MIN_PIXELS, OCCLUSION_MIN_FRACTION * full.sum())
            assert o["occluded_by"] == [a for a, m in enumerate(masks) if a != b and (m & full).sum() >= least]
            assert all(r["objects"][a]["depth"] < o["depth"] for a in o["occluded_by"])


def test_referring_expressions_pick_out_exactly_their_object(scenes):
    forms = Counter()
    for r in scenes:
        assert {ref["object"] for ref in r["refs"]} == set(range(len(r["objects"])))
        for ref in r["refs"]:
            assert resolve(ref["expression"], r["objects"], r["width"]) == [ref["object"]], ref["expression"]
            assert ref["box"] == r["objects"][ref["object"]]["box"]
            forms[re.sub(r"\b(" + "|".join([*COLOURS, *SHAPES, *SIZES]) + r")\b", "X", ref["expression"])] += 1
    assert len(forms) >= 8, forms


def expected_answer(question: str, r: dict) -> str:
    objects, size = r["objects"], r["width"]
    if m := re.fullmatch(r"what (colour|shape|size) is (.+)\?", question):
        if m[2] == "the background":
            return r["background"]
        (i,) = resolve(m[2], objects, size)
        return objects[i][m[1]]
    if m := re.fullmatch(r"how many (?:(\w+) )?(\w+) are there\?", question):
        if m[2] == "shapes":
            n = sum(m[1] in (None, o["colour"]) for o in objects)
        else:
            n = sum(o["shape"] == PLURALS[m[2]] for o in objects)
        return NUMBER_WORDS[n]
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        return "yes" if any((o["colour"], o["shape"]) == (m[1], m[2]) for o in objects) else "no"
    if m := re.fullmatch(r"are there more (\w+) than (\w+)\?", question):
        count = Counter(o["shape"] for o in objects)
        return "yes" if count[PLURALS[m[1]]] > count[PLURALS[m[2]]] else "no"
    m = re.fullmatch(rf"is {NAME} (.+) {NAME}\?", question)
    ia, ib = find(objects, m[1], m[2]), find(objects, m[4], m[5])
    a, b = objects[ia], objects[ib]
    if m[3] == "nearer to the camera than":  # asked only when the image settles the order
        settled = relation_truth(ia, m[3], ib, r)
        assert settled is not None, f"undecidable: {question}"
        return "yes" if settled else "no"
    truth = {
        "to the left of": (clearly_before(a, b, 0, size), clearly_before(b, a, 0, size)),
        "to the right of": (clearly_before(b, a, 0, size), clearly_before(a, b, 0, size)),
        "above": (clearly_before(a, b, 1, size), clearly_before(b, a, 1, size)),
        "below": (clearly_before(b, a, 1, size), clearly_before(a, b, 1, size)),
        "in front of": (ia in b["occluded_by"], ib in a["occluded_by"]),
        "larger than": (SIZE_RANK.index(a["size"]) > SIZE_RANK.index(b["size"]),
                        SIZE_RANK.index(a["size"]) < SIZE_RANK.index(b["size"])),
    }[m[3]]
    assert any(truth), f"undecidable: {question}"
    return "yes" if truth[0] else "no"


def test_vqa_answers_are_right_and_closed(scenes):
    answers = set(world_meta(CFG)["answers"])
    assert world_meta(CFG)["answers"] == sorted(answers)
    types, yes_no, counts = Counter(), {}, {"total": Counter(), "focus": Counter()}
    for r in scenes:
        for q in r["vqa"]:
            assert q["answer"] in answers and q["type"] in VQA_TYPES
            assert q["answer"] == expected_answer(q["question"], r), q["question"]
            types[q["type"]] += 1
            if q["answer"] in ("yes", "no"):
                yes_no.setdefault(q["type"], Counter())[q["answer"]] += 1
            if q["type"] == "count":
                counts["total" if q["question"] == "how many shapes are there?" else "focus"][q["answer"]] += 1
        assert sum(q["type"] == "count" for q in r["vqa"]) == 2  # the total and the plan's count focus
    assert set(types) == set(VQA_TYPES)
    for qtype, tally in yes_no.items():  # every yes/no question comes with its mirror image
        assert 0.4 < tally["yes"] / sum(tally.values()) < 0.6, (qtype, tally)
    # No favourite count: the total is uniform over 1..5, the focus (a shape or colour) over 0..3.
    assert set(counts["total"]) == set(NUMBER_WORDS[1:6]) and set(counts["focus"]) == set(NUMBER_WORDS[:4])
    for tally in counts.values():
        assert max(tally.values()) < 1.6 * min(tally.values()), counts


def test_scene_plans_balance_counts_and_backgrounds(scenes):
    joint = count_joint(1, 5)
    assert np.allclose(joint.sum(1), 1 / 5) and np.allclose(joint.sum(0), 1 / 4)
    assert all(joint[n - 1, k] == 0 for n in range(1, 6) for k in range(4) if k > n)
    assert Counter(r["background"] for r in scenes) == {b: N_SCENES // 4 for b in BACKGROUNDS}
    n_objects = Counter(len(r["objects"]) for r in scenes)
    assert set(n_objects) == {1, 2, 3, 4, 5} and max(n_objects.values()) < 1.6 * min(n_objects.values()), n_objects
    shapes = Counter(o["shape"] for r in scenes for o in r["objects"])
    colours = Counter(o["colour"] for r in scenes for o in r["objects"])
    assert max(shapes.values()) < 1.5 * min(shapes.values()) and max(colours.values()) < 1.5 * min(colours.values())


SPREAD = CARD_FACTOR[1] / CARD_FACTOR[0]  # depth offsets of cards: within this ground ratio, either may be nearer
RELATIONS = ("to the left of", "to the right of", "above", "below", "nearer to the camera than",
             "farther from the camera than")


def ground(o: dict, size: int) -> float:
    return float(ground_depth(size)[int(o["base"]) - 1])


def apart(a: dict, b: dict) -> bool:
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    return ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0


def relation_truth(a: int, word: str, b: int, r: dict) -> bool | None:
    """Whether "the A <word> the B" holds; None when the image cannot order the two (depth only)."""
    objects, size = r["objects"], r["width"]
    oa, ob = objects[a], objects[b]
    if word in ("nearer to the camera than", "farther from the camera than"):
        if a in ob["occluded_by"] or b in oa["occluded_by"]:
            a_nearer = a in ob["occluded_by"]
        else:
            ga, gb = ground(oa, size), ground(ob, size)
            if max(ga, gb) < SPREAD * min(ga, gb):  # the cards' own offsets could put either in front
                assert apart(oa, ob), "touching shapes show which is painted over the other"
                return None
            assert oa["box"][3] == oa["base"] and ob["box"][3] == ob["base"], "a base row the image hides"
            a_nearer = ga < gb
            assert a_nearer == (oa["depth"] < ob["depth"])
        return a_nearer if word.startswith("nearer") else not a_nearer
    truth = {
        "to the left of": (clearly_before(oa, ob, 0, size), clearly_before(ob, oa, 0, size)),
        "to the right of": (clearly_before(ob, oa, 0, size), clearly_before(oa, ob, 0, size)),
        "above": (clearly_before(oa, ob, 1, size), clearly_before(ob, oa, 1, size)),
        "below": (clearly_before(ob, oa, 1, size), clearly_before(oa, ob, 1, size)),
    }[word]
    assert any(truth), f"undecidable: {word}"
    return truth[0]


def statement_truth(statement: str, r: dict) -> bool | None:
    """True/False as the image settles it, None when it cannot: a statement about a colour and shape the
    image does not show, or a depth order it cannot see."""
    objects = r["objects"]
    shown = {(o["colour"], o["shape"]): i for i, o in enumerate(objects)}
    if m := re.fullmatch(rf"{NAME} is (small|medium|large)\.", statement):
        return objects[shown[m[1], m[2]]]["size"] == m[3] if (m[1], m[2]) in shown else None
    m = re.fullmatch(rf"{NAME} is ({'|'.join(RELATIONS)}) {NAME}\.", statement)
    assert m, statement
    if (m[1], m[2]) not in shown or (m[4], m[5]) not in shown:
        return None
    return relation_truth(shown[m[1], m[2]], m[3], shown[m[4], m[5]], r)


def test_entailment_labels_match_what_the_image_settles(scenes):
    labels, forms = Counter(), {}
    for r in scenes:
        for e in r["entailment"]:
            truth = statement_truth(e["statement"], r)
            assert e["label"] == {True: "entailment", False: "contradiction", None: "neutral"}[truth], e
            labels[e["label"]] += 1
            form = re.sub(rf"\b({'|'.join([*COLOURS, *SHAPES])})\b", "X", e["statement"])
            forms.setdefault(form, Counter())[e["label"]] += 1
        # One statement of each label per family: the same templates for all three.
        tally = Counter(e["label"] for e in r["entailment"])
        assert len(set(tally.values())) == 1 and len(tally) == 3, tally
    assert labels["entailment"] == labels["neutral"] == labels["contradiction"]
    assert len(forms) >= 8 and all(len(c) == 3 for c in forms.values() if sum(c.values()) >= 30), forms


SIZED = rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"


def listing_truth(text: str, r: dict) -> bool:
    """A sentence naming objects (with sizes) and a background, possibly a count: all of it must be exact."""
    named = Counter(re.findall(SIZED, text))
    background = re.search(r"\b(?:on a|a) (\w+) (?:background|scene)\b", text)[1]
    count = re.match(r"(\w+) shapes? on", text)
    right = named == Counter((o["size"], o["colour"], o["shape"]) for o in r["objects"])
    right &= background == r["background"]
    if len(r["objects"]) == 1:  # a lone object is placed: the third of the image its centre is in
        x, y = centre(r["objects"][0])
        row, col = ("top", "", "bottom")[int(3 * y / r["height"])], ("left", "", "right")[int(3 * x / r["width"])]
        spot = " ".join(w for w in (row, col) if w) or "centre"
        right &= bool(re.search(rf" (?:at|on|in) the {spot}\b(?! left| right)", text))
    if count:
        right &= NUMBER_WORDS.index(count[1]) == len(r["objects"])
    return right


def clause_truth(clause: str, r: dict) -> bool:
    objects = r["objects"]
    if m := re.fullmatch(rf"{NAME} partly hides {NAME}", clause):
        return find(objects, m[1], m[2]) in objects[find(objects, m[3], m[4])]["occluded_by"]
    m = re.fullmatch(rf"{NAME} is the (leftmost|nearest) shape", clause)
    return resolve(f"the {m[3]} shape", objects, r["width"]) == [find(objects, m[1], m[2])]


def itm_truth(text: str, r: dict) -> bool:
    objects = r["objects"]
    if m := re.fullmatch(r"there (?:is|are) (\w+) shapes?\.", text):
        return NUMBER_WORDS.index(m[1]) == len(objects)
    if m := re.fullmatch(rf"there is {SIZED}\.", text):
        return (m[1], m[2], m[3]) in {(o["size"], o["colour"], o["shape"]) for o in objects}
    if m := re.fullmatch(rf"({NAME} partly hides {NAME})\.", text):
        return clause_truth(m[1], r)
    if m := re.fullmatch(rf"{NAME} is ({'|'.join(RELATIONS)}) {NAME}\.", text):
        truth = relation_truth(find(objects, m[1], m[2]), m[3], find(objects, m[4], m[5]), r)
        assert truth is not None, f"an ITM statement the image cannot settle: {text}"
        return truth
    return listing_truth(text, r)


def test_captions_name_everything_and_itm_labels_are_true(scenes):
    matches, by_caption = Counter(), {}
    for r in scenes:
        assert len(r["captions"]) >= 3 and len(set(r["captions"])) == len(r["captions"])
        for c in r["captions"]:
            listing, _, clause = c.partition(", where ")
            assert listing_truth(listing, r), c
            assert not clause or clause_truth(clause.removesuffix("."), r), c
            key = (r["background"], tuple((o["size"], o["colour"], o["shape"]) for o in r["objects"]))
            assert by_caption.setdefault(c, key) == key, f"two different scenes share the caption {c!r}"
        assert listing_truth(r["description"], r)
        for item in r["itm"]:
            assert itm_truth(item["text"], r) == item["match"], item
            matches[item["match"]] += 1
        assert Counter(item["match"] for item in r["itm"])[True] == len(r["itm"]) // 2
    assert matches[True] == matches[False] > 0


def test_regions_describe_each_object(scenes):
    for r in scenes:
        assert [g["object"] for g in r["regions"]] == list(range(len(r["objects"])))
        for g, o in zip(r["regions"], r["objects"]):
            assert g["box"] == o["box"] and g["category"] == o["shape"]
            assert g["description"].startswith(f"a {o['size']} {o['colour']} {o['shape']}")
            assert ("partly hidden" in g["description"]) == bool(o["occluded_by"])
    assert any(o["occluded_by"] for r in scenes for o in r["objects"])


def pair_truth(statement: str, left: list[dict], right: list[dict]) -> bool:
    side = {"left": left, "right": right}
    shapes = {k: Counter(o["shape"] for o in v) for k, v in side.items()}
    if m := re.fullmatch(r"the (left|right) image has more (\w+) than the (left|right) image\.", statement):
        if m[2] == "shapes":
            return len(side[m[1]]) > len(side[m[3]])
        return shapes[m[1]][PLURALS[m[2]]] > shapes[m[3]][PLURALS[m[2]]]
    if statement == "the two images contain the same number of shapes.":
        return len(left) == len(right)
    if m := re.fullmatch(r"both images contain a (\w+) shape\.", statement):
        return all(any(o["colour"] == m[1] for o in v) for v in (left, right))
    if m := re.fullmatch(r"both images contain a (\w+)\.", statement):
        return all(shapes[k][m[1]] > 0 for k in side)
    if m := re.fullmatch(r"neither image contains a (\w+)\.", statement):
        return all(shapes[k][m[1]] == 0 for k in side)
    if m := re.fullmatch(r"exactly one image contains a (\w+) (\w+)\.", statement):
        return sum(any((o["colour"], o["shape"]) == (m[1], m[2]) for o in v) for v in (left, right)) == 1
    m = re.fullmatch(r"there are (\w+) shapes in total\.", statement)
    return NUMBER_WORDS.index(m[1]) == len(left) + len(right)


def test_pairs_are_balanced_and_true_to_both_images():
    pairs = [make_pair(CFG, i) for i in range(100)]
    assert Counter(p["label"] for p in pairs) == {"true": 50, "false": 50}
    assert len({" ".join(p["statement"].split()[:3]) for p in pairs}) >= 5, "too few statement templates"
    for p in pairs:
        assert pair_truth(p["statement"], p["objects"], p["objects2"]) == (p["label"] == "true"), p["statement"]
        assert decode_rgb(p["image"]).shape == decode_rgb(p["image2"]).shape == (p["height"], p["width"], 3)
        assert p["image"] != p["image2"]


def test_clips_move_one_object_steadily():
    directions = Counter()
    unit = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for i in range(60):
        c = make_clip(CFG, i, frames=4)
        objects, mover, tracks = c["objects"], c["mover"], c["tracks"]
        mo = objects[mover]
        assert c["action"] == f"{mo['colour']} {mo['shape']} moves {c['direction']}"
        assert len(c["frames"]) == len(tracks) == 4 and tracks[0] == [o["box"] for o in objects]
        ux, uy = unit[c["direction"]]
        shift = np.subtract(tracks[1][mover], tracks[0][mover])  # (4,) per-frame change of x0 y0 x1 y1
        step = shift[0] * ux + shift[1] * uy
        assert step > 0 and shift.tolist() == [ux * step, uy * step, ux * step, uy * step]
        # Pixels of the mover's colour, minus still objects of that colour, must be where its track says.
        still = np.zeros((c["height"], c["width"]), bool)
        for k, o in enumerate(objects):
            if k != mover and o["colour"] == mo["colour"]:
                still |= decode_png(o["mask"]) == 255
        for t, frame in enumerate(c["frames"]):
            assert all(box == tracks[0][k] for k, box in enumerate(tracks[t]) if k != mover)
            assert np.subtract(tracks[t][mover], tracks[0][mover]).tolist() == (t * shift).tolist()
            pixels = (decode_rgb(frame) == COLOURS[mo["colour"]]).all(-1) & ~still
            ys, xs = np.nonzero(pixels)
            assert [xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0] == tracks[t][mover]
        directions[c["direction"]] += 1
    assert set(directions) == set(unit)
    assert c["action"] in meta_for("world_video", CFG)["actions"]


@pytest.mark.parametrize("size", [48, 96])
def test_resolution_is_configurable(size):
    cfg = WorldConfig(seed=1, size=size)
    for i in range(10):
        r = make_scene(cfg, i)
        assert decode_rgb(r["image"]).shape == (size, size, 3) and r["width"] == r["height"] == size
        assert decode_png(r["segmentation"]).shape == decode_png(r["depth"]).shape == (size, size)
        assert all(0 <= v <= size for o in r["objects"] for v in o["box"])
        for ref in r["refs"]:
            assert resolve(ref["expression"], r["objects"], size) == [ref["object"]]
    assert decode_rgb(make_pair(cfg, 0)["image2"]).shape == (size, size, 3)
    assert decode_rgb(make_clip(cfg, 0, frames=3)["frames"][2]).shape == (size, size, 3)


def test_every_kind_writes_a_store_and_reads_back(tmp_path):
    for kind, (make, _) in KINDS.items():
        meta = meta_for(kind, CFG, "val")
        assert meta["dataset"] == kind and meta["depth_scale"] == 1000 and meta["world_version"] == WORLD_VERSION
        assert meta["categories"] == list(SHAPES) and meta["backgrounds"] == list(BACKGROUNDS)
        assert meta["provenance"]["seed"] == CFG.seed and meta["provenance"]["split"] == "val"
        records = list(iter_world(CFG, 3, "val", start=2, kind=kind))
        with StoreWriter(tmp_path / kind, meta) as w:
            w.extend(records)
        store = RecordStore(tmp_path / kind)
        assert len(store) == 3 and store[1] == records[1] == make(CFG, 3, "val")
    assert meta_for("world_pairs", CFG)["labels"] == ["false", "true"]
    with pytest.raises(ValueError, match="world_video"):
        meta_for("world_audio", CFG)


def test_a_store_of_another_world_version_is_refused(tmp_path):
    records = list(iter_world(CFG, 2, "val"))
    meta = meta_for("world", CFG, "val")
    old = {k: v for k, v in meta.items() if k != "world_version"}  # written before versions were recorded
    for name, m, version in (("older", {**meta, "world_version": WORLD_VERSION - 1}, WORLD_VERSION - 1),
                             ("unversioned", old, 1)):
        with StoreWriter(tmp_path / name, m) as w:
            w.extend(records)
        with pytest.raises(StoreError) as err:
            RecordStore(tmp_path / name)
        message = str(err.value)
        assert str(tmp_path / name) in message
        assert f"world version {version}" in message and f"world version {WORLD_VERSION}" in message
        assert len(RecordStore(tmp_path / name, check_world=False)) == 2  # inspection still reads it
    with StoreWriter(tmp_path / "imported", {"dataset": "mine"}) as w:  # not the world's: not checked
        w.extend(records)
    assert len(RecordStore(tmp_path / "imported")) == 2


def test_no_training_scene_is_an_evaluation_scene():
    """Train, val and test draw from disjoint random streams: none of 3,000 training images reappears
    among 300 val and 300 test scenes (a shared stream would repeat them all). Captions may: a caption
    names the objects, not their exact placement."""
    cfg = WorldConfig(seed=0)
    train = [make_scene(cfg, i, "train") for i in range(3000)]
    seen_images = {s["image"] for s in train}
    for split in ("val", "test"):
        held_out = [make_scene(cfg, i, split) for i in range(300)]
        assert not seen_images & {s["image"] for s in held_out}, split

"""Evaluators against hand-computed values (unitok.eval)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from unitok.eval import (
    EVALUATORS,
    Evaluator,
    build_evaluator,
    evaluate,
    format_table,
    metric_names,
    register_evaluator,
    write_results,
)
from unitok.eval.captions import ptb_tokenize, simple_tokenize
from unitok.eval.vqa import normalize_answer, vqa_score
from unitok.registry import Registry, RegistryError
from unitok.tasks.outputs import Box, Boxes, DenseMap, GeneratedImage, Label, Region, Text

# --------------------------------------------------------------------------- registry


def test_registry_lookup_error_lists_names():
    reg = Registry("widget")
    reg.register("b", 2)

    @reg.register("a")
    def a():
        return 1

    assert reg.get("a") is a and reg.names() == ["a", "b"] and "b" in reg and len(reg) == 2
    with pytest.raises(KeyError, match=r"unknown widget 'c'; known: a, b"):
        reg.get("c")


def test_registry_duplicate_is_loud():
    reg = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a", 2)
    assert reg.get("a") == 1


def test_unknown_metric_lists_known():
    with pytest.raises(KeyError) as err:
        build_evaluator("bleu")
    for name in ("coco_map", "caption", "vqa_accuracy", "grounding_acc@T", "miou", "image_fidelity"):
        assert name in str(err.value)


def test_duplicate_evaluator_registration_raises():
    class Another(Evaluator):
        primary = "accuracy"

    with pytest.raises(RegistryError, match="'accuracy' is already registered"):
        register_evaluator("accuracy")(Another)
    assert EVALUATORS.get("accuracy").__name__ == "AccuracyEvaluator"


def test_bad_options_and_suffixes():
    with pytest.raises(TypeError, match="accepted: iou_threshold"):
        build_evaluator("grounding_acc@0.5", threshold=0.3)
    with pytest.raises(ValueError, match="takes no '@' parameter"):
        build_evaluator("accuracy@0.5")
    with pytest.raises(ValueError, match="not a number"):
        build_evaluator("grounding_acc@half")
    with pytest.raises(ValueError, match="before any add"):
        build_evaluator("accuracy").compute()


def test_every_metric_has_a_primary_key():
    assert set(metric_names()) >= {"coco_map", "caption", "vqa_accuracy", "grounding_acc@T", "accuracy",
                                   "miou", "depth", "retrieval", "image_fidelity"}  # fmt: skip
    for name in EVALUATORS.names():
        assert EVALUATORS.get(name).primary


# --------------------------------------------------------------------------- detection


def B(x0, y0, x1, y1, label="a", score=1.0):
    return Box(x0, y0, x1, y1, label, score)


def test_coco_map_perfect():
    refs = [Boxes([B(0, 0, 10, 10, "a"), B(20, 20, 40, 30, "b")]), Boxes([B(5, 5, 25, 25, "b")])]
    out = evaluate("coco_map", [(r, r, i) for i, r in enumerate(refs)])
    assert out == pytest.approx({"map": 1.0, "map@0.5": 1.0, "map@0.75": 1.0, "ar@100": 1.0})


def test_coco_map_shifted_box():
    # IoU 0.82: a hit at the thresholds 0.50, 0.55, ..., 0.80 (7 of 10), a miss at 0.85..0.95.
    out = evaluate("coco_map", [(Boxes([B(0, 0, 10, 8.2)]), Boxes([B(0, 0, 10, 10)]))])
    assert out["map"] == pytest.approx(0.7)
    assert out["map@0.5"] == pytest.approx(1.0) and out["map@0.75"] == pytest.approx(1.0)
    assert out["ar@100"] == pytest.approx(0.7)


def test_coco_map_missing_class_and_unknown_label():
    ref = Boxes([B(0, 0, 10, 10, "a"), B(20, 20, 30, 30, "b")])
    only_a = Boxes([B(0, 0, 10, 10, "a")])
    assert evaluate("coco_map", [(only_a, ref)])["map"] == pytest.approx(0.5)  # AP_a = 1, AP_b = 0
    # The right box under a label no reference uses matches nothing: class b is still missed.
    mislabelled = Boxes([B(0, 0, 10, 10, "a"), B(20, 20, 30, 30, "zebra")])
    assert evaluate("coco_map", [(mislabelled, ref)])["map"] == pytest.approx(0.5)
    assert evaluate("coco_map", [(Boxes([]), ref)])["map"] == 0.0
    assert evaluate("coco_map", [(None, ref)])["map"] == 0.0


def test_coco_map_false_positive_ranked_first():
    # FP (0.9) before TP (0.5): precision 1/2 at recall 1, so interpolated AP = 0.5 at every threshold.
    pred = Boxes([B(50, 50, 60, 60, score=0.9), B(0, 0, 10, 10, score=0.5)])
    out = evaluate("coco_map", [(pred, Boxes([B(0, 0, 10, 10)]))])
    assert out["map"] == pytest.approx(0.5) and out["ar@100"] == pytest.approx(1.0)
    # Swapping the scores ranks the TP first: AP 1.
    pred = Boxes([B(50, 50, 60, 60, score=0.5), B(0, 0, 10, 10, score=0.9)])
    assert evaluate("coco_map", [(pred, Boxes([B(0, 0, 10, 10)]))])["map"] == pytest.approx(1.0)


def test_coco_map_repeated_image_id_is_an_error():
    ev = build_evaluator("coco_map")
    ev.add(Boxes([]), Boxes([B(0, 0, 1, 1)]), image_id="x")
    with pytest.raises(ValueError, match="added twice"):
        ev.add(Boxes([]), Boxes([B(0, 0, 1, 1)]), image_id="x")


# --------------------------------------------------------------------------- captions

CAPTION_REFS = [
    ["a red circle next to a blue square on a gray background", "two shapes: a red circle and a blue square"],
    ["a small yellow triangle above a large green cross", "there is a yellow triangle and a green cross"],
    ["one purple diamond on a black background", "a single purple diamond sits in the middle"],
]


def test_caption_identical_vs_unrelated():
    same = evaluate("caption", [(Text(refs[0]), refs) for refs in CAPTION_REFS], tokenizer="simple")
    assert same["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert same["bleu1"] == pytest.approx(1.0, abs=1e-6)
    assert same["rouge_l"] == pytest.approx(1.0)
    assert same["cider"] > 1.0
    unrelated = ["the quick brown fox jumps over the lazy dog", "stock prices fell sharply today", "it rained"]
    other = evaluate("caption", [(Text(u), r) for u, r in zip(unrelated, CAPTION_REFS)], tokenizer="simple")
    assert other["bleu4"] < 0.05 and other["cider"] < 0.1 * same["cider"] and other["rouge_l"] < 0.3
    assert set(same) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l"}


def test_caption_single_image_cider_is_zero():
    # CIDEr's IDF comes from the set's references: one image means every n-gram has IDF 0.
    out = evaluate("caption", [(Text(CAPTION_REFS[0][0]), CAPTION_REFS[0])], tokenizer="simple")
    assert out["cider"] == pytest.approx(0.0) and out["bleu4"] == pytest.approx(1.0, abs=1e-6)


def test_simple_tokenizer():
    text = "Two shapes: a red circle, and the dog's ball!"
    assert simple_tokenize(text) == "two shapes a red circle and the dog 's ball"


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs java")
def test_ptb_tokenizer_keeps_lines():
    out = ptb_tokenize(["A dog's ball, isn't it?", "", "Two shapes: a red circle."])
    assert out == ["a dog 's ball is n't it", "", "two shapes a red circle"]
    ptb = evaluate("caption", [(Text(refs[0]), refs) for refs in CAPTION_REFS], tokenizer="ptb")
    assert ptb["bleu4"] == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("Two", "2"),
        ("a dog", "dog"),
        ("yes.", "yes"),
        ("The Red Circle", "red circle"),
        ("dont know", "don't know"),
        ("100,978", "100978"),
        ("3.5", "3.5"),
        ("t-shirt", "t shirt"),
        ("2:30", "2:30"),
        ("girl's", "girl's"),
        ("  none  ", "0"),
        ("yes!?", "yes"),
    ],
)
def test_vqa_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_vqa_ten_answer_formula():
    others = ["no"] * 10
    for matches, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        answers = ["yes"] * matches + others[matches:]
        # matches m: leaving out a matching answer gives min((m-1)/3, 1), a non-matching one min(m/3, 1).
        assert vqa_score("Yes.", answers) == pytest.approx(expected), matches


def test_vqa_evaluator_few_answers_and_labels():
    pairs = [(Text("Two"), "2"), (Label("a dog"), ["dog"]), (Text("cat"), ["dog", "puppy"]), (None, "yes")]
    assert evaluate("vqa_accuracy", pairs) == {"accuracy": pytest.approx(0.5)}


# --------------------------------------------------------------------------- grounding, accuracy


def test_grounding_threshold_edge():
    ref = Region(Box(0, 0, 10, 10))
    ev = build_evaluator("grounding_acc@0.5")
    ev.add(Region(Box(0, 0, 10, 5)), ref)  # IoU exactly 0.5: counts
    ev.add(Box(0, 0, 10, 4.9), ref)  # IoU 0.49: does not
    out = ev.compute()
    assert ev.primary == "acc@0.5"
    assert out == {"acc@0.5": pytest.approx(0.5), "mean_iou": pytest.approx(0.495)}
    strict = evaluate("grounding_acc@0.7", [(Region(Box(0, 0, 10, 8)), ref), (None, ref), (Boxes([]), ref)])
    assert strict == {"acc@0.7": pytest.approx(1 / 3), "mean_iou": pytest.approx(0.8 / 3)}


def test_grounding_best_scoring_box_of_boxes():
    pred = Boxes([Box(50, 50, 60, 60, score=0.2), Box(0, 0, 10, 10, score=0.9)])
    assert evaluate("grounding_acc@0.5", [(pred, Box(0, 0, 10, 10))])["acc@0.5"] == 1.0


def test_accuracy_exact_match():
    pairs = [(Label("Circle "), "circle"), (Text("square"), "Square"), ("a circle", "circle"), (None, "x")]
    assert evaluate("accuracy", pairs) == {"accuracy": 0.5}


def test_accuracy_says_how_a_list_of_references_is_used():
    """Two captions per image, a task that asks for the first: predicting the other one is right under
    ``any`` (the default), wrong under ``first``; ``all`` needs every reference to agree."""
    refs = ["3 and 7", "two handwritten digits"]
    pairs = [(Text("two handwritten digits"), refs), (Text("3 and 7"), refs), (Text("yes"), ["yes", "Yes "]),
             (Text("no"), "no"), (None, refs)]
    assert evaluate("accuracy", pairs) == {"accuracy": 0.8}
    assert evaluate("accuracy", pairs, references="any") == {"accuracy": 0.8}
    assert evaluate("accuracy", pairs, references="first") == {"accuracy": 0.6}
    assert evaluate("accuracy", pairs, references="all") == {"accuracy": 0.4}
    with pytest.raises(ValueError, match="references: expected one of any, all, first, got 'some'"):
        build_evaluator("accuracy", references="some")


# --------------------------------------------------------------------------- dense


def seg(values, classes=None):
    return DenseMap(np.asarray(values, dtype=np.int64), "segmentation", classes)


def test_miou_known_confusion():
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 2, FP 1 -> 2/3.
    out = evaluate("miou", [(seg([[0, 1], [1, 1]]), seg([[0, 0], [1, 1]]))])
    assert out == {"miou": pytest.approx(7 / 12), "pixel_accuracy": pytest.approx(3 / 4)}


def test_miou_accumulates_ignores_and_counts_predicted_only_classes():
    ev = build_evaluator("miou", per_class=True)
    ev.add(seg([[0, 1], [1, 1]]), seg([[0, 0], [1, 1]], ["bg", "circle", "square"]))
    ev.add(seg([[2, 0], [0, 0]]), seg([[0, 0], [255, 0]]))  # 255 ignored; class 2 only predicted
    out = ev.compute()
    # Over both images (7 counted pixels): class 0 TP 3 of 5 reference px, never over-predicted -> 3/5;
    # class 1 TP 2, FP 1 -> 2/3; class 2 only predicted (1 px) -> 0.
    assert out["iou/bg"] == pytest.approx(3 / 5)
    assert out["iou/circle"] == pytest.approx(2 / 3) and out["iou/square"] == 0.0
    assert out["miou"] == pytest.approx((3 / 5 + 2 / 3 + 0) / 3)
    assert out["pixel_accuracy"] == pytest.approx(5 / 7)


def test_miou_resizes_prediction_to_reference():
    pred = seg([[0, 1], [1, 1]])
    ref = seg(np.kron([[0, 1], [1, 1]], np.ones((3, 3), dtype=np.int64)))
    assert evaluate("miou", [(pred, ref)])["miou"] == pytest.approx(1.0)


def test_depth_known_arrays():
    gt = DenseMap(np.array([[1.0, 2.0], [4.0, 0.0]], dtype=np.float32), "depth")  # 0 = invalid
    pred = DenseMap(np.array([[1.0, 2.5], [2.0, 5.0]], dtype=np.float32), "depth")
    out = evaluate("depth", [(pred, gt)])
    # valid errors: |p-g| = 0, .5, 2; relative 0, .25, .5; ratios 1, 1.25, 2.
    assert out["abs_rel"] == pytest.approx(0.25)
    assert out["rmse"] == pytest.approx(math.sqrt(4.25 / 3))
    assert out["delta1"] == pytest.approx(1 / 3)  # 1.25 is not < 1.25
    assert out["delta2"] == pytest.approx(2 / 3) and out["delta3"] == pytest.approx(2 / 3)
    assert build_evaluator("depth").primary == "delta1"
    with pytest.raises(ValueError, match="'segmentation' map"):
        evaluate("depth", [(seg([[1]]), gt)])


def test_caption_unparsed_prediction_scores_zero():
    pairs = [(None, CAPTION_REFS[0]), (Text(""), CAPTION_REFS[1])]
    out = evaluate("caption", pairs, tokenizer="simple")
    assert out["bleu4"] == 0.0 and out["cider"] == 0.0 and out["rouge_l"] == 0.0


# --------------------------------------------------------------------------- retrieval


def test_retrieval_ranks():
    ev = build_evaluator("retrieval")
    ev.add(np.array([0.1, 0.9, 0.5]), 1)  # rank 1
    ev.add(np.array([0.1, 0.9, 0.5]), 2)  # rank 2
    ev.add([0.5, 0.5], 0)  # tie: counted against the true candidate, rank 2
    ev.add_matrix(np.array([[7, 6, 5, 4, 3, 2, 1]]), [5])  # rank 6
    out = ev.compute()
    assert out["r@1"] == pytest.approx(1 / 4) and out["r@5"] == pytest.approx(3 / 4)
    assert out["r@10"] == 1.0 and out["mrr"] == pytest.approx((1 + 0.5 + 0.5 + 1 / 6) / 4)


# --------------------------------------------------------------------------- image fidelity

PALETTE = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "gray": (105, 105, 105)}


def draw(shapes, size=64):
    """An RGB image on a gray background with each (colour, shape, centre x, centre y, radius) drawn."""
    img = Image.new("RGB", (size, size), PALETTE["gray"])
    d = ImageDraw.Draw(img)
    for colour, shape, cx, cy, r in shapes:
        fill = PALETTE[colour]
        if shape == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "triangle":
            d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        elif shape == "diamond":
            d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        elif shape == "cross":
            t = r * 0.38
            d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
            d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    return GeneratedImage(np.asarray(img))


def test_image_fidelity_found_and_missing():
    image = draw([("red", "circle", 18, 18, 10), ("green", "triangle", 44, 44, 10)])
    out = evaluate("image_fidelity", [(image, [("red", "circle"), ("blue", "square")])],
                   palette=PALETTE, background=["gray"])  # fmt: skip
    # red circle found; no blue at all; the green triangle was not asked for.
    expected = {"fidelity": 0.5, "colour_recall": 0.5, "object_recall": 0.5, "object_precision": 0.5}
    assert out == pytest.approx(expected)


def test_image_fidelity_right_colour_wrong_shape():
    image = draw([("red", "square", 30, 30, 12)])
    out = evaluate("image_fidelity", [(image, {"objects": [{"colour": "red", "shape": "circle"}]})],
                   palette=PALETTE, background=["gray"])  # fmt: skip
    assert out["colour_recall"] == 1.0 and out["object_recall"] == 0.0 and out["fidelity"] == 0.0


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "diamond", "cross"])
@pytest.mark.parametrize("radius", [6, 14])
def test_image_fidelity_classifies_each_shape(shape, radius):
    ev = build_evaluator("image_fidelity", palette=PALETTE, background=["gray"])
    (region,) = ev.describe(draw([("blue", shape, 32, 32, radius)]))
    assert region["colour"] == "blue" and region["shape"] == shape, region["scores"]


def test_image_fidelity_options_are_checked():
    with pytest.raises(ValueError, match="palette"):
        build_evaluator("image_fidelity")
    ev = build_evaluator("image_fidelity", palette=PALETTE, background=["gray"])
    with pytest.raises(ValueError, match="not an object colour"):
        ev.add(draw([]), [("orange", "circle")])
    with pytest.raises(ValueError, match="shape 'star' unknown"):
        ev.add(draw([]), [("red", "star")])


# --------------------------------------------------------------------------- report


def test_format_table_and_write_results(tmp_path):
    results = {"detection": {"map": 0.5, "map@0.5": 0.75}, "vqa": {"accuracy": 1.0}}
    table = format_table(results)
    assert table.splitlines()[0] == "| task | metric | value |"
    assert "| detection | map@0.5 | 0.7500 |" in table and "| vqa | accuracy | 1.0000 |" in table
    json_path, md_path = write_results(results, tmp_path / "run")
    assert json.loads(json_path.read_text()) == results
    assert md_path.read_text() == table

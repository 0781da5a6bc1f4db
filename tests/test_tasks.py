"""Task specs (validation names file and field), target formats (round trips) and their grammars."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from unitok.data.world import WorldConfig, make_scene
from unitok.modalities.codec import Codec
from unitok.modalities.text import TextTokenizer
from unitok.model.config import ModelConfig
from unitok.model.transformer import UniTokModel
from unitok.tasks.examples import ExampleBuilder
from unitok.tasks.formats import FORMATS, FormatContext
from unitok.tasks.spec import TaskSpecError, Target, load_task, load_tasks

REPO = Path(__file__).resolve().parents[1]

GOOD = """
name: mytask
data: world
prompt: ["describe the image."]
inputs: {image: image}
target: {format: text, field: captions}
metric: caption
"""


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> Codec:
    cfg = WorldConfig(seed=3)
    text = [c for i in range(60) for c in make_scene(cfg, i)["captions"]] + ["detect the shapes.", "describe the image."]
    text += ["circle", "square", "triangle", "diamond", "cross"]
    tok = TextTokenizer.train(text, tmp_path_factory.mktemp("tok") / "t.model", vocab_size=400)
    return Codec.build(tok, 64)


def write(tmp_path: Path, body: str, name: str = "mytask") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(textwrap.dedent(body))
    return p


@pytest.mark.parametrize("body, field", [
    (GOOD.replace("format: text", "format: textt"), "target.format"),
    (GOOD.replace("metric: caption", "metric: caption\nwieght: 2"), "wieght"),
    (GOOD.replace('prompt: ["describe the image."]', "prompt: []"), "prompt"),
    (GOOD.replace("data: world", ""), "data"),
    (GOOD + "weight: -1\n", "weight"),
    (GOOD + "decoding: {max_tokens: 0}\n", "decoding.max_tokens"),
    (GOOD.replace("format: text, field: captions", "format: boxes, field: objects"), "target.label"),
    (GOOD.replace("format: text, field: captions", "format: label, field: background"), "target.choices"),
    (GOOD.replace('["describe the image."]', '["describe {the image."]'), "prompt"),
])
def test_bad_spec_error_names_file_and_field(tmp_path, body, field):
    path = write(tmp_path, body)
    with pytest.raises(TaskSpecError) as err:
        load_task(path, formats=FORMATS)
    assert str(path) in str(err.value)
    assert f"'{field}" in str(err.value)


def test_bad_yaml_and_unknown_task_name_the_file(tmp_path):
    path = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(TaskSpecError, match="mytask.yaml: not valid YAML"):
        load_task(path)
    write(tmp_path, GOOD)
    with pytest.raises(TaskSpecError, match="unknown task 'nope'.*known tasks: mytask"):
        load_tasks(tmp_path, ["nope"])
    write(tmp_path, GOOD, name="other")
    with pytest.raises(TaskSpecError, match="other.yaml: field 'name'"):
        load_tasks(tmp_path, ["other"])


def test_shipped_specs_load():
    specs = load_tasks(REPO / "tasks", formats=FORMATS)
    assert {"caption", "detection"} <= set(specs)
    for spec in specs.values():
        assert spec.source.endswith(f"{spec.name}.yaml")


def test_boxes_round_trip_through_tokens(codec):
    record = make_scene(WorldConfig(seed=1), 4)
    ctx = FormatContext(codec, Target(format="boxes", field="objects", label="category"), 64, 64)
    fmt = FORMATS.get("boxes")()
    ids, weights = fmt.encode(record["objects"], ctx, None)
    assert len(ids) == len(weights)
    parsed = fmt.decode(ids, ctx).boxes
    assert [b.label for b in parsed] == [o["category"] for o in record["objects"]]
    for b, o in zip(parsed, record["objects"]):
        assert np.allclose(b.xyxy, o["box"], atol=64 / 126 + 1e-6)


def test_text_label_region_round_trip(codec):
    for fmt_name, target, value, check in [
        ("text", Target(format="text", field="x"), "a red circle.", lambda o: o.text == "a red circle."),
        ("label", Target(format="label", field="x", choices=["circle", "cross"]), "cross", lambda o: o.label == "cross"),
        ("region", Target(format="region", field="x"), [4, 8, 30, 60], lambda o: abs(o.box.x1 - 30) < 0.6),
    ]:
        ctx = FormatContext(codec, target, 64, 64)
        fmt = FORMATS.get(fmt_name)()
        ids, _ = fmt.encode(value, ctx, None)
        assert check(fmt.decode(ids, ctx)), fmt_name


def test_example_builder_builds_prompt_images_and_target(codec):
    spec = load_task(REPO / "tasks" / "detection.yaml", formats=FORMATS)
    b = ExampleBuilder(spec, codec, image_size=32, max_prompt_len=32)
    record = make_scene(WorldConfig(seed=2, size=48), 0)
    e = b.build(record)
    assert e.images.shape == (1, 3, 32, 32) and (e.width, e.height) == (48, 48)
    assert codec.decode_text(e.prompt) == spec.prompt[0]
    assert e.target[-1] == 1  # eos
    assert len(e.reference.boxes) == len(record["objects"])
    short = ExampleBuilder(spec, codec, image_size=32, max_prompt_len=2)
    with pytest.raises(ValueError, match="exceeds the model's max_prompt_len=2"):
        short.build(record)


@pytest.mark.parametrize("seed", range(6))
def test_random_model_outputs_always_parse_in_a_mixed_batch(codec, seed):
    """Under random weights every row follows its own task's grammar, so every output parses."""
    from unitok.inference.predictor import Predictor
    from unitok.tasks.spec import TaskSpec

    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=codec.vocab.size, d_model=32, n_heads=2, enc_layers=1, dec_layers=1, image_size=32,
                      expert_ranges=codec.vocab.expert_ranges(("text", "vision")))
    model = UniTokModel(cfg)
    tasks = load_tasks(REPO / "tasks", ["caption", "detection"], formats=FORMATS)
    tasks["shape"] = TaskSpec(name="shape", data="world", prompt=["which shape?"], inputs={"image": "image"},
                              target=Target(format="label", field="x", choices=["circle", "square", "cross"]), metric="accuracy")
    tasks["where"] = TaskSpec(name="where", data="world", prompt=["where?"], inputs={"image": "image"},
                              target=Target(format="region", field="x"), metric="grounding_acc@0.5")
    pred = Predictor(model, codec, tasks, bf16=False)
    records = [make_scene(WorldConfig(seed=seed), i) for i in range(8)]
    names = ["caption", "detection", "shape", "where"]
    examples = [pred.builders[names[i % 4]].build(r, with_target=False) for i, r in enumerate(records)]
    for e, p in zip(examples, pred.predict(examples, max_tokens=30)):
        if e.task == "shape":
            assert p.output.label in ("circle", "square", "cross") and p.finished
        elif e.task == "where":
            assert len(p.tokens) == 4 and all(codec.is_coord(t) for t in p.tokens) and p.finished
        elif e.task == "detection":
            for box in p.output.boxes:
                assert 0 <= box.x0 <= box.x1 <= 64 and 0 <= box.y0 <= box.y1 <= 64 and box.label
        else:
            assert all(codec.is_text(t) for t in p.tokens)


# -- the spec language on real-data shapes: list indexing and where filters ----------------------------------

def test_field_paths_index_lists():
    from unitok.tasks.examples import resolve

    record = {"captions": ["two digits", "a three and a five"], "objects": [{"box": [1, 2, 3, 4], "category": "3"}]}
    assert resolve("captions.0", record) == "two digits"
    assert resolve("captions[1]", record) == "a three and a five"
    assert resolve("captions[-1]", record) == "a three and a five"
    assert resolve("objects[0].category", record) == "3"
    for missing in ("captions.2", "captions[x]", "objects.0.colour"):
        with pytest.raises(KeyError):
            resolve(missing, record)


def test_where_keeps_only_matching_items_and_records(codec):
    from unitok.train.data import TaskSource

    body = GOOD.replace("target: {format: text, field: captions}",
                        "each: questions\ntarget: {format: text, field: answer}\nwhere: {question_type: [count, colour]}")
    spec = parse_spec(body)
    builder = ExampleBuilder(spec, codec, image_size=32, max_prompt_len=32)
    qs = [{"question_type": "count", "answer": "two"}, {"question_type": "shape", "answer": "circle"},
          {"question_type": "colour", "answer": "red"}]
    assert [q["answer"] for q in builder.items({"id": "a", "questions": qs})] == ["two", "red"]
    assert builder.items({"id": "b", "questions": qs[1:2]}) == []

    class Store(list):
        path = Path("<store>")

    store = Store([{"id": "a", "questions": qs}, {"id": "b", "questions": qs[1:2]}, {"id": "c", "questions": qs[:1]}])
    source = TaskSource.filtered(builder, store)
    assert len(source) == 2 and [source.record(i)["id"] for i in range(2)] == ["a", "c"]
    only_shapes = ExampleBuilder(parse_spec(body.replace("[count, colour]", "weight")), codec, image_size=32, max_prompt_len=32)
    with pytest.raises(ValueError, match=r"task mytask .*keeps no record of <store>"):
        TaskSource.filtered(only_shapes, store)


def test_where_values_must_be_scalars_or_lists(tmp_path):
    with pytest.raises(TaskSpecError, match="where"):
        load_task(write(tmp_path, GOOD + "where: {question_type: {nested: 1}}\n"), formats=FORMATS)


def parse_spec(body: str):
    from unitok.tasks.spec import parse_task

    import yaml

    return parse_task(yaml.safe_load(textwrap.dedent(body)), source="<mytask>", formats=FORMATS)


# -- multi-reference metrics: how a list of references is used, and the check that asks --------------------

def _store(root: Path, dataset: str, records: list[dict]) -> None:
    from unitok.data.store import StoreWriter

    with StoreWriter(root / dataset / "val", {"dataset": dataset}) as w:
        w.extend(records)


def test_bad_metric_option_names_the_option(tmp_path):
    from unitok.recipes import check_metric

    spec = load_task(write(tmp_path, GOOD.replace("metric: caption", "metric: accuracy\nmetric_options: {references: some}")),
                     formats=FORMATS)
    with pytest.raises(TaskSpecError, match=r"mytask\.yaml: field 'metric_options\.references': expected one of any, "
                                            r"all, first, got 'some'"):
        check_metric(spec)


def test_check_warns_when_exact_match_accuracy_meets_a_list_field(tmp_path):
    from unitok.recipes import list_reference_warnings

    digits = [{"id": "a", "captions": ["3 and 7", "two handwritten digits"], "digits": "3 7",
               "questions": [{"q": "how many?", "answers": ["2", "two"], "kind": "count"},
                             {"q": "which?", "answer": "3", "kind": "read"}]}]
    _store(tmp_path / "data", "digits", digits)
    body = GOOD.replace("data: world", "data: digits").replace("metric: caption", "metric: accuracy")
    spec = load_task(write(tmp_path, body), formats=FORMATS)
    (warning,) = list_reference_warnings(spec, tmp_path / "data")
    assert warning.startswith(f"{spec.source}: field 'target.field': warning: 'captions' is a list in ")
    assert "record 'a' has 2" in warning and "references: any | all | first" in warning
    # said how the references are used, indexed one, a scalar field, another metric, no data: no warning
    for change in (("metric: accuracy", "metric: accuracy\nmetric_options: {references: first}"),
                   ("field: captions", "field: captions.0"), ("field: captions", "field: digits"),
                   ("metric: accuracy", "metric: caption")):
        quiet = load_task(write(tmp_path, body.replace(*change)), formats=FORMATS)
        assert list_reference_warnings(quiet, tmp_path / "data") == [], change
    assert list_reference_warnings(spec, tmp_path / "nowhere") == []
    # each + where: the item that passes the filter is the one looked at
    each = body.replace("target: {format: text, field: captions}",
                        "each: questions\nwhere: {kind: count}\ntarget: {format: text, field: answers}")
    (warning,) = list_reference_warnings(load_task(write(tmp_path, each), formats=FORMATS), tmp_path / "data")
    assert "'answers' is a list" in warning
    read = each.replace("kind: count", "kind: read").replace("field: answers", "field: answer")
    assert list_reference_warnings(load_task(write(tmp_path, read), formats=FORMATS), tmp_path / "data") == []
    with_reference = body.replace("field: captions}", "field: digits, reference: captions}")
    (warning,) = list_reference_warnings(load_task(write(tmp_path, with_reference), formats=FORMATS), tmp_path / "data")
    assert "field 'target.reference'" in warning


"""The Gradio demo (`app.py`) served in-process on a free port and called as a user's script would,
through `gradio_client`: every task's endpoint, bad uploads, a failing request, concurrent clients.
Also the Pipeline behaviours the page relies on (routing, forced tasks, regions, mixed batches).
It serves the shipped default checkpoint (`checkpoints/default`), as `python app.py` does."""
from __future__ import annotations

import importlib.util
import io
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unitok  # noqa: F401  (before torch: OMP_WAIT_POLICY)
from unitok.inference.pipeline import Pipeline, UnknownPromptError
from unitok.tasks.outputs import Box, Boxes, DenseMap, GeneratedImage, Label, Region, Text

from conftest import REPO

# What each target format answers with (a format not listed here is only checked to answer).
OUTPUT_TYPES = {"text": Text, "label": Label, "boxes": Boxes, "region": Region, "image": GeneratedImage,
                "dense": DenseMap, "masked_text": Text}

# Gradio's queue trips pandas deprecation warnings that say nothing about this code.
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


def load_app():
    spec = importlib.util.spec_from_file_location("unitok_app", REPO / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    """The shipped default checkpoint: every task in tasks/, what `python app.py` serves."""
    return Pipeline.from_pretrained()


@pytest.fixture(scope="module")
def served(pipe, tmp_path_factory):
    """(app module, demo, gradio_client.Client) for the app on a random free port."""
    from gradio_client import Client

    app = load_app()
    demo = app.build_demo(pipe, examples_dir=str(tmp_path_factory.mktemp("examples")))
    app.launch(demo, port=free_port(), block=False, quiet=True)
    try:
        yield app, demo, Client(demo.local_url, verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def world_files(tmp_path_factory) -> dict:
    """Held-out world inputs as files: a scene, a pair, a clip's frames, and a region of the scene."""
    from unitok.data.world import WorldConfig, make_clip, make_pair, make_scene

    tmp = tmp_path_factory.mktemp("inputs")
    cfg = WorldConfig(seed=0)
    scene, pair, clip = make_scene(cfg, 3, "test"), make_pair(cfg, 3, "test"), make_clip(cfg, 3, "test")

    def write(name, data):
        (tmp / name).write_bytes(data)
        return str(tmp / name)

    return {"image": write("scene.png", scene["image"]),
            "pair": (write("l.png", pair["image"]), write("r.png", pair["image2"])),
            "frames": [write(f"f{t}.png", f) for t, f in enumerate(clip["frames"])],
            "region": ", ".join(f"{v:g}" for v in scene["regions"][0]["box"]), "statement": pair["statement"]}


def request_for(spec, files) -> dict:
    """Keyword arguments for a task's endpoint: the inputs it takes, and a prompt when it needs words."""
    from gradio_client import handle_file

    kwargs = {}
    if spec.inputs.image:
        kwargs["image"] = handle_file(files["pair"][0] if spec.inputs.image2 else files["image"])
    if spec.inputs.image2:
        kwargs["image2"] = handle_file(files["pair"][1])
    if spec.inputs.video:
        kwargs["video"] = [handle_file(f) for f in files["frames"]]
    if spec.inputs.region:
        kwargs["region"] = files["region"]
    fields = spec.placeholders() - {"region"}
    if fields:
        kwargs["prompt"] = spec.prompt[0].format(**{f: files["statement"] if f == "statement" else "the red circle"
                                                    for f in fields})
    return kwargs


# ------------------------------------------------------------------------------ the served app
def test_every_task_has_an_endpoint_that_answers(served, pipe, world_files):
    _, _, client = served
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {f"/{name}" for name in pipe.tasks} | {"/predict"} <= set(endpoints)
    for name, spec in pipe.tasks.items():
        annotated, picture, text, structured = client.predict(**request_for(spec, world_files), api_name=f"/{name}")
        assert structured["task"] == name
        if spec.target.format in OUTPUT_TYPES:
            assert structured["type"] == OUTPUT_TYPES[spec.target.format].__name__, name
        assert isinstance(text, str), name
        # Depth maps and generated images come back as a picture; everything else drawn on the input.
        as_picture = spec.target.format == "image" or spec.target.kind == "depth"
        assert (picture is not None) == as_picture and (annotated is None) == as_picture, name
        assert Path(picture if as_picture else annotated["image"]).exists(), name
        if spec.inputs.region or spec.target.format == "region":  # the region is drawn on the image
            assert len(annotated["annotations"]) == 1, name


def test_page_routes_a_free_prompt_and_shows_boxes(served, world_files):
    from gradio_client import handle_file

    _, _, client = served
    scene = handle_file(world_files["image"])
    # The page's endpoint: a typed prompt picks its task whatever the dropdown says.
    _, _, _, structured = client.predict("caption", "Find every object", scene, None, None, None, api_name="/predict")
    assert structured["task"] == "detection" and structured["type"] == "Boxes"
    # An empty prompt runs the chosen task's own; a region typed in the prompt is used as the region.
    _, _, _, structured = client.predict("caption", "", scene, None, None, None, api_name="/predict")
    assert structured["task"] == "caption"
    annotated, _, _, structured = client.predict("caption", "what is in [4, 4, 40, 40]?", scene, None, None, None,
                                                 api_name="/predict")
    assert structured["task"] == "region_caption" and len(annotated["annotations"]) == 1


def test_bad_requests_get_a_clear_message_and_the_server_keeps_serving(served, pipe, world_files, tmp_path,
                                                                        monkeypatch):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    _, _, client = served
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(tiny)
    tiff = tmp_path / "scan.tif"
    Image.new("RGB", (32, 32)).save(tiff)
    scene = handle_file(world_files["image"])
    bad = [
        (dict(image=handle_file(str(not_image))), "/caption", "notes.png) is not an image this demo can read"),
        (dict(image=handle_file(str(tiny))), "/detection", "is 4x4 pixels; images must be 8 to 4096 pixels a side"),
        (dict(image=handle_file(str(tiff))), "/caption", "is a TIFF file; upload a PNG, JPEG, WebP, BMP or GIF file"),
        (dict(video=[handle_file(str(not_image))]), "/action", "video frame 1 (notes.png) is not an image"),
        (dict(), "/caption", "task caption needs image="),
        (dict(image=scene, prompt="sing me a song"), "/vqa", "task vqa needs question in its prompt"),
        (dict(image=scene, region="1, 2, three"), "/region_caption", "region: write four numbers"),
        (dict(image=scene, region="30, 30, 10, 10"), "/region_caption", "x0 < x1 and y0 < y1"),
    ]
    for kwargs, endpoint, message in bad:
        with pytest.raises(AppError, match=message.replace("(", r"\(").replace(")", r"\)")):
            client.predict(**kwargs, api_name=endpoint)
    with pytest.raises(AppError, match="no task matches the prompt 'sing'.*caption: 'describe the image.'"):
        client.predict("caption", "sing", scene, None, None, None, api_name="/predict")

    # A failure inside the model reaches only its request, and the next request is served.
    real_run = pipe.run
    monkeypatch.setattr(pipe, "run", lambda examples: (_ for _ in ()).throw(RuntimeError("simulated fault")))
    with pytest.raises(AppError, match="prediction failed: RuntimeError: simulated fault"):
        client.predict(image=scene, api_name="/caption")
    monkeypatch.setattr(pipe, "run", real_run)
    _, _, text, structured = client.predict(image=scene, api_name="/caption")
    assert structured["type"] == "Text" and text


def test_eight_concurrent_clients_are_all_served(served, world_files):
    from gradio_client import handle_file

    _, _, client = served
    scene = handle_file(world_files["image"])
    jobs = [client.submit(image=scene, api_name="/detection" if k % 2 else "/caption") for k in range(8)]
    results = [job.result(timeout=120) for job in jobs]
    assert [r[3]["task"] for r in results] == ["caption", "detection"] * 4


def test_uploads_are_checked_for_size(served, tmp_path, monkeypatch):
    import gradio as gr

    app, _, _ = served
    big = tmp_path / "big.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(big)
    monkeypatch.setattr(app, "MAX_UPLOAD_MB", 0.001)
    with pytest.raises(gr.Error, match=r"MB; uploads are limited to 0.001 MB"):
        app.checked_image({"path": str(big), "orig_name": "big.png"}, "image")


def test_page_is_offline_and_has_examples_for_every_task(served, pipe):
    import httpx

    _, demo, _ = served
    theme = httpx.get(demo.local_url + "theme.css", timeout=30).text
    assert "googleapis" not in theme and "@import" not in theme
    config = httpx.get(demo.local_url + "config", timeout=30).json()
    examples = [c for c in config["components"] if c["type"] == "dataset"]
    assert len(examples) == len(pipe.tasks)  # every task's inputs come from the world, one click away
    html = httpx.get(demo.local_url, timeout=30).text
    assert "googletagmanager" not in html and "fonts.googleapis" not in html


# ------------------------------------------------------------------------------ rendering
def test_render_every_output_type(tmp_path):
    """Boxes and masks go on the image, depth and generated images are pictures, text is text."""
    app = load_app()
    path = tmp_path / "in.png"
    Image.new("RGB", (64, 48), "gray").save(path)
    boxes = Boxes([Box(1, 2, 30, 40, "circle", 0.9), Box(10, 10, 20, 20, "square", 0.5)])
    annotated, picture, text, js = app.render(boxes, "detection", [str(path)], None)
    strip, marks = annotated
    assert strip.size == (256, 192) and marks[0] == ((4, 8, 120, 160), "circle") and picture is None
    assert "circle 0.90" in text and js["output"]["boxes"][1]["label"] == "square"
    seg = np.zeros((16, 16), np.int64)
    seg[2:6, 2:6], seg[8:12, 8:12] = 1, 3
    annotated, _, text, _ = app.render(DenseMap(seg, "segmentation", ["background", "circle", "square", "triangle"]),
                                       "segmentation", [str(path)], None)
    masks = annotated[1]
    assert [label for _, label in masks] == ["circle", "triangle"] and text == "circle, triangle"
    assert masks[0][0].shape == (192, 256) and masks[0][0].max() == 1.0
    depth = np.linspace(1, 5, 16 * 16, dtype=np.float32).reshape(16, 16)
    annotated, picture, text, js = app.render(DenseMap(depth, "depth"), "depth", [str(path)], None)
    assert annotated is None and picture.size == (256, 192) and "nearest 1.00" in text
    assert js["output"]["values"] == {"shape": [16, 16], "dtype": "float32"}
    gen = GeneratedImage(np.zeros((32, 32, 3), np.uint8))
    annotated, picture, text, _ = app.render(gen, "generate", [], None)
    assert annotated is None and picture.size == (256, 256)
    annotated, _, text, _ = app.render(Label("circle", 0.7), "region_classification", [str(path)], [0, 0, 10, 10])
    assert annotated[1] == [((0, 0, 40, 40), "circle")] and text == "circle"
    two = app.render(Label("true"), "two_image", [str(path), str(path)], None)[0][0]
    assert two.size == (256 * 2 + 8, 192)  # both inputs side by side


def test_batcher_isolates_a_failing_request():
    app = load_app()

    class FakePipe:
        def run(self, examples):
            if "bad" in examples:
                raise ValueError("bad example")
            return [e.upper() for e in examples]

    batcher = app.Batcher(FakePipe(), max_batch=4)
    results = {}

    def call(x):
        try:
            results[x] = batcher(x)
        except ValueError as e:
            results[x] = e

    threads = [threading.Thread(target=call, args=(x,)) for x in ("a", "bad", "c", "d")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results["a"] == "A" and results["c"] == "C" and results["d"] == "D"
    assert isinstance(results["bad"], ValueError)


# ------------------------------------------------------------------------------ Pipeline
def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_pipeline_routes_forces_and_explains(pipe, world_files):
    scene = world_files["image"]
    assert pipe.route("Question: how many circles are there?").task == "vqa"
    assert pipe.route("question: how many circles are there?").fields == {"question": "how many circles are there"}
    assert isinstance(pipe("question: how many circles are there?", image=scene), Text)
    assert isinstance(pipe("anything at all", task="caption", image=scene), Text)  # task= forces
    with pytest.raises(UnknownPromptError, match="task vqa needs question in its prompt and no prompt was given; "
                                                 "write it as one of: 'question: {question}'"):
        pipe(task="vqa", image=scene)
    assert isinstance(pipe(task="vqa", image=scene, question="how many circles are there?"), Text)
    with pytest.raises(UnknownPromptError, match="unknown task 'nope'; this checkpoint has: "):
        pipe("describe the image.", task="nope", image=scene)
    # A region: from region=..., or four numbers in the prompt.
    assert pipe.example("what is in [4, 4, 40, 40]?", image=scene).task == "region_caption"
    a = pipe.example("what is in [4, 4, 40, 40]?", image=scene)
    b = pipe.example(task="region_caption", region=[4, 4, 40, 40], image=scene)
    assert a.prompt == b.prompt
    with pytest.raises(ValueError, match="needs a region"):
        pipe("describe the region {region}.", image=scene)
    with pytest.raises(ValueError, match="at most 4"):
        pipe(task="action", video=world_files["frames"] * 2)
    with pytest.raises(ValueError, match="cannot read image file"):
        pipe("describe the image.", image="/nonexistent/scene.png")


def test_pipeline_batch_mixes_every_kind_of_input(pipe, world_files):
    scene, (left, right), frames = world_files["image"], world_files["pair"], world_files["frames"]
    requests = [
        {"prompt": "describe the image.", "image": scene},
        {"prompt": "detect the shapes.", "image": Image.open(scene)},
        {"task": "two_image", "prompt": f"left and right image: is it true that {world_files['statement']}",
         "image": left, "image2": right},
        {"task": "action", "video": frames},
        {"prompt": "which shape is in {region}?", "image": scene, "region": [4, 4, 40, 40]},
        {"prompt": 'which region does "the red circle" describe?', "image": np.asarray(Image.open(scene))},
    ]
    outs = pipe.batch(requests)
    assert [type(o) for o in outs] == [Text, Boxes, Label, Label, Label, Region]
    assert outs[2].label in ("true", "false")
    alone = pipe(**requests[3])  # a row's result does not depend on the rest of its batch (up to rounding)
    assert alone.label == outs[3].label and alone.score == pytest.approx(outs[3].score, abs=1e-5)


def test_pipeline_without_a_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        Pipeline.from_pretrained(tmp_path / "missing")


def test_app_script_without_a_checkpoint_says_so(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "app.py"), "--checkpoint", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and f"app.py: no checkpoint at {tmp_path / 'none'}" in proc.stderr


def test_app_takes_host_and_port_from_gradio_variables(monkeypatch):
    """`python app.py` honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT as Gradio apps do; flags win."""
    app = load_app()
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "UNITOK_PORT"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    args = app.parse_args([])
    assert (args.host, args.port) == ("0.0.0.0", 7999)
    assert app.parse_args(["--host", "127.0.0.1", "--port", "8001"]).port == 8001
    monkeypatch.setenv("UNITOK_PORT", "8002")  # the project's own variable, more specific, comes first
    assert app.parse_args([]).port == 8002
    monkeypatch.setenv("UNITOK_PORT", "http")
    with pytest.raises(SystemExit):  # a usage error naming --port, not a traceback
        app.parse_args([])


def test_visualize_draws_every_output_type():
    """`unitok predict --save-vis`: boxes drawn, masks overlaid, depth colour-mapped, regions outlined."""
    from unitok.inference.visualize import visualize

    scene = np.zeros((64, 64, 3), np.uint8)
    drawn = np.asarray(visualize(Boxes([Box(8, 8, 32, 32, "circle", 0.9)]), scene))
    assert drawn.shape == (256, 256, 3) and drawn[32, 60:70].any()  # the box's left edge, enlarged 4x
    seg = np.zeros((64, 64), np.int64)
    seg[:32] = 1
    overlay = np.asarray(visualize(DenseMap(seg, "segmentation", ["background", "circle"]), scene))
    assert overlay[:128].any() and not overlay[128:].any()
    ramp = np.linspace(1, 5, 64 * 64, dtype=np.float32).reshape(64, 64)
    depth = np.asarray(visualize(DenseMap(ramp, "depth"), scene))
    assert depth.shape == (256, 256, 3) and not np.array_equal(depth[0, 0], depth[-1, -1])  # near and far differ
    region = np.asarray(visualize(Label("circle"), scene, region=[8, 8, 32, 32]))
    assert region.shape == (296, 256, 3) and region[32, 60:70].any()  # the region, then a strip for the answer
    assert visualize(GeneratedImage(np.zeros((32, 32, 3), np.uint8))).size == (256, 256)
    assert visualize(Text("big"), np.zeros((300, 400, 3), np.uint8)).size == (400, 340)  # large images keep their size

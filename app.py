"""The UniTok Gradio demo: `python app.py [--checkpoint DIR] [--host 127.0.0.1] [--port 7860]`.

One page for every task of the checkpoint. Pick a task: the page shows the inputs it takes (image,
second image, video frames, a region box) and a few example world scenes one click away; upload
your own or type a free prompt, which is routed to the task whose template it matches. Results are
drawn as people expect: boxes and masks on the image, depth as a colour map, generated images,
text answers, and the structured output as JSON.

Everything goes through `unitok.Pipeline`. Requests that arrive together run as one mixed-task
generation batch (`Batcher`). Works offline: no analytics, no share link, system fonts only.
Each task also has its own API endpoint (`/caption`, `/detection`, ...) for `gradio_client`.
"""
from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import logging
import os
import queue
import re
import shutil
import string
import tempfile
import threading
from functools import partial
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home; read when gradio is imported

import unitok  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from gradio import processing_utils  # noqa: E402
from PIL import Image  # noqa: E402

from unitok.data.schema import to_rgb  # noqa: E402
from unitok.data.world import KINDS, WorldConfig  # noqa: E402
from unitok.inference.pipeline import Pipeline, UnknownPromptError  # noqa: E402
from unitok.inference.visualize import depth_colormap  # noqa: E402
from unitok.modalities.image import MIN_SIDE  # noqa: E402  (the size policy every surface shares)
from unitok.tasks.examples import resolve  # noqa: E402
from unitok.tasks.outputs import Box, Boxes, DenseMap, GeneratedImage, Label, Region, Text  # noqa: E402
from unitok.tasks.spec import TaskSpec  # noqa: E402

log = logging.getLogger("unitok.app")

# Uploads: what is accepted, and the limits that keep one request from hogging the server.
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF"}
MAX_UPLOAD_MB = 10
MAX_SIDE = 4096
DISPLAY_SIDE = 256  # small images are shown enlarged (nearest neighbour) to about this size

# No web fonts: the browser's own sans and mono faces.
SYSTEM_SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
SYSTEM_MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]


# --------------------------------------------------------------------------- a Gradio fix
def _save_pil_to_cache_atomically(img: Image.Image, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """Gradio caches a result image under the hash of its bytes, rewriting the file in place on every
    request. Two concurrent requests with the same result (same image, same boxes) then truncate the
    file while a client downloads it ("Too little data for declared Content-Length"). Same bytes mean
    the same file, so write it once, under a temporary name, and rename it into place."""
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / f"{name}.{format}").resolve()
    if not path.exists():
        part = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        part.write_bytes(data)
        os.replace(part, path)
    return str(path)


processing_utils.save_pil_to_cache = _save_pil_to_cache_atomically  # used by gr.Image and gr.AnnotatedImage


# --------------------------------------------------------------------------- uploads
def checked_image(upload, what: str) -> str | None:
    """Validate an uploaded file (Gradio's file payload, or a path) as an image by type, size and
    dimensions; return its path. Raises ``gr.Error`` with a message meant for whoever uploaded it.

    The page's events run with ``preprocess=False`` so that this, not Gradio's image decoder, is the
    first to look at an upload: a bad file gets this message rather than a decoder traceback."""
    if not upload:
        return None
    path = upload.get("path") if isinstance(upload, dict) else str(upload)
    if not path:
        raise gr.Error(f"{what}: send the image as an uploaded file.")
    name = upload.get("orig_name") or Path(path).name if isinstance(upload, dict) else Path(path).name
    size = os.path.getsize(path)
    if size > MAX_UPLOAD_MB * 1e6:
        raise gr.Error(f"{what} ({name}) is {size / 1e6:.1f} MB; uploads are limited to {MAX_UPLOAD_MB} MB.")
    *most, last = IMAGE_FORMATS.values()
    accepted = f"{', '.join(most)} or {last}"
    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
    except Exception:
        raise gr.Error(f"{what} ({name}) is not an image this demo can read; upload a {accepted} file.") from None
    if fmt not in IMAGE_FORMATS:
        raise gr.Error(f"{what} ({name}) is a {fmt} file; upload a {accepted} file.")
    if not (MIN_SIDE <= min(w, h) and max(w, h) <= MAX_SIDE):
        raise gr.Error(f"{what} ({name}) is {w}x{h} pixels; images must be {MIN_SIDE} to {MAX_SIDE} pixels a side.")
    return path


def parse_region(text: str | None) -> list[float] | None:
    if not text or not text.strip():
        return None
    parts = [p for p in re.split(r"[,\s\[\]()]+", text.strip()) if p]
    try:
        box = [float(p) for p in parts]
    except ValueError:
        box = []
    if len(box) != 4:
        raise gr.Error(f"region: write four numbers x0, y0, x1, y1 in pixels, got {text!r}.")
    return box


# --------------------------------------------------------------------------- batching
class Batcher:
    """Runs requests waiting together as one mixed-task generation batch.

    Gradio handles up to ``concurrency`` requests at once, each in its own thread; each builds its
    example (so a bad input fails alone) and submits it here. One model thread takes whatever is
    waiting, up to ``max_batch``, so an idle server adds no delay and a busy one batches. If a
    batch fails, its requests are retried one by one so the error reaches only the one that caused it.
    """

    def __init__(self, pipe: Pipeline, max_batch: int = 8):
        self.pipe, self.max_batch = pipe, max_batch
        self._waiting: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, name="unitok-batcher", daemon=True).start()

    def __call__(self, example):
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._waiting.put((example, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            jobs = [self._waiting.get()]
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            self._run(jobs)

    def _run(self, jobs) -> None:
        try:
            outputs = self.pipe.run([example for example, _ in jobs])
        except Exception as e:  # noqa: BLE001  (reported to the request, never kills the thread)
            if len(jobs) == 1:
                jobs[0][1].set_exception(e)
            else:
                for job in jobs:
                    self._run([job])
            return
        for (_, future), output in zip(jobs, outputs):
            future.set_result(output)


# --------------------------------------------------------------------------- examples
def _placeholders(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def task_examples(spec: TaskSpec, folder: Path, n: int = 3, seed: int = 0, size: int = 64) -> list[dict]:
    """Up to ``n`` held-out world records (the ``test`` split) turned into this task's inputs. A
    placeholder the record cannot fill stays in the prompt as ``{name}`` for the user to write.
    Tasks whose data is not a world kind get none: their users upload their own."""
    if spec.data not in KINDS:
        return []
    make = KINDS[spec.data][0]
    template = spec.prompt[0]
    rows = []
    for i in range(n):
        record = make(WorldConfig(seed=seed, size=size), i, "test")
        try:
            items = resolve(spec.each, record) if spec.each else [None]
            item = items[i % len(items)] if items else None
            fields = {k: _field(k, record, item) for k in _placeholders(template)}
            row = {}
            for slot in ("image", "image2"):
                key = getattr(spec.inputs, slot)
                if key:
                    row[slot] = _write(folder / f"{record['id']}-{slot}.png", resolve(key, record, item))
            if spec.inputs.video:
                frames = resolve(spec.inputs.video, record, item)
                row["video"] = [_write(folder / f"{record['id']}-frame{t}.png", f) for t, f in enumerate(frames)]
            if spec.inputs.region:
                row["region"] = ", ".join(f"{v:g}" for v in resolve(spec.inputs.region, record, item))
            row["prompt"] = template.format(**fields)
        except (KeyError, TypeError, IndexError):
            continue  # this record lacks what the task reads
        rows.append(row)
    return rows


def _field(name: str, record: dict, item) -> str:
    if name == "region":  # comes from the region box
        return "{region}"
    try:
        return str(resolve(name, record, item))
    except KeyError:
        return "{" + name + "}"


def _write(path: Path, png: bytes) -> str:
    if not path.exists():
        path.write_bytes(png)
    return str(path)


# --------------------------------------------------------------------------- rendering
def _strip(paths: list[str]) -> tuple[Image.Image, int]:
    """The input images side by side, enlarged when small; returns (picture, scale)."""
    images = [to_rgb(Image.open(p)) for p in paths]  # 16-bit images rescaled, as the model sees them
    scale = max(1, DISPLAY_SIDE // max(max(im.size) for im in images))
    images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    gap = 8 if len(images) > 1 else 0
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    strip = Image.new("RGB", (width, max(im.height for im in images)), "white")
    x = 0
    for im in images:
        strip.paste(im, (x, 0))
        x += im.width + gap
    return strip, scale


def _box(b: Box, scale: int) -> tuple[int, int, int, int]:
    return (int(round(b.x0 * scale)), int(round(b.y0 * scale)), int(round(b.x1 * scale)), int(round(b.y1 * scale)))


def _mask_annotations(dense: DenseMap, size: tuple[int, int]) -> list:
    values = np.asarray(Image.fromarray(dense.values.astype(np.int32)).resize(size, Image.NEAREST))
    if dense.kind == "mask":
        return [((values > 0).astype(np.float32), "mask")]
    names = dense.classes or []
    out = []
    for k in np.unique(values):
        name = names[k] if 0 <= k < len(names) else f"class {k}"
        if name == "background" or (not names and k == 0):
            continue
        out.append(((values == k).astype(np.float32), name))
    return out


def _json(value):
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, np.ndarray):
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _json(getattr(value, k)) for k in value.__dataclass_fields__}
    return value


def render(output, task: str, images: list[str], region: list[float] | None):
    """(annotated image, picture, text, json) for one structured output; one of the images is None."""
    strip, scale = _strip(images) if images else (None, 1)
    annotations: list = []
    picture = None
    if isinstance(output, (Boxes, Region)):
        boxes = output.boxes if isinstance(output, Boxes) else [output.box]
        annotations = [(_box(b, scale), b.label or "region") for b in boxes]
        text = "\n".join(f"{b.label or 'region'} {b.score:.2f}: [{b.x0:.1f}, {b.y0:.1f}, {b.x1:.1f}, {b.y1:.1f}]"
                         for b in boxes) or "(nothing found)"
    elif isinstance(output, (Text, Label)):
        text = output.text if isinstance(output, Text) else output.label
        if region is not None:  # region tasks: the answer labels the region it is about
            annotations = [(_box(Box(*region), scale), text[:40] or "region")]
    elif isinstance(output, DenseMap) and output.kind == "depth":
        d = output.values.astype(np.float32)
        size = strip.size if strip is not None else (d.shape[1] * 4, d.shape[0] * 4)
        picture = Image.fromarray(depth_colormap(d)).resize(size, Image.NEAREST)
        valid = d[d > 0]
        text = (f"depth: nearest {valid.min():.2f}, farthest {valid.max():.2f} (warm = near)" if valid.size
                else "depth: empty")
    elif isinstance(output, DenseMap):
        annotations = _mask_annotations(output, strip.size) if strip is not None else []
        text = ", ".join(label for _, label in annotations) or "(no objects)"
    elif isinstance(output, GeneratedImage):
        img = Image.fromarray(output.image)
        scale = max(1, DISPLAY_SIDE // max(img.size))
        picture = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        text = f"generated a {img.width}x{img.height} image"
    else:
        text = repr(output)
    annotated = (strip, annotations) if picture is None and strip is not None else None
    return annotated, picture, text, {"task": task, "type": type(output).__name__, "output": _json(output)}


# --------------------------------------------------------------------------- the page
def _label(spec: TaskSpec) -> str:
    return f"{spec.name} — {spec.description}" if spec.description else spec.name


def _task_info(spec: TaskSpec) -> str:
    takes = [slot for slot in ("image", "image2", "video", "region") if getattr(spec.inputs, slot)]
    prompts = " · ".join(f"`{p}`" for p in spec.prompt)
    return f"**prompts:** {prompts}  \n**takes:** {', '.join(takes) or 'a prompt only'}"


def _default_prompt(spec: TaskSpec) -> str:
    """The task's own prompt when it needs no words from the user (a ``{region}`` comes from the box)."""
    template = spec.prompt[0]
    return template if set(_placeholders(template)) <= {"region"} else ""


def build_demo(pipe: Pipeline, *, max_batch: int = 8, concurrency: int = 8,
               examples_dir: str | None = None) -> gr.Blocks:
    tasks = pipe.tasks
    names = list(tasks)
    start = next((n for n in ("detection", "caption") if n in tasks), names[0])  # a task most people know
    batcher = Batcher(pipe, max_batch=max_batch)
    folder = Path(examples_dir or tempfile.mkdtemp(prefix="unitok-examples-"))
    folder.mkdir(parents=True, exist_ok=True)
    if examples_dir is None:
        atexit.register(shutil.rmtree, folder, True)

    def predict(task, prompt=None, image=None, image2=None, video=None, region=None, *, route: bool):
        """``route``: a typed prompt picks its task (the page); else ``task`` is forced (per-task API)."""
        if task not in tasks:
            raise gr.Error(f"unknown task {task!r}; this checkpoint has: {', '.join(names)}")
        image, image2 = checked_image(image, "image"), checked_image(image2, "second image")
        frames = [checked_image(f, f"video frame {i + 1}") for i, f in enumerate(video or [])]
        box = parse_region(region)
        typed = (prompt or "").strip()
        try:
            routed = pipe.route(typed, task=None if route and typed else task)
            chosen, spec = routed.task, tasks[routed.task]
            example = pipe.example(typed or _default_prompt(spec) or None, task=chosen, image=image, image2=image2,
                                   video=frames or None, region=box)
        except (UnknownPromptError, ValueError) as e:
            raise gr.Error(str(e)) from None
        try:
            output = batcher(example)
        except Exception as e:  # noqa: BLE001  (one failed request must not take the page down)
            log.exception("prediction failed for task %s", chosen)
            raise gr.Error(f"prediction failed: {type(e).__name__}: {e}") from None
        shown = [p for p in (image if spec.inputs.image else None, image2 if spec.inputs.image2 else None) if p]
        shown += frames if spec.inputs.video else []
        drawn = (box or routed.region) if spec.inputs.region else None
        return render(output, chosen, shown, drawn)

    def on_task(task):
        spec = tasks[task]
        return [gr.update(visible=bool(spec.inputs.image)), gr.update(visible=bool(spec.inputs.image2)),
                gr.update(visible=bool(spec.inputs.video)), gr.update(visible=bool(spec.inputs.region)),
                _default_prompt(spec), _task_info(spec), *[gr.update(visible=name == task) for name in names]]

    with gr.Blocks(title="UniTok", analytics_enabled=False) as demo:
        gr.Markdown(f"# UniTok\nOne encoder–decoder for {len(names)} vision-language tasks, every one a prompt "
                    f"turned into tokens. Pick a task and click an example, or upload your own image "
                    f"(PNG/JPEG/WebP/BMP/GIF, up to {MAX_UPLOAD_MB} MB, {MIN_SIDE}–{MAX_SIDE} px a side). "
                    f"A typed prompt goes to the task whose template it matches.")
        # Inputs a task does not take are hidden through their containers: clicking an example resets
        # the input components themselves to how they were built.
        first = tasks[start]
        with gr.Row():
            with gr.Column():
                task = gr.Dropdown([(_label(tasks[n]), n) for n in names], value=start, label="task", elem_id="task")
                task_info = gr.Markdown(_task_info(first), elem_id="task-info")
                # No initial value, so the per-task API endpoints default to the task's own prompt;
                # the page fills it on load (`on_task`).
                prompt = gr.Textbox(label="prompt", placeholder="one of the task's prompts; empty: its first",
                                    elem_id="prompt")
                with gr.Row():
                    with gr.Column(visible=bool(first.inputs.image), min_width=160) as image_box:
                        image = gr.Image(label="image", type="filepath", sources=["upload", "clipboard"],
                                         elem_id="image")
                    with gr.Column(visible=bool(first.inputs.image2), min_width=160) as image2_box:
                        image2 = gr.Image(label="second image", type="filepath", sources=["upload", "clipboard"],
                                          elem_id="image2")
                with gr.Group(visible=bool(first.inputs.video)) as video_box:
                    video = gr.File(label="video frames, in order", file_count="multiple", file_types=["image"],
                                    type="filepath", elem_id="video")
                    frames_preview = gr.Gallery(label="frames", columns=8, height=120, interactive=False,
                                                show_label=False, elem_id="frames")
                with gr.Column(visible=bool(first.inputs.region)) as region_box:
                    region = gr.Textbox(label="region: x0, y0, x1, y1 in pixels", elem_id="region")
                run = gr.Button("Run", variant="primary", elem_id="run")
                example_groups = []
                inputs_of = {"prompt": prompt, "image": image, "image2": image2, "video": video, "region": region}
                for name in names:
                    with gr.Column(visible=name == start, elem_id=f"examples-{name}") as group:
                        rows = task_examples(tasks[name], folder)
                        if rows:
                            keys = list(rows[0])
                            gr.Examples([[r[k] for k in keys] for r in rows], [inputs_of[k] for k in keys],
                                        label=f"examples: {name} (held-out world scenes)")
                    example_groups.append(group)
            with gr.Column():
                annotated = gr.AnnotatedImage(label="result", elem_id="result-image", height=384, format="png")
                picture = gr.Image(label="result", visible=False, interactive=False, format="png",
                                   elem_id="result-picture")
                text = gr.Textbox(label="answer", lines=4, elem_id="result-text", interactive=False)
                structured = gr.JSON(label="structured output", elem_id="result-json")
        task_view = [image_box, image2_box, video_box, region_box, prompt, task_info, *example_groups]
        task.change(on_task, task, task_view, queue=False, api_visibility="private")
        demo.load(on_task, task, task_view, queue=False, api_visibility="private")
        video.change(lambda files: files or None, video, frames_preview, queue=False, api_visibility="private")
        inputs, outputs = [prompt, image, image2, video, region], [annotated, picture, text, structured]
        # preprocess=False: uploads reach `predict` as file payloads, validated by `checked_image`.
        run.click(partial(predict, route=True), [task, *inputs], outputs, api_name="predict", preprocess=False,
                  concurrency_limit=concurrency, concurrency_id="model").then(
            # Show whichever result image the output filled (depth and generated images are pictures).
            lambda pic: (gr.update(visible=pic is None), gr.update(visible=pic is not None)), picture,
            [annotated, picture], queue=False, api_visibility="private")
        for name in names:  # one API endpoint per task, the task forced: /caption, /detection, ...
            endpoint = gr.Button(visible=False)
            endpoint.click(partial(predict, name, route=False), inputs, outputs, api_name=name, preprocess=False,
                           concurrency_limit=concurrency, concurrency_id="model")
    return demo


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
           queue_size: int = 64, quiet: bool = False):
    """Serve ``demo`` offline: queued, no share link, no analytics, system fonts, uploads capped."""
    demo.queue(max_size=queue_size)
    theme = gr.themes.Default(font=SYSTEM_SANS, font_mono=SYSTEM_MONO)
    return demo.launch(server_name=host, server_port=port, share=False, show_error=True, prevent_thread_lock=not block,
                       theme=theme, max_file_size=f"{2 * MAX_UPLOAD_MB}mb", ssr_mode=False, mcp_server=False,
                       quiet=quiet)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line. Host and port default to Gradio's own variables, as every Gradio app's do
    (``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``; ``UNITOK_PORT`` before the latter)."""
    env = os.environ
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=env.get("UNITOK_CHECKPOINT"),
                    help="default: $UNITOK_DEFAULT_CHECKPOINT, else the repository's checkpoints/default")
    ap.add_argument("--host", default=env.get("GRADIO_SERVER_NAME") or "127.0.0.1",
                    help="default: $GRADIO_SERVER_NAME, else 127.0.0.1; 0.0.0.0 to serve other machines")
    # a string default goes through `type`, so a bad value in the environment is a usage error naming --port
    ap.add_argument("--port", type=int, default=env.get("UNITOK_PORT") or env.get("GRADIO_SERVER_PORT") or "7860",
                    help="default: $UNITOK_PORT, else $GRADIO_SERVER_PORT, else 7860")
    ap.add_argument("--max-batch", type=int, default=8, help="requests run together in one generation batch")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight at once; the rest queue")
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        pipe = Pipeline.from_pretrained(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"app.py: {e}") from None
    launch(build_demo(pipe, max_batch=args.max_batch, concurrency=args.concurrency), host=args.host, port=args.port)


if __name__ == "__main__":
    main()

"""The Pipeline: a prompt (+ images) in, a typed result out.

    pipe = Pipeline.from_pretrained()                    # the shipped checkpoint
    pipe("describe the image.", image="scene.png")      # -> Text
    pipe("detect the shapes.", image=img).boxes         # -> Boxes, pixel xyxy of the input image

A free prompt is routed to the task whose prompt template it matches (as Unified-IO's prompts
are): templates become patterns whose ``{placeholders}`` capture the user's words, so
``question: what colour is the circle?`` fills ``{question}``. ``task=`` forces a task. A ``{region}``
placeholder takes the box from ``region=[x0, y0, x1, y1]`` or, failing that, from four numbers in
the prompt (``what is in [10, 12, 30, 40]?``).
"""
from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..checkpoint import load_checkpoint
from ..modalities.image import load_image
from ..tasks.examples import Example, ExampleError
from .predictor import Predictor

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "default"


class UnknownPromptError(ValueError):
    """No task's prompt templates match the prompt."""


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"


def _parse_region(text: str) -> list[float] | None:
    """Four numbers written in a prompt (``[10, 12, 30, 40]``, ``10 12 30 40``) as a box, else None."""
    numbers = re.findall(_NUMBER, text)
    if len(numbers) != 4 or re.sub(_NUMBER, "", text).strip(" ,()[]") != "":
        return None
    return [float(v) for v in numbers]


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(" .?!")


def _template_pattern(template: str) -> re.Pattern:
    parts = []
    for literal, name, _, _ in string.Formatter().parse(_normalise(template)):
        parts.append(re.escape(literal).replace(r"\ ", r"\s+"))
        if name:
            parts.append(f"(?P<{name}>.+?)")
    return re.compile("^" + "".join(parts) + "$")


@dataclass
class Route:
    """The task a prompt goes to, and the words its template's placeholders captured."""

    task: str
    fields: dict[str, str]

    @property
    def region(self) -> list[float] | None:
        """A ``{region}`` written in the prompt as four numbers, else None."""
        return _parse_region(self.fields["region"]) if "region" in self.fields else None


class Pipeline:
    def __init__(self, predictor: Predictor, source: str = ""):
        self.predictor = predictor
        self.source = source
        # Most specific first: a template with more literal text wins over one that is mostly placeholder.
        templates = [(name, t) for name, spec in predictor.tasks.items() for t in spec.prompt]
        templates.sort(key=lambda nt: -sum(len(lit) for lit, _, _, _ in string.Formatter().parse(nt[1])))
        self._patterns = [(name, _template_pattern(t)) for name, t in templates]

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, device: str = "cpu", bf16: bool | str = False) -> "Pipeline":
        path = Path(path) if path else DEFAULT_CHECKPOINT
        if not path.exists():
            shipped = path == DEFAULT_CHECKPOINT
            hint = " (the shipped default; train one with `unitok train` and pass its checkpoint/)" if shipped else ""
            raise FileNotFoundError(f"no checkpoint at {path}{hint}")
        ckpt = load_checkpoint(path, device=device)
        return cls(Predictor(ckpt.model, ckpt.codec, ckpt.tasks, bf16=bf16, device=device), str(path))

    @property
    def tasks(self) -> dict:
        return self.predictor.tasks

    def route(self, prompt: str | None, task: str | None = None) -> Route:
        """The task whose template ``prompt`` matches; with ``task`` given, that task, with whatever
        its templates capture from the prompt (nothing if it does not fit)."""
        if task is not None:
            if task not in self.tasks:
                raise UnknownPromptError(f"unknown task {task!r}; this checkpoint has: {', '.join(self.tasks)}")
            matches = [p.match(_normalise(prompt)) for n, p in self._patterns if n == task] if prompt else []
            return Route(task, next(({k: v.strip() for k, v in m.groupdict().items()} for m in matches if m), {}))
        if not prompt:
            raise UnknownPromptError("give a prompt or task=NAME")
        norm = _normalise(prompt)
        for name, pattern in self._patterns:
            m = pattern.match(norm)
            if m:
                return Route(name, {k: v.strip() for k, v in m.groupdict().items()})
        examples = "; ".join(f"{n}: {s.prompt[0]!r}" for n, s in self.tasks.items())
        raise UnknownPromptError(f"no task matches the prompt {prompt!r}. Use one of the task prompts "
                                 f"({examples}) or pass task=NAME.")

    def example(self, prompt: str | None = None, *, image=None, image2=None, video=None, region=None,
                task: str | None = None, **fields) -> Example:
        route = self.route(prompt, task)
        spec = self.tasks[route.task]
        record: dict = {**route.fields, **fields}
        if spec.inputs.region and region is None:
            region = route.region
        missing = sorted(spec.placeholders() - {"region"} - set(record))
        if missing:
            prompts = ", ".join(repr(t) for t in spec.prompt)
            got = f"the prompt {prompt!r} does not fit it" if prompt else "no prompt was given"
            raise UnknownPromptError(f"task {route.task} needs {', '.join(missing)} in its prompt and {got}; "
                                     f"write it as one of: {prompts}")
        size = None
        for slot, value in (("image", image), ("image2", image2)):
            key = getattr(spec.inputs, slot)
            if key:
                if value is None:
                    raise ValueError(f"task {route.task} needs {slot}=...")
                img = load_image(_read(value), what=slot)
                record[key] = img
                size = size or img.size
        if spec.inputs.video:
            if not video:
                raise ValueError(f"task {route.task} needs video=[frames...]")
            frames = [load_image(_read(f), what=f"video frame {i}") for i, f in enumerate(video)]
            record[spec.inputs.video] = frames
            size = size or frames[0].size
        if spec.inputs.region:
            if region is None:
                raise ValueError(f"task {route.task} needs a region: region=[x0, y0, x1, y1] in pixels, "
                                 "or four numbers in the prompt")
            try:
                box = [float(v) for v in region]
            except (TypeError, ValueError):
                box = []
            if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
                raise ValueError(f"region must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {region!r}")
            record[spec.inputs.region] = box
        # Checked here, not left to the model, so a server batching requests fails only this one.
        slots = bool(spec.inputs.image) + bool(spec.inputs.image2) + len(video or []) * bool(spec.inputs.video)
        most = self.predictor.model.cfg.max_images
        if slots > most:
            raise ValueError(f"task {route.task}: {slots} images/frames given; this model takes at most {most}")
        record["width"], record["height"] = size if size else (1, 1)
        builder = self.predictor.builders[route.task]
        try:
            return builder.build(record, with_target=False)
        except ExampleError as e:
            raise ValueError(str(e)) from None

    def __call__(self, prompt: str | None = None, *, decoding: dict | None = None, **kwargs):
        """One request. ``decoding`` overrides the task spec's ``decoding:`` for it, e.g.
        ``{"strategy": "sample", "top_p": 0.9, "seed": 0}`` or ``{"strategy": "beam", "beam_size": 4}``."""
        return self.batch([{"prompt": prompt, **kwargs}], decoding=decoding)[0]

    def batch(self, requests: list[dict], *, decoding: dict | None = None) -> list:
        """Run requests of any mix of tasks in one generation batch; returns their outputs in order.
        ``decoding`` overrides every row's decoding settings; a request's own ``"decoding"`` entry
        overrides its row's (rows with different overrides decode in separate batches)."""
        groups: dict[str, list[int]] = {}
        examples, overrides = [], []
        for i, r in enumerate(requests):
            r = dict(r)
            row = {**(decoding or {}), **(r.pop("decoding", None) or {})}
            examples.append(self.example(**r))
            overrides.append(row)
            groups.setdefault(json.dumps(row, sort_keys=True, default=str), []).append(i)
        out: list = [None] * len(requests)
        for rows in groups.values():
            for i, o in zip(rows, self.run([examples[i] for i in rows], **overrides[rows[0]])):
                out[i] = o
        return out

    def run(self, examples: list[Example], **decoding) -> list:
        """Outputs of already built examples (``example(...)``), in one generation batch. Lets a server
        build each request on its own, so one bad request fails alone, then batch the good ones.
        Keyword ``decoding`` settings (``strategy=``, ``beam_size=``, ``max_tokens=`` ...) override the specs'."""
        return [p.output for p in self.predictor.predict(examples, **decoding)]


def _read(value):
    if isinstance(value, (str, os.PathLike)):
        try:
            return Path(value).read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read image file {value}: {e.strerror}") from None
    return value

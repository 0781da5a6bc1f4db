"""The Pipeline: a prompt (+ images) in, a typed result out.

    pipe = Pipeline.from_pretrained()                    # the shipped checkpoint
    pipe("describe the image.", image="scene.png")      # -> Text
    pipe("detect the shapes.", image=img).boxes         # -> Boxes, pixel xyxy of the input image

A free prompt is routed to the task whose prompt template it matches (as Unified-IO's prompts
are): templates become patterns whose ``{placeholders}`` capture the user's words, so
``question: what colour is the circle?`` fills ``{question}``. ``task=`` forces a task. A ``{region}``
placeholder takes the box from ``region=[x0, y0, x1, y1]`` or, failing that, from four numbers in
the prompt (``what is in [10, 12, 30, 40]?``).

Inputs: a prompt is text (``bytes`` are read as UTF-8); an image is a path, image bytes, a PIL image, a
numpy array (HxW or HxWxC) or a torch tensor (CxHxW or HxWxC), uint8, uint16 or float in [0, 1], at
least ``MIN_SIDE`` (8) pixels a side. A bad input raises ``InputError`` (a ``UniTokError``) naming it.
"""
from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import RunConfig
from ..errors import InputError, RequestError, UniTokError
from ..modalities.image import check_size, load_image
from ..tasks.examples import Example, ExampleError
from .predictor import Predictor

# The checkpoint `from_pretrained()` loads when none is named: the one this environment variable names, else the
# repository's checkpoints/default (it ships in the repository, not in the package: a wheel does not carry it).
DEFAULT_CHECKPOINT_ENV = "UNITOK_DEFAULT_CHECKPOINT"
REPO_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "default"


def default_checkpoint() -> Path:
    """``$UNITOK_DEFAULT_CHECKPOINT`` if set, else the repository's ``checkpoints/default``. A missing one is an
    error naming both places: a wrong variable does not quietly fall back to the repository's checkpoint."""
    named = os.environ.get(DEFAULT_CHECKPOINT_ENV)
    path = Path(named).expanduser() if named else REPO_CHECKPOINT
    if path.exists():
        return path
    if named:
        raise FileNotFoundError(f"no checkpoint at {path}, which {DEFAULT_CHECKPOINT_ENV} names (unset it to use "
                                f"the repository's {REPO_CHECKPOINT})")
    raise FileNotFoundError(f"no checkpoint at {REPO_CHECKPOINT} (the default, which ships in the repository, not in "
                            f"the package) and {DEFAULT_CHECKPOINT_ENV} is not set: set it to a checkpoint directory, "
                            "or name one (train one with `unitok train` and pass its checkpoint/)")


class UnknownPromptError(UniTokError, ValueError):
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
    def __init__(self, predictor: Predictor, source: str = "", run_config: RunConfig | None = None):
        self.predictor = predictor
        self.source = source
        self.run_config = run_config  # what trained the model (data root, world sizes); save_pretrained keeps it
        # Most specific first: a template with more literal text wins over one that is mostly placeholder.
        templates = [(name, t) for name, spec in predictor.tasks.items() for t in spec.prompt]
        templates.sort(key=lambda nt: -sum(len(lit) for lit, _, _, _ in string.Formatter().parse(nt[1])))
        self._patterns = [(name, _template_pattern(t)) for name, t in templates]

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, device: str = "cpu", bf16: bool | str = False) -> "Pipeline":
        """A checkpoint directory (a training run's ``checkpoint/``, an export, ``save_pretrained``'s), or with
        none named the default (`default_checkpoint`)."""
        path = Path(path) if path else default_checkpoint()
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        ckpt = load_checkpoint(path, device=device)
        return cls(Predictor(ckpt.model, ckpt.codec, ckpt.tasks, bf16=bf16, device=device), str(path), ckpt.run)

    def save_pretrained(self, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> Path:
        """Write the model, its vocabulary and tokenizers, the task specs and the run config as a checkpoint
        directory (atomically, without optimizer state) that ``from_pretrained(path)`` loads back.
        ``dtype=torch.bfloat16`` halves the weights' size (they load back as float32)."""
        return save_checkpoint(path, self.predictor.model, self.predictor.codec, self.tasks, self.run_config,
                               dtype=dtype)

    @property
    def tasks(self) -> dict:
        return self.predictor.tasks

    def route(self, prompt: str | bytes | None, task: str | None = None) -> Route:
        """The task whose template ``prompt`` matches; with ``task`` given, that task, with whatever
        its templates capture from the prompt (nothing if it does not fit)."""
        prompt = prompt_text(prompt)
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

    def example(self, prompt: str | bytes | None = None, *, image=None, image2=None, video=None, region=None,
                task: str | None = None, **fields) -> Example:
        prompt = prompt_text(prompt)
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
                    raise InputError(f"task {route.task} needs {slot}=...")
                img = check_size(load_image(_read(value, slot), what=slot), what=slot)
                record[key] = img
                size = size or img.size
        if spec.inputs.video:
            if not video:
                raise InputError(f"task {route.task} needs video=[frames...]")
            names = [f"video frame {i}" for i in range(len(video))]
            frames = [check_size(load_image(_read(f, what), what=what), what=what) for f, what in zip(video, names)]
            record[spec.inputs.video] = frames
            size = size or frames[0].size
        if spec.inputs.region:
            if region is None:
                raise InputError(f"task {route.task} needs a region: region=[x0, y0, x1, y1] in pixels, "
                                 "or four numbers in the prompt")
            try:
                box = [float(v) for v in region]
            except (TypeError, ValueError):
                box = []
            if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
                raise InputError(f"region must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {region!r}")
            record[spec.inputs.region] = box
        # Checked here, not left to the model, so a server batching requests fails only this one.
        slots = bool(spec.inputs.image) + bool(spec.inputs.image2) + len(video or []) * bool(spec.inputs.video)
        most = self.predictor.model.cfg.max_images
        if slots > most:
            raise InputError(f"task {route.task}: {slots} images/frames given; this model takes at most {most}")
        record["width"], record["height"] = size if size else (1, 1)
        builder = self.predictor.builders[route.task]
        try:
            return builder.build(record, with_target=False)
        except ExampleError as e:
            raise InputError(str(e)) from None

    def __call__(self, prompt: str | None = None, *, decoding: dict | None = None, **kwargs):
        """One request. ``decoding`` overrides the task spec's ``decoding:`` for it, e.g.
        ``{"strategy": "sample", "top_p": 0.9, "seed": 0}`` or ``{"strategy": "beam", "beam_size": 4}``.
        A bad input or option raises its own error (``InputError``, ``DecodingError``, ...)."""
        return self.run([self.example(prompt, **kwargs)], **(decoding or {}))[0]

    def batch(self, requests: list[dict], *, decoding: dict | None = None, errors: str = "raise") -> list:
        """Run requests (dicts of ``__call__``'s arguments) of any mix of tasks in one generation batch;
        returns their outputs in request order. ``decoding`` overrides every row's decoding settings; a
        request's own ``"decoding"`` entry overrides its row's (rows with different overrides decode in
        separate batches).

        Every request is checked before anything runs. ``errors="raise"`` (the default, as a Hugging
        Face pipeline given a list raises): the first bad request raises ``RequestError`` naming its
        index and why (``.index``, ``.error``), and nothing is generated. ``errors="return"`` (a server's
        choice): a bad request's place in the result holds its ``RequestError`` and the others run; if a
        generation batch fails, its rows are retried one by one so the error reaches only the one at fault."""
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        if not isinstance(requests, (list, tuple)):
            raise InputError(f"batch takes a list of request dicts, got a {type(requests).__name__}")
        out: list = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        examples: dict[int, Example] = {}
        overrides: dict[int, dict] = {}
        for i, r in enumerate(requests):
            try:
                if not isinstance(r, dict):
                    raise InputError(f"a request is a dict of prompt=, image=, ... ; got a {type(r).__name__}")
                r = dict(r)
                row = {**(decoding or {}), **(r.pop("decoding", None) or {})}
                examples[i] = self.example(**r)
                self._check_decoding(examples[i].task, row)
            except (UniTokError, ValueError, TypeError, KeyError) as e:  # the request's fault, not the model's
                if errors == "raise":
                    raise RequestError(i, e) from e
                out[i] = RequestError(i, e)
                continue
            overrides[i] = row
            groups.setdefault(json.dumps(row, sort_keys=True, default=str), []).append(i)
        for rows in groups.values():
            try:
                outputs = self.run([examples[i] for i in rows], **overrides[rows[0]])
            except Exception as e:  # noqa: BLE001  (errors="return": reported to the row at fault)
                if errors == "raise":
                    raise
                if len(rows) == 1:
                    out[rows[0]] = RequestError(rows[0], e)
                    continue
                for i in rows:  # retried alone, so the error reaches only the row that caused it
                    try:
                        out[i] = self.run([examples[i]], **overrides[i])[0]
                    except Exception as e1:  # noqa: BLE001
                        out[i] = RequestError(i, e1)
                continue
            for i, o in zip(rows, outputs):
                out[i] = o
        return out

    def _check_decoding(self, task: str, overrides: dict) -> None:
        """A request's decoding overrides, checked against its task's settings before anything runs."""
        if overrides:
            self.predictor.options(task, **overrides)

    def run(self, examples: list[Example], **decoding) -> list:
        """Outputs of already built examples (``example(...)``), in one generation batch. Lets a server
        build each request on its own, so one bad request fails alone, then batch the good ones.
        Keyword ``decoding`` settings (``strategy=``, ``beam_size=``, ``max_tokens=`` ...) override the specs'."""
        return [p.output for p in self.predictor.predict(examples, **decoding)]


def prompt_text(prompt) -> str | None:
    """A prompt as text: ``str`` as it is, ``bytes`` decoded as UTF-8; anything else, bytes that are not
    UTF-8, or a str holding undecodable bytes (how a non-UTF-8 command-line argument arrives) is refused."""
    if prompt is None or isinstance(prompt, str):
        try:
            (prompt or "").encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"prompt: not valid UTF-8 text (undecodable byte at character {e.start})") from None
        return prompt
    if isinstance(prompt, (bytes, bytearray)):
        try:
            return bytes(prompt).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"prompt: bytes that are not UTF-8 text (byte {e.start}: {e.reason}); "
                             "give a str or UTF-8 bytes") from None
    raise InputError(f"prompt: expected text (a str, or UTF-8 bytes), got a {type(prompt).__name__}")


def _read(value, what: str = "image"):
    if isinstance(value, (str, os.PathLike)):
        try:
            return Path(value).read_bytes()
        except OSError as e:
            raise InputError(f"{what}: cannot read image file {value}: {e.strerror}") from None
    return value

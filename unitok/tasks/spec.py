"""Task specs: ``tasks/*.yaml`` loaded with ``yaml.safe_load`` into typed, validated objects.

A spec says what a task is, declaratively: the dataset it reads, the prompt templates, which record
fields are model inputs, the target field and its format, decoding settings, the metric and the
mixture weight. Adding a task that uses existing formats is one YAML file and no code.

Field paths (``target.field``, ``inputs.*``, template placeholders) are looked up first in the
item of an ``each`` expansion, then in the record; dots walk into nested dicts (``meta.x`` never).
A validation error names the file and the field, e.g.
``tasks/detection.yaml: field 'target.format': unknown format 'boxez'; known: boxes, label, text``.
"""
from __future__ import annotations

import math
import numbers
import string
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UniTokError


class TaskSpecError(UniTokError, ValueError):
    """A task spec file is malformed; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Inputs(_Strict):
    image: str | None = None  # record field holding the (first) image
    image2: str | None = None  # a second image (two-image reasoning)
    video: str | None = None  # a list of frames
    region: str | None = None  # a box field, rendered as 4 coordinate tokens where the prompt says {region}
    mask_patches: float = Field(0.0, ge=0, lt=1)  # hide this fraction of image patches (BEiT masked image modelling)


class Target(_Strict):
    format: str
    field: str
    label: str | None = None  # boxes: key of each object's label
    box: str = "box"  # boxes: key of each object's box
    order: Literal["record", "random"] = "record"  # boxes: training order of objects (Pix2Seq: random)
    choices: list[str] | str | None = None  # label: the closed set, or "meta:KEY" to read it from the store
    values: dict[str, str] | None = None  # label: rename raw field values (e.g. {"true": "yes"}); keys are str(value).lower()
    kind: str | None = None  # dense formats: segmentation | depth | mask
    noise_boxes: int = Field(0, ge=0)  # boxes (Pix2Seq): in training, pad with <noise> boxes up to this many objects
    eos_weight: float = Field(1.0, ge=0)  # loss weight of eos (Pix2Seq: low, so detection does not stop early)
    # boxes: how a predicted box is scored for AP's ranking: its label's probability ("label", Pix2Seq),
    # or that times the geometric mean of its four coordinate tokens' probabilities ("label_coords")
    box_score: Literal["label", "label_coords"] = "label"
    reference: str | None = None  # field the metric compares against, when not the target itself
    mask_ratio: float = Field(0.3, gt=0, lt=1)  # masked_text: fraction of text pieces hidden


STRATEGIES = ("greedy", "beam", "sample", "score")
# Each decoding field's kind: (Python type, what an error says it must be). bool is never an int here.
DECODING_KINDS = {"strategy": (str, "one of " + " | ".join(STRATEGIES)), "max_tokens": (int, "an integer"),
                   "min_tokens": (int, "an integer"), "beam_size": (int, "an integer"),
                   "length_penalty": (float, "a finite number"), "temperature": (float, "a finite number"),
                   "top_k": (int, "an integer"), "top_p": (float, "a finite number"),
                   "guidance_scale": (float, "a finite number"), "seed": (int, "an integer or null")}
MAX_DECODING_TOKENS = 4096


_DECODING_BOUNDS = {"max_tokens": (lambda v: 1 <= v <= MAX_DECODING_TOKENS, f"in [1, {MAX_DECODING_TOKENS}]"),
                    "min_tokens": (lambda v: v >= 0, ">= 0"), "beam_size": (lambda v: v >= 1, ">= 1"),
                    "temperature": (lambda v: v > 0, "> 0"), "top_k": (lambda v: v >= 0, ">= 0"),
                    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"), "guidance_scale": (lambda v: v >= 0, ">= 0")}


def decoding_problem(name: str, v) -> str | None:
    """What is wrong with one decoding setting's value (its type, then its bounds), or None. The one check
    behind a spec's ``decoding:`` and every per-call override (``unitok.generation.DecodingOptions``)."""
    kind, says = DECODING_KINDS[name]
    if v is None and name == "seed":
        return None
    if kind is str:
        ok = v in STRATEGIES
    elif isinstance(v, bool) or not isinstance(v, numbers.Real):
        ok = False
    elif kind is float:
        ok = math.isfinite(v)
    else:
        ok = isinstance(v, numbers.Integral)
    if not ok:
        return f"{name} must be {says}, got {v!r}"
    if name in _DECODING_BOUNDS and not _DECODING_BOUNDS[name][0](v):
        return f"{name} must be {_DECODING_BOUNDS[name][1]}, got {v!r}"
    return None


class Decoding(_Strict):
    """How outputs are decoded (``unitok.generation``); every field can be overridden per call.

    ``score`` ranks the closed set ``target.choices`` by likelihood instead of generating.
    ``guidance_scale`` w: classifier-free guidance, logits = cond + w * (cond - uncond), so 0 is
    unguided (train with ``prompt_dropout`` > 0). ``min_tokens``: eos is masked before this many
    tokens (Pix2Seq detection decodes the whole box budget). Types and bounds are checked in one place,
    ``decoding_problem``, for specs and per-call overrides (``DecodingOptions``) alike."""

    strategy: str = "greedy"  # greedy | beam | sample | score
    max_tokens: int = 64  # budget per row, eos excluded
    min_tokens: int = 0
    beam_size: int = 1
    length_penalty: float = 1.0  # beam: hypotheses ranked by sum log p / length ** length_penalty
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    guidance_scale: float = 0.0
    seed: int | None = None  # sampling seed; None draws from torch's global generator

    @field_validator("*", mode="before")
    @classmethod
    def _checked(cls, v, info):
        problem = decoding_problem(info.field_name, v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _combination(self):
        if self.guidance_scale and self.strategy == "beam" and self.beam_size > 1:
            raise ValueError("classifier-free guidance works with greedy or sample decoding, not beam search")
        return self


class Splits(_Strict):
    train: str = "train"
    eval: str = "val"


class TaskSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    data: str  # dataset name; its stores live at <data root>/<data>/<split>
    splits: Splits = Splits()
    each: str | None = None  # expand one record into one example per item of this list field
    # keep only the examples whose fields have these values: {question_type: count} or {category: [a, b]};
    # paths as everywhere (item first, then record; captions.0 indexes a list)
    where: dict[str, str | int | float | bool | list[str | int | float | bool]] | None = None
    prompt: list[str] = Field(min_length=1)  # variants sampled in training; the first is used at evaluation
    inputs: Inputs = Inputs()
    target: Target
    decoding: Decoding = Decoding()
    metric: str
    metric_options: dict = {}  # keyword options of the evaluator; "meta:KEY" values come from the store
    # > 0: evaluation also ranks each example's true target among the targets of the other examples of its
    # pool of this many (candidate scoring), reporting retrieval r@1 / r@5 alongside the metric.
    retrieval_pool: int = Field(0, ge=0)
    weight: float = Field(1.0, ge=0)
    prompt_dropout: float = Field(0.0, ge=0, lt=1)  # drop the prompt text in training (classifier-free guidance)
    source: str = ""  # the file it was loaded from (set by the loader)

    @field_validator("prompt")
    @classmethod
    def _templates_parse(cls, prompts: list[str]) -> list[str]:
        for p in prompts:
            try:
                list(string.Formatter().parse(p))
            except ValueError as e:
                raise ValueError(f"template {p!r} does not parse: {e}") from e
        return prompts

    def placeholders(self) -> set[str]:
        return {f for p in self.prompt for _, f, _, _ in string.Formatter().parse(p) if f}


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"]) or "<top>"


def parse_task(data: object, *, source: str, formats=None) -> TaskSpec:
    """Validate a loaded YAML mapping. ``formats`` (a registry) adds the format's own checks."""
    if not isinstance(data, dict):
        raise TaskSpecError(f"{source}: expected a mapping of task fields at the top level, got {type(data).__name__}")
    try:
        spec = TaskSpec(**{**data, "source": source})
    except ValidationError as e:
        first = e.errors()[0]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise TaskSpecError(f"{source}: field '{_loc(first)}': {first['msg']}{more}") from None
    if spec.inputs.region and "region" not in spec.placeholders():
        raise TaskSpecError(f"{source}: field 'inputs.region': set, but no prompt template uses {{region}}")
    if formats is not None:
        try:
            fmt = formats.get(spec.target.format)
        except KeyError as e:
            raise TaskSpecError(f"{source}: field 'target.format': {e.args[0]}") from None
        for field, problem in fmt().check(spec.target):
            raise TaskSpecError(f"{source}: field 'target.{field}': {problem}")
    return spec


def load_task(path: str | Path, *, formats=None) -> TaskSpec:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise TaskSpecError(f"{path}: task spec file not found") from None
    except UnicodeDecodeError as e:
        raise TaskSpecError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason}); a task spec is YAML text") from None
    except OSError as e:
        raise TaskSpecError(f"{path}: cannot be read ({e.strerror})") from None
    if "\x00" in text:
        raise TaskSpecError(f"{path}: a binary file (it holds NUL bytes); a task spec is YAML text")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TaskSpecError(f"{path}: not valid YAML ({e})") from None
    return parse_task(data, source=str(path), formats=formats)


def load_tasks(directory: str | Path, names: list[str] | None = None, *, formats=None) -> dict[str, TaskSpec]:
    """Load ``names`` (or every ``*.yaml``) from ``directory``; an unknown name lists the known ones."""
    directory = Path(directory)
    files = {p.stem: p for p in sorted(directory.glob("*.yaml"))}
    if names is None:
        names = list(files)
    out = {}
    for n in names:
        if n not in files:
            raise TaskSpecError(f"unknown task {n!r}: no {directory / (n + '.yaml')}; known tasks: {', '.join(files) or 'none'}")
        out[n] = check_file_name(load_task(files[n], formats=formats), files[n])
    return out


def check_file_name(spec: TaskSpec, path: str | Path) -> TaskSpec:
    """A spec's ``name`` must be its file's name (``tasks/caption.yaml`` holds ``name: caption``): tasks are
    looked up by file name, so a spec whose name differs could never be found by it."""
    stem = Path(path).stem
    if spec.name != stem:
        raise TaskSpecError(f"{path}: field 'name': {spec.name!r} must match the file name {stem!r}")
    return spec


def dump_task(spec: TaskSpec) -> str:
    return yaml.safe_dump(spec.model_dump(exclude={"source"}, exclude_defaults=True), sort_keys=False)

"""From records to examples: a task spec applied to a record (and its ``each`` item).

An ``Example`` holds prompt ids, input images, target ids (ending in eos) with per-token loss
weights, and for evaluation the reference the metric compares against. ``collate`` pads a list
of examples into the model's batch tensors.
"""
from __future__ import annotations

import string
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import UniTokError, message
from ..modalities.codec import Codec
from ..modalities.image import image_tensor, load_image
from ..modalities.vocab import BOS, EOS, PAD
from .fields import matches, resolve
from .formats import FORMATS, FormatContext, TargetFormat
from .spec import TaskSpec


class ExampleError(UniTokError, ValueError):
    """A record lacks a field the task needs, or a prompt is too long."""


@dataclass
class Example:
    task: str
    prompt: list[int]
    images: torch.Tensor | None  # (N, 3, S, S) or None
    target: list[int]  # ends with eos
    weights: list[float]
    width: float
    height: float
    reference: Any = None
    record_id: str = ""
    patch_mask: torch.Tensor | None = None  # (N, P) bool: patches hidden from the encoder (masked image modelling)


class ExampleBuilder:
    """Applies one task spec to records. Holds no store: it is cheap to pickle into workers."""

    def __init__(self, spec: TaskSpec, codec: Codec, *, image_size: int, max_prompt_len: int, meta: dict | None = None,
                 patch_size: int = 8, max_target_len: int | None = None):
        self.spec, self.codec = spec, codec
        self.image_size, self.max_prompt_len, self.patch_size = image_size, max_prompt_len, patch_size
        self.max_target_len = max_target_len
        self.meta = dict(meta or {})
        self.format: TargetFormat = FORMATS.get(spec.target.format)()

    @classmethod
    def for_model(cls, spec: TaskSpec, codec: Codec, model_cfg, meta: dict | None = None) -> "ExampleBuilder":
        """A builder matching a model's input geometry (image size, patches, prompt length)."""
        return cls(spec, codec, image_size=model_cfg.image_size, max_prompt_len=model_cfg.max_prompt_len,
                   patch_size=model_cfg.patch_size, meta=meta, max_target_len=model_cfg.max_target_len)

    def context(self, width: float = 1.0, height: float = 1.0) -> FormatContext:
        budget = self.max_target_len - 1 if self.max_target_len else None  # room for eos
        return FormatContext(self.codec, self.spec.target, width, height, self.meta, max_tokens=budget)

    def items(self, record: dict) -> list[Any]:
        """The ``each`` items of a record (a one-element list when the task has no ``each``) that pass the
        spec's ``where`` filter: empty when none does."""
        if self.spec.each is None:
            items = [None]
        else:
            try:
                items = list(resolve(self.spec.each, record))
            except KeyError:
                raise ExampleError(f"task {self.spec.name}: record {record.get('id')!r} has no field {self.spec.each!r} (each)") from None
        return [it for it in items if matches(self.spec.where, record, it)] if self.spec.where else items

    def _field(self, path: str, record: dict, item: Any, what: str) -> Any:
        try:
            return resolve(path, record, item)
        except KeyError:
            raise ExampleError(f"task {self.spec.name} ({self.spec.source}): record {record.get('id')!r} has no field {path!r} ({what})") from None

    def prompt_ids(self, template: str, record: dict, item: Any, width: float, height: float,
                   fields: dict[str, list[int]] | None = None) -> list[int]:
        """Render a template: text segments through SentencePiece, ``{region}`` as 4 coordinate tokens,
        and placeholders the target format supplies (``fields``, e.g. masked text) as their token ids."""
        ids: list[int] = []
        for literal, name, spec, conv in string.Formatter().parse(template):
            text = literal
            if fields and name in fields:
                if text:
                    ids += self.codec.encode_text(text)
                ids += fields[name]
                continue
            if name == "region" and self.spec.inputs.region:
                box = self._field(self.spec.inputs.region, record, item, "inputs.region")
                if text:
                    ids += self.codec.encode_text(text)
                ids += self.codec.encode_box(box, width, height)
                continue
            if name:
                value = self._field(name, record, item, "prompt template")
                text += format(value, spec) if spec else str(value)
            if text:
                ids += self.codec.encode_text(text)
        if len(ids) > self.max_prompt_len:
            raise ExampleError(f"task {self.spec.name}: prompt of {len(ids)} tokens exceeds the model's "
                               f"max_prompt_len={self.max_prompt_len}: {template!r}")
        return ids

    def images(self, record: dict, item: Any) -> tuple[torch.Tensor | None, float, float]:
        inputs, frames = self.spec.inputs, []
        if inputs.image:
            frames.append(self._field(inputs.image, record, item, "inputs.image"))
        if inputs.image2:
            frames.append(self._field(inputs.image2, record, item, "inputs.image2"))
        if inputs.video:
            frames.extend(self._field(inputs.video, record, item, "inputs.video"))
        width, height = float(record.get("width", 1)), float(record.get("height", 1))
        if not frames:
            return None, width, height
        pil = [load_image(f, what=f"record {record.get('id')!r} image") for f in frames]
        return torch.stack([image_tensor(p, self.image_size) for p in pil]), float(pil[0].width), float(pil[0].height)

    def build(self, record: dict, item: Any = None, *, rng: np.random.Generator | None = None,
              with_target: bool = True) -> Example:
        """``rng`` given: a training example (sampled prompt variant and target choices); else evaluation.
        ``with_target=False``: inference on user input, where the record has no target field."""
        images, width, height = self.images(record, item)
        # Evaluation corrupts inputs (masked patches, masked text) the same way every time.
        noise = rng if rng is not None else np.random.default_rng(zlib.crc32(f"{record.get('id')}/{item!r}"[:200].encode()))
        ctx = self.context(width, height)
        if self.spec.inputs.mask_patches and images is not None:
            ctx.patch_mask = self.patch_mask(images.shape[0], noise)
        template = self.spec.prompt[int(rng.integers(len(self.spec.prompt)))] if rng is not None else self.spec.prompt[0]
        if not with_target:
            prompt = self.prompt_ids(template, record, item, width, height)
            return Example(self.spec.name, prompt, images, [EOS], [1.0], width, height, None, str(record.get("id", "")),
                           patch_mask=ctx.patch_mask)
        value = self._field(self.spec.target.field, record, item, "target.field")
        try:
            fields, value = self.format.split(value, ctx, noise)
        except ValueError as e:
            raise ExampleError(f"task {self.spec.name} ({self.spec.source}): record {record.get('id')!r}: {e}") from None
        prompt = self.prompt_ids(template, record, item, width, height, fields)
        if rng is not None and self.spec.prompt_dropout and rng.random() < self.spec.prompt_dropout:
            prompt = []  # unconditional example for classifier-free guidance
        with self._shape_of(record, "target.field"):
            target, weights = self.format.encode(value, ctx, rng)
        if ctx.max_tokens is not None and len(target) > ctx.max_tokens:
            raise ExampleError(f"task {self.spec.name} ({self.spec.source}): record {record.get('id')!r}: target of "
                               f"{len(target) + 1} tokens exceeds the model's max_target_len={self.max_target_len} "
                               f"(target.field {self.spec.target.field!r})")
        reference = None
        if rng is None:
            with self._shape_of(record, "target.field"):
                reference = (self._field(self.spec.target.reference, record, item, "target.reference")
                             if self.spec.target.reference else self.format.reference(value, ctx))
        return Example(self.spec.name, prompt, images, target + [EOS], weights + [self.spec.target.eos_weight], width, height,
                       reference, str(record.get("id", "")), patch_mask=ctx.patch_mask)

    @contextmanager
    def _shape_of(self, record: dict, key: str):
        """A record whose field decodes but has the wrong shape for the target format (``objects: "abc"``,
        a box of three numbers) fails naming the task, the record and the field, not deep in the format."""
        try:
            yield
        except ExampleError:
            raise
        except (TypeError, KeyError, ValueError, IndexError, AttributeError) as e:
            path = getattr(self.spec.target, key.split(".")[-1])
            raise ExampleError(f"task {self.spec.name} ({self.spec.source}): record {record.get('id')!r}: field "
                               f"{path!r} ({key}) does not have the shape the {self.spec.target.format!r} format reads: "
                               f"{type(e).__name__}: {message(e)}") from None

    def patch_mask(self, n_images: int, rng: np.random.Generator) -> torch.Tensor:
        """(N, P) bool: which patches of each image are hidden from the encoder (BEiT masking)."""
        n_patches = (self.image_size // self.patch_size) ** 2
        k = max(1, int(round(self.spec.inputs.mask_patches * n_patches)))
        mask = torch.zeros(n_images, n_patches, dtype=torch.bool)
        for i in range(n_images):
            mask[i, torch.from_numpy(rng.choice(n_patches, size=k, replace=False))] = True
        return mask


@dataclass
class Batch:
    prompt: torch.Tensor  # (B, L) long
    prompt_mask: torch.Tensor  # (B, L) bool
    images: torch.Tensor | None  # (B, N, 3, S, S)
    image_mask: torch.Tensor | None  # (B, N) bool
    target_in: torch.Tensor  # (B, T) long: bos + target[:-1]
    target: torch.Tensor  # (B, T) long
    weights: torch.Tensor  # (B, T) float; 0 on padding
    patch_mask: torch.Tensor | None  # (B, N, P) bool or None
    tasks: list[str]  # task of each row (rows carry no per-example tensors: each would cost a
    #                   shared-memory handle when a DataLoader worker sends the batch)


def collate(examples: list[Example]) -> Batch:
    b = len(examples)
    L = max(1, max(len(e.prompt) for e in examples))
    T = max(len(e.target) for e in examples)
    prompt = torch.full((b, L), PAD, dtype=torch.long)
    prompt_mask = torch.zeros((b, L), dtype=torch.bool)
    target = torch.full((b, T), PAD, dtype=torch.long)
    weights = torch.zeros((b, T))
    for i, e in enumerate(examples):
        if e.prompt:
            prompt[i, :len(e.prompt)] = torch.tensor(e.prompt)
            prompt_mask[i, :len(e.prompt)] = True
        else:
            prompt_mask[i, 0] = True  # an empty prompt still needs one key to attend to: a pad token
        target[i, :len(e.target)] = torch.tensor(e.target)
        weights[i, :len(e.weights)] = torch.tensor(e.weights)
    target_in = torch.cat([torch.full((b, 1), BOS, dtype=torch.long), target[:, :-1]], 1)
    n = max((0 if e.images is None else e.images.shape[0]) for e in examples)
    images = image_mask = patch_mask = None
    if n:
        shape = next(e.images for e in examples if e.images is not None).shape[1:]
        images = torch.zeros((b, n, *shape))
        image_mask = torch.zeros((b, n), dtype=torch.bool)
        for i, e in enumerate(examples):
            if e.images is not None:
                images[i, :e.images.shape[0]] = e.images
                image_mask[i, :e.images.shape[0]] = True
        masked = [e for e in examples if e.patch_mask is not None]
        if masked:
            patch_mask = torch.zeros((b, n, masked[0].patch_mask.shape[1]), dtype=torch.bool)
            for i, e in enumerate(examples):
                if e.patch_mask is not None:
                    patch_mask[i, :e.patch_mask.shape[0]] = e.patch_mask
    return Batch(prompt, prompt_mask, images, image_mask, target_in, target, weights, patch_mask,
                 [e.task for e in examples])


# Target-length classes for ``split_rows``: rows of one group are padded to at most the class's top.
LENGTH_CLASSES = (4, 12, 32)


def split_rows(batch: Batch) -> list[list[int]]:
    """Rows of ``batch`` grouped by image-slot count and target-length class, in first-seen order.

    A mixed batch padded as one tensor wastes most of its compute: one video row pads every row to
    four image slots, one image-code target pads every label row to 65 positions. Run per group, the
    same rows cost only their own size; the loss stays normalised over the whole batch."""
    slots = batch.image_mask.sum(1).tolist() if batch.image_mask is not None else [0] * len(batch.tasks)
    lengths = (batch.target != PAD).sum(1).tolist()  # targets are contiguous, padded at the end
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (n, t) in enumerate(zip(slots, lengths)):
        cls = next((j for j, top in enumerate(LENGTH_CLASSES) if t <= top), len(LENGTH_CLASSES))
        groups.setdefault((int(n), cls), []).append(i)
    return list(groups.values())


def select_rows(batch: Batch, rows: list[int]) -> Batch:
    """The batch of ``rows`` only, with the padding none of them needs cut off."""
    index = torch.tensor(rows)
    prompt_mask = batch.prompt_mask[index]
    length = max(1, int(prompt_mask.sum(1).max()))
    target_len = max(1, int((batch.target[index] != PAD).sum(1).max()))
    images = image_mask = patch_mask = None
    if batch.image_mask is not None:
        image_mask = batch.image_mask[index]
        n = int(image_mask.sum(1).max())
        if n:
            images, image_mask = batch.images[index, :n], image_mask[:, :n]
            patch_mask = batch.patch_mask[index, :n] if batch.patch_mask is not None else None
        else:
            image_mask = None
    return Batch(batch.prompt[index, :length], prompt_mask[:, :length], images, image_mask,
                 batch.target_in[index, :target_len], batch.target[index, :target_len],
                 batch.weights[index, :target_len], patch_mask, [batch.tasks[i] for i in rows])

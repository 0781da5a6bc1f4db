"""Target formats: how a target value becomes tokens, how tokens parse back, and the grammar.

Registry contract (``FORMATS``): a registered class is instantiated with no arguments and offers

    check(target) -> [(field, problem)]             spec-time validation of ``target.*`` options
    encode(value, ctx, rng) -> (ids, weights)        training target, without eos
    decode(ids, ctx, logprobs=None) -> output        a structured output from ``outputs``
    reference(value, ctx) -> reference               what the task's evaluator compares against
    grammar(ctx) -> Grammar                          the DFA every generated sequence obeys
    prompt_fields: tuple[str, ...]                   placeholders ``split`` fills (not record fields)

``value`` is what ``target.field`` resolved to in the record (or the ``each`` item).

Grammars are torch tables, built only when decoding (``_builder``): checking a spec (``unitok tasks list|check``)
loads neither torch nor the tokenizers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.schema import DEPTH_SCALE, depth_metres
from ..registry import Registry
from ..modalities.vocab import MASK, NOISE
from ..modalities.vq.config import MAP_KINDS
from .outputs import Box, Boxes, DenseMap, GeneratedImage, Label, Region, Text
from .spec import Target

if TYPE_CHECKING:
    from ..modalities.codec import Codec
    from .grammar import Grammar, GrammarBuilder

FORMATS: Registry = Registry("target format")


@dataclass
class FormatContext:
    codec: Codec
    target: Target
    width: float = 1.0  # pixel size of the input image, for coordinates
    height: float = 1.0
    meta: dict = field(default_factory=dict)  # the store's metadata (closed label sets live there)
    patch_mask: Any = None  # (N, P) bool tensor of patches hidden from the encoder, when the task masks them
    max_tokens: int | None = None  # the target's token budget (the model's max_target_len, less eos)


class TargetFormat:
    prompt_fields: tuple[str, ...] = ()  # template placeholders this format's ``split`` supplies

    def check(self, target: Target) -> list[tuple[str, str]]:
        return []

    def split(self, value: Any, ctx: FormatContext, rng: np.random.Generator) -> tuple[dict[str, list[int]], Any]:
        """Formats that corrupt their input (masked text) return prompt fields (placeholder -> token ids)
        and the value left to predict. Most formats predict the field as it is."""
        return {}, value

    def encode(self, value: Any, ctx: FormatContext, rng: np.random.Generator | None) -> tuple[list[int], list[float]]:
        raise NotImplementedError

    def decode(self, ids: list[int], ctx: FormatContext, logprobs: list[float] | None = None):
        raise NotImplementedError

    def reference(self, value: Any, ctx: FormatContext):
        raise NotImplementedError

    def grammar(self, ctx: FormatContext) -> Grammar:
        raise NotImplementedError


def _builder(codec: Codec) -> GrammarBuilder:
    """A grammar builder over ``codec``'s vocabulary (imported here: see the module's docstring)."""
    from .grammar import GrammarBuilder

    return GrammarBuilder(codec.vocab.size)


def _score(logprobs: list[float] | None) -> float | None:
    return None if not logprobs else float(math.exp(sum(logprobs) / len(logprobs)))


@FORMATS.register("text")
class TextFormat(TargetFormat):
    """Free text. A list-valued field holds several references: training samples one."""

    def encode(self, value, ctx, rng):
        if isinstance(value, (list, tuple)):
            value = value[int(rng.integers(len(value)))] if rng is not None else value[0]
        ids = ctx.codec.encode_text(str(value))
        return ids, [1.0] * len(ids)

    def decode(self, ids, ctx, logprobs=None):
        return Text(ctx.codec.decode_text(ids))

    def reference(self, value, ctx):
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]

    def grammar(self, ctx):
        b = _builder(ctx.codec)
        first, rest = b.state(), b.state()
        text = ctx.codec.block_mask("text")
        b.on(first, text, rest)
        b.on(rest, text, rest)
        b.end(rest)
        return b.build(first)


def resolve_choices(target: Target, meta: dict) -> list[str]:
    choices = target.choices
    if isinstance(choices, str):
        key = choices.removeprefix("meta:")
        if key not in meta:
            raise KeyError(f"target.choices names meta key {key!r}, which the store's metadata lacks (has: {sorted(meta)})")
        choices = meta[key]
    return [str(c) for c in choices]


@FORMATS.register("label")
class LabelFormat(TargetFormat):
    """One answer from a closed set, enforced at decoding by a trie of the choices' token sequences."""

    def check(self, target):
        if target.choices is None:
            return [("choices", "the label format needs a list of choices or 'meta:KEY'")]
        if isinstance(target.choices, str) and not target.choices.startswith("meta:"):
            return [("choices", f"expected a list or 'meta:KEY', got {target.choices!r}")]
        if target.values and isinstance(target.choices, list):
            stray = sorted(set(target.values.values()) - set(target.choices))
            if stray:
                return [("values", f"maps to {stray}, which are not among the choices {target.choices}")]
        return []

    @staticmethod
    def label_of(value, target: Target) -> str:
        if target.values is None:
            return str(value)
        key = str(value).lower()
        if key not in target.values:
            raise KeyError(f"target.values has no entry for {key!r} (has: {sorted(target.values)})")
        return target.values[key]

    def encode(self, value, ctx, rng):
        ids = ctx.codec.encode_text(self.label_of(value, ctx.target))
        return ids, [1.0] * len(ids)

    def decode(self, ids, ctx, logprobs=None):
        return Label(ctx.codec.decode_text(ids), _score(logprobs))

    def reference(self, value, ctx):
        return self.label_of(value, ctx.target)

    def grammar(self, ctx):
        from .grammar import sequence_trie

        b = _builder(ctx.codec)
        start = b.state()
        sequence_trie(b, start, [ctx.codec.encode_text(c) for c in resolve_choices(ctx.target, ctx.meta)])
        return b.build(start)


@FORMATS.register("boxes")
class BoxesFormat(TargetFormat):
    """Pix2Seq detection: per object ``x0 y0 x1 y1 <label text>``, then eos.

    ``target.order``: ``record`` keeps the record's order (the world lists objects left to right),
    which a small model learns within a short CPU budget; ``random`` shuffles per example as Pix2Seq
    does, which its authors found best for long training.

    Sequence augmentation (Pix2Seq): with ``target.noise_boxes`` N, training sequences are padded
    with noise objects up to N (jittered copies of real boxes and random boxes) labelled ``<noise>``;
    their coordinates get loss weight 0 (nothing to learn there) and their label weight 1, so the
    model learns to call a doubtful box noise rather than to stop early (``target.eos_weight`` lowers
    eos further). At inference the grammar admits ``<noise>`` as a label, decoding runs over the
    whole budget (``decoding.min_tokens``) and noise-labelled boxes are dropped. A record with more
    objects than the model's target length holds is cut to the objects that fit (Pix2Seq caps the
    objects per image; with ``order: random`` a different subset each time); each kept box is
    scored by its label's probability, or with ``target.box_score: label_coords`` by that times the
    geometric mean of its coordinate tokens' probabilities, so that AP ranks a well-placed box above a
    doubtful one with the same label confidence.
    """

    def check(self, target):
        return [] if target.label else [("label", "the boxes format needs the key of each object's label")]

    def encode(self, value, ctx, rng):
        objects = list(value)
        if rng is not None and ctx.target.order == "random":
            objects = [objects[i] for i in rng.permutation(len(objects))]
        ids: list[int] = []
        weights: list[float] = []
        budget = ctx.max_tokens if ctx.max_tokens is not None else float("inf")
        for obj in objects:
            label = ctx.codec.encode_text(str(obj[ctx.target.label]))
            if len(ids) + 4 + len(label) > budget:  # Pix2Seq caps the objects per image: the rest are left out
                break
            ids += ctx.codec.encode_box(obj[ctx.target.box], ctx.width, ctx.height) + label
            weights += [1.0] * (4 + len(label))
        if rng is not None:
            real = [list(map(float, o[ctx.target.box])) for o in objects]
            for _ in range(ctx.target.noise_boxes - len(objects)):
                if len(ids) + 5 > budget:
                    break
                ids += ctx.codec.encode_box(_noise_box(rng, real, ctx.width, ctx.height), ctx.width, ctx.height) + [NOISE]
                weights += [0.0] * 4 + [1.0]
        return ids, weights

    def decode(self, ids, ctx, logprobs=None):
        codec, boxes = ctx.codec, []
        i, n = 0, len(ids)
        while i + 4 <= n and all(codec.is_coord(t) for t in ids[i:i + 4]):
            if i + 4 < n and ids[i + 4] == NOISE:  # Pix2Seq: the model calls this box noise
                i += 5
                continue
            j = i + 4
            while j < n and codec.is_text(ids[j]):
                j += 1
            if j == i + 4:  # a box without a label is a truncated tail
                break
            x0, y0, x1, y1 = codec.decode_box(ids[i:i + 4], ctx.width, ctx.height)
            score = 1.0
            if logprobs:
                score = _score(logprobs[i + 4:j])
                if ctx.target.box_score == "label_coords":
                    score *= _score(logprobs[i:i + 4])
            boxes.append(Box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1),
                             codec.decode_text(ids[i + 4:j]).strip(), score))
            i = j
        return Boxes(boxes)

    def reference(self, value, ctx):
        return Boxes([Box(*map(float, o[ctx.target.box]), label=str(o[ctx.target.label])) for o in value])

    def grammar(self, ctx):
        b = _builder(ctx.codec)
        between, c1, c2, c3, first, more = (b.state() for _ in range(6))
        coords, text = ctx.codec.block_mask("coords"), ctx.codec.block_mask("text")
        b.on(between, coords, c1)
        b.end(between)
        b.on(c1, coords, c2)
        b.on(c2, coords, c3)
        b.on(c3, coords, first)
        b.on(first, text, more)
        b.on(more, text, more)
        b.on(more, coords, c1)
        b.end(more)
        if ctx.target.noise_boxes:
            noise = b.state()
            b.on(first, NOISE, noise)
            b.on(noise, coords, c1)
            b.end(noise)
        return b.build(between)


def _noise_box(rng: np.random.Generator, real: list[list[float]], width: float, height: float) -> list[float]:
    """A Pix2Seq noise object: half the time a real box shifted and rescaled, else a random box."""
    if real and rng.random() < 0.5:
        x0, y0, x1, y1 = real[int(rng.integers(len(real)))]
        w, h = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2 + rng.normal(0, 0.2) * w, (y0 + y1) / 2 + rng.normal(0, 0.2) * h
        w, h = w * float(np.exp(rng.normal(0, 0.25))), h * float(np.exp(rng.normal(0, 0.25)))
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    else:
        xs, ys = sorted(rng.uniform(0, width, 2)), sorted(rng.uniform(0, height, 2))
        box = [xs[0], ys[0], xs[1], ys[1]]
    return [min(max(v, 0.0), extent) for v, extent in zip(box, (width, height, width, height))]


@FORMATS.register("region")
class RegionFormat(TargetFormat):
    """Exactly one box: four coordinate tokens (grounding, referring expressions)."""

    def encode(self, value, ctx, rng):
        ids = ctx.codec.encode_box(value, ctx.width, ctx.height)
        return ids, [1.0] * 4

    def decode(self, ids, ctx, logprobs=None):
        coords = [t for t in ids if ctx.codec.is_coord(t)][:4]
        if len(coords) < 4:  # only reachable without the grammar
            return Region(Box(0.0, 0.0, 0.0, 0.0))
        x0, y0, x1, y1 = ctx.codec.decode_box(coords, ctx.width, ctx.height)
        return Region(Box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1), score=_score(logprobs) or 1.0))

    def reference(self, value, ctx):
        return Region(Box(*map(float, value)))

    def grammar(self, ctx):
        b = _builder(ctx.codec)
        states = [b.state() for _ in range(5)]
        coords = ctx.codec.block_mask("coords")
        for s, t in zip(states, states[1:]):
            b.on(s, coords, t)
        b.end(states[-1])
        return b.build(states[0])


def _fixed_length_grammar(codec: Codec, block: str, length: int) -> Grammar:
    """Exactly ``length`` tokens of ``block``, then eos."""
    b = _builder(codec)
    states = [b.state() for _ in range(length + 1)]
    mask = codec.block_mask(block)
    for s, t in zip(states, states[1:]):
        b.on(s, mask, t)
    b.end(states[-1])
    return b.build(states[0])


def _decode_image_field(value) -> np.ndarray:
    from ..modalities.image import load_image

    return value if isinstance(value, np.ndarray) else np.asarray(load_image(value, what="target image"))


@FORMATS.register("image")
class ImageFormat(TargetFormat):
    """An image as h x w VQ-VAE codes (Unified-IO): text-to-image targets. Needs ``tokenizers.image``.

    The reference for evaluation is ``target.reference`` (e.g. the scene's objects, for fidelity).
    """

    def encode(self, value, ctx, rng):
        # Masked image modelling too trains every code, the hidden and the visible: evaluation decodes
        # and scores the whole image, so a code left out of the loss would be scored untrained (BEiT
        # scores only the hidden codes; here the visible ones are the cheap part of the same picture).
        ids = ctx.codec.encode_image(_decode_image_field(value))
        return ids, [1.0] * len(ids)

    def decode(self, ids, ctx, logprobs=None):
        n = ctx.codec.image.num_codes
        start = ctx.codec.vocab.range("image")[0]
        ids = (list(ids) + [start] * n)[:n]  # only short without the grammar
        return GeneratedImage(ctx.codec.decode_image(ids))

    def reference(self, value, ctx):
        return value

    def grammar(self, ctx):
        return _fixed_length_grammar(ctx.codec, "image", ctx.codec.image.num_codes)


@FORMATS.register("dense")
class DenseFormat(TargetFormat):
    """A dense map as h x w codes of the dense VQ-VAE (UViM): segmentation, depth or an instance mask.

    ``target.kind`` picks the map; segmentation maps hold class ids (0 = background, k = the k-th of
    the store's ``categories``); depth maps are 16-bit PNGs in units of 1/``depth_scale`` metres.
    """

    def check(self, target):
        if target.kind not in MAP_KINDS:
            return [("kind", f"the dense format needs kind: one of {', '.join(MAP_KINDS)}; got {target.kind!r}")]
        return []

    def _values(self, value, ctx) -> np.ndarray:
        import io

        from PIL import Image

        if isinstance(value, np.ndarray):
            arr = value
        else:
            with Image.open(io.BytesIO(value)) as img:
                arr = np.asarray(img)
        if ctx.target.kind == "depth":
            return depth_metres(arr, ctx.meta.get("depth_scale", DEPTH_SCALE))
        if ctx.target.kind == "mask":
            return arr > 127
        return arr.astype(np.int64)

    def encode(self, value, ctx, rng):
        ids = ctx.codec.encode_dense(self._values(value, ctx), ctx.target.kind)
        return ids, [1.0] * len(ids)

    def decode(self, ids, ctx, logprobs=None):
        n = ctx.codec.dense.num_codes
        start = ctx.codec.vocab.range("dense")[0]
        ids = (list(ids) + [start] * n)[:n]
        values = ctx.codec.decode_dense(ids, ctx.target.kind)
        return DenseMap(self._resize(values, ctx), ctx.target.kind, self._classes(ctx))

    @staticmethod
    def _resize(values: np.ndarray, ctx) -> np.ndarray:
        """Back to the input image's pixels (nearest: class ids and depths must not blend)."""
        from PIL import Image

        w, h = int(round(ctx.width)), int(round(ctx.height))
        if values.shape == (h, w) or w <= 1 or h <= 1:
            return values
        out = np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize((w, h), Image.NEAREST))
        return out.astype(values.dtype)

    def _classes(self, ctx) -> list[str] | None:
        """Segmentation class names: ``target.choices`` (e.g. ``meta:categories``, resolved into the
        checkpoint's spec at training time), after the implicit background class 0."""
        if ctx.target.kind != "segmentation":
            return None
        names = ctx.target.choices if isinstance(ctx.target.choices, list) else ctx.meta.get("categories", [])
        return ["background"] + [str(c) for c in names]

    def reference(self, value, ctx):
        return DenseMap(self._values(value, ctx), ctx.target.kind, self._classes(ctx))

    def grammar(self, ctx):
        return _fixed_length_grammar(ctx.codec, "dense", ctx.codec.dense.num_codes)


@FORMATS.register("masked_text")
class MaskedTextFormat(TargetFormat):
    """Masked language modelling as span corruption (T5; the BEiT-3/OFA text objective in seq2seq form).

    ``split`` hides about ``target.mask_ratio`` of the text's pieces in spans; the prompt placeholder
    ``{masked}`` receives the text with one ``<mask>`` per span, and the target is each span after its
    own ``<mask>``: ``<mask> red circle <mask> left``. Evaluation masks deterministically per record.
    """

    prompt_fields = ("masked",)

    def split(self, value, ctx, rng):
        if isinstance(value, (list, tuple)):
            value = value[int(rng.integers(len(value)))]
        pieces = ctx.codec.encode_text(str(value))
        n = len(pieces)
        if n == 0:
            raise ValueError(f"masked_text: the text to mask is empty ({ctx.target.field!r})")
        hide = np.zeros(n, dtype=bool)
        budget = max(1, int(round(ctx.target.mask_ratio * n)))
        while hide.sum() < budget:
            length = int(min(budget - hide.sum(), rng.integers(1, 4)))
            start = int(rng.integers(0, max(1, n - length + 1)))
            hide[start:start + length] = True
        prompt, target = [], []
        for i, tok in enumerate(pieces):
            if hide[i] and (i == 0 or not hide[i - 1]):
                prompt.append(MASK)
                target.append(MASK)
            (target if hide[i] else prompt).append(tok)
        return {"masked": prompt}, target

    def encode(self, value, ctx, rng):
        return list(value), [1.0] * len(value)

    def decode(self, ids, ctx, logprobs=None):
        spans, current = [], []
        for t in list(ids) + [MASK]:
            if t == MASK:
                if current:
                    spans.append(ctx.codec.decode_text(current).strip())
                current = []
            else:
                current.append(t)
        return Text(" | ".join(spans))

    def reference(self, value, ctx):
        return self.decode(value, ctx).text

    def grammar(self, ctx):
        b = _builder(ctx.codec)
        start, first, more = b.state(), b.state(), b.state()
        text = ctx.codec.block_mask("text")
        b.on(start, MASK, first)
        b.on(first, text, more)
        b.on(more, text, more)
        b.on(more, MASK, first)
        b.end(more)
        return b.build(start)

"""The Codec: the unified vocabulary plus the modality tokenizers that own its blocks.

It converts between the world of values (strings, pixel coordinates, images, dense maps) and
global token ids. Everything above the modalities layer speaks global ids through a Codec.
The image and dense blocks exist only when their VQ-VAE tokenizers are given.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .coords import CoordQuantizer
from .text import TextTokenizer
from .vocab import EOS, PAD, Vocabulary, VocabularyMismatch
from .vq.tokenizer import DenseTokenizer, ImageTokenizer


def vq_fingerprint(tok) -> str:
    """What the vocabulary pins of a VQ tokenizer: kind, codebook size, grid, image size."""
    s = tok.spec()
    return f"{s['kind']}:{s['codebook_size']}:{s['grid'][0]}x{s['grid'][1]}@{s['image_size'][0]}x{s['image_size'][1]}"


class Codec:
    def __init__(self, vocab: Vocabulary, text: TextTokenizer, coords: CoordQuantizer,
                 image: ImageTokenizer | None = None, dense: DenseTokenizer | None = None):
        self.vocab = vocab
        self.text = text
        self.coords = coords
        self.image, self.dense = image, dense
        for name, tok in (("image", image), ("dense", dense)):
            if vocab.has(name) != (tok is not None):
                raise VocabularyMismatch(f"vocabulary {'has' if vocab.has(name) else 'lacks'} an {name!r} block but the "
                                         f"{name} tokenizer is {'missing' if tok is None else 'given'}")
            if tok is not None:
                if vocab.block(name).size != tok.codebook_size:
                    raise VocabularyMismatch(f"vocabulary {name} block has {vocab.block(name).size} ids but the "
                                             f"{name} tokenizer has {tok.codebook_size} codes")
                pinned = vocab.meta.get(f"{name}_vq")
                if pinned is not None and pinned != vq_fingerprint(tok):
                    raise VocabularyMismatch(f"{name} tokenizer is {vq_fingerprint(tok)} but the vocabulary was built with {pinned}")
        if vocab.block("text").size != text.size:
            raise ValueError(f"vocabulary text block has {vocab.block('text').size} ids but the text model has {text.size}")
        if vocab.block("coords").size != coords.bins:
            raise ValueError(f"vocabulary coords block has {vocab.block('coords').size} ids but the quantizer has {coords.bins} bins")
        self.text_start, self.text_end = vocab.range("text")
        self.coord_start, self.coord_end = vocab.range("coords")

    @classmethod
    def build(cls, text: TextTokenizer, coord_bins: int, image: ImageTokenizer | None = None,
              dense: DenseTokenizer | None = None) -> "Codec":
        meta = {"text_model": text.fingerprint}
        if image is not None:
            meta["image_vq"] = vq_fingerprint(image)
        if dense is not None:
            meta["dense_vq"] = vq_fingerprint(dense)
        vocab = Vocabulary.build(text_size=text.size, coord_bins=coord_bins, meta=meta,
                                 image_codes=image.codebook_size if image else 0,
                                 dense_codes=dense.codebook_size if dense else 0)
        return cls(vocab, text, CoordQuantizer(coord_bins), image, dense)

    # --- text ---
    def encode_text(self, s: str) -> list[int]:
        return [self.text_start + i for i in self.text.encode(s)]

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.text.decode([i - self.text_start for i in ids if self.text_start <= i < self.text_end])

    # --- coordinates ---
    def encode_box(self, box: Sequence[float], width: float, height: float) -> list[int]:
        return [self.coord_start + b for b in self.coords.quantize_box(box, width, height)]

    def decode_box(self, ids: Sequence[int], width: float, height: float) -> list[float]:
        return self.coords.dequantize_box([i - self.coord_start for i in ids], width, height)

    def is_coord(self, i: int) -> bool:
        return self.coord_start <= i < self.coord_end

    def is_text(self, i: int) -> bool:
        return self.text_start <= i < self.text_end

    # --- visual codes (VQ-VAE) ---
    def _vq(self, name: str):
        tok = getattr(self, name)
        if tok is None:
            raise ValueError(f"this vocabulary has no {name} codes: configure tokenizers.{name} to use {name} targets")
        return tok

    def encode_image(self, image) -> list[int]:
        """HxWx3 uint8 (any size; resized to the tokenizer's input) -> h*w global ids, row-major."""
        tok = self._vq("image")
        h, w = tok.image_size
        x = torch.from_numpy(_resize_rgb(image, (w, h)))[None]
        with torch.inference_mode():
            codes = tok.encode(x)[0].flatten()
        return (codes + self.vocab.range("image")[0]).tolist()

    def decode_image(self, ids: Sequence[int]):
        tok = self._vq("image")
        codes = torch.tensor([i - self.vocab.range("image")[0] for i in ids]).view(1, *tok.grid)
        with torch.inference_mode():
            return tok.decode(codes)[0].cpu().numpy()

    def encode_dense(self, values, kind: str) -> list[int]:
        """HxW map (class ids, bool mask, or depth in metres) -> h*w global ids."""
        tok = self._vq("dense")
        h, w = tok.image_size
        x = torch.from_numpy(_resize_map(values, (w, h)))[None]
        with torch.inference_mode():
            codes = tok.encode(x, kind)[0].flatten()
        return (codes + self.vocab.range("dense")[0]).tolist()

    def decode_dense(self, ids: Sequence[int], kind: str):
        tok = self._vq("dense")
        codes = torch.tensor([i - self.vocab.range("dense")[0] for i in ids]).view(1, *tok.grid)
        with torch.inference_mode():
            return tok.decode(codes, kind)[0].cpu().numpy()

    # --- block masks (for grammars) ---
    def block_mask(self, *names: str) -> torch.Tensor:
        """Bool (V,) mask of the ids in the named blocks ('eos' and 'pad' name single specials)."""
        m = torch.zeros(self.vocab.size, dtype=torch.bool)
        for name in names:
            if name == "eos":
                m[EOS] = True
            elif name == "pad":
                m[PAD] = True
            else:
                s, e = self.vocab.range(name)
                m[s:e] = True
        return m


def _resize_rgb(image, size: tuple[int, int]):
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return np.asarray(img if img.size == size else img.resize(size, Image.BILINEAR), dtype=np.uint8).copy()


def _resize_map(values, size: tuple[int, int]):
    """Nearest-neighbour resize (class ids and depths must not be blended)."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(values)
    if arr.shape[::-1] == size:
        return arr.copy()
    mode_arr = arr.astype(np.float32)
    out = np.asarray(Image.fromarray(mode_arr, mode="F").resize(size, Image.NEAREST))
    return out.astype(arr.dtype)

"""The unified vocabulary: one id space made of blocks, each owned by one modality tokenizer.

Layout (ids ascending):  specials | text | coords | image codes | dense codes

Each block also names the decoder expert its tokens route to (Multiway FFN): text pieces,
specials and coordinates go to the ``text`` expert, visual codes to ``vision``. The layout is
saved in every checkpoint (``to_dict``) and checked on load (``check_same``), because a model
trained on one layout silently produces garbage on another.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import UniTokError

# Fixed small ids. Reserved slots keep ids stable when a special is added later.
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<sep>", "<noise>", "<mask>", "<null>")
NUM_SPECIAL_SLOTS = 32
PAD, EOS, BOS, UNK, SEP, NOISE, MASK, NULL = range(len(SPECIALS))

BLOCK_ORDER = ("specials", "text", "coords", "image", "dense")


class VocabularyMismatch(UniTokError, ValueError):
    """A checkpoint or tokenizer asset was made for another vocabulary layout."""


@dataclass(frozen=True)
class Block:
    name: str
    size: int
    expert: str  # which Multiway expert decoder tokens of this block use


class Vocabulary:
    """Id layout of the unified vocabulary; ``range(block)`` gives [start, end) of a block."""

    def __init__(self, blocks: list[Block], meta: dict | None = None):
        names = [b.name for b in blocks]
        if names != [n for n in BLOCK_ORDER if n in names] or names[:1] != ["specials"]:
            raise ValueError(f"vocabulary blocks must start with 'specials' and follow {BLOCK_ORDER}; got {names}")
        self.blocks = list(blocks)
        self.meta = dict(meta or {})  # e.g. the SentencePiece model's hash, coordinate bins
        self._start: dict[str, int] = {}
        offset = 0
        for b in self.blocks:
            self._start[b.name] = offset
            offset += b.size
        self.size = offset

    @classmethod
    def build(cls, *, text_size: int, coord_bins: int, image_codes: int = 0, dense_codes: int = 0,
              meta: dict | None = None) -> "Vocabulary":
        blocks = [Block("specials", NUM_SPECIAL_SLOTS, "text"), Block("text", text_size, "text"),
                  Block("coords", coord_bins, "text")]
        if image_codes:
            blocks.append(Block("image", image_codes, "vision"))
        if dense_codes:
            blocks.append(Block("dense", dense_codes, "vision"))
        return cls(blocks, meta)

    def has(self, name: str) -> bool:
        return name in self._start

    def range(self, name: str) -> tuple[int, int]:
        if name not in self._start:
            raise KeyError(f"vocabulary has no {name!r} block; blocks: {[b.name for b in self.blocks]}")
        start = self._start[name]
        return start, start + self.block(name).size

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"vocabulary has no {name!r} block; blocks: {[b.name for b in self.blocks]}")

    def block_of(self, token_id: int) -> str:
        for b in self.blocks:
            start = self._start[b.name]
            if start <= token_id < start + b.size:
                return b.name
        raise ValueError(f"token id {token_id} outside the vocabulary of size {self.size}")

    def expert_ranges(self, experts: tuple[str, ...]) -> list[tuple[int, int, int]]:
        """[(start, end, expert index)] for the model's decoder routing."""
        out = []
        for b in self.blocks:
            expert = b.expert if b.expert in experts else experts[0]
            s, e = self.range(b.name)
            out.append((s, e, experts.index(expert)))
        return out

    def to_dict(self) -> dict:
        return {"blocks": [asdict(b) for b in self.blocks], "specials": list(SPECIALS), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        if list(d.get("specials", [])) != list(SPECIALS):
            raise VocabularyMismatch(f"special tokens differ: saved {d.get('specials')}, this unitok {list(SPECIALS)}")
        return cls([Block(**b) for b in d["blocks"]], d.get("meta", {}))

    def differences(self, other: "Vocabulary") -> list[str]:
        """Human-readable differences between two layouts (empty when identical)."""
        diffs = []
        mine, theirs = {b.name: b for b in self.blocks}, {b.name: b for b in other.blocks}
        for name in BLOCK_ORDER:
            a, b = mine.get(name), theirs.get(name)
            if a is None and b is None:
                continue
            if a is None or b is None:
                diffs.append(f"block {name!r}: {'absent' if a is None else a.size} vs {'absent' if b is None else b.size}")
            elif a != b:
                diffs.append(f"block {name!r}: size {a.size} vs {b.size}" if a.size != b.size
                             else f"block {name!r}: expert {a.expert} vs {b.expert}")
        for key in sorted(set(self.meta) | set(other.meta)):
            if self.meta.get(key) != other.meta.get(key):
                diffs.append(f"meta {key!r}: {self.meta.get(key)!r} vs {other.meta.get(key)!r}")
        return diffs

    def check_same(self, other: "Vocabulary", *, what: str) -> None:
        diffs = self.differences(other)
        if diffs:
            raise VocabularyMismatch(f"{what} was made for another vocabulary: " + "; ".join(diffs))

    def __repr__(self) -> str:
        return "Vocabulary(" + ", ".join(f"{b.name}={b.size}" for b in self.blocks) + f"; size={self.size})"

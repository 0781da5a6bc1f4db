"""SentencePiece text tokenizer, trained here on the project's own corpora.

byte_fallback makes every string encodable (unknown characters become byte pieces), and the
model's own bos/eos/pad are disabled: sequence structure belongs to the unified vocabulary.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Iterable

import sentencepiece as spm


class TextTokenizer:
    def __init__(self, model_proto: bytes, *, source: str = "<bytes>"):
        self._proto = model_proto
        self.source = source
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception as e:
            raise ValueError(f"{source}: not a SentencePiece model ({e})") from e

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TextTokenizer":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: SentencePiece model not found (train one with `unitok tokenizers train`)")
        return cls(path.read_bytes(), source=str(path))

    @classmethod
    def train(cls, sentences: Iterable[str], out: str | os.PathLike, *, vocab_size: int = 512,
              user_symbols: tuple[str, ...] = ()) -> "TextTokenizer":
        """Train on ``sentences`` and write the model to ``out`` (a ``.model`` file)."""
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
            model_type="unigram", character_coverage=1.0, byte_fallback=True,
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, user_defined_symbols=list(user_symbols),
            hard_vocab_limit=False, num_threads=1, minloglevel=2,
        )
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_bytes(model.getvalue())
        os.replace(tmp, out)
        return cls(model.getvalue(), source=str(out))

    @property
    def size(self) -> int:
        return self._sp.GetPieceSize()

    @property
    def proto(self) -> bytes:
        return self._proto

    @property
    def fingerprint(self) -> str:
        """Short hash of the model: a checkpoint records it so a swapped text model is caught on load."""
        return hashlib.sha256(self._proto).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return self._sp.EncodeAsIds(text)

    def decode(self, ids: list[int]) -> str:
        return self._sp.DecodeIds(list(ids))

    def piece(self, i: int) -> str:
        return self._sp.IdToPiece(i)

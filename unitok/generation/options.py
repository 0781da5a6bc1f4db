"""Decoding settings: a task spec's ``decoding:`` section, overridable per call.

``DecodingOptions.from_spec(spec.decoding, temperature=0.7)`` starts from the spec and replaces
fields; an unknown field, a value of the wrong type (``max_tokens=2.5``, ``seed="x"``) or out of
bounds fails with a ``DecodingError`` naming the key (and, for an unknown one, the known ones).
``RowSettings`` turns the options of the rows of one batch (rows may come from different tasks) into
per-row tensors, so the decoding loop applies every row's settings in one tensor operation.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from pydantic import ValidationError

from ..errors import DecodingError
from ..tasks.spec import DECODING_KINDS, STRATEGIES, Decoding


class DecodingOptions(Decoding):
    """A task spec's ``Decoding`` as one call decodes with: the same fields, types and bounds (checked once,
    by ``decoding_problem``), raising ``DecodingError`` naming the key; plus per-call overrides."""

    def __init__(self, **values) -> None:
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise DecodingError(_message(e)) from None

    @classmethod
    def from_spec(cls, decoding, **overrides) -> DecodingOptions:
        """``decoding``: a task spec's ``Decoding`` (or any object with these attributes)."""
        base = {name: getattr(decoding, name) for name in Decoding.model_fields if hasattr(decoding, name)}
        return cls(**base).replace(**overrides)

    def replace(self, **overrides) -> DecodingOptions:
        unknown = sorted(set(overrides) - set(Decoding.model_fields))
        if unknown:
            raise DecodingError(f"unknown decoding option(s) {unknown}; known: {self.usage()}")
        return DecodingOptions(**{**self.model_dump(), **{k: v for k, v in overrides.items() if v is not None or k == "seed"}})

    @classmethod
    def usage(cls) -> str:
        """Every option with what it takes, for error messages: ``strategy (greedy|beam|...), max_tokens (int), ...``."""
        kinds = {str: "|".join(STRATEGIES), int: "int", float: "float"}
        return ", ".join(f"{name} ({'int or null' if name == 'seed' else kinds[kind]})"
                         for name, (kind, _) in DECODING_KINDS.items())

    @property
    def samples(self) -> bool:
        return self.strategy == "sample"

    @property
    def beams(self) -> int:
        """Beam width; 1 unless the strategy is beam search."""
        return self.beam_size if self.strategy == "beam" else 1


def _message(error: ValidationError) -> str:
    problems = []
    for err in error.errors():
        if err["type"] == "extra_forbidden":
            return f"unknown decoding option(s) {[str(err['loc'][0])]}; known: {DecodingOptions.usage()}"
        cause = err.get("ctx", {}).get("error")
        problems.append(str(cause) if cause is not None else f"{'.'.join(map(str, err['loc']))}: {err['msg']}")
    return "decoding options: " + "; ".join(problems)


@dataclass
class RowSettings:
    """Per-row decoding settings of a batch, as tensors (B,)."""

    max_tokens: torch.Tensor  # long
    min_tokens: torch.Tensor  # long
    sample: torch.Tensor  # bool
    temperature: torch.Tensor  # float
    top_k: torch.Tensor  # long
    top_p: torch.Tensor  # float
    guidance_scale: torch.Tensor  # float
    length_penalty: torch.Tensor  # float

    @classmethod
    def from_options(cls, options: Sequence[DecodingOptions], device: torch.device | str = "cpu") -> RowSettings:
        def col(name, dtype, fn=lambda v: v):
            return torch.tensor([fn(getattr(o, name)) for o in options], dtype=dtype, device=device)

        return cls(col("max_tokens", torch.long), col("min_tokens", torch.long),
                   torch.tensor([o.samples for o in options], dtype=torch.bool, device=device),
                   col("temperature", torch.float), col("top_k", torch.long), col("top_p", torch.float),
                   col("guidance_scale", torch.float), col("length_penalty", torch.float))

    def select(self, index: torch.Tensor) -> RowSettings:
        return RowSettings(*(getattr(self, f.name)[index] for f in fields(self)))

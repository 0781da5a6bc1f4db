"""Decoding settings: a task spec's ``decoding:`` section, overridable per call.

``DecodingOptions.from_spec(spec.decoding, temperature=0.7)`` starts from the spec and replaces
fields; an unknown field, a value of the wrong type (``max_tokens=2.5``, ``seed="x"``) or out of
bounds fails with a ``DecodingError`` naming the key (and, for an unknown one, the known ones).
``RowSettings`` turns the options of the rows of one batch (rows may come from different tasks) into
per-row tensors, so the decoding loop applies every row's settings in one tensor operation.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from ..errors import DecodingError

STRATEGIES = ("greedy", "beam", "sample", "score")


@dataclass(frozen=True)
class DecodingOptions:
    strategy: str = "greedy"  # greedy | beam | sample | score (rank target.choices by likelihood)
    max_tokens: int = 64  # budget per row, eos excluded
    min_tokens: int = 0  # eos is masked before this many tokens (while anything else is allowed)
    beam_size: int = 1
    length_penalty: float = 1.0  # beam: a hypothesis ranks by sum(log p) / length ** length_penalty
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    guidance_scale: float = 0.0  # classifier-free guidance w: cond + w * (cond - uncond); 0: off
    seed: int | None = None  # sampling; None: torch's global generator

    def __post_init__(self) -> None:
        problems = self._type_problems()
        if problems:  # bounds below compare numbers: a wrongly typed value is reported alone
            raise DecodingError("decoding options: " + "; ".join(problems))
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            problems.append(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.beam_size < 1:
            problems.append(f"beam_size must be >= 1, got {self.beam_size}")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.guidance_scale < 0:
            problems.append(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.guidance_scale and self.strategy == "beam" and self.beam_size > 1:
            problems.append("classifier-free guidance works with greedy or sample decoding, not beam search")
        if problems:
            raise DecodingError("decoding options: " + "; ".join(problems))

    def _type_problems(self) -> list[str]:
        """Each field's value must be of its type: an int field takes no 2.5 (nor True), a float
        field a finite number, ``seed`` an int or None."""
        problems = []
        for f in fields(self):
            v = getattr(self, f.name)
            kind = {"int": "an integer", "float": "a finite number", "str": "a string",
                    "int | None": "an integer or null"}[f.type]
            if v is None and f.type == "int | None":
                continue
            if f.type == "str":
                ok = isinstance(v, str)
            elif isinstance(v, bool) or not isinstance(v, numbers.Real):
                ok = False
            elif f.type == "float":
                ok = math.isfinite(v)
            else:
                ok = isinstance(v, numbers.Integral)
            if not ok:
                problems.append(f"{f.name} must be {kind}, got {v!r}")
        return problems

    @classmethod
    def from_spec(cls, decoding, **overrides) -> DecodingOptions:
        """``decoding``: a task spec's ``Decoding`` (or any object with these attributes)."""
        base = {f.name: getattr(decoding, f.name) for f in fields(cls) if hasattr(decoding, f.name)}
        return cls(**base).replace(**overrides)

    def replace(self, **overrides) -> DecodingOptions:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DecodingError(f"unknown decoding option(s) {unknown}; known: {self.usage()}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None or k == "seed"})

    @classmethod
    def usage(cls) -> str:
        """Every option with what it takes, for error messages: ``strategy (greedy|beam|...), max_tokens (int), ...``."""
        kinds = {"str": "|".join(STRATEGIES), "int | None": "int or null"}
        return ", ".join(f"{f.name} ({kinds.get(f.type, f.type)})" for f in fields(cls))

    @property
    def samples(self) -> bool:
        return self.strategy == "sample"

    @property
    def beams(self) -> int:
        """Beam width; 1 unless the strategy is beam search."""
        return self.beam_size if self.strategy == "beam" else 1


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

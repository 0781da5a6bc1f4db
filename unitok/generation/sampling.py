"""Choosing the next token: greedy, or temperature / top-k / top-p sampling, per row.

All rows are handled in one pass over (B, V) tensors; each row carries its own settings
(``RowSettings``), so a batch can mix greedy rows with sampled ones.
"""
from __future__ import annotations

import torch

from .options import RowSettings


def filter_logits(logits: torch.Tensor, rows: RowSettings) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus), each per row; removed tokens get -inf."""
    x = logits / rows.temperature[:, None]
    V = x.shape[1]
    if bool((rows.top_k > 0).any()) or bool((rows.top_p < 1).any()):
        sorted_x, order = x.sort(dim=-1, descending=True)
        remove = torch.zeros_like(sorted_x, dtype=torch.bool)
        k = torch.where(rows.top_k > 0, rows.top_k.clamp(max=V), torch.full_like(rows.top_k, V))
        remove |= torch.arange(V, device=x.device)[None, :] >= k[:, None]
        probs = sorted_x.masked_fill(remove, float("-inf")).softmax(-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token if the mass before it already does.
        before = probs.cumsum(-1) - probs
        remove |= before >= rows.top_p[:, None]
        remove[:, 0] = False  # the most likely token always survives
        x = x.scatter(1, order, sorted_x.masked_fill(remove, float("-inf")))
    return x


def choose(logits: torch.Tensor, rows: RowSettings, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) masked logits -> (B,) tokens: argmax for greedy rows, a sample for sampling rows."""
    greedy = logits.argmax(-1)
    if not bool(rows.sample.any()):
        return greedy
    probs = filter_logits(logits, rows).softmax(-1)
    sampled = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return torch.where(rows.sample, sampled, greedy)

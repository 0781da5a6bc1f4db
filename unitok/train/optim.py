"""The optimiser and learning-rate schedule every trainer here uses: AdamW, linear warmup, then cosine.

Shared by the ``Trainer`` (the UniTok model) and the VQ-VAE tokenizer trainer (``unitok.train.vq``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def lr_at(step: int, *, base: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to ``base``, then cosine decay to ``base * min_ratio`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def matrices_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Weight decay on weight matrices only: not on norms, biases, embeddings or position tables."""
    return param.ndim >= 2 and "embed" not in name and "pos" not in name


def adamw(model: torch.nn.Module, *, lr: float, betas: tuple[float, float], weight_decay: float,
          decays: Callable[[str, torch.nn.Parameter], bool] = matrices_decay) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters in two groups: those ``decays(name, param)`` picks,
    with ``weight_decay``, and the rest, with none. Both groups always exist (optimizer state saved by
    one run loads into the next)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=False)

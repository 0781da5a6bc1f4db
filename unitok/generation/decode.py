"""Constrained generation: every row of a batch follows its own task's grammar.

Rows of one batch may belong to different tasks: ``grammar_index[b]`` picks row b's grammar in
the stacked table and ``max_tokens[b]`` its budget. The decoder runs with a KV cache (self-attention
K/V grow by one token a step; cross-attention K/V are computed once).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.transformer import UniTokModel
from ..modalities.vocab import BOS, EOS
from ..tasks.grammar import StackedGrammar


@dataclass
class Generated:
    tokens: list[list[int]]  # per row, without eos
    logprobs: list[list[float]]  # per token, under the constrained distribution
    finished: list[bool]  # False when the budget ran out before eos


def autocast_for(device: torch.device | str, enabled: bool = True):
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


@torch.inference_mode()
def generate(model: UniTokModel, prompt: torch.Tensor, prompt_mask: torch.Tensor, images: torch.Tensor | None,
             image_mask: torch.Tensor | None, grammar: StackedGrammar, grammar_index: torch.Tensor,
             max_tokens: torch.Tensor, *, bf16: bool = True, use_cache: bool = True) -> Generated:
    """Greedy decoding under the grammar. ``max_tokens``: (B,) budget per row, eos excluded."""
    model.eval()
    device = prompt.device
    b = prompt.shape[0]
    horizon = int(max_tokens.max()) + 1  # room for eos
    with autocast_for(device, bf16):
        memory, memory_mask = model.encode(prompt, prompt_mask, images, image_mask)
        caches = model.new_caches(b, horizon, memory.dtype, device) if use_cache else None
        states = grammar.start_states(grammar_index.to(grammar.offsets.device))
        seq = torch.full((b, 1), BOS, dtype=torch.long, device=device)
        out_tokens = torch.full((b, horizon), EOS, dtype=torch.long)
        out_logp = torch.zeros((b, horizon))
        finished = torch.zeros(b, dtype=torch.bool)
        for step in range(horizon):
            step_in = seq[:, -1:] if use_cache else seq
            logits = model.decode(step_in, memory, memory_mask, caches)[:, -1].float()
            allowed = grammar.mask(states)
            # Out of budget: end the row now if its grammar allows eos; otherwise it stays truncated.
            over = (step >= max_tokens) & allowed[:, EOS]
            allowed = torch.where(over[:, None], F.one_hot(torch.tensor(EOS), allowed.shape[1]).bool(), allowed)
            logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
            nxt = logp.argmax(-1)
            nxt = torch.where(finished, torch.full_like(nxt, EOS), nxt)
            out_tokens[:, step] = nxt
            out_logp[:, step] = logp.gather(1, nxt[:, None])[:, 0]
            states = grammar.advance(states, nxt)
            finished |= (nxt == EOS) | (step >= max_tokens)
            if bool(finished.all()):
                break
            seq = torch.cat([seq, nxt[:, None]], 1)
    tokens, logprobs, done = [], [], []
    for i in range(b):
        row = out_tokens[i].tolist()
        n = row.index(EOS) if EOS in row else min(int(max_tokens[i]), horizon)
        tokens.append(row[:n])
        logprobs.append(out_logp[i, :n].tolist())
        done.append(EOS in row)
    return Generated(tokens, logprobs, done)

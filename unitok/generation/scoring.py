"""Candidate scoring: rank given answers by their likelihood under the model.

Closed-set VQA, classification, image-text matching and retrieval all ask "which of these?" rather
than "write an answer". Each example is encoded once; its encoder output is repeated for each of
its candidates, and all candidates go through the decoder together, teacher-forced, in one pass
(chunked only to bound memory).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..modalities.vocab import BOS, EOS, PAD
from ..model.transformer import UniTokModel
from .decode import EncoderInputs, autocast_for, encode, image_tokens


@torch.inference_mode()
def score_candidates(model: UniTokModel, inputs: EncoderInputs, candidates: Sequence[Sequence[Sequence[int]]], *,
                     normalize: bool = True, bf16: bool = False, chunk_size: int = 512) -> list[list[float]]:
    """candidates[i]: token-id sequences (eos excluded) for example i. Returns per candidate the
    log-likelihood of the sequence followed by eos: the mean per token if ``normalize`` (comparable
    across lengths), else the sum."""
    model.eval()
    device = inputs.prompt.device
    if len(candidates) != inputs.prompt.shape[0]:
        raise ValueError(f"{len(candidates)} candidate lists for {inputs.prompt.shape[0]} examples")
    owner = [i for i, cands in enumerate(candidates) for _ in cands]
    flat = [list(c) + [EOS] for cands in candidates for c in cands]
    longest = max((len(c) for c in flat), default=0)
    if longest > model.cfg.max_target_len:
        raise ValueError(f"a candidate of {longest - 1} tokens exceeds model.max_target_len={model.cfg.max_target_len} (eos included)")
    scores: list[float] = []
    with autocast_for(device, bf16):
        memory, memory_mask = encode(model, inputs)
        for start in range(0, len(flat), chunk_size):
            chunk = flat[start:start + chunk_size]
            idx = torch.tensor(owner[start:start + chunk_size], device=device)
            t = max(len(c) for c in chunk)
            target = torch.full((len(chunk), t), PAD, dtype=torch.long, device=device)
            for r, c in enumerate(chunk):
                target[r, :len(c)] = torch.tensor(c, device=device)
            target_in = torch.cat([torch.full_like(target[:, :1], BOS), target[:, :-1]], 1)
            logits = model.decode(target_in, memory[idx], memory_mask[idx],
                                  n_image_tokens=image_tokens(model, inputs)).float()
            logp = torch.log_softmax(logits, -1).gather(2, target[:, :, None])[:, :, 0]
            lengths = torch.tensor([len(c) for c in chunk], device=device)
            valid = torch.arange(t, device=device)[None, :] < lengths[:, None]
            total = (logp * valid).sum(1)
            scores += (total / lengths if normalize else total).tolist()
    out, k = [], 0
    for cands in candidates:
        out.append(scores[k:k + len(cands)])
        k += len(cands)
    return out

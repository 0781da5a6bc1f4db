"""Beam search under per-row grammars, with a length penalty.

Each example keeps K hypotheses; each hypothesis carries its own grammar state, so the grammar
constrains every beam exactly as it constrains greedy decoding. Finished hypotheses stay in the
beam (their only continuation is eos at probability 1) and compete with open ones on the
length-normalised score ``sum(log p) / length ** length_penalty``, length counting eos. With one
beam this is greedy decoding: one hypothesis's candidates all share a length, so the best
normalised score is the most likely token.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..modalities.vocab import EOS
from ..model.transformer import UniTokModel
from .constraints import Constraint
from .decode import Decoder, EncoderInputs, Generated, _as_rows, autocast_for, encode, image_tokens
from .options import DecodingOptions, RowSettings


@torch.inference_mode()
def beam_search(model: UniTokModel, inputs: EncoderInputs, constraint: Constraint, grammar_index: torch.Tensor,
                options: DecodingOptions | Sequence[DecodingOptions], *, use_cache: bool = True,
                compiled: bool = False, bf16: bool = False) -> Generated:
    """All rows share one beam width (``options.beam_size``); budgets and length penalties are per row."""
    model.eval()
    device = inputs.prompt.device
    b = inputs.prompt.shape[0]
    opts = _as_rows(options, b)
    widths = {o.beam_size for o in opts}
    if len(widths) != 1:
        raise ValueError(f"beam_search() needs one beam width per call, got {sorted(widths)}")
    K = widths.pop()
    rows = RowSettings.from_options(opts, device)
    grammar_index = grammar_index.to(device)
    constraint = constraint if constraint.need.device == device else constraint.to(device)
    budget = constraint.budgets(grammar_index, rows.max_tokens, model.cfg.max_target_len - 1)
    horizon = int(budget.max()) + 1
    expand = lambda t: t.repeat_interleave(K, 0)
    budget_k, alpha, min_tokens = expand(budget), expand(rows.length_penalty), expand(rows.min_tokens)
    block_eos = bool((min_tokens > 0).any())
    n = b * K
    with autocast_for(device, bf16):
        memory, memory_mask = encode(model, inputs)  # once per example, shared by its beams
        step = Decoder(model, expand(memory), expand(memory_mask), horizon, use_cache=use_cache, compiled=compiled,
                       width=constraint.width(grammar_index), n_image_tokens=image_tokens(model, inputs))
        states = expand(constraint.start_states(grammar_index))
        score = torch.full((b, K), float("-inf"), device=device)
        score[:, 0] = 0.0  # the beams start as copies of one hypothesis: only the first may expand
        score = score.flatten()
        length = torch.zeros(n, dtype=torch.long, device=device)
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        hist_tok = torch.full((n, horizon), EOS, dtype=torch.long, device=device)
        hist_logp = torch.zeros((n, horizon), device=device)
        row_base = (torch.arange(b, device=device) * K)[:, None]
        tokens = None
        for t in range(horizon):
            logits = step(tokens)
            masked = constraint.mask(logits, states, budget_k + 1 - t, (t < min_tokens) if block_eos else None)
            logp = torch.log_softmax(masked, -1)  # (N, V)
            new_length = length + (~finished).long()
            total = score[:, None] + logp
            ranked = total / new_length.clamp(min=1).float()[:, None] ** alpha[:, None]
            V = logp.shape[1]
            best = ranked.view(b, K * V).topk(K, dim=1).indices  # (B, K)
            src = (row_base + best // V).flatten()
            tokens = (best % V).flatten()
            score = total.view(b, K * V).gather(1, best).flatten()
            step_logp = logp[src, tokens]
            states = constraint.advance(states[src], tokens)
            finished = finished[src] | (tokens == EOS)
            length = new_length[src]
            hist_tok, hist_logp = hist_tok[src], hist_logp[src]
            hist_tok[:, t], hist_logp[:, t] = tokens, step_logp
            step.reorder(src)
            if bool((finished | torch.isinf(score)).all()):
                break
    final = (score / length.clamp(min=1).float() ** alpha).view(b, K)
    pick = (torch.arange(b, device=device) * K + final.argmax(1))
    return _best(hist_tok[pick], hist_logp[pick], finished[pick])


def _best(tokens: torch.Tensor, logp: torch.Tensor, finished: torch.Tensor) -> Generated:
    out, lps = [], []
    for i, row in enumerate(tokens.cpu().tolist()):
        n = row.index(EOS) if EOS in row else len(row)
        out.append(row[:n])
        lps.append(logp[i, :n].cpu().tolist())
    return Generated(out, lps, finished.cpu().tolist())

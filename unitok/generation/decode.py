"""Constrained generation: every row of a batch follows its own task's grammar and settings.

Rows of one batch may belong to different tasks: ``grammar_index[b]`` picks row b's grammar in the
stacked table and ``RowSettings`` its budget, strategy (greedy or sampled) and guidance. The
decoder runs one token per step over a KV cache (self-attention K/V grow by one position a step,
cross-attention K/V are computed once); ``use_cache=False`` re-runs the decoder over the whole
prefix each step, which only the benchmark and the tests want.

Classifier-free guidance (Ho & Salimans): the rows with ``guidance_scale`` w > 0 get a twin row
whose prompt is empty (as ``prompt_dropout`` trained it) and whose output follows the real row's
tokens; the real row's logits become cond + w * (cond - uncond). Rows with w = 0 get no twin, so
w = 0 is exactly unguided decoding.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..modalities.vocab import BOS, EOS, PAD
from ..model.transformer import UniTokModel
from .constraints import Constraint, mask_logits
from .options import DecodingOptions, RowSettings
from .sampling import choose


@dataclass
class EncoderInputs:
    prompt: torch.Tensor  # (B, L) long
    prompt_mask: torch.Tensor  # (B, L) bool
    images: torch.Tensor | None = None  # (B, N, 3, S, S)
    image_mask: torch.Tensor | None = None  # (B, N) bool
    patch_mask: torch.Tensor | None = None  # (B, N, P) bool: patches hidden from the encoder

    def to(self, device) -> EncoderInputs:
        return EncoderInputs(*(None if t is None else t.to(device) for t in self._fields()))

    def rows(self, index: torch.Tensor) -> EncoderInputs:
        return EncoderInputs(*(None if t is None else t[index] for t in self._fields()))

    def unconditional(self) -> EncoderInputs:
        """The same rows with the prompt dropped: one pad key, as ``collate`` encodes an empty prompt."""
        b = self.prompt.shape[0]
        prompt = torch.full((b, 1), PAD, dtype=torch.long, device=self.prompt.device)
        return EncoderInputs(prompt, torch.ones_like(prompt, dtype=torch.bool), self.images, self.image_mask,
                             self.patch_mask)

    def _fields(self) -> tuple:
        return self.prompt, self.prompt_mask, self.images, self.image_mask, self.patch_mask


@dataclass
class Generated:
    tokens: list[list[int]]  # per row, without eos
    logprobs: list[list[float]]  # per token, under the constrained distribution (temperature 1)
    finished: list[bool]  # False only if a row's budget ran out before eos


def autocast_for(device: torch.device | str, enabled: bool = True):
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def encode(model: UniTokModel, inputs: EncoderInputs) -> tuple[torch.Tensor, torch.Tensor]:
    return model.encode(inputs.prompt, inputs.prompt_mask, inputs.images, inputs.image_mask, inputs.patch_mask)


def image_tokens(model: UniTokModel, inputs: EncoderInputs) -> int:
    """How many of the encoder output's first positions are image patches."""
    return 0 if inputs.images is None else inputs.images.shape[1] * model.cfg.num_patches


def _cat_memory(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]):
    """Stack two encoder outputs of different lengths along the batch, padding keys masked out."""
    (ma, ka), (mb, kb) = a, b
    s = max(ma.shape[1], mb.shape[1])
    pad = lambda m, k: (F.pad(m, (0, 0, 0, s - m.shape[1])), F.pad(k, (0, s - k.shape[1])))
    (ma, ka), (mb, kb) = pad(ma, ka), pad(mb, kb)
    return torch.cat([ma, mb]), torch.cat([ka, kb])


class Decoder:
    """Next-token logits for a batch, one step at a time, with or without the KV cache.

    Logits cover ids ``0 .. width - 1`` (default: the whole vocabulary); a caller that constrains
    decoding passes ``Constraint.width``, the ids its grammars can emit."""

    def __init__(self, model: UniTokModel, memory: torch.Tensor, memory_mask: torch.Tensor, horizon: int, *,
                 use_cache: bool = True, compiled: bool = False, width: int | None = None, n_image_tokens: int = 0):
        self.model, self.memory, self.memory_mask = model, memory, memory_mask
        self.n_image_tokens = n_image_tokens
        self.use_cache, self.compiled = use_cache, compiled
        self.width = model.cfg.vocab_size if width is None else width
        b = memory.shape[0]
        # One spare position: a step that filled the whole buffer would slice all of it, a case a
        # compiled step specialises (a third graph to compile for the last position).
        self.caches = model.start_caches(memory, horizon + 1, memory_mask, n_image_tokens) if use_cache else None
        self.seq = torch.full((b, 1), BOS, dtype=torch.long, device=memory.device)
        self._checked: set = set()  # compiled functions whose guards this generation has passed once

    def _feed(self, tokens: torch.Tensor | None) -> None:
        if tokens is not None:
            self.seq = torch.cat([self.seq, tokens[:, None]], 1) if not self.use_cache else tokens[:, None]

    def __call__(self, tokens: torch.Tensor | None) -> torch.Tensor:
        """tokens: (B,) the tokens chosen at the previous step (None at the first). Returns (B, width) float."""
        self._feed(tokens)
        if not self.use_cache:
            return self.model.decode(self.seq, self.memory, self.memory_mask,
                                     n_image_tokens=self.n_image_tokens)[:, -1, :self.width].float()
        if not self.compiled:
            return self.model.decode_step(self.seq[:, -1], self.caches, self.memory_mask, width=self.width).float()
        args = self.model.step_inputs(self.seq[:, -1], self.caches, self.memory_mask, self.width)
        logits = self._run(self.model.step_logits, *args)
        self.model.advance_caches(self.caches)
        return logits.float()

    def _run(self, fn, *args):
        """``fn`` compiled (two graphs per batch shape: position 0, whose size-1 prefix dynamo
        specialises, and one for every later position).

        Dynamo checks ~1,500 guards per call, a large share of a small model's step. Within one
        generation only the prefix length (a dynamic dimension) and the experts in use change, so
        after the first checked call the remaining steps skip the guards that cannot differ
        (``skip_guard_eval_unsafe``); a step that would need a new graph raises, and is re-run
        with full checks."""
        compiled = self.model.compiled(fn)
        if fn in self._checked:
            try:
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return compiled(*args)
            except RuntimeError as e:
                if "ecompil" not in str(e):
                    raise
        out = compiled(*args)
        self._checked.add(fn)
        return out

    def greedy(self, tokens: torch.Tensor | None, expert_ids: torch.Tensor | None, constraint: Constraint,
               states: torch.Tensor, budget: torch.Tensor, min_tokens: torch.Tensor | None, finished: torch.Tensor):
        """One greedy step with the grammar mask, token choice and bookkeeping fused into the
        compiled decoder step (one compiled call per token). ``budget``: (B,) tokens each row may
        emit, eos excluded; ``min_tokens``: (B,) or None. Returns the tokens, their log-probs, their
        experts (the next step's ``expert_ids``), the next grammar states, the finished flags and
        whether every row has finished."""
        self._feed(tokens)
        args = self.model.step_inputs(self.seq[:, -1], self.caches, self.memory_mask, self.width, expert_ids)
        out = self._run(_greedy_step, self.model, args, constraint.tables, constraint.grammar.next, states, budget,
                        min_tokens, finished)
        self.model.advance_caches(self.caches)
        return out

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search); rows stay within their example, so memory is unchanged."""
        if self.use_cache:
            for cache in self.caches:
                cache.reorder(index, cross=False)
        self.seq = self.seq[index]


def _greedy_step(model: UniTokModel, args: tuple, tables: tuple, nxt: torch.Tensor, states: torch.Tensor,
                 budget: torch.Tensor, min_tokens: torch.Tensor | None, finished: torch.Tensor):
    t = args[1].shape[0] - 1  # the step's position, from the prefix's (dynamic) size
    eos_blocked = None if min_tokens is None else t < min_tokens
    logits = mask_logits(model.step_logits(*args).float(), tables, states, budget + 1 - t, eos_blocked)
    tokens = torch.where(finished, EOS, logits.argmax(-1))
    logp = torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0]
    finished = finished | (tokens == EOS)
    return tokens, logp, model.token_expert[tokens], nxt[states, tokens].long(), finished, finished.all()


def _as_rows(options: DecodingOptions | Sequence[DecodingOptions], b: int) -> list[DecodingOptions]:
    rows = [options] * b if isinstance(options, DecodingOptions) else list(options)
    if len(rows) != b:
        raise ValueError(f"{len(rows)} decoding options for {b} rows")
    return rows


@torch.inference_mode()
def generate(model: UniTokModel, inputs: EncoderInputs, constraint: Constraint, grammar_index: torch.Tensor,
             options: DecodingOptions | Sequence[DecodingOptions], *, generator: torch.Generator | None = None,
             use_cache: bool = True, compiled: bool = False, bf16: bool = False) -> Generated:
    """Greedy or sampled decoding (per row) under each row's grammar, with optional guidance."""
    model.eval()
    device = inputs.prompt.device
    b = inputs.prompt.shape[0]
    opts = _as_rows(options, b)
    if any(o.beams > 1 for o in opts):
        raise ValueError("generate() decodes greedy and sampled rows; beam search is beam_search()")
    rows = RowSettings.from_options(opts, device)
    grammar_index = grammar_index.to(device)
    constraint = constraint if constraint.need.device == device else constraint.to(device)
    budget = constraint.budgets(grammar_index, rows.max_tokens, model.cfg.max_target_len - 1)
    horizon = int(budget.max()) + 1  # room for eos
    guided = (rows.guidance_scale > 0).nonzero(as_tuple=True)[0]
    block_eos = bool((rows.min_tokens > 0).any())
    with autocast_for(device, bf16):
        memory = encode(model, inputs)
        if guided.numel():
            memory = _cat_memory(memory, encode(model, inputs.rows(guided).unconditional()))
        step = Decoder(model, *memory, horizon, use_cache=use_cache, compiled=compiled,
                       width=constraint.width(grammar_index), n_image_tokens=image_tokens(model, inputs))
        states = constraint.start_states(grammar_index)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        if use_cache and compiled and not guided.numel() and not bool(rows.sample.any()):
            # greedy rows only: each step is one compiled call, and the loop only collects
            out_tokens, out_logp = _greedy_loop(step, constraint, states, budget,
                                                rows.min_tokens if block_eos else None, finished, horizon)
            return _collect(out_tokens, out_logp, budget)
        out_tokens = torch.full((b, horizon), EOS, dtype=torch.long, device=device)
        out_logp = torch.zeros((b, horizon), device=device)
        scale = rows.guidance_scale[guided, None]
        tokens = None
        for t in range(horizon):
            logits = step(tokens if tokens is None or not guided.numel() else torch.cat([tokens, tokens[guided]]))
            if guided.numel():
                cond, uncond = logits[guided], logits[b:]
                logits = logits[:b].index_copy(0, guided, cond + scale * (cond - uncond))
            logits = constraint.mask(logits, states, budget + 1 - t, (t < rows.min_tokens) if block_eos else None)
            tokens = choose(logits, rows, generator)
            tokens = torch.where(finished, torch.full_like(tokens, EOS), tokens)
            out_tokens[:, t] = tokens
            out_logp[:, t] = torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0]
            states = constraint.advance(states, tokens)
            finished |= tokens == EOS
            if bool(finished.all()):
                break
    return _collect(out_tokens, out_logp, budget)


def _greedy_loop(step: Decoder, constraint: Constraint, states: torch.Tensor, budget: torch.Tensor,
                 min_tokens: torch.Tensor | None, finished: torch.Tensor, horizon: int):
    """Greedy decoding through ``Decoder.greedy``; returns (B, horizon) tokens (eos after the end)
    and their log-probs."""
    tokens = expert_ids = None
    out_tokens, out_logp = [], []
    for _ in range(horizon):
        tokens, logp, expert_ids, states, finished, done = step.greedy(tokens, expert_ids, constraint, states,
                                                                       budget, min_tokens, finished)
        out_tokens.append(tokens)
        out_logp.append(logp)
        if done.item():
            break
    pad = horizon - len(out_tokens)
    return (F.pad(torch.stack(out_tokens, 1), (0, pad), value=EOS), F.pad(torch.stack(out_logp, 1), (0, pad)))


def _collect(tokens: torch.Tensor, logp: torch.Tensor, budget: torch.Tensor) -> Generated:
    out, lps, done = [], [], []
    tokens, logp = tokens.cpu(), logp.cpu()
    for i, row in enumerate(tokens.tolist()):
        n = row.index(EOS) if EOS in row else int(budget[i])
        out.append(row[:n])
        lps.append(logp[i, :n].tolist())
        done.append(EOS in row)
    return Generated(out, lps, done)

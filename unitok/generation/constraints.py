"""Grammar constraints for decoding, with a token budget that every row is guaranteed to meet.

A task grammar (``unitok.tasks.grammar``) says which tokens may follow; it does not say whether a
row can still *finish* within its budget. ``Constraint`` adds, per (state, token), the least number
of tokens a row needs to reach eos after taking that token (``need``). A step then allows token v
in state s only if ``need[s, v]`` fits the tokens left, so a row runs out of budget only at eos:
every output parses (image and dense grids come out with exactly h*w codes, boxes never stop
halfway through one). The mask for a whole batch is one gather and one compare; the two questions
about eos (may the row take anything else? anything at all?) are per-row lookups in per-state
minima of ``need``, not reductions over the vocabulary.
"""
from __future__ import annotations

from collections import deque

import torch

from ..modalities.vocab import EOS
from ..tasks.grammar import StackedGrammar

UNREACHABLE = 2 ** 30


def completion_lengths(allowed: torch.Tensor, nxt: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """(S,) least tokens (eos included) from each state to a done state; UNREACHABLE if none.

    A breadth-first search backwards over the distinct (state -> state) edges: the DFA tables are
    (S, V), but a state has only a few distinct successors.
    """
    S = allowed.shape[0]
    src, tok = allowed.nonzero(as_tuple=True)
    pairs = torch.unique(src * S + nxt[src, tok].long())
    preds: dict[int, list[int]] = {}
    for s, d in zip((pairs // S).tolist(), (pairs % S).tolist()):
        if s != d:
            preds.setdefault(d, []).append(s)
    dist = [UNREACHABLE] * S
    queue = deque(int(d) for d in done.tolist())
    for d in queue:
        dist[d] = 0
    while queue:
        d = queue.popleft()
        for s in preds.get(d, ()):
            if dist[s] == UNREACHABLE:
                dist[s] = dist[d] + 1
                queue.append(s)
    return torch.tensor(dist, dtype=torch.long)


def _grammar_widths(grammar: StackedGrammar) -> torch.Tensor:
    """(G,) for each stacked grammar, 1 + the largest token id that any of its states allows."""
    allowed = grammar.allowed.cpu()
    S, V = allowed.shape
    top = torch.where(allowed, torch.arange(V), -1).amax(1)  # (S,) largest allowed id per state
    owner = torch.bucketize(torch.arange(S), grammar.offsets.cpu(), right=True) - 1  # state -> grammar
    widths = torch.zeros(len(grammar.offsets), dtype=torch.long).scatter_reduce(0, owner, top, "amax")
    return widths + 1


class Constraint:
    """A stacked grammar plus the ``need`` table; built once per set of tasks and reused."""

    def __init__(self, grammar: StackedGrammar):
        self.grammar = grammar
        self.dist = completion_lengths(grammar.allowed, grammar.next, grammar.done)
        # need[s, v]: tokens still to emit, v and eos included, when v is taken in s.
        need = 1 + self.dist[grammar.next.long()]
        self.need = torch.where(grammar.allowed, need, torch.full_like(need, UNREACHABLE)).to(torch.int32)
        # least[s]: the smallest need of any token in s; least_other[s]: of any token but eos.
        self.least = self.need.amin(1)
        self.least_other = torch.cat([self.need[:, :EOS], self.need[:, EOS + 1:]], 1).amin(1)
        self.vocab_size = grammar.allowed.shape[1]
        self.widths = _grammar_widths(grammar)

    @property
    def tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``need``, ``least`` and ``least_other``: what ``mask_logits`` reads."""
        return self.need, self.least, self.least_other

    def to(self, device: torch.device | str) -> Constraint:
        g = self.grammar
        out = object.__new__(Constraint)
        out.grammar = StackedGrammar(g.allowed.to(device), g.next.to(device), g.offsets.to(device), g.done.to(device))
        out.dist, out.vocab_size = self.dist.to(device), self.vocab_size
        out.need, out.least, out.least_other = (t.to(device) for t in self.tables)
        out.widths = self.widths
        return out

    def width(self, grammar_index: torch.Tensor) -> int:
        """The output width that rows of these grammars need: 1 + the largest id any of them allows
        (eos included). Decoding computes logits for ids below it only (``UniTokModel.decode_step``)."""
        return max(EOS + 1, int(self.widths[grammar_index.cpu()].max()))

    def start_states(self, grammar_index: torch.Tensor) -> torch.Tensor:
        return self.grammar.offsets[grammar_index].long()

    def shortest(self, grammar_index: torch.Tensor) -> torch.Tensor:
        """(B,) the fewest tokens (eos excluded) a row's grammar can produce."""
        return self.dist[self.start_states(grammar_index)] - 1

    def budgets(self, grammar_index: torch.Tensor, max_tokens: torch.Tensor, limit: int) -> torch.Tensor:
        """Per-row budgets: at least what the grammar needs (an image grid has an exact length), at
        most ``limit`` (the model's decoder positions minus eos)."""
        shortest = self.shortest(grammar_index)
        if bool((shortest >= UNREACHABLE - 1).any()):
            raise ValueError("a task grammar has no way to reach eos")
        if int(shortest.max()) > limit:
            raise ValueError(f"a task's grammar needs {int(shortest.max())} tokens but the model decodes at most "
                             f"{limit} (model.max_target_len - 1)")
        return torch.maximum(max_tokens, shortest).clamp(max=limit)

    def mask(self, logits: torch.Tensor, states: torch.Tensor, left: torch.Tensor,
             eos_blocked: torch.Tensor | None = None) -> torch.Tensor:
        """``logits`` (B, V) with the tokens each row may not take now set to -inf. ``left``: (B,)
        tokens the row may still emit, eos included; ``eos_blocked``: (B,) rows where eos is masked
        unless nothing else is allowed."""
        return mask_logits(logits, self.tables, states, left, eos_blocked)

    def allowed(self, states: torch.Tensor, left: torch.Tensor, eos_blocked: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V) bool: the tokens that ``mask`` leaves finite."""
        zeros = torch.zeros(states.shape[0], self.vocab_size, device=states.device)
        return torch.isfinite(self.mask(zeros, states, left, eos_blocked))

    def advance(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.grammar.advance(states, tokens)


def mask_logits(logits: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor], states: torch.Tensor,
                left: torch.Tensor, eos_blocked: torch.Tensor | None = None) -> torch.Tensor:
    """``Constraint.mask`` as a plain function of tensors (it also runs inside a compiled step).

    Written so that a compiled step fuses it into one pass over (B, V) of a single element type:
    int32 compares, a float select, and the eos column patched from per-row lookups. (The same
    rules as bool masks with an ``arange == eos`` column and two ``any`` reductions compiled to
    ~4.7x slower code, mixed int64/bool/float vector masks: ``benchmarks/step_kernels.py``.)"""
    need, least, least_other = tables
    need = need[:, :logits.shape[1]]  # logits may stop short of the vocabulary (``Constraint.width``)
    lim = left.clamp(min=1).to(need.dtype)
    masked = torch.where(need[states] <= lim[:, None], logits, float("-inf"))
    eos = masked[:, EOS]
    if eos_blocked is not None:  # min_tokens not yet met: no eos while anything else fits
        eos = torch.where(eos_blocked & (least_other[states] <= lim), float("-inf"), eos)
    # A row with nothing left (a dead beam-search hypothesis) may only end, which keeps it finite.
    eos = torch.where(least[states] > lim, logits[:, EOS], eos)
    return torch.cat([masked[:, :EOS], eos[:, None], masked[:, EOS + 1:]], 1)

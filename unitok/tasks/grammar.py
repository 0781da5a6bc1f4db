"""Task grammars as small DFAs over the unified vocabulary, evaluated on the tensor side.

A ``Grammar`` is two dense tables over (state, token): ``allowed`` (S, V) bool and ``next`` (S, V)
int32. Decoding a batch keeps one state per row; the logits mask for a step is one gather,
``allowed[state]``, and the transition is another, ``next[state, token]``: no Python loop over
the vocabulary or the rows. Grammars of different tasks are stacked into one table
(``stack_grammars``) so rows of one batch can follow different tasks.

State 0 is the start state. ``DONE`` is the absorbing state after eos: it allows only eos, so a
finished row keeps emitting eos until the whole batch stops.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..modalities.vocab import EOS


@dataclass
class Grammar:
    allowed: torch.Tensor  # (S, V) bool
    next: torch.Tensor  # (S, V) int32; local state ids
    done: int  # the absorbing state reached by eos

    @property
    def num_states(self) -> int:
        return self.allowed.shape[0]


class GrammarBuilder:
    """Build a DFA by declaring, per state, which token sets lead to which state."""

    def __init__(self, vocab_size: int):
        self.V = vocab_size
        self._rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.done = self.state()
        self.on(self.done, _single(vocab_size, EOS), self.done)

    def state(self) -> int:
        self._rows.append((torch.zeros(self.V, dtype=torch.bool), torch.zeros(self.V, dtype=torch.int32)))
        return len(self._rows) - 1

    def on(self, state: int, tokens: torch.Tensor | int, target: int) -> None:
        """From ``state``, the tokens in bool mask ``tokens`` (or one id) are allowed and lead to ``target``."""
        mask = _single(self.V, tokens) if isinstance(tokens, int) else tokens
        allowed, nxt = self._rows[state]
        allowed |= mask
        nxt[mask] = target

    def end(self, state: int) -> None:
        """eos is allowed in ``state`` and finishes the sequence."""
        self.on(state, EOS, self.done)

    def build(self, start: int) -> Grammar:
        """Renumber so ``start`` becomes state 0."""
        order = [start] + [i for i in range(len(self._rows)) if i != start]
        remap = torch.empty(len(order), dtype=torch.int32)
        remap[torch.tensor(order)] = torch.arange(len(order), dtype=torch.int32)
        allowed = torch.stack([self._rows[i][0] for i in order])
        nxt = remap[torch.stack([self._rows[i][1] for i in order]).long()]
        return Grammar(allowed, nxt, int(remap[self.done]))


def _single(V: int, token: int) -> torch.Tensor:
    m = torch.zeros(V, dtype=torch.bool)
    m[token] = True
    return m


def sequence_trie(builder: GrammarBuilder, start: int, sequences: list[list[int]]) -> None:
    """Allow exactly the given token sequences from ``start`` (each then ends with eos): a closed set."""
    children: dict[tuple[int, int], int] = {}
    for seq in sequences:
        if not seq:
            raise ValueError("a closed-set choice encodes to no tokens")
        state = start
        for tok in seq:
            key = (state, tok)
            if key not in children:
                children[key] = builder.state()
                builder.on(state, tok, children[key])
            state = children[key]
        builder.end(state)


@dataclass
class StackedGrammar:
    """Several grammars in one table; ``offsets[g]`` is grammar g's state 0."""

    allowed: torch.Tensor
    next: torch.Tensor  # global state ids
    offsets: torch.Tensor  # (G,)
    done: torch.Tensor  # (G,) global done states

    def start_states(self, grammar_index: torch.Tensor) -> torch.Tensor:
        return self.offsets[grammar_index]

    def mask(self, states: torch.Tensor) -> torch.Tensor:
        return self.allowed[states]

    def advance(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.next[states, tokens].long()

    def is_done(self, states: torch.Tensor) -> torch.Tensor:
        return (states[:, None] == self.done[None, :]).any(1)


def stack_grammars(grammars: list[Grammar]) -> StackedGrammar:
    offsets, allowed, nxt, done, off = [], [], [], [], 0
    for g in grammars:
        offsets.append(off)
        allowed.append(g.allowed)
        nxt.append(g.next + off)
        done.append(g.done + off)
        off += g.num_states
    return StackedGrammar(torch.cat(allowed), torch.cat(nxt), torch.tensor(offsets), torch.tensor(done))

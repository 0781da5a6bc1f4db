"""Batched prediction over examples of any mix of tasks.

The Predictor turns built ``Example``s into structured outputs: it stacks the grammars of the
tasks present in the batch, gives each row its grammar and token budget, generates once, and
parses each row with its task's target format.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generation.decode import Generated, generate
from ..model.transformer import UniTokModel
from ..modalities.codec import Codec
from ..runtime import use_bf16
from ..tasks.examples import Example, ExampleBuilder, collate
from ..tasks.grammar import Grammar, stack_grammars
from ..tasks.spec import TaskSpec


@dataclass
class Prediction:
    task: str
    output: object
    tokens: list[int]
    finished: bool


class Predictor:
    def __init__(self, model: UniTokModel, codec: Codec, tasks: dict[str, TaskSpec], *, bf16: bool | str = "auto",
                 device: str | torch.device = "cpu"):
        self.model, self.codec, self.tasks = model, codec, tasks
        self.device = torch.device(device)
        self.bf16 = use_bf16(bf16, self.device)
        cfg = model.cfg
        self.builders = {name: ExampleBuilder(spec, codec, image_size=cfg.image_size, max_prompt_len=cfg.max_prompt_len)
                         for name, spec in tasks.items()}
        self._grammars: dict[str, Grammar] = {}

    def grammar(self, task: str) -> Grammar:
        if task not in self._grammars:
            b = self.builders[task]
            self._grammars[task] = b.format.grammar(b.context())
        return self._grammars[task]

    @torch.inference_mode()
    def predict(self, examples: list[Example], *, max_tokens: int | None = None, use_cache: bool = True) -> list[Prediction]:
        if not examples:
            return []
        names = list(dict.fromkeys(e.task for e in examples))
        stacked = stack_grammars([self.grammar(n) for n in names])
        index = torch.tensor([names.index(e.task) for e in examples])
        budget = torch.tensor([max_tokens or self.tasks[e.task].decoding.max_tokens for e in examples])
        budget = budget.clamp(max=self.model.cfg.max_target_len - 1)
        batch = collate(examples)
        to = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        gen: Generated = generate(self.model, to(batch.prompt), to(batch.prompt_mask), to(batch.images),
                                  to(batch.image_mask), stacked, index, budget, bf16=self.bf16, use_cache=use_cache)
        out = []
        for e, tokens, logprobs, done in zip(examples, gen.tokens, gen.logprobs, gen.finished):
            b = self.builders[e.task]
            output = b.format.decode(tokens, b.context(e.width, e.height), logprobs)
            out.append(Prediction(e.task, output, tokens, done))
        return out

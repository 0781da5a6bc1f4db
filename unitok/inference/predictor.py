"""Batched prediction over examples of any mix of tasks.

The Predictor turns built ``Example``s into structured outputs: it stacks the grammars of the
tasks present in the batch, gives each row its grammar and decoding settings (the task spec's
``decoding:``, overridable per call), generates, and parses each row with its task's target format.
Greedy and sampled rows of any tasks decode together; beam-search rows decode per beam width;
``score`` rows rank their task's closed set of choices by likelihood (``Predictor.score``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generation import Constraint, DecodingOptions, EncoderInputs, beam_search, generate, score_candidates
from ..model.transformer import UniTokModel
from ..modalities.codec import Codec
from ..runtime import use_bf16
from ..tasks.examples import Example, ExampleBuilder, collate
from ..tasks.formats import resolve_choices
from ..tasks.grammar import Grammar, stack_grammars
from ..tasks.spec import TaskSpec


@dataclass
class Prediction:
    task: str
    output: object
    tokens: list[int]
    finished: bool


class Predictor:
    def __init__(self, model: UniTokModel, codec: Codec, tasks: dict[str, TaskSpec], *, bf16: bool | str = False,
                 device: str | torch.device = "cpu", compile: bool = False):
        """``compile=True`` runs the per-token decoder step through ``torch.compile``: faster decoding
        after a one-off compilation of tens of seconds per batch shape (worth it for a server).
        ``bf16``: False (the default) decodes in fp32, so outputs are the same on every CPU; True or
        "auto" (where the hardware multiplies bf16 natively) autocasts to bf16, faster and not bit-equal."""
        self.model, self.codec, self.tasks = model, codec, tasks
        self.device = torch.device(device)
        self.bf16 = use_bf16(bf16, self.device)
        self.compile = compile
        self._constraints: dict[tuple[str, ...], Constraint] = {}
        cfg = model.cfg
        self.builders = {name: ExampleBuilder.for_model(spec, codec, cfg) for name, spec in tasks.items()}
        self._grammars: dict[str, Grammar] = {}

    def grammar(self, task: str) -> Grammar:
        if task not in self._grammars:
            b = self.builders[task]
            self._grammars[task] = b.format.grammar(b.context())
        return self._grammars[task]

    def constraint(self, names: tuple[str, ...]) -> Constraint:
        """The stacked grammar of these tasks with its completion table, cached per task set."""
        if names not in self._constraints:
            self._constraints[names] = Constraint(stack_grammars([self.grammar(n) for n in names])).to(self.device)
        return self._constraints[names]

    def options(self, task: str, options: DecodingOptions | None = None, **overrides) -> DecodingOptions:
        """A task's decoding settings: ``options`` if given, else the spec's ``decoding:``; then ``overrides``."""
        base = options if options is not None else DecodingOptions.from_spec(self.tasks[task].decoding)
        return base.replace(**overrides)

    def _inputs(self, examples: list[Example]) -> EncoderInputs:
        batch = collate(examples)
        return EncoderInputs(batch.prompt, batch.prompt_mask, batch.images, batch.image_mask,
                             batch.patch_mask).to(self.device)

    @torch.inference_mode()
    def predict(self, examples: list[Example], options: DecodingOptions | None = None, *, use_cache: bool = True,
                **overrides) -> list[Prediction]:
        """Outputs for examples of any mix of tasks. Each row decodes with its task's ``decoding:``
        settings, replaced by ``options`` (a ``DecodingOptions``) and then by keyword ``overrides``
        (``max_tokens=``, ``strategy=``, ``temperature=``, ``seed=`` ...)."""
        if not examples:
            return []
        opts = [self.options(e.task, options, **overrides) for e in examples]
        groups: dict[tuple[str, int], list[int]] = {}
        for i, o in enumerate(opts):
            kind = "score" if o.strategy == "score" else "beam" if o.beams > 1 else "step"
            groups.setdefault((kind, o.beams), []).append(i)
        out: list[Prediction | None] = [None] * len(examples)
        for (kind, _), rows in groups.items():
            part = [examples[i] for i in rows]
            if kind == "score":
                results = self._predict_by_scoring(part)
            else:
                results = self._generate(part, [opts[i] for i in rows], beam=kind == "beam", use_cache=use_cache)
            for i, r in zip(rows, results):
                out[i] = r
        return out

    def _generate(self, examples: list[Example], opts: list[DecodingOptions], *, beam: bool, use_cache: bool) -> list[Prediction]:
        names = tuple(dict.fromkeys(e.task for e in examples))
        constraint = self.constraint(names)
        index = torch.tensor([names.index(e.task) for e in examples], device=self.device)
        inputs = self._inputs(examples)
        if beam:
            gen = beam_search(self.model, inputs, constraint, index, opts, use_cache=use_cache, compiled=self.compile,
                              bf16=self.bf16)
        else:
            seed = next((o.seed for o in opts if o.samples and o.seed is not None), None)
            generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
            gen = generate(self.model, inputs, constraint, index, opts, generator=generator, use_cache=use_cache,
                           compiled=self.compile, bf16=self.bf16)
        out = []
        for e, tokens, logprobs, done in zip(examples, gen.tokens, gen.logprobs, gen.finished):
            b = self.builders[e.task]
            output = b.format.decode(tokens, b.context(e.width, e.height), logprobs)
            out.append(Prediction(e.task, output, tokens, done))
        return out

    def _choices(self, task: str) -> tuple[list[str], list[list[int]]]:
        b = self.builders[task]
        if b.spec.target.choices is None:
            raise ValueError(f"task {task}: decoding strategy 'score' ranks target.choices, and this task has none")
        choices = resolve_choices(b.spec.target, b.meta)
        return choices, [self.codec.encode_text(c) for c in choices]

    def _predict_by_scoring(self, examples: list[Example]) -> list[Prediction]:
        """Closed-set answers by ranking: the choice with the highest mean token log-likelihood."""
        ids = [self._choices(e.task)[1] for e in examples]
        scores = self.score(examples, ids)
        out = []
        for e, cands, s in zip(examples, ids, scores):
            best = max(range(len(s)), key=s.__getitem__)
            b = self.builders[e.task]
            tokens = cands[best]
            output = b.format.decode(tokens, b.context(e.width, e.height), [s[best]] * len(tokens))
            out.append(Prediction(e.task, output, tokens, True))
        return out

    @torch.inference_mode()
    def score(self, examples: list[Example], candidates: list[list[str | list[int]]], *,
              normalize: bool = True) -> list[list[float]]:
        """Log-likelihood of each candidate answer of each example (followed by eos), in one batched
        teacher-forced pass: per token on average if ``normalize``, else summed. A candidate is a
        string (encoded as the example's task encodes its target) or a list of token ids."""
        if len(candidates) != len(examples):
            raise ValueError(f"{len(candidates)} candidate lists for {len(examples)} examples")
        ids = []
        for e, cands in zip(examples, candidates):
            b = self.builders[e.task]
            ctx = b.context(e.width, e.height)
            ids.append([list(c) if not isinstance(c, str) else self._encode_candidate(b, c, ctx) for c in cands])
        return score_candidates(self.model, self._inputs(examples), ids, normalize=normalize, bf16=self.bf16)

    def _encode_candidate(self, builder: ExampleBuilder, text: str, ctx) -> list[int]:
        if builder.spec.target.format == "label":  # a choice is already a label, not a raw field value
            return self.codec.encode_text(text)
        return builder.format.encode(text, ctx, None)[0]

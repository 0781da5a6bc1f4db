"""Generation: KV cache exactness, well-formed output of every format under random weights and
random sampling, beam search, classifier-free guidance, decoding overrides, candidate scoring and
the Pix2Seq detection augmentation."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unitok.generation import (
    Constraint,
    DecodingOptions,
    EncoderInputs,
    beam_search,
    generate,
)
from unitok.inference.predictor import Predictor
from unitok.modalities.codec import Codec
from unitok.modalities.text import TextTokenizer
from unitok.modalities.vocab import EOS, MASK, NOISE
from unitok.modalities.vq.config import VQVAEConfig
from unitok.modalities.vq.tokenizer import DenseTokenizer, ImageTokenizer
from unitok.model.config import ModelConfig
from unitok.model.transformer import UniTokModel
from unitok.tasks.examples import Example
from unitok.tasks.formats import FORMATS, FormatContext
from unitok.tasks.grammar import stack_grammars
from unitok.tasks.outputs import Boxes, DenseMap, GeneratedImage, Label, Region, Text
from unitok.tasks.spec import parse_task

REPO = Path(__file__).resolve().parents[1]
# A 4x4 code grid: image and dense targets are 16 codes.
VQ = {"image_size": (32, 32), "patch": 4, "channels": (16, 16), "decoder_res_blocks": 1, "latent_dim": 16,
      "embed_dim": 8, "codebook_size": 32, "codebook_dim": 8}

# One task per registered format; a new format must be added here, so it is covered too.
TARGETS = {
    "text": {"format": "text", "field": "caption"},
    "label": {"format": "label", "field": "answer", "choices": ["circle", "red square", "two", "no"]},
    "boxes": {"format": "boxes", "field": "objects", "label": "category", "noise_boxes": 4},
    "region": {"format": "region", "field": "box"},
    "image": {"format": "image", "field": "image"},
    "dense": {"format": "dense", "field": "segmentation", "kind": "segmentation"},
    "masked_text": {"format": "masked_text", "field": "caption"},
}


@pytest.fixture(scope="module")
def codec() -> Codec:
    text = TextTokenizer.from_file(REPO / "tokenizers" / "text.model")
    torch.manual_seed(0)
    return Codec.build(text, 32, ImageTokenizer(VQVAEConfig(**VQ)), DenseTokenizer(VQVAEConfig(**VQ)))


@pytest.fixture(scope="module")
def tasks():
    assert set(TARGETS) == set(FORMATS.names()), "add the new format to TARGETS"
    specs = {}
    for name, target in TARGETS.items():
        spec = {"name": name, "data": "world", "prompt": ["do {name}."], "inputs": {"image": "image"},
                "target": target, "metric": "accuracy", "decoding": {"max_tokens": 24}}
        specs[name] = parse_task(spec, source=f"<{name}>", formats=FORMATS)
    return specs


def make_model(codec: Codec, seed: int = 0, **kw) -> UniTokModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=codec.vocab.size, d_model=64, n_heads=4, enc_layers=2, dec_layers=2, image_size=32,
                      patch_size=8, max_target_len=48, expert_ranges=codec.vocab.expert_ranges(("text", "vision")), **kw)
    return UniTokModel(cfg).eval()


def examples_for(tasks, seed: int = 0, per_task: int = 1) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for name in tasks:
        for _ in range(per_task):
            n = int(torch.randint(1, 9, (1,), generator=g))
            prompt = (torch.randint(40, 400, (n,), generator=g)).tolist()
            out.append(Example(name, prompt, torch.randn(1, 3, 32, 32, generator=g), [EOS], [1.0], 64.0, 48.0))
    return out


def well_formed(name: str, tokens: list[int], output, codec: Codec, spec) -> bool:
    """The token sequence is a complete sentence of the format, and it parsed into the right type."""
    coord, text = codec.is_coord, codec.is_text
    in_block = lambda t, block: codec.vocab.range(block)[0] <= t < codec.vocab.range(block)[1]
    if name == "text":
        return isinstance(output, Text) and len(tokens) > 0 and all(map(text, tokens))
    if name == "label":
        return isinstance(output, Label) and output.label in spec.target.choices
    if name == "region":
        return isinstance(output, Region) and len(tokens) == 4 and all(map(coord, tokens))
    if name == "image":
        return (isinstance(output, GeneratedImage) and len(tokens) == codec.image.num_codes
                and all(in_block(t, "image") for t in tokens))
    if name == "dense":
        return (isinstance(output, DenseMap) and len(tokens) == codec.dense.num_codes
                and all(in_block(t, "dense") for t in tokens))
    if name == "masked_text":
        return (isinstance(output, Text) and len(tokens) >= 2 and tokens[0] == MASK and text(tokens[-1])
                and all(text(t) or (t == MASK and text(n)) for t, n in zip(tokens, tokens[1:] + [0])))
    if name == "boxes":
        i, kept = 0, 0
        while i < len(tokens):  # [4 coords, <noise> | text+]*
            if not all(map(coord, tokens[i:i + 4])) or i + 4 >= len(tokens):
                return False
            i += 4
            if tokens[i] == NOISE:
                i += 1
                continue
            j = i
            while j < len(tokens) and text(tokens[j]):
                j += 1
            if j == i:
                return False
            i, kept = j, kept + 1
        return isinstance(output, Boxes) and len(output.boxes) == kept and all(
            0 <= b.x0 <= b.x1 <= 64 and 0 <= b.y0 <= b.y1 <= 48 for b in output.boxes)
    raise AssertionError(f"no check for format {name}")


# -- KV cache -------------------------------------------------------------------------------------------------

def test_decode_step_equals_full_decoder(codec):
    model = make_model(codec)
    g = torch.Generator().manual_seed(1)
    prompt, mask = torch.randint(40, 400, (3, 6), generator=g), torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    target = torch.randint(0, codec.vocab.size, (3, 10), generator=g)  # text and vision experts mixed
    with torch.inference_mode():
        memory, memory_mask = model.encode(prompt, mask, torch.randn(3, 1, 3, 32, 32, generator=g))
        full = model.decode(target, memory, memory_mask)
        caches = model.start_caches(memory, 12)
        steps = torch.stack([model.decode_step(target[:, i], caches, memory_mask) for i in range(10)], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)



def test_output_width_covers_the_grammars_and_matches_the_full_head(codec, tasks):
    """Constrained decoding computes logits only for ids below ``Constraint.width``: the largest id
    any state of the batch's grammars allows. Those logits are the full head's first columns."""
    predictor = Predictor(make_model(codec), codec, tasks)
    names = tuple(TARGETS)
    c: Constraint = predictor.constraint(names)
    stacked = stack_grammars([predictor.grammar(n) for n in names])
    for g, name in enumerate(names):  # every id a grammar allows lies below its width, and the last one is allowed
        rows = stacked.allowed[stacked.offsets[g]:(stacked.offsets[g + 1] if g + 1 < len(names) else None)]
        used = rows.any(0).nonzero()[:, 0]
        assert c.width(torch.tensor([g])) == int(used.max()) + 1, name
    text, image = names.index("text"), names.index("image")
    assert c.width(torch.tensor([text])) == codec.vocab.range("text")[1]  # specials + text: no vision ids
    assert c.width(torch.tensor([text, image, text])) == codec.vocab.range("image")[1]  # a mixed batch: the widest
    model = make_model(codec)
    g = torch.Generator().manual_seed(3)
    prompt, mask = torch.randint(40, 400, (2, 5), generator=g), torch.ones(2, 5, dtype=torch.bool)
    target = torch.randint(0, codec.vocab.size, (2, 6), generator=g)
    with torch.inference_mode():
        memory, memory_mask = model.encode(prompt, mask)
        full, narrow = model.start_caches(memory, 8), model.start_caches(memory, 8)
        w = codec.vocab.range("text")[1]
        for i in range(6):
            wide = model.decode_step(target[:, i], full, memory_mask)
            assert wide.shape[1] == codec.vocab.size
            torch.testing.assert_close(model.decode_step(target[:, i], narrow, memory_mask, width=w), wide[:, :w])
        with pytest.raises(ValueError, match="output width 0"):
            model.decode_step(target[:, 0], narrow, memory_mask, width=0)

def boxes_model(codec: Codec, seed: int = 0) -> UniTokModel:
    """A model with both box options on: region marks in the encoder, the box readout in the decoder."""
    return make_model(codec, seed, coord_range=codec.vocab.range("coords"), region_marks=True, box_readout=True)


@pytest.mark.parametrize("boxes", [False, True])
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_cached_equals_uncached(codec, tasks, strategy, boxes):
    predictor = Predictor(boxes_model(codec) if boxes else make_model(codec), codec, tasks)
    examples = examples_for(tasks, seed=2)
    kw = {"strategy": strategy, "beam_size": 3 if strategy == "beam" else 1}
    cached = predictor.predict(examples, **kw)
    uncached = predictor.predict(examples, use_cache=False, **kw)
    assert [p.tokens for p in cached] == [p.tokens for p in uncached]


@pytest.mark.slow
def test_compiled_step_matches_eager(codec, tasks):
    """torch.compile of the decoding step (fused greedy, and the plain step beam search uses)."""
    examples = examples_for(tasks, seed=12, per_task=2)
    for model in (make_model(codec, 12), boxes_model(codec, 12)):
        eager, compiled = Predictor(model, codec, tasks), Predictor(model, codec, tasks, compile=True)
        for kw in ({}, {"strategy": "beam", "beam_size": 2}):
            assert [p.tokens for p in compiled.predict(examples, **kw)] == [p.tokens for p in eager.predict(examples, **kw)]
        one = examples[:1]  # one row: the step's projections become fused reductions
        assert compiled.predict(one)[0].tokens == eager.predict(one)[0].tokens


# -- every output parses -----------------------------------------------------------------------------------------

def check_outputs_parse(codec, tasks, seed: int, temperature: float, top_k: int, top_p: float, max_tokens: int,
                        min_tokens: int) -> None:
    predictor = Predictor(make_model(codec, seed), codec, tasks)
    examples = examples_for(tasks, seed=seed, per_task=2)
    preds = predictor.predict(examples, strategy="sample", seed=seed, temperature=temperature, top_k=top_k,
                              top_p=top_p, max_tokens=max_tokens, min_tokens=min_tokens)
    names = tuple(tasks)
    shortest = predictor.constraint(names).shortest(torch.arange(len(names))).tolist()
    for e, p in zip(examples, preds):
        assert p.finished, (e.task, p.tokens)
        assert well_formed(e.task, p.tokens, p.output, codec, tasks[e.task]), (e.task, p.tokens, p.output)
        assert len(p.tokens) <= max(max_tokens, shortest[names.index(e.task)])


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, 2 ** 16), temperature=st.floats(0.3, 4.0), top_k=st.sampled_from([0, 1, 5, 50]),
           top_p=st.floats(0.05, 1.0), max_tokens=st.integers(1, 40), min_tokens=st.integers(0, 40))
    def test_every_format_parses_under_random_weights_and_sampling(codec, tasks, seed, temperature, top_k, top_p,
                                                                   max_tokens, min_tokens):
        check_outputs_parse(codec, tasks, seed, temperature, top_k, top_p, max_tokens, min_tokens)
except ImportError:  # hypothesis is in the `test` extra; without it, a seeded sweep of the same space
    @pytest.mark.parametrize("seed", range(50))
    def test_every_format_parses_under_random_weights_and_sampling(codec, tasks, seed):
        rng = np.random.default_rng(seed)
        check_outputs_parse(codec, tasks, seed, float(rng.uniform(0.3, 4.0)), int(rng.choice([0, 1, 5, 50])),
                            float(rng.uniform(0.05, 1.0)), int(rng.integers(1, 41)), int(rng.integers(0, 41)))


def test_budget_is_met_exactly_when_the_grammar_needs_it(codec, tasks):
    """A budget shorter than an image grid still yields the whole grid; boxes never stop mid-box."""
    predictor = Predictor(make_model(codec), codec, tasks)
    examples = examples_for({"image": 0, "boxes": 0, "region": 0}, seed=3)
    for p in predictor.predict(examples, max_tokens=3, strategy="sample", seed=0, temperature=3.0):
        assert well_formed(p.task, p.tokens, p.output, codec, tasks[p.task]), p


# -- strategies --------------------------------------------------------------------------------------------------

def _inputs(examples) -> EncoderInputs:
    from unitok.tasks.examples import collate

    b = collate(examples)
    return EncoderInputs(b.prompt, b.prompt_mask, b.images, b.image_mask)


def test_beam_width_one_equals_greedy(codec, tasks):
    predictor = Predictor(make_model(codec, 4), codec, tasks)
    examples = examples_for(tasks, seed=4, per_task=2)
    names = tuple(tasks)
    constraint, index = predictor.constraint(names), torch.tensor([names.index(e.task) for e in examples])
    opts = [predictor.options(e.task) for e in examples]
    greedy = generate(predictor.model, _inputs(examples), constraint, index, opts)
    beam = beam_search(predictor.model, _inputs(examples), constraint, index,
                       [o.replace(strategy="beam", beam_size=1) for o in opts])
    assert beam.tokens == greedy.tokens
    for a, b in zip(beam.logprobs, greedy.logprobs):
        assert np.allclose(a, b, atol=1e-5)


def test_beam_search_keeps_each_hypothesis_consistent_and_beats_greedy(codec, tasks):
    predictor = Predictor(make_model(codec, 5), codec, tasks)
    examples = examples_for({"text": 0, "label": 0, "boxes": 0}, seed=5, per_task=3)
    names = ("text", "label", "boxes")
    constraint, index = predictor.constraint(names), torch.tensor([names.index(e.task) for e in examples])
    opts = [predictor.options(e.task, strategy="beam", beam_size=4, length_penalty=0.0) for e in examples]
    beam = beam_search(predictor.model, _inputs(examples), constraint, index, opts)
    greedy = generate(predictor.model, _inputs(examples), constraint, index, [o.replace(strategy="greedy") for o in opts])
    budget = constraint.budgets(index, torch.tensor([o.max_tokens for o in opts]), predictor.model.cfg.max_target_len - 1)
    for i, e in enumerate(examples):
        output = predictor.builders[e.task].format.decode(beam.tokens[i], predictor.builders[e.task].context(64, 48))
        assert well_formed(e.task, beam.tokens[i], output, codec, tasks[e.task])
        # The log-probs a hypothesis carried through the beam reorders are those of its own tokens.
        ref = constrained_logprobs(predictor.model, _inputs([e]), constraint, index[i], int(budget[i]), beam.tokens[i])
        assert np.allclose(beam.logprobs[i], ref[:-1], atol=1e-4)
    assert sum(map(sum, beam.logprobs)) >= sum(map(sum, greedy.logprobs))


def constrained_logprobs(model, inputs: EncoderInputs, constraint: Constraint, grammar: torch.Tensor, budget: int,
                         tokens: list[int]) -> list[float]:
    """Teacher-forced log-probs of ``tokens`` + eos under the grammar mask, one full decoder pass."""
    seq = torch.tensor([[2] + tokens + [EOS]])
    with torch.inference_mode():
        memory, mask = model.encode(inputs.prompt, inputs.prompt_mask, inputs.images, inputs.image_mask)
        logits = model.decode(seq[:, :-1], memory, mask)[0]
    state, out = constraint.start_states(grammar.view(1)), []
    for t, tok in enumerate(tokens + [EOS]):
        allowed = constraint.allowed(state, torch.tensor([budget + 1 - t]))
        out.append(float(torch.log_softmax(logits[t].masked_fill(~allowed[0], float("-inf")), -1)[tok]))
        state = constraint.advance(state, torch.tensor([tok]))
    return out


def test_inference_is_fp32_unless_bf16_is_asked_for(codec, tasks, monkeypatch):
    """On a CPU with native bf16, ``auto`` at inference gave other outputs than fp32, so results
    depended on the user's CPU: the default is fp32 whatever the CPU, and bf16 only when asked."""
    import unitok.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    model = make_model(codec)
    assert Predictor(model, codec, tasks).bf16 is False
    assert Predictor(model, codec, tasks, bf16="auto").bf16 is True
    assert Predictor(model, codec, tasks, bf16=True).bf16 is True


def test_guidance_scale_zero_is_unguided(codec, tasks):
    model = make_model(codec, 6)
    predictor = Predictor(model, codec, tasks)
    examples = examples_for({"image": 0}, seed=6, per_task=2)
    constraint, index = predictor.constraint(("image",)), torch.zeros(2, dtype=torch.long)
    plain = predictor.options("image", strategy="sample", seed=1, temperature=0.7)
    unguided = generate(model, _inputs(examples), constraint, index, [plain, plain],
                        generator=torch.Generator().manual_seed(1))
    # Row 0 guided, row 1 at scale 0: row 1 sits in a batch that carries an unconditional twin for
    # row 0, and must come out exactly as without guidance.
    mixed = generate(model, _inputs(examples), constraint, index, [plain.replace(guidance_scale=3.0), plain],
                     generator=torch.Generator().manual_seed(1))
    assert mixed.tokens[1] == unguided.tokens[1]
    # The same math, in a batch of another size: a CPU's matmul may block it otherwise (AVX512 does), so the
    # scores agree to float rounding, not to the bit.
    np.testing.assert_allclose(mixed.logprobs[1], unguided.logprobs[1], rtol=0, atol=1e-5)
    assert not np.allclose(mixed.logprobs[0], unguided.logprobs[0], atol=1e-4)  # guidance did change row 0
    assert len(mixed.tokens[0]) == codec.image.num_codes
    # Through the Predictor, the spec-level override.
    a = predictor.predict(examples, guidance_scale=0.0, strategy="sample", seed=3)
    b = predictor.predict(examples, strategy="sample", seed=3)
    assert [p.tokens for p in a] == [p.tokens for p in b]


def test_guidance_mixes_conditional_and_unconditional_logits(codec, tasks):
    """Greedy with guidance w picks argmax(cond + w * (cond - uncond)) at the first step."""
    model = make_model(codec, 7)
    predictor = Predictor(model, codec, tasks)
    examples = examples_for({"text": 0}, seed=7)
    inputs = _inputs(examples)
    constraint, index = predictor.constraint(("text",)), torch.zeros(1, dtype=torch.long)
    w = 2.5
    out = generate(model, inputs, constraint, index, [predictor.options("text", guidance_scale=w, max_tokens=1)])
    with torch.inference_mode():
        def first_logits(inp):
            memory, mask = model.encode(inp.prompt, inp.prompt_mask, inp.images, inp.image_mask)
            return model.decode(torch.full((1, 1), 2), memory, mask)[:, -1]
        cond, uncond = first_logits(inputs), first_logits(inputs.unconditional())
    mixed = (cond + w * (cond - uncond)).masked_fill(~codec.block_mask("text")[None], float("-inf"))
    assert out.tokens[0][0] == int(mixed.argmax())


def test_sampling_is_seeded_and_settings_matter(codec, tasks):
    predictor = Predictor(make_model(codec, 8), codec, tasks)
    examples = examples_for({"text": 0}, seed=8, per_task=4)
    a = predictor.predict(examples, strategy="sample", seed=11, temperature=2.0)
    b = predictor.predict(examples, strategy="sample", seed=11, temperature=2.0)
    c = predictor.predict(examples, strategy="sample", seed=12, temperature=2.0)
    assert [p.tokens for p in a] == [p.tokens for p in b] != [p.tokens for p in c]
    greedy = predictor.predict(examples)
    top1 = predictor.predict(examples, strategy="sample", seed=11, top_k=1)
    assert [p.tokens for p in top1] == [p.tokens for p in greedy]


def test_top_k_and_top_p_filters():
    from unitok.generation.options import RowSettings
    from unitok.generation.sampling import filter_logits

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    rows = RowSettings.from_options([DecodingOptions(strategy="sample", top_k=2), DecodingOptions(strategy="sample", top_p=0.7),
                                     DecodingOptions(strategy="sample", top_p=0.01)])
    kept = torch.isfinite(filter_logits(logits, rows))
    assert kept.tolist() == [[True, True, False, False], [True, True, False, False], [True, False, False, False]]


def test_spec_settings_and_overrides(codec, tasks):
    predictor = Predictor(make_model(codec, 9), codec, tasks)
    assert predictor.options("text").max_tokens == 24
    assert predictor.options("text", max_tokens=5).max_tokens == 5
    opts = DecodingOptions(strategy="sample", temperature=0.5)
    assert predictor.options("text", opts, top_k=3) == opts.replace(top_k=3)
    with pytest.raises(TypeError, match="unknown decoding option.*temprature"):
        predictor.options("text", temprature=0.5)
    with pytest.raises(ValueError, match="top_p"):
        DecodingOptions(top_p=0.0)
    examples = examples_for({"text": 0}, seed=9, per_task=2)
    assert all(len(p.tokens) <= 3 for p in predictor.predict(examples, max_tokens=3))
    long = predictor.predict(examples, max_tokens=10, min_tokens=10)
    assert all(len(p.tokens) == 10 for p in long)


def test_score_strategy_picks_a_choice(codec, tasks):
    predictor = Predictor(make_model(codec, 10), codec, tasks)
    examples = examples_for({"label": 0}, seed=10, per_task=3)
    scored = predictor.predict(examples, strategy="score")
    choices = tasks["label"].target.choices
    for e, p in zip(examples, scored):
        s = predictor.score([e], [choices])[0]
        assert p.output.label == choices[int(np.argmax(s))]
    with pytest.raises(ValueError, match="choices"):
        predictor.predict(examples_for({"text": 0}), strategy="score")


def test_scoring_is_one_batched_pass_matching_per_candidate_likelihood(codec, tasks):
    model = make_model(codec, 11)
    predictor = Predictor(model, codec, tasks)
    examples = examples_for({"text": 0}, seed=11, per_task=2)
    cands = [["a red circle", "two squares"], ["a cross", [400, 401, 402], "x"]]
    got = predictor.score(examples, cands, normalize=False)
    for e, cs, scores in zip(examples, cands, got):
        for c, s in zip(cs, scores):
            ids = codec.encode_text(c) if isinstance(c, str) else c
            inp = _inputs([e])
            with torch.inference_mode():
                memory, mask = model.encode(inp.prompt, inp.prompt_mask, inp.images, inp.image_mask)
                seq = torch.tensor([ids + [EOS]])
                logits = model.decode(torch.cat([torch.full((1, 1), 2), seq[:, :-1]], 1), memory, mask)
                ref = torch.log_softmax(logits, -1).gather(2, seq[..., None]).sum()
            assert abs(float(ref) - s) < 1e-3


# -- Pix2Seq -----------------------------------------------------------------------------------------------------

def test_noise_boxes_augment_training_sequences(codec, tasks):
    fmt = FORMATS.get("boxes")()
    ctx = FormatContext(codec, tasks["boxes"].target, 64, 48)
    objects = [{"box": [2, 3, 20, 30], "category": "circle"}]
    ids, weights = fmt.encode(objects, ctx, np.random.default_rng(0))
    noise_at = [i for i, t in enumerate(ids) if t == NOISE]
    assert len(noise_at) == 3  # padded up to noise_boxes=4 objects
    for i in noise_at:
        assert weights[i - 4:i] == [0.0] * 4 and weights[i] == 1.0
        assert all(codec.is_coord(t) for t in ids[i - 4:i])
    assert fmt.encode(objects, ctx, None) == (ids[:noise_at[0] - 4], weights[:noise_at[0] - 4])  # evaluation: no noise
    parsed = fmt.decode(ids, ctx)
    assert [b.label for b in parsed.boxes] == ["circle"]  # noise boxes are dropped


def test_box_score_can_include_the_coordinates_confidence(codec, tasks):
    """AP ranks boxes by score: ``label_coords`` multiplies the label's probability by the geometric mean
    of the four coordinate tokens' probabilities, so of two boxes named with equal confidence the
    better-placed one ranks first; ``label`` (Pix2Seq) scores them alike."""
    objects = [{"box": [2, 3, 20, 30], "category": "circle"}, {"box": [30, 8, 50, 40], "category": "circle"}]
    label = tasks["boxes"].target.model_copy(update={"noise_boxes": 0})
    ctx = FormatContext(codec, label, 64, 48)
    fmt = FORMATS.get("boxes")()
    ids, _ = fmt.encode(objects, ctx, None)
    n = len(ids) // 2
    sure, unsure = [math.log(0.9)] * 4, [math.log(0.3)] * 4
    logprobs = sure + [math.log(0.8)] * (n - 4) + unsure + [math.log(0.8)] * (n - 4)
    by_label = fmt.decode(ids, ctx, logprobs).boxes
    assert [b.score for b in by_label] == pytest.approx([0.8, 0.8])
    ctx = FormatContext(codec, label.model_copy(update={"box_score": "label_coords"}), 64, 48)
    both = fmt.decode(ids, ctx, logprobs).boxes
    assert [b.score for b in both] == pytest.approx([0.8 * 0.9, 0.8 * 0.3])


def test_eos_weight_reaches_the_example(codec):
    from unitok.tasks.examples import ExampleBuilder

    spec = parse_task({"name": "det", "data": "world", "prompt": ["detect."], "metric": "coco_map",
                       "target": {"format": "boxes", "field": "objects", "label": "category", "eos_weight": 0.1}},
                      source="<det>", formats=FORMATS)
    builder = ExampleBuilder(spec, codec, image_size=32, max_prompt_len=16)
    e = builder.build({"id": "r", "width": 64, "height": 48, "objects": [{"box": [1, 1, 9, 9], "category": "circle"}]},
                      rng=np.random.default_rng(0))
    assert e.target[-1] == EOS and e.weights[-1] == pytest.approx(0.1)


def test_constraint_completion_lengths(codec, tasks):
    predictor = Predictor(make_model(codec), codec, tasks)
    names = ("image", "region", "boxes", "text")
    c: Constraint = predictor.constraint(names)
    shortest = c.shortest(torch.arange(len(names))).tolist()
    assert shortest == [codec.image.num_codes, 4, 0, 1]
    stacked = stack_grammars([predictor.grammar(n) for n in names])
    assert c.need.shape == stacked.allowed.shape


def test_constraint_mask_follows_the_rules_in_every_state(codec, tasks):
    """The fused mask against the rules written plainly, over every state of every format's grammar,
    every budget from none left to plenty, with and without eos blocked."""
    predictor = Predictor(make_model(codec), codec, tasks)
    c: Constraint = predictor.constraint(tuple(TARGETS))
    states = torch.arange(c.need.shape[0]).repeat_interleave(8)
    left = torch.arange(8).repeat(c.need.shape[0]) * 3  # 0, 3, ..., 21 tokens left
    for blocked in (None, torch.rand(states.shape[0], generator=torch.Generator().manual_seed(0)) < 0.5):
        ok = c.need[states] <= left.clamp(min=1)[:, None]
        is_eos = torch.arange(c.vocab_size) == EOS
        if blocked is not None:
            ok &= ~(is_eos & (blocked & (ok & ~is_eos).any(1))[:, None])
        expected = ok | (is_eos & ~ok.any(1, keepdim=True))
        assert torch.equal(c.allowed(states, left, blocked), expected)
        logits = torch.randn(states.shape[0], c.vocab_size)
        assert torch.equal(c.mask(logits, states, left, blocked), logits.masked_fill(~expected, float("-inf")))
    fits = c.need[states] <= left.clamp(min=1)[:, None]
    assert bool((fits[:, EOS] & ~expected[:, EOS]).any()), "no row had eos blocked"
    assert bool((~fits.any(1) & expected[:, EOS]).any()), "no row was left with nothing but a forced eos"


# -- a trained model ranks the truth first -------------------------------------------------------------------------

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40),
           "white": (240, 240, 240), "black": (15, 15, 15), "purple": (140, 40, 170), "orange": (240, 140, 20)}


def colour_example(codec, name: str, g: torch.Generator) -> Example:
    """A 32x32 image of one colour (plus noise) captioned with that colour."""
    rgb = torch.tensor(COLOURS[name], dtype=torch.float32)[:, None, None] / 127.5 - 1
    image = (rgb + 0.15 * torch.randn(3, 32, 32, generator=g)).clamp(-1, 1)[None]
    target = codec.encode_text(f"a {name} picture.") + [EOS]
    return Example("text", codec.encode_text("describe the image."), image, target, [1.0] * len(target), 32.0, 32.0)


def test_scoring_ranks_the_true_caption_first_on_a_trained_model(codec, tasks):
    """A micro model trained for a few seconds to caption colours ranks each image's caption first."""
    from unitok.tasks.examples import collate

    model = make_model(codec, 13).train()
    names, g = list(COLOURS), torch.Generator().manual_seed(13)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(120):
        batch = collate([colour_example(codec, names[int(i)], g) for i in torch.randint(0, len(names), (16,), generator=g)])
        logits = model(batch.prompt, batch.prompt_mask, batch.target_in, batch.images, batch.image_mask)
        loss = (torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.target.flatten(), reduction="none")
                * batch.weights.flatten()).sum() / batch.weights.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predictor = Predictor(model.eval(), codec, tasks)
    truth = [names[i % len(names)] for i in range(24)]
    examples = [colour_example(codec, name, g) for name in truth]
    captions = [f"a {name} picture." for name in names]
    scores = predictor.score(examples, [captions] * len(examples))
    top1 = np.mean([names[int(np.argmax(s))] == t for s, t in zip(scores, truth)])
    assert top1 >= 0.9, top1
    # Closed-set prediction by scoring picks the same answers, through the spec's strategy.
    label = tasks["label"].model_copy(update={"target": tasks["label"].target.model_copy(update={"choices": captions})})
    by_score = Predictor(model, codec, {"label": label}).predict([dataclasses.replace(e, task="label") for e in examples],
                                                                  strategy="score")
    assert [p.output.label for p in by_score] == [captions[int(np.argmax(s))] for s in scores]

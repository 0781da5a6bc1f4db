"""The encoder-decoder: forward/backward, KV cache, Multiway routing."""
from __future__ import annotations

import pytest
import torch

from unitok.model.config import ModelConfig
from unitok.model.transformer import UniTokModel

V = 300


def make(**kw) -> UniTokModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, d_model=64, n_heads=4, enc_layers=2, dec_layers=2, image_size=32, patch_size=8,
                      expert_ranges=[(0, 200, 0), (200, V, 1)], **kw)
    return UniTokModel(cfg)


def inputs(b=3):
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 200, (b, 7), generator=g)
    prompt_mask = torch.ones(b, 7, dtype=torch.bool)
    prompt_mask[0, 5:] = False
    images = torch.randn(b, 2, 3, 32, 32, generator=g)
    image_mask = torch.tensor([[True, False], [True, True], [False, False]])[:b]
    target = torch.randint(0, V, (b, 9), generator=g)
    return prompt, prompt_mask, target, images, image_mask


OPTIONS = [{}, {"block": "parallel"}, {"video_attention": "divided"},
           {"block": "parallel", "video_attention": "divided"}]
OPTION_IDS = ["default", "parallel", "divided", "parallel+divided"]


def with_time_mixing(m: UniTokModel) -> UniTokModel:
    """Divided attention's output projection across slots starts at zero: give it weights, so that tests
    see it act."""
    with torch.no_grad():
        for block in m.encoder:
            if block.time_attn is not None:
                block.time_attn.out.weight.normal_(std=0.2)
    return m


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_forward_backward_reaches_every_used_parameter(options):
    m = with_time_mixing(make(**options))
    p, pm, t, im, imm = inputs()
    patch_mask = torch.zeros(3, 2, 16, dtype=torch.bool)
    patch_mask[1, 0, :5] = True  # masked image modelling hides some patches behind the mask embedding
    logits = m(p, pm, t, im, imm, patch_mask)
    assert logits.shape == (3, 9, V)
    logits.logsumexp(-1).mean().backward()
    for name, param in m.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("options", OPTIONS[:2], ids=OPTION_IDS[:2])
def test_cached_decoding_equals_uncached(options):
    m = make(**options).eval()
    p, pm, t, im, imm = inputs()
    with torch.no_grad():
        full = m(p, pm, t, im, imm)
        memory, mask = m.encode(p, pm, im, imm)
        caches = m.new_caches(3, 16, torch.float32, "cpu")
        stepwise = torch.cat([m.decode(t[:, i:i + 1], memory, mask, caches) for i in range(t.shape[1])], 1)
        steps = m.start_caches(memory, 16, mask)  # the one-query step path (what generation and compile use)
        one_by_one = torch.stack([m.decode_step(t[:, i], steps, mask) for i in range(t.shape[1])], 1)
    torch.testing.assert_close(stepwise, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_by_one, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_multiway_routes_tokens_to_their_modality_expert(options):
    """Patches use the vision expert and prompt tokens the text expert: each gets gradient only from its own."""
    m = with_time_mixing(make(**options))
    p, pm, t, _, _ = inputs()
    # Text only: the encoder's vision expert must receive no gradient.
    m(p, pm, t).sum().backward()
    enc_ffn = m.encoder[0].ffn.experts
    assert enc_ffn[0].up.weight.grad.abs().sum() > 0
    assert enc_ffn[1].up.weight.grad is None or enc_ffn[1].up.weight.grad.abs().sum() == 0
    # Decoder: targets from the text range only leave the decoder's vision expert untouched.
    m.zero_grad(set_to_none=True)
    m(p, pm, torch.randint(0, 200, (3, 5))).sum().backward()
    dec_ffn = m.decoder[0].ffn.experts
    assert dec_ffn[1].up.weight.grad is None or dec_ffn[1].up.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_padding_and_absent_images_do_not_change_outputs(options):
    m = with_time_mixing(make(**options)).eval()
    p, pm, t, im, imm = inputs()
    with torch.no_grad():
        a = m(p, pm, t, im, imm)
        im2 = im.clone()
        im2[0, 1] = 123.0  # slot 1 of row 0 is masked out
        p2 = p.clone()
        p2[0, 5:] = 7  # padded prompt positions of row 0
        b = m(p2, pm, t, im2, imm)
    torch.testing.assert_close(a, b)


def test_block_options_are_validated_and_the_default_keeps_its_parameter_names():
    for name in ("block", "video_attention"):
        with pytest.raises(ValueError, match=f"model.{name} must be"):
            make(**{name: "diagonal"})
    names = set(make().state_dict())  # sequential + joint: the names every existing checkpoint has
    assert {"encoder.0.norm2.weight", "decoder.0.norm2.weight", "decoder.0.norm3.weight"} <= names
    assert not any("time_" in n for n in names)
    parallel = set(make(block="parallel").state_dict())
    assert parallel == {n for n in names if not n.endswith(("norm2.weight", "norm3.weight"))}
    divided = set(make(video_attention="divided").state_dict())
    assert names < divided and all(".time_" in n for n in divided - names)


def test_divided_attention_with_one_frame_equals_joint_until_it_learns_across_frames():
    """Across-slot attention starts at zero output (TimeSformer), and with one slot the spatial attention
    sees every token: a divided model with a joint model's weights computes the same function on one frame."""
    joint = make().eval()
    divided = make(video_attention="divided").eval()
    missing, unexpected = divided.load_state_dict(joint.state_dict(), strict=False)
    assert not unexpected and missing and all(".time_" in n for n in missing)
    p, pm, t, im, imm = inputs()
    with torch.no_grad():
        torch.testing.assert_close(divided(p, pm, t, im[:, :1], imm[:, :1]), joint(p, pm, t, im[:, :1], imm[:, :1]))
        assert not torch.allclose(divided(p, pm, t, im, imm), joint(p, pm, t, im, imm))  # several slots: it differs
        torch.testing.assert_close(divided(p, pm, t), joint(p, pm, t))  # text only: no slots at all


def test_attention_across_slots_reads_the_same_patch_position_of_present_slots_only():
    from unitok.model.layers import Slots

    block = with_time_mixing(make(video_attention="divided")).encoder[0]
    b, n, p, length = 2, 3, 16, 5
    x = torch.randn(b, n * p + length, 64)
    image_mask = torch.tensor([[True, True, False], [True, True, True]])
    mask = torch.cat([image_mask.repeat_interleave(p, 1), torch.ones(b, length, dtype=torch.bool)], 1)
    slots = Slots.of(image_mask, p, mask)
    x2 = x.clone()
    x2[:, p + 3] += 1.0  # slot 1, patch 3
    x2[0, 2 * p:3 * p] = 50.0  # row 0's absent slot 2
    with torch.no_grad():
        diff = (block.across_slots(x, slots) - block.across_slots(x2, slots)).abs().amax(-1)  # (B, S)
    changed = diff > 1e-6
    want = torch.zeros_like(changed)
    want[:, [3, p + 3, 2 * p + 3]] = True  # patch 3 of every slot (row 0's absent slot 2 reads slot 1 too) ...
    want[0, 2 * p:3 * p] = True  # ... and row 0's absent slot, whose own content changed
    assert torch.equal(changed, want)
    assert torch.equal(block.across_slots(x, slots)[:, n * p:], x[:, n * p:])  # the prompt passes through


def test_eight_frames_need_max_images_8():
    m = make(video_attention="divided", max_images=8).eval()
    p, pm, t, _, _ = inputs()
    frames = torch.randn(3, 8, 3, 32, 32)
    with torch.no_grad():
        assert m(p, pm, t, frames, torch.ones(3, 8, dtype=torch.bool)).shape == (3, 9, V)
    with pytest.raises(ValueError, match="max_images"):
        make(video_attention="divided")(p, pm, t, frames)


def test_shared_expert_layers_and_single_ffn_ablation():
    shared = make(shared_expert_layers=1)
    assert len(shared.encoder[-1].ffn.experts) == 1 and len(shared.encoder[0].ffn.experts) == 2
    plain = make(multiway=False)
    assert all(len(b.ffn.experts) == 1 for b in list(plain.encoder) + list(plain.decoder))
    assert plain.num_params() < make().num_params()


def test_over_long_inputs_are_refused_with_the_setting_named():
    m = make(max_prompt_len=8)
    with pytest.raises(ValueError, match="max_prompt_len"):
        m.encode(torch.zeros(1, 9, dtype=torch.long), torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="image_size"):
        m.encode(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 1, 3, 16, 16))


def test_masked_patches_do_not_leak_their_content():
    m = make().eval()
    p, pm, t, im, imm = inputs()
    patch_mask = torch.zeros(3, 2, 16, dtype=torch.bool)
    patch_mask[1, 0, 3] = True
    im2 = im.clone()
    im2[1, 0, :, 0:8, 24:32] += 5.0  # patch 3 of image 0, row 1 (4x4 grid of 8x8 patches)
    with torch.no_grad():
        torch.testing.assert_close(m(p, pm, t, im, imm, patch_mask), m(p, pm, t, im2, imm, patch_mask))
        assert not torch.allclose(m(p, pm, t, im, imm), m(p, pm, t, im2, imm))


def test_region_marks_cover_exactly_the_patches_under_each_prompt_box():
    # coordinate bins are ids 200..232 (33 bins: bin b is at b/32 of the image); 4x4 grid of 8-px patches
    m = make(region_marks=True, coord_range=(200, 233)).eval()
    # box 1: x 0..8 px, y 8..24 px -> column 0, rows 1-2; box 2: x 16..32, y 0..8 -> columns 2-3, row 0
    prompt = torch.tensor([[5, 200, 208, 208, 224, 6, 216, 200, 232, 208], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    mask = torch.ones_like(prompt, dtype=torch.bool)
    marks = m.region_marks(prompt, mask)[:, 0].detach()  # (B, 16, D)
    first, second = m.region_embed.weight[0].detach(), m.region_embed.weight[1].detach()
    grid = marks[0].view(4, 4, -1)
    for r in range(4):
        for c in range(4):
            want = (first if c == 0 and r in (1, 2) else 0) + (second if c >= 2 and r == 0 else 0)
            torch.testing.assert_close(grid[r, c], torch.zeros_like(first) + want, msg=f"patch row {r} col {c}")
    assert not marks[1].any()  # a prompt with no box marks nothing
    # padding is not read as a box, and the mark changes the encoder's output only for prompts with a box
    mask[0, 1:5] = False
    assert not m.region_marks(prompt, mask)[0, 0].view(4, 4, -1)[1:3, 0].any()
    images = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        off = make(coord_range=(200, 233)).eval()
        off.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("region_embed")})
        full = torch.ones_like(prompt, dtype=torch.bool)
        with_marks, _ = m.encode(prompt, full, images)
        without, _ = off.encode(prompt, full, images)
    assert not torch.allclose(with_marks[0], without[0])
    torch.testing.assert_close(with_marks[1], without[1])


def test_box_readout_reads_the_patches_under_each_written_box_in_every_decoding_path():
    m = make(box_readout=True, coord_range=(200, 233)).eval()
    p, pm, _, im, imm = inputs()
    imm = torch.ones_like(imm)
    # bos, box (8..16 px, 0..8 px), label, box (0..32, 24..32), label, text: runs of 4 coordinates end at 4 and 9
    target_in = torch.tensor([[1, 208, 200, 216, 208, 7, 200, 224, 232, 232, 8, 9]] * 3)
    with torch.no_grad():
        memory, mask = m.encode(p, pm, im, imm)
        reads = m._readouts_of(target_in, memory, mask)
        assert reads[:, [4, 9]].abs().sum(-1).gt(0).all()
        assert not reads[:, [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]].any()
        # position 4 reads patch (row 0, column 1) alone: its encoded feature, projected
        torch.testing.assert_close(reads[:, 4], m.box_readout(memory[:, 1]))
        # position 9: the bottom row of the 4x4 grid, averaged
        torch.testing.assert_close(reads[:, 9], m.box_readout(memory[:, 12:16].mean(1)))
        full = m(p, pm, target_in, im, imm)
        off = make(coord_range=(200, 233)).eval()
        off.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("box_readout")})
        plain = off(p, pm, target_in, im, imm)
        torch.testing.assert_close(full[:, :4], plain[:, :4])  # nothing changes before the first box ends
        assert not torch.allclose(full[:, 4], plain[:, 4])
        caches = m.start_caches(memory, 16, mask, n_image_tokens=2 * 16)
        stepwise = torch.stack([m.decode_step(target_in[:, i], caches, mask) for i in range(target_in.shape[1])], 1)
        torch.testing.assert_close(stepwise, full, atol=1e-4, rtol=1e-4)
        # beam search keeps the per-row window in step with the rows it keeps
        caches = m.start_caches(memory, 16, mask, n_image_tokens=2 * 16)
        for i in range(3):
            m.decode_step(target_in[:, i], caches, mask)
        caches[0].reorder(torch.tensor([2, 0, 1]))
        assert caches[0].rows["window"].shape == (3, 4) and caches[0].rows["patches"].shape[0] == 3


def test_bf16_autocast_and_a_bf16_model_run_without_dtype_warnings():
    """Under bf16 autocast (training on a bf16 CPU) and with bf16 weights (an exported bf16 model), every
    RMSNorm computes in float32 and returns the input's dtype: no torch dtype-mismatch warning, and the
    float32 model's output is unchanged (same op)."""
    import warnings

    m = make()
    p, pm, t, im, imm = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "Mismatch dtype between input and weight" would raise
        full = m(p, pm, t, im, imm)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = m(p, pm, t, im, imm)
        half = make().to(torch.bfloat16)(p, pm, t, im.bfloat16(), imm)
    assert mixed.dtype == torch.bfloat16 and half.dtype == torch.bfloat16
    assert (mixed.float() - full).abs().max() < 0.1 * full.abs().max()  # the same function, in bf16
    norm = m.enc_norm
    x = torch.randn(4, 64)
    torch.testing.assert_close(norm(x), torch.nn.functional.rms_norm(x, (64,), norm.weight, norm.eps), rtol=0, atol=0)

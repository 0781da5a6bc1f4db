"""The training recipe's parts, each checked on its own: how a batch's loss is normalised, that
grouping rows by shape changes the padding and not the gradient, the deep patch stem, and the
bag-of-target-tokens objective."""
from __future__ import annotations

import pytest
import torch

from unitok.model.config import ModelConfig
from unitok.model.transformer import PatchStem, UniTokModel
from unitok.modalities.vocab import BOS, PAD
from unitok.tasks.examples import Batch, select_rows, split_rows
from unitok.train.trainer import bow_loss, normalise_loss, row_losses


def test_example_norm_gives_each_row_its_share_whatever_its_length():
    sums = torch.tensor([65.0 * 2.0, 1.0 * 2.0])  # a 65-token row and a 1-token row, both at loss 2 per token
    counts = torch.tensor([65.0, 1.0])
    tasks = ["depth", "classification"]
    assert normalise_loss(sums, counts, tasks, "example") == pytest.approx(2.0)
    assert normalise_loss(sums, counts, tasks, "token") == pytest.approx(2.0)
    # The gradient share differs: per token, the long row takes 65/66 of it; per example, half.
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    normalise_loss(sums * w, counts, tasks, "token").backward()
    assert w.grad[0] / w.grad.sum() == pytest.approx(65 / 66)
    w.grad = None
    normalise_loss(sums * w, counts, tasks, "example").backward()
    assert w.grad[0] / w.grad.sum() == pytest.approx(0.5)


def test_task_norm_averages_tasks_not_rows():
    sums, counts = torch.tensor([1.0, 1.0, 1.0, 4.0]), torch.ones(4)
    assert normalise_loss(sums, counts, ["a", "a", "a", "b"], "task") == pytest.approx((1.0 + 4.0) / 2)
    assert normalise_loss(sums, counts, ["a", "a", "a", "b"], "example") == pytest.approx(7.0 / 4)
    with pytest.raises(ValueError, match="loss_norm"):
        normalise_loss(sums, counts, ["a"] * 4, "tokens")


def _mixed_batch(model_cfg: ModelConfig) -> Batch:
    """Six rows: label rows with one image, long-target rows with one image, a two-image row, a text row."""
    g = torch.Generator().manual_seed(0)
    rows = [(1, 2), (1, 2), (1, 40), (1, 40), (2, 3), (0, 6)]  # (images, target length)
    b, n, t, length = len(rows), 2, 40, 5
    images = torch.randn(b, n, 3, model_cfg.image_size, model_cfg.image_size, generator=g)
    image_mask = torch.zeros(b, n, dtype=torch.bool)
    target = torch.full((b, t), PAD)
    weights = torch.zeros(b, t)
    for i, (k, tl) in enumerate(rows):
        image_mask[i, :k] = True
        images[i, k:] = 0
        target[i, :tl] = torch.randint(4, model_cfg.vocab_size, (tl,), generator=g)
        weights[i, :tl] = 1.0
    prompt = torch.randint(4, model_cfg.vocab_size, (b, length), generator=g)
    prompt_mask = torch.ones(b, length, dtype=torch.bool)
    prompt_mask[0, 3:] = False
    target_in = torch.cat([torch.full((b, 1), BOS), target[:, :-1]], 1)
    return Batch(prompt, prompt_mask, images, image_mask, target_in, target, weights, None, [f"t{k}" for k, _ in rows])


def test_grouped_rows_give_the_same_loss_and_gradient_as_one_padded_batch():
    cfg = ModelConfig(vocab_size=50, d_model=32, n_heads=2, enc_layers=1, dec_layers=1, image_size=16, patch_size=4,
                      max_images=2)
    torch.manual_seed(0)
    model = UniTokModel(cfg)
    batch = _mixed_batch(cfg)
    groups = split_rows(batch)
    assert sorted(map(sorted, groups)) == [[0, 1], [2, 3], [4], [5]]

    def loss_of(part: Batch) -> torch.Tensor:
        logits = model(part.prompt, part.prompt_mask, part.target_in, part.images, part.image_mask)
        sums, counts = row_losses(logits, part.target, part.weights)
        return (sums / counts).sum() / len(batch.tasks)

    model.zero_grad()
    whole = loss_of(batch)
    whole.backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    parts = []
    for rows in groups:
        part = select_rows(batch, rows)
        # padding is cut: no row of a group carries another group's slots or target positions
        assert part.target.shape[1] == int((part.target != PAD).sum(1).max())
        parts.append(loss_of(part))
        parts[-1].backward()
    assert sum(p.item() for p in parts) == pytest.approx(whole.item(), rel=1e-5)
    for k, p in model.named_parameters():
        if k in expected:
            torch.testing.assert_close(p.grad, expected[k], rtol=1e-4, atol=1e-6)
    assert select_rows(batch, [5]).images is None  # a text-only group runs without image slots


def test_deep_stem_puts_image_content_at_unit_scale():
    """The ``conv`` stem's output varies across images ~30x less than the fixed position code it is
    added to; the ``deep`` stem's normalised tower puts it at unit scale, and its linear path keeps
    the absolute colour that the tower's per-image norms remove."""
    x = torch.rand(16, 3, 64, 64) * 2 - 1
    torch.manual_seed(0)
    conv = PatchStem(ModelConfig(d_model=64, n_heads=2, patch_stem="conv"))(x)
    deep = PatchStem(ModelConfig(d_model=64, n_heads=2, patch_stem="deep"))(x)
    assert deep.shape == conv.shape == (16, 64, 8, 8)
    assert conv.std().item() < 0.1
    assert deep.std().item() > 0.9
    # the tower's per-image norms remove the background colour; the linear path keeps it
    stem = PatchStem(ModelConfig(d_model=64, n_heads=2, patch_stem="deep"))
    dark, light = stem(torch.full((1, 3, 64, 64), -0.8)), stem(torch.full((1, 3, 64, 64), 0.8))
    assert (dark - light).abs().mean() > 0.1
    with pytest.raises(ValueError, match="patch_stem"):
        ModelConfig(patch_stem="deeper")


def test_bow_loss_targets_the_bag_of_weighted_tokens():
    target = torch.tensor([[5, 5, 7, PAD]])
    weights = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    logits = torch.full((1, 10), -30.0)
    logits[0, 5], logits[0, 7] = torch.log(torch.tensor(2 / 3)), torch.log(torch.tensor(1 / 3))
    ideal = bow_loss(logits, target, weights).item()  # the bag's own entropy: the minimum
    assert ideal == pytest.approx(-(2 / 3) * torch.log(torch.tensor(2 / 3)).item() - (1 / 3) * torch.log(torch.tensor(1 / 3)).item(), rel=1e-4)
    assert bow_loss(torch.zeros(1, 10), target, weights).item() > ideal + 1.0
    cfg = ModelConfig(vocab_size=40, d_model=32, n_heads=2, enc_layers=1, dec_layers=1, image_size=16, patch_size=4,
                      bow_head=True)
    model = UniTokModel(cfg)
    prompt = torch.randint(4, 40, (3, 4))
    logits, pooled = model(prompt, torch.ones(3, 4, dtype=torch.bool), torch.full((3, 1), BOS),
                           torch.randn(3, 1, 3, 16, 16), pooled=True)
    assert logits.shape == (3, 1, 40) and pooled.shape == (3, 40)
    with pytest.raises(ValueError, match="bow_head"):
        UniTokModel(ModelConfig(vocab_size=40, d_model=32, n_heads=2)).pooled_logits(torch.zeros(1, 2, 32),
                                                                                    torch.ones(1, 2, dtype=torch.bool))

"""Fine-tuning: a new run starts from a trained checkpoint's weights (``train.init`` / ``--init``),
with parts of the model kept fixed (``train.freeze``), and refuses a checkpoint that cannot fit."""
from __future__ import annotations

import pytest
import torch

from unitok import recipes
from unitok.checkpoint import CheckpointError, init_weights, load_checkpoint
from unitok.modalities.vocab import Vocabulary, VocabularyMismatch
from unitok.model.transformer import UniTokModel

pytestmark = pytest.mark.slow


def test_init_starts_from_the_parent_and_freeze_keeps_the_encoder(trained, tmp_path):
    run, out, _ = trained
    parent = load_checkpoint(out / "checkpoint").model.state_dict()
    child_run = run.model_copy(update={"train": run.train.model_copy(update={
        "init": str(out / "checkpoint"), "freeze": ["encoder"], "steps": 4, "save_every": 4, "eval_every": 0}),
        "tasks": run.tasks.model_copy(update={"names": ["caption"]})})  # another task mix than the parent's
    trainer, _ = recipes.train(child_run, tmp_path / "child", eval_examples=2)
    child = trainer.model.state_dict()
    frozen = [k for k in child if k.startswith(("encoder.", "patch_embed."))]
    assert frozen and all(torch.equal(child[k], parent[k]) for k in frozen)
    moved = [k for k in child if k.startswith("decoder.") and not torch.equal(child[k], parent[k])]
    assert moved, "the decoder was trained"
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if n.startswith("encoder."))


def test_init_refuses_another_vocabulary_or_size_and_freeze_an_unknown_part(trained):
    run, out, _ = trained
    ckpt = load_checkpoint(out / "checkpoint")
    other = Vocabulary.build(text_size=ckpt.codec.text.size, coord_bins=128, meta=ckpt.codec.vocab.meta)
    with pytest.raises(VocabularyMismatch, match="train.init checkpoint .*block 'coords': size 64 vs 128"):
        init_weights(UniTokModel(ckpt.model.cfg), out / "checkpoint", expect_vocab=other)
    wider = type(ckpt.model.cfg)(**{**ckpt.model.cfg.to_dict(), "d_model": 64, "n_heads": 2})
    with pytest.raises(CheckpointError, match=r"have another shape .*dec_norm.weight \(128,\) vs \(64,\)"):
        init_weights(UniTokModel(wider), out / "checkpoint", expect_vocab=ckpt.codec.vocab)
    bad = run.model_copy(update={"train": run.train.model_copy(update={"freeze": ["encoders"]})})
    with pytest.raises(ValueError, match="train.freeze: 'encoders' matches no parameter"):
        recipes.train(bad, out.parent / "bad", steps=1)

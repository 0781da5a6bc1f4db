"""Where `Pipeline.from_pretrained()` finds its checkpoint (from any directory), and `save_pretrained` writing one
that `from_pretrained` loads back."""
from __future__ import annotations

from pathlib import Path

import pytest

import unitok  # noqa: F401  (before torch: OMP_WAIT_POLICY)
import torch  # noqa: E402

from unitok.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from unitok.inference import pipeline as pipeline_module  # noqa: E402
from unitok.inference.pipeline import DEFAULT_CHECKPOINT_ENV, Pipeline  # noqa: E402
from unitok.modalities.codec import Codec  # noqa: E402
from unitok.modalities.text import TextTokenizer  # noqa: E402
from unitok.model.config import ModelConfig  # noqa: E402
from unitok.model.transformer import UniTokModel  # noqa: E402
from unitok.tasks.formats import FORMATS  # noqa: E402
from unitok.tasks.spec import load_task  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def micro(tmp_path) -> Path:
    """A micro checkpoint (random weights) with the caption and vqa tasks."""
    codec = Codec.build(TextTokenizer.from_file(REPO / "tokenizers" / "text.model"), 32)
    torch.manual_seed(0)
    model = UniTokModel(ModelConfig(vocab_size=codec.vocab.size, d_model=32, n_heads=2, enc_layers=1, dec_layers=1,
                                    image_size=16, patch_size=4))
    tasks = {n: load_task(REPO / "tasks" / f"{n}.yaml", formats=FORMATS) for n in ("caption", "vqa")}
    return save_checkpoint(tmp_path / "micro", model, codec, tasks)


def scene() -> bytes:
    from unitok.data.world import WorldConfig, make_scene

    return make_scene(WorldConfig(seed=0), 1, "test")["image"]


def test_save_pretrained_writes_what_from_pretrained_loads_back(micro, tmp_path):
    pipe = Pipeline.from_pretrained(micro)
    out = pipe.save_pretrained(tmp_path / "saved")
    again = Pipeline.from_pretrained(out)
    assert set(again.tasks) == set(pipe.tasks)
    assert again.predictor.codec.vocab.to_dict() == pipe.predictor.codec.vocab.to_dict()
    for name, weight in pipe.predictor.model.state_dict().items():
        assert torch.equal(weight, again.predictor.model.state_dict()[name]), name
    image = scene()
    assert again("describe the image.", image=image) == pipe("describe the image.", image=image)
    assert again("question: what colour is the circle?", image=image) == pipe("question: what colour is the circle?",
                                                                           image=image)
    assert not (out / "trainer.json").exists()  # a release copy: no optimizer state
    half = load_checkpoint(pipe.save_pretrained(tmp_path / "half", dtype=torch.bfloat16))
    assert half.model.state_dict()["embed.weight"].dtype == torch.float32  # loaded back as float32


def test_the_default_comes_from_the_environment_first(micro, monkeypatch, tmp_path):
    monkeypatch.setenv(DEFAULT_CHECKPOINT_ENV, str(micro))
    monkeypatch.chdir(tmp_path)  # not the repository root
    assert Path(Pipeline.from_pretrained().source) == micro


def test_a_missing_default_names_both_places(monkeypatch, tmp_path):
    monkeypatch.setenv(DEFAULT_CHECKPOINT_ENV, str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError) as e:  # a wrong variable is not quietly replaced by the repository's
        Pipeline.from_pretrained()
    assert str(tmp_path / "typo") in str(e.value) and DEFAULT_CHECKPOINT_ENV in str(e.value)
    assert str(pipeline_module.REPO_CHECKPOINT) in str(e.value)

    monkeypatch.delenv(DEFAULT_CHECKPOINT_ENV)
    monkeypatch.setattr(pipeline_module, "REPO_CHECKPOINT", tmp_path / "repo" / "checkpoints" / "default")
    with pytest.raises(FileNotFoundError) as e:  # installed without the repository, and no variable
        Pipeline.from_pretrained()
    assert str(tmp_path / "repo" / "checkpoints" / "default") in str(e.value)
    assert f"{DEFAULT_CHECKPOINT_ENV} is not set" in str(e.value)


@pytest.mark.skipif(not (REPO / "checkpoints" / "default" / "model.safetensors").exists(),
                    reason="needs the shipped checkpoints/default")
def test_without_the_variable_the_repository_checkpoint_loads_from_any_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(DEFAULT_CHECKPOINT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert Path(Pipeline.from_pretrained().source) == REPO / "checkpoints" / "default"

"""Checkpoints: a directory written atomically, loadable without executing any pickled code.

    model.safetensors   weights
    config.json         model config + the run config that trained it
    vocab.json          the unified vocabulary layout (checked on load)
    text.model          the SentencePiece model (its hash is in vocab.json)
    image_vq.*, dense_vq.*  the VQ-VAE tokenizers, when the vocabulary has image/dense code blocks
    tasks/*.yaml        the task specs the model was trained on
    trainer.safetensors optimizer tensors + RNG state   (training runs only; needed for exact resume)
    trainer.json        step and optimizer hyper-parameters (staged runs: the stage and the step inside it)

Writing goes to a temporary sibling directory that is renamed into place, so a run killed while
saving leaves the previous checkpoint intact; a kill between the renames leaves a complete sibling
that ``recover_dir`` (called before every save and before a run resumes) puts back.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import RunConfig, parse_config
from .errors import UniTokError
from .model.config import ModelConfig
from .model.transformer import UniTokModel
from .modalities.codec import Codec
from .modalities.coords import CoordQuantizer
from .modalities.text import TextTokenizer
from .modalities.vocab import Vocabulary, VocabularyMismatch
from .modalities.vq.tokenizer import load_tokenizer
from .tasks.formats import FORMATS
from .tasks.spec import TaskSpec, dump_task, load_tasks

FORMAT_VERSION = 1


class CheckpointError(UniTokError, ValueError):
    pass


@dataclass
class Checkpoint:
    model: UniTokModel
    codec: Codec
    tasks: dict[str, TaskSpec]
    run: RunConfig | None
    path: Path
    # {"step": int, "optimizer": state_dict, "rng": tensor, "schedule_steps": the lr schedule's length}; a run
    # with train.stages also has "stage" (of the last step done), "stage_step" (its step in it) and "stages"
    trainer_state: dict = field(default_factory=dict)


STAGE_KEYS = ("stage", "stage_step", "stages")  # trainer.json of a run with train.stages
COMPLETE = ".complete"  # written last into a checkpoint directory before it is published


def _atomic_dir(path: Path, write) -> None:
    """Write a directory beside ``path`` and publish it with renames. A kill at any instant leaves either
    ``path`` or a complete sibling that ``recover_dir`` puts back in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)  # a kill before may have left the last good copy beside it, and temporaries
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    (tmp / COMPLETE).write_text("")
    for f in tmp.rglob("*"):  # make the bytes durable before the rename publishes them
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)  # a kill between the two renames: recover_dir publishes tmp (or old)
    shutil.rmtree(old, ignore_errors=True)


def _step_of(path: Path) -> int:
    try:
        return int(json.loads((path / "trainer.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def recover_dir(path: str | Path) -> Path | None:
    """After a kill while saving: if ``path`` is missing, put back the newest complete sibling (a
    finished temporary, else the previous copy); then remove every other temporary and old copy.
    Returns the directory put back, if any."""
    path = Path(path)
    siblings = [p for p in path.parent.glob(f".{path.name}.tmp-*")] + [p for p in path.parent.glob(f".{path.name}.old-*")]
    restored = None
    if not path.exists():
        # usable: a finished temporary, or an old copy (it was published once); a finished temporary
        # is newer than any old copy, and among several the furthest step wins
        complete = sorted((p for p in siblings if (p / (COMPLETE if ".tmp-" in p.name else "model.safetensors")).exists()),
                          key=lambda p: (".tmp-" in p.name, _step_of(p)))
        if complete:
            restored = complete[-1]
            os.replace(restored, path)
    for p in siblings:
        if p != restored:
            shutil.rmtree(p, ignore_errors=True)
    return path if restored is not None else None


def _load_tensors(file: Path, device: str | torch.device = "cpu", *, finite: bool = True) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; an unreadable file (truncated, pickled, not safetensors) or, with
    ``finite``, a NaN/Inf weight is a `CheckpointError` naming the file and the weight."""
    try:
        tensors = load_file(str(file), device=str(device))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except Exception as e:  # safetensors raises its own error types for a corrupt header or short data
        raise CheckpointError(f"{file}: not a readable safetensors file ({type(e).__name__}: {e}); "
                              "was it truncated, or saved with torch.save (pickle, which is never loaded)?") from None
    if finite:
        for key, t in tensors.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise CheckpointError(f"{file}: weight {key!r} has NaN or Inf values")
    return tensors


def _optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{idx}.{key}"] = value.contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model: UniTokModel, codec: Codec, tasks: dict[str, TaskSpec],
                    run: RunConfig | None = None, *, trainer_state: dict | None = None,
                    dtype: torch.dtype = torch.float32) -> Path:
    path = Path(path)
    model = getattr(model, "module", model)  # unwrap DDP

    def write(tmp: Path) -> None:
        weights = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format_version": str(FORMAT_VERSION)})
        config = {"format_version": FORMAT_VERSION, "model": model.cfg.to_dict(),
                  "run": run.model_dump(exclude={"source"}) if run else None}
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "vocab.json").write_text(json.dumps(codec.vocab.to_dict(), indent=1))
        (tmp / "text.model").write_bytes(codec.text.proto)
        for name in ("image", "dense"):  # VQ-VAE tokenizers travel with the checkpoint
            tok = getattr(codec, name)
            if tok is not None:
                tok.save(tmp / f"{name}_vq")
        (tmp / "tasks").mkdir()
        for name, spec in tasks.items():
            (tmp / "tasks" / f"{name}.yaml").write_text(dump_task(spec))
        if trainer_state:
            tensors, meta = _optimizer_tensors(trainer_state["optimizer"])
            tensors["rng.torch"] = trainer_state["rng"]
            save_file(tensors, str(tmp / "trainer.safetensors"))
            extra = {k: trainer_state[k] for k in ("schedule_steps", *STAGE_KEYS) if k in trainer_state}
            (tmp / "trainer.json").write_text(json.dumps({"step": trainer_state["step"], "optimizer": meta, **extra}))

    _atomic_dir(path, write)
    return path


def load_codec(path: str | Path) -> Codec:
    path = Path(path)
    try:
        vocab = Vocabulary.from_dict(json.loads((path / "vocab.json").read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a checkpoint (no vocab.json)") from None
    text = TextTokenizer.from_file(path / "text.model")
    if vocab.meta.get("text_model") not in (None, text.fingerprint):
        raise VocabularyMismatch(f"{path / 'text.model'}: text model {text.fingerprint} is not the one vocab.json "
                                 f"was built with ({vocab.meta['text_model']})")
    vq = {name: load_tokenizer(path / f"{name}_vq") for name in ("image", "dense") if vocab.has(name)}
    return Codec(vocab, text, CoordQuantizer(vocab.block("coords").size), **vq)


def load_checkpoint(path: str | Path, *, expect_vocab: Vocabulary | None = None, with_trainer: bool = False,
                    device: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not (path / "model.safetensors").exists():
        raise CheckpointError(f"{path}: not a checkpoint (no model.safetensors)")
    codec = load_codec(path)
    if expect_vocab is not None:
        expect_vocab.check_same(codec.vocab, what=f"checkpoint {path}")
    config = json.loads((path / "config.json").read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path / 'config.json'}: format_version {config.get('format_version')}, expected {FORMAT_VERSION}")
    cfg = ModelConfig.from_dict(config["model"], where=f"{path / 'config.json'}: model")
    if cfg.vocab_size != codec.vocab.size:
        raise VocabularyMismatch(f"{path}: model vocab_size {cfg.vocab_size} but vocab.json has {codec.vocab.size} ids")
    model = UniTokModel(cfg)
    weights = _load_tensors(path / "model.safetensors", device)
    own = model.state_dict()
    for key in sorted(set(own) | set(weights)):
        if key not in weights:
            raise CheckpointError(f"{path / 'model.safetensors'}: missing weight {key!r}")
        if key not in own:
            raise CheckpointError(f"{path / 'model.safetensors'}: unexpected weight {key!r}")
        if own[key].shape != weights[key].shape:
            raise CheckpointError(f"{path / 'model.safetensors'}: weight {key!r} has shape {tuple(weights[key].shape)}, "
                                  f"the config expects {tuple(own[key].shape)}")
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    model.to(device)
    tasks = load_tasks(path / "tasks", formats=FORMATS)
    run = parse_config(config["run"], source=str(path / "config.json")) if config.get("run") else None
    trainer_state = {}
    if with_trainer and (path / "trainer.json").exists():
        meta = json.loads((path / "trainer.json").read_text())
        tensors = _load_tensors(path / "trainer.safetensors", finite=False)
        trainer_state = {"step": meta["step"], "optimizer": _optimizer_state(tensors, meta["optimizer"]),
                         "rng": tensors["rng.torch"]}
        schedule = meta.get("schedule_steps", run.train.steps if run else None)  # older checkpoints: the run's steps
        if schedule:
            trainer_state["schedule_steps"] = int(schedule)
        trainer_state.update({k: meta[k] for k in STAGE_KEYS if k in meta})
    return Checkpoint(model, codec, tasks, run, path, trainer_state)


def init_weights(model: UniTokModel, path: str | Path, *, expect_vocab: Vocabulary) -> dict[str, list[str]]:
    """Load a release or training checkpoint's weights into ``model`` to fine-tune from them
    (``train.init``). The vocabulary must be the same layout (else `VocabularyMismatch` naming each
    differing block); every weight both have must have the same shape (else `CheckpointError` naming
    the weights and both shapes: another model size). Weights only the new model has (a head the old
    run did not train) keep their fresh initialisation; weights only the checkpoint has are left out.
    Returns {"loaded": [...], "fresh": [...], "ignored": [...]}."""
    path = Path(path)
    if not (path / "model.safetensors").exists():
        raise CheckpointError(f"train.init: {path} is not a checkpoint (no model.safetensors)")
    load_codec(path).vocab.check_same(expect_vocab, what=f"train.init checkpoint {path}")
    weights = _load_tensors(path / "model.safetensors")
    own = model.state_dict()
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(weights))
             if own[k].shape != weights[k].shape]
    if wrong:
        raise CheckpointError(f"train.init checkpoint {path}: {len(wrong)} weight(s) have another shape than this "
                              f"run's model.* settings give (checkpoint vs run): " + "; ".join(wrong[:5]))
    shared = {k: weights[k].to(own[k].dtype) for k in own if k in weights}
    model.load_state_dict(shared, strict=False)
    return {"loaded": sorted(shared), "fresh": sorted(set(own) - set(weights)), "ignored": sorted(set(weights) - set(own))}

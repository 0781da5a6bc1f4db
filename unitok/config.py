"""Run configuration (``configs/*.yaml``): model sizes, tokenizers, data, tasks and training recipe.

Loaded with ``yaml.safe_load`` into typed objects at the edge; an unknown key or a wrong type
fails naming the file and the field (``configs/tiny.yaml: field 'train.lr': ...``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import UniTokError
from .model.config import ModelConfig


class ConfigError(UniTokError, ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenizerSettings(_Strict):
    text: str = "tokenizers/text.model"
    coord_bins: int = Field(128, ge=2)
    image: str | None = None  # VQ-VAE asset prefix for image codes
    dense: str | None = None  # VQ-VAE asset prefix for dense-map codes


class WorldBuild(_Strict):
    seed: int = 0
    size: int = 64
    train: int = 2000
    val: int = 200
    test: int = 0


class DataSettings(_Strict):
    root: str = "data"  # stores live at <root>/<dataset>/<split>
    world: WorldBuild = WorldBuild()  # built on first use when its stores are missing


class TaskSettings(_Strict):
    dir: str = "tasks"
    names: list[str] | None = None  # None: every spec in dir
    temperature: float = Field(1.0, gt=0)  # mixture: p_task ∝ weight ** (1 / temperature)


class TrainSettings(_Strict):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    accumulate: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup: int = Field(100, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = Field(1.0, ge=0)
    bf16: bool | Literal["auto"] = "auto"  # autocast to bf16; auto: where the hardware multiplies bf16 natively
    seed: int = 0
    num_workers: int = Field(2, ge=0)
    log_every: int = Field(25, ge=1)
    save_every: int = Field(250, ge=1)
    eval_every: int = Field(0, ge=0)  # 0: only at the end
    eval_examples: int = Field(100, ge=1)  # per task, during training
    # How the cross-entropy of a batch is averaged. "example": each row's mean over its own target tokens,
    # then the mean over rows, so a spec's weight is its share of the gradient whatever its target length;
    # "task": the mean per task, then over the batch's tasks; "token": over every target token of the batch.
    loss_norm: Literal["token", "example", "task"] = "example"
    # Weight of the bag-of-target-tokens loss on the pooled encoder output (needs model.bow_head: true).
    bow_weight: float = Field(0.0, ge=0)
    # Split each batch into groups of rows with the same number of image slots and similar target
    # lengths, run one forward pass per group: the same gradient, without padding every row to the longest.
    group_rows: bool = True
    # Fine-tuning: start from this checkpoint's weights (a release or a training checkpoint; the same
    # vocabulary and model sizes), and keep these parts fixed: encoder, stem, decoder, embed, or any
    # parameter-name prefix (see Trainer.freeze).
    init: str | None = None
    freeze: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _training_checkpoints_are_fp32(cls, data):
        """``save_dtype`` (older configs and run records) is gone: a bf16 training checkpoint made resume
        inexact. Release copies in bf16 come from ``unitok export --dtype bfloat16``."""
        if isinstance(data, dict) and "save_dtype" in data:
            data = dict(data)
            if data.pop("save_dtype") != "float32":
                raise ValueError("train.save_dtype was removed: training checkpoints are always float32, so resume "
                                 "is exact; make a bf16 release copy with `unitok export --dtype bfloat16`")
        return data


class RunConfig(_Strict):
    model: dict = {}
    tokenizers: TokenizerSettings = TokenizerSettings()
    data: DataSettings = DataSettings()
    tasks: TaskSettings = TaskSettings()
    train: TrainSettings = TrainSettings()
    source: str = ""

    def model_settings(self) -> ModelConfig:
        try:
            return ModelConfig.from_dict(self.model, where=f"{self.source}: field 'model'")
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e) if self.source in str(e) else f"{self.source}: field 'model': {e}") from None


def parse_config(data: object, *, source: str) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        cfg = RunConfig(**{**data, "source": source})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{source}: field '{loc}': {err['msg']}") from None
    cfg.model_settings()  # validate model fields now, not at build time
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Load a run config; ``overrides`` maps dotted keys (``train.steps``) to values."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    for key, value in (overrides or {}).items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return parse_config(data, source=str(path))

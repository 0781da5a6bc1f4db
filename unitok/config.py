"""Run configuration (``configs/*.yaml``): model sizes, tokenizers, data, tasks and training recipe.

Loaded with ``yaml.safe_load`` into typed objects at the edge; an unknown key or a wrong type
fails naming the file and the field (``configs/tiny.yaml: field 'train.lr': ...``).

Paths (``PATH_FIELDS``): a relative path written in a config file is relative to the project the file belongs
to (``project_root``: the file's folder, or the folder above it for a file in ``configs/``), so
``configs/tiny.yaml`` means the same files from any directory. A path given on the command line (``--set``,
``--init``) is relative to the current directory, as command-line paths are. The settings keep the text as
written (a checkpoint records ``data``, not one machine's absolute path); ``RunConfig.resolve`` makes it a path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import UniTokError
from .model.config import ModelConfig


class ConfigError(UniTokError, ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldProblem(ValueError):
    """Raised by a validator about a field below the model it checks (``stages[1].name``), so that
    ``parse_config`` names that field rather than the model."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


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


class StageTasks(_Strict):
    """A stage's task mixture. What it leaves out is the top-level ``tasks:`` section's."""
    names: list[str] | None = None
    weights: dict[str, Annotated[float, Field(ge=0)]] = {}  # in place of these specs' own weight
    temperature: float | None = Field(None, gt=0)


class StageSettings(_Strict):
    """One entry of ``train.stages``. Omitted fields take the run's: ``train.lr``, ``train.warmup``,
    ``train.freeze``, ``tasks.names``, ``tasks.temperature``."""
    name: str = Field(min_length=1)
    steps: int = Field(ge=1)
    lr: float | None = Field(None, gt=0)
    warmup: int | None = Field(None, ge=0)
    tasks: StageTasks = StageTasks()
    freeze: list[str] | None = None


@dataclass(frozen=True)
class Stage:
    """A training stage with nothing left to inherit (``RunConfig.stage_plan``): it trains global steps
    ``start`` to ``end`` under its own warmup + cosine. ``field`` says where it is configured."""
    name: str
    start: int
    steps: int
    lr: float
    warmup: int
    tasks: tuple[str, ...] | None  # None: every task of the run
    weights: dict[str, float]
    temperature: float
    freeze: tuple[str, ...]
    field: str

    @property
    def end(self) -> int:
        return self.start + self.steps


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
    tensorboard: bool = False  # also write log.csv/eval.csv scalars as TensorBoard events (needs `tensorboard`)
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
    # parameter-name prefix (see Trainer.frozen_names).
    init: str | None = None
    freeze: list[str] = []
    # Stages run one after another in one run (pretrain, then multitask or fine-tune), each with its own
    # mixture, steps, lr schedule and frozen parts (StageSettings); the optimizer state carries over.
    # The run's length is their total: train.steps may be left out, or must say the same.
    stages: list[StageSettings] = []

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

    @model_validator(mode="after")
    def _stages_have_names_and_set_the_length(self):
        first: dict[str, int] = {}
        for i, stage in enumerate(self.stages):
            if stage.name in first:
                raise FieldProblem(f"stages[{i}].name", f"{stage.name!r} already names stage {first[stage.name]}")
            first[stage.name] = i
        total = sum(stage.steps for stage in self.stages)
        if self.stages and "steps" in self.model_fields_set and self.steps != total:
            raise FieldProblem("steps", f"{self.steps}, but train.stages add up to {total} steps: leave train.steps "
                                        f"out or make it {total}")
        if self.stages:
            self.steps = total
        return self


# The settings that name a file or directory (see the module's docstring for what a relative one means).
PATH_FIELDS = ("tokenizers.text", "tokenizers.image", "tokenizers.dense", "data.root", "tasks.dir", "train.init")


def project_root(config_file: str | Path) -> Path:
    """Where a config file's relative paths start: its folder, or the folder above when that is ``configs/``
    (the layout of this repository, and of a project copied from it)."""
    folder = Path(config_file).resolve().parent
    return folder.parent if folder.name == "configs" else folder


class RunConfig(_Strict):
    model: dict = {}
    tokenizers: TokenizerSettings = TokenizerSettings()
    data: DataSettings = DataSettings()
    tasks: TaskSettings = TaskSettings()
    train: TrainSettings = TrainSettings()
    source: str = ""
    # where relative paths start: set by load_config; None (a run record read from a checkpoint): the current directory
    _root: Path | None = PrivateAttr(None)

    def resolve(self, path: str | None) -> Path | None:
        """A path setting (``run.resolve(run.data.root)``) as the path it means; None stays None."""
        if path is None:
            return None
        p = Path(path).expanduser()
        return p if p.is_absolute() or self._root is None else self._root / p

    @model_validator(mode="after")
    def _stage_weights_are_for_stage_tasks(self):
        for stage in self.stage_plan():
            unknown = sorted(set(stage.weights) - set(stage.tasks)) if stage.tasks is not None else []
            if unknown:
                raise FieldProblem(f"{stage.field}.tasks.weights", f"{unknown} not among the stage's tasks {list(stage.tasks)}")
        return self

    def stage_plan(self) -> list[Stage]:
        """The training stages, resolved. Without ``train.stages``: one stage of ``train.steps`` steps over
        every task of the run, at ``train.lr``."""
        t = self.train
        if not t.stages:
            return [Stage("", 0, t.steps, t.lr, t.warmup, None, {}, self.tasks.temperature, tuple(t.freeze), "train")]
        plan, start = [], 0
        for i, s in enumerate(t.stages):
            names = s.tasks.names if s.tasks.names is not None else self.tasks.names
            plan.append(Stage(
                s.name, start, s.steps, t.lr if s.lr is None else s.lr, t.warmup if s.warmup is None else s.warmup,
                None if names is None else tuple(names), dict(s.tasks.weights),
                self.tasks.temperature if s.tasks.temperature is None else s.tasks.temperature,
                tuple(t.freeze if s.freeze is None else s.freeze), f"train.stages[{i}]"))
            start += s.steps
        return plan

    def task_names(self) -> list[str] | None:
        """The tasks the run trains: every stage's, in order of first mention (None: every spec in ``tasks.dir``)."""
        if not self.train.stages:
            return self.tasks.names
        plan = self.stage_plan()
        if any(s.tasks is None for s in plan):
            return None
        return list(dict.fromkeys(name for s in plan for name in s.tasks))

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
        loc, message = field_path(err["loc"]), err["msg"]
        problem = err.get("ctx", {}).get("error")
        if isinstance(problem, FieldProblem):
            loc, message = ".".join(filter(None, (loc, problem.field))), problem.message
        raise ConfigError(f"{source}: field '{loc}': {message}") from None
    cfg.model_settings()  # validate model fields now, not at build time
    return cfg


def field_path(loc: tuple) -> str:
    """('train', 'stages', 1, 'steps') -> 'train.stages[1].steps'."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


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
        if key in PATH_FIELDS and isinstance(value, str):  # typed on the command line: from the current directory
            value = str(Path.cwd() / Path(value).expanduser())
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    run = parse_config(data, source=str(path))
    run._root = project_root(path)
    return run

"""The Trainer: one model, a mixture of tasks, AdamW with warmup + cosine, bf16 autocast.

It owns the loop; callers own the pieces. Evaluation is injected as a callable so the train layer
never imports eval or inference (the CLI wires ``unitok.inference.evaluate``).

Exact resume: the checkpoint holds weights, optimizer state, RNG and the step; data order is a
pure function of (seed, batch index, rank) (``MixtureSampler``), and the CSV log is cut back to
the checkpoint's step, so a run killed at any point continues as if it had never stopped.

Stages (``train.stages``): the global step runs on across them; the step alone says which stage
trains next, so a stage boundary needs no state beyond the step (each stage has its own mixture,
warmup + cosine and frozen parts; the optimizer state carries over).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import init_weights, load_checkpoint, recover_dir, save_checkpoint
from ..config import ConfigError, RunConfig, Stage
from ..model.config import ModelConfig
from ..model.transformer import UniTokModel
from ..modalities.codec import Codec
from ..runtime import use_bf16
from ..tasks.examples import Batch, collate, select_rows, split_rows
from ..tasks.spec import TaskSpec
from .data import MixtureDataset, MixtureSampler, TaskSource, mixture_probs
from .logs import RunLog
from .optim import adamw, lr_at

log = logging.getLogger(__name__)

EvaluateFn = Callable[[UniTokModel, int], dict]


def model_config_for(run: RunConfig, codec: Codec) -> ModelConfig:
    """The run's model sizes plus what the vocabulary decides: its size, expert routing, coordinate bins."""
    cfg = run.model_settings()
    cfg.vocab_size = codec.vocab.size
    cfg.expert_ranges = codec.vocab.expert_ranges(cfg.experts)
    cfg.coord_range = codec.vocab.range("coords")
    return cfg


def stage_at(stages: list[Stage], step: int) -> Stage:
    """The stage that trains step ``step`` (0-based: the steps done before it); past the last stage's
    end, the last stage, at its final learning rate."""
    return next((s for s in stages if step < s.end), stages[-1])


def _listed(stages: list[dict]) -> str:
    return ", ".join(f"{s['name']} ({s['steps']} steps)" for s in stages) or "none"


def row_losses(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the weighted sum of token cross-entropies and the sum of weights (0 on padding;
    Pix2Seq down-weights noise/eos)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none").view_as(weights)
    return (ce * weights).sum(1), weights.sum(1)


def row_scales(counts: torch.Tensor, tasks: list[str], how: str) -> torch.Tensor:
    """Each row's multiplier in the batch loss, ``(row_sums * row_scales).sum()`` (``train.loss_norm``);
    ``counts``: each row's sum of target-token weights. Known before any forward pass, so a batch run in
    groups of rows (``train.group_rows``) gets the gradient of the whole padded batch.

    ``token``: every target token of the batch counts alike, so a task's share of the gradient is its
    share of tokens (a 65-code depth map outweighs a one-token label 65 to 1). ``example``: each row's
    mean over its own tokens, averaged over rows: a task's share is its share of rows, which is what
    its mixture weight sets. ``task``: each task's mean over its rows, averaged over the tasks present."""
    if how == "token":
        return torch.full_like(counts, 1.0) / counts.sum().clamp(min=1.0)
    per_row = 1.0 / counts.clamp(min=1.0)
    if how == "example":
        return per_row / len(tasks)
    if how == "task":
        per_task = Counter(tasks)
        share = [1.0 / (per_task[t] * len(per_task)) for t in tasks]
        return per_row * torch.tensor(share, dtype=per_row.dtype, device=per_row.device)
    raise ValueError(f"train.loss_norm must be token, example or task, got {how!r}")


def normalise_loss(sums: torch.Tensor, counts: torch.Tensor, tasks: list[str], how: str) -> torch.Tensor:
    """The batch loss from per-row sums and weight counts (``row_scales``)."""
    return (sums * row_scales(counts, tasks, how).to(sums.dtype)).sum()


def weighted_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, tasks: list[str] | None = None,
                  how: str = "token") -> torch.Tensor:
    """The batch loss of one padded batch (``normalise_loss`` over its rows)."""
    sums, counts = row_losses(logits, target, weights)
    return normalise_loss(sums, counts, tasks or [""] * len(sums), how)


def bow_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per row: cross-entropy of the pooled logits (B, V) against the row's bag of target tokens,
    each weighted token counting once per occurrence (Joulin et al. 2016; Mahajan et al. 2018: a
    softmax over the vocabulary with the bag as the target distribution)."""
    bag = torch.zeros_like(logits, dtype=torch.float32).scatter_add_(1, target, (weights > 0).float())
    bag = bag / bag.sum(1, keepdim=True).clamp(min=1.0)
    return -(bag * logits.float().log_softmax(-1)).sum(1)


class Trainer:
    def __init__(self, run: RunConfig, out: str | Path, codec: Codec, tasks: dict[str, TaskSpec],
                 sources: list[TaskSource], *, evaluate: EvaluateFn | None = None, resume: bool = True,
                 device: str | torch.device = "cpu"):
        self.run, self.cfg = run, run.train
        self.out = Path(out)
        self.logs = RunLog(self.out, tensorboard=self.cfg.tensorboard, source=run.source)  # log.csv, eval.csv
        self.codec, self.tasks, self.sources = codec, tasks, sources
        self.evaluate_fn = evaluate
        self.device = torch.device(device)
        self.bf16 = use_bf16(self.cfg.bf16, self.device)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.ckpt_dir = self.out / "checkpoint"
        self.step = 0
        self.schedule_steps: int | None = None  # the lr schedule's length, fixed when the run starts
        self.stages, self.staged = run.stage_plan(), bool(self.cfg.stages)

        model_cfg = model_config_for(run, codec)
        torch.manual_seed(self.cfg.seed)
        torch.set_flush_denormal(True)  # denormal floats are very slow on x86 CPUs
        self.model = UniTokModel(model_cfg).to(self.device)
        if self.rank == 0:
            restored = recover_dir(self.ckpt_dir)  # a kill between a save's two renames
            if restored:
                log.warning("put back %s from the copy a killed save left beside it", restored)
        if self.world > 1:
            dist.barrier()
        resuming = resume and (self.ckpt_dir / "trainer.json").exists()
        if not resuming and self.rank == 0:
            self._truncate_log(0)  # a fresh start's curve is not spliced onto an old run's
        if self.cfg.init and not resuming:  # a resumed fine-tuning run continues from its own checkpoint
            parts = init_weights(self.model, run.resolve(self.cfg.init), expect_vocab=codec.vocab)
            log.info("train.init %s: %d weights loaded, fresh: %s, left out: %s", self.cfg.init, len(parts["loaded"]),
                     parts["fresh"] or "none", parts["ignored"] or "none")
        for stage in self.stages:
            self._stage_sources(stage)  # every stage's tasks and frozen parts are checked now, not at its boundary
        frozen = [self.frozen_names(s.freeze, f"{s.field}.freeze") for s in self.stages]
        # One stage: the optimizer (and DDP) hold the parameters that train. Stages: every parameter, whatever a
        # stage freezes; one frozen in the current stage gets no grad, so AdamW leaves it and its state alone,
        # and DDP (find_unused_parameters) counts it unused.
        self._set_frozen(frozenset() if self.staged else frozen[0])
        self.optimizer = self._optimizer()
        if resuming:
            self._resume()
        self.ddp = (DistributedDataParallel(self.model, find_unused_parameters=True) if self.world > 1 else None)

    # ------------------------------------------------------------------ setup
    FREEZE_PARTS = {
        "stem": ("patch_embed.",),
        "encoder": ("patch_embed.", "patch_pos", "slot_embed.", "mask_embed", "prompt_pos.", "encoder.", "enc_norm."),
        "decoder": ("decoder.", "dec_norm.", "target_pos."),
        "embed": ("embed.",),  # the shared token embedding, which is also the output head
    }

    def frozen_names(self, parts: list[str] | tuple[str, ...], field: str = "train.freeze") -> frozenset[str]:
        """The parameters that ``parts`` name: each a name of ``FREEZE_PARTS`` or a parameter-name prefix.
        A name that matches no parameter is an error naming ``field``, not a silent no-op."""
        names = [n for n, _ in self.model.named_parameters()]
        frozen = set()
        for part in parts:
            prefixes = self.FREEZE_PARTS.get(part, (part,))
            hit = [n for n in names if n.startswith(prefixes)]
            if not hit:
                raise ValueError(f"{field}: {part!r} matches no parameter; use one of "
                                 f"{sorted(self.FREEZE_PARTS)} or a parameter-name prefix")
            frozen.update(hit)
        return frozenset(frozen)

    def _set_frozen(self, names: frozenset[str]) -> None:
        """Keep exactly ``names`` fixed and train the rest."""
        for n, p in self.model.named_parameters():
            p.requires_grad_(n not in names)

    def _optimizer(self) -> torch.optim.Optimizer:
        return adamw(self.model, lr=self.cfg.lr, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay)

    def _resume(self) -> None:
        ckpt = load_checkpoint(self.ckpt_dir, expect_vocab=self.codec.vocab, with_trainer=True, device=self.device)
        self.model.load_state_dict(ckpt.model.state_dict())
        self.optimizer.load_state_dict(ckpt.trainer_state["optimizer"])
        torch.set_rng_state(ckpt.trainer_state["rng"])
        self.step = ckpt.trainer_state["step"]
        self.schedule_steps = ckpt.trainer_state.get("schedule_steps")
        self._check_stages(ckpt.trainer_state)
        if self.rank == 0:
            self._truncate_log(self.step)
        log.info("resumed from %s at step %d", self.ckpt_dir, self.step)

    def _check_stages(self, state: dict) -> None:
        """A resumed run keeps the stages it has begun, names and lengths; later ones may change or be added."""
        saved = state.get("stages")
        ours = [{"name": s.name, "steps": s.steps} for s in self.stages] if self.staged else None
        if saved is None and ours is None:
            return
        where = f"{self.run.source}: field 'train.stages': {self.ckpt_dir} "
        if saved is None:
            raise ConfigError(where + f"was trained without stages (to step {state['step']}); resume it without "
                              "train.stages, start afresh (--fresh), or start the stages from its weights (--init)")
        starts = [sum(s["steps"] for s in saved[:i]) for i in range(len(saved))]
        begun = [s for s, start in zip(saved, starts) if start < state["step"]]
        if ours is None or ours[:len(begun)] != begun:
            raise ConfigError(where + f"is at step {state.get('stage_step')} of stage {state.get('stage')!r}: the stages "
                              f"it has begun ({_listed(begun)}) cannot change, and this config has "
                              f"{_listed((ours or [])[:len(begun)])}; resume with those stages or start afresh (--fresh)")

    def _stage_sources(self, stage: Stage) -> list[TaskSource]:
        """The sources of the stage's tasks, in the run's order."""
        names = [s.builder.spec.name for s in self.sources]
        chosen = names if stage.tasks is None else list(stage.tasks)
        missing = [n for n in chosen if n not in names]
        if missing:
            raise ConfigError(f"{self.run.source}: field '{stage.field}.tasks.names': {missing} not among the run's tasks {names}")
        unknown = sorted(set(stage.weights) - set(chosen))
        if unknown:
            raise ConfigError(f"{self.run.source}: field '{stage.field}.tasks.weights': {unknown} not among the stage's tasks {chosen}")
        return [s for s in self.sources if s.builder.spec.name in chosen]

    def _loader(self, stage: Stage) -> DataLoader:
        sources = self._stage_sources(stage)
        weights = [stage.weights.get(s.builder.spec.name, self.tasks[s.builder.spec.name].weight) for s in sources]
        sampler = MixtureSampler([len(s) for s in sources], mixture_probs(weights, stage.temperature), self.cfg.batch_size,
                                 seed=self.cfg.seed, rank=self.rank, start_batch=self.step * self.cfg.accumulate)
        workers = self.cfg.num_workers
        # Its own generator: a loader's start draws its workers' base seed, and from torch's global generator
        # that draw would leave a resumed run's random state (dropout) off an uninterrupted one's.
        seeds = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        return DataLoader(MixtureDataset(sources), batch_sampler=sampler, collate_fn=collate, generator=seeds,
                          num_workers=workers, persistent_workers=False, prefetch_factor=4 if workers else None)

    def _start_stage(self, stage: Stage) -> DataLoader:
        """Freeze the stage's parts and draw from its mixture, from the current step on."""
        self._set_frozen(self.frozen_names(stage.freeze, f"{stage.field}.freeze"))
        if self.staged:
            log.info("stage %s: steps %d to %d, tasks %s, lr %g, frozen %s", stage.name, stage.start + 1, stage.end,
                     ", ".join(stage.tasks or [s.builder.spec.name for s in self.sources]), stage.lr,
                     ", ".join(stage.freeze) or "nothing")
        return self._loader(stage)

    # ------------------------------------------------------------------ loop
    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        for name in ("prompt", "prompt_mask", "images", "image_mask", "patch_mask", "target_in", "target", "weights"):
            value = getattr(batch, name)
            if value is not None:
                setattr(batch, name, value.to(self.device, non_blocking=True))
        return batch

    def _micro_step(self, batch: Batch, scale: float) -> tuple[float, dict[str, float]]:
        """Forward and backward over ``batch``, one pass per group of like rows (``split_rows``).
        The loss is normalised over the whole batch (``train.loss_norm``), so grouping changes the
        padding, not the gradient. Returns the loss and each task's share of it (for the log)."""
        model = self.ddp or self.model
        groups = split_rows(batch) if self.cfg.group_rows else [list(range(len(batch.tasks)))]
        n_rows = len(batch.tasks)
        row_scale = row_scales(batch.weights.sum(1), batch.tasks, self.cfg.loss_norm)
        total, shares, means = 0.0, defaultdict(float), defaultdict(list)
        sync = getattr(model, "no_sync", None)
        for gi, rows in enumerate(groups):
            part = batch if len(groups) == 1 else select_rows(batch, rows)
            index = torch.tensor(rows)
            # DDP: gradients are all-reduced once, after the last group
            ctx = sync() if sync is not None and gi < len(groups) - 1 else contextlib.nullcontext()
            with ctx:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    out = model(part.prompt, part.prompt_mask, part.target_in, part.images, part.image_mask,
                                part.patch_mask, pooled=bool(self.cfg.bow_weight))
                logits, pooled = out if self.cfg.bow_weight else (out, None)
                sums, weight = row_losses(logits, part.target, part.weights)
                per_row = sums * row_scale[index].to(sums.device)
                loss = per_row.sum()
                if pooled is not None:
                    loss = loss + self.cfg.bow_weight * bow_loss(pooled, part.target, part.weights).sum() / n_rows
                (loss * scale).backward()
            total += loss.item()
            for task, share, mean in zip(part.tasks, per_row.detach().tolist(),
                                         (sums / weight.clamp(min=1.0)).detach().tolist()):
                shares[task] += share
                means[task].append(mean)
        return total, {**{f"loss/{k}": sum(v) / len(v) for k, v in means.items()},
                       **{f"share/{k}": v / max(total, 1e-12) for k, v in shares.items()}}

    def fit(self, steps: int | None = None) -> dict:
        """Train to ``steps`` (default: the config's), saving and evaluating on the way."""
        total = steps or self.cfg.steps
        if self.staged:  # the stages fix the schedule
            self.schedule_steps = self.stages[-1].end
        if self.schedule_steps is None:
            self.schedule_steps = total
        elif total > self.schedule_steps and self.step < total:
            # Re-shaping the cosine mid-run would be a warm restart: the schedule stays the one the run
            # started with, and steps past its end train at its final learning rate.
            log.warning("this run's schedule is %d steps; training to %d keeps it (lr stays at its floor after step %d)",
                        self.schedule_steps, total, self.schedule_steps)
        if self.step >= total:
            return self.evaluate() if self.evaluate_fn else {}
        plan = self.stages if self.staged else [replace(self.stages[0], steps=self.schedule_steps)]
        stage = loader = None
        self.model.train()
        bar = tqdm(total=total, initial=self.step, disable=self.rank != 0 or None, desc="train", dynamic_ncols=True)
        window_loss, window_tasks, window_examples, t0 = [], defaultdict(list), 0, time.perf_counter()
        while self.step < total:
            if stage is not stage_at(plan, self.step):  # a stage boundary, or the first step: rebuild the sampler
                stage = stage_at(plan, self.step)
                loader = iter(self._start_stage(stage))
                if self.staged:
                    bar.set_description(f"train {stage.name}")
            lr = lr_at(self.step - stage.start, base=stage.lr, warmup=stage.warmup, total=stage.steps,
                       min_ratio=self.cfg.min_lr_ratio)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            for _ in range(self.cfg.accumulate):
                batch = self._to_device(next(loader))
                loss, per_task = self._micro_step(batch, 1.0 / self.cfg.accumulate)
                window_loss.append(loss)
                for k, v in per_task.items():
                    window_tasks[k].append(v)
                window_examples += len(batch.tasks) * self.world
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                       self.cfg.grad_clip or float("inf"))
            self.optimizer.step()
            self.step += 1
            bar.update(1)
            stage_done = self.staged and self.step == stage.end  # a log row and a checkpoint at every stage's end
            if self.step % self.cfg.log_every == 0 or self.step == total or stage_done:
                elapsed = time.perf_counter() - t0
                row = {"step": self.step, **({"stage": stage.name} if self.staged else {}),
                       "loss": sum(window_loss) / len(window_loss), "lr": lr,
                       "grad_norm": float(grad_norm), "examples_per_s": window_examples / elapsed}
                # loss/TASK: the task's mean per-token loss; share/TASK: its share of the optimised loss
                row.update({k: sum(v) / len(v) for k, v in sorted(window_tasks.items())})
                self._log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", ex_s=f"{row['examples_per_s']:.0f}")
                window_loss, window_tasks, window_examples, t0 = [], defaultdict(list), 0, time.perf_counter()
            if self.step % self.cfg.save_every == 0 or self.step == total or stage_done:
                self.save()
            if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and self.step != total:
                self.evaluate()
        bar.close()
        return self.evaluate() if self.evaluate_fn else {}

    # ------------------------------------------------------------------ io
    def save(self) -> None:
        if self.rank == 0:
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state(),
                     "schedule_steps": self.schedule_steps}
            if self.staged:  # the stage of the last step done, and how far into it (resume needs only the step)
                done = stage_at(self.stages, max(self.step - 1, 0))
                state.update(stage=done.name, stage_step=self.step - done.start,
                             stages=[{"name": s.name, "steps": s.steps} for s in self.stages])
            # always float32: resume must be exact (release copies in bf16: `unitok export --dtype bfloat16`)
            save_checkpoint(self.ckpt_dir, self.model, self.codec, self.tasks, self.run, trainer_state=state)
        if self.world > 1:
            dist.barrier()

    def evaluate(self) -> dict:
        results = {}
        if self.rank == 0 and self.evaluate_fn is not None:
            results = self.evaluate_fn(self.model, self.step)
            flat = {f"eval/{task}/{k}": v for task, m in results.items() for k, v in m.items()}
            self._log({"step": self.step, **flat}, name="eval.csv")
            self.model.train()
        if self.world > 1:
            dist.barrier()
        return results

    def _log(self, row: dict, name: str = "log.csv") -> None:
        if self.rank != 0:
            return
        written = self.logs.write(row, name)
        log.info("%s", " ".join(f"{k}={v}" for k, v in written.items()))

    def _truncate_log(self, step: int) -> None:
        self.logs.truncate(step)

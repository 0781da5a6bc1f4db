"""The Trainer: one model, a mixture of tasks, AdamW with warmup + cosine, bf16 autocast.

It owns the loop; callers own the pieces. Evaluation is injected as a callable so the train layer
never imports eval or inference (the CLI wires ``unitok.inference.evaluate``).

Exact resume: the checkpoint holds weights, optimizer state, RNG and the step; data order is a
pure function of (seed, batch index, rank) (``MixtureSampler``), and the CSV log is cut back to
the checkpoint's step, so a run killed at any point continues as if it had never stopped.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import init_weights, load_checkpoint, recover_dir, save_checkpoint
from ..config import RunConfig
from ..model.config import ModelConfig
from ..model.transformer import UniTokModel
from ..modalities.codec import Codec
from ..runtime import use_bf16
from ..tasks.examples import Batch, collate, select_rows, split_rows
from ..tasks.spec import TaskSpec
from .data import MixtureDataset, MixtureSampler, TaskSource, mixture_probs

log = logging.getLogger(__name__)

EvaluateFn = Callable[[UniTokModel, int], dict]


def model_config_for(run: RunConfig, codec: Codec) -> ModelConfig:
    """The run's model sizes plus what the vocabulary decides: its size, expert routing, coordinate bins."""
    cfg = run.model_settings()
    cfg.vocab_size = codec.vocab.size
    cfg.expert_ranges = codec.vocab.expert_ranges(cfg.experts)
    cfg.coord_range = codec.vocab.range("coords")
    return cfg


def lr_at(step: int, *, base: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to ``base``, then cosine decay to ``base * min_ratio`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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
        self.codec, self.tasks, self.sources = codec, tasks, sources
        self.evaluate_fn = evaluate
        self.device = torch.device(device)
        self.bf16 = use_bf16(self.cfg.bf16, self.device)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.ckpt_dir = self.out / "checkpoint"
        self.step = 0
        self.schedule_steps: int | None = None  # the lr schedule's length, fixed when the run starts

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
            parts = init_weights(self.model, self.cfg.init, expect_vocab=codec.vocab)
            log.info("train.init %s: %d weights loaded, fresh: %s, left out: %s", self.cfg.init, len(parts["loaded"]),
                     parts["fresh"] or "none", parts["ignored"] or "none")
        self.freeze(self.cfg.freeze)
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

    def freeze(self, parts: list[str]) -> None:
        """Keep the named parts fixed (``train.freeze``): a name of ``FREEZE_PARTS`` or a parameter-name
        prefix. A name that matches no parameter is an error, not a silent no-op."""
        names = [n for n, _ in self.model.named_parameters()]
        for part in parts:
            prefixes = self.FREEZE_PARTS.get(part, (part,))
            hit = [n for n in names if n.startswith(prefixes)]
            if not hit:
                raise ValueError(f"train.freeze: {part!r} matches no parameter; use one of "
                                 f"{sorted(self.FREEZE_PARTS)} or a parameter-name prefix")
            for n, p in self.model.named_parameters():
                if n in hit:
                    p.requires_grad_(False)

    def _optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 and "embed" not in name and "pos" not in name else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas, fused=False)

    def _resume(self) -> None:
        ckpt = load_checkpoint(self.ckpt_dir, expect_vocab=self.codec.vocab, with_trainer=True, device=self.device)
        self.model.load_state_dict(ckpt.model.state_dict())
        self.optimizer.load_state_dict(ckpt.trainer_state["optimizer"])
        torch.set_rng_state(ckpt.trainer_state["rng"])
        self.step = ckpt.trainer_state["step"]
        self.schedule_steps = ckpt.trainer_state.get("schedule_steps")
        if self.rank == 0:
            self._truncate_log(self.step)
        log.info("resumed from %s at step %d", self.ckpt_dir, self.step)

    def _loader(self) -> DataLoader:
        probs = mixture_probs([self.tasks[s.builder.spec.name].weight for s in self.sources], self.run.tasks.temperature)
        sampler = MixtureSampler([len(s) for s in self.sources], probs, self.cfg.batch_size,
                                 seed=self.cfg.seed, rank=self.rank, start_batch=self.step * self.cfg.accumulate)
        workers = self.cfg.num_workers
        return DataLoader(MixtureDataset(self.sources), batch_sampler=sampler, collate_fn=collate,
                          num_workers=workers, persistent_workers=False, prefetch_factor=4 if workers else None)

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
        if self.schedule_steps is None:
            self.schedule_steps = total
        elif total > self.schedule_steps and self.step < total:
            # Re-shaping the cosine mid-run would be a warm restart: the schedule stays the one the run
            # started with, and steps past its end train at its final learning rate.
            log.warning("this run's schedule is %d steps; training to %d keeps it (lr stays at its floor after step %d)",
                        self.schedule_steps, total, self.schedule_steps)
        if self.step >= total:
            return self.evaluate() if self.evaluate_fn else {}
        loader = iter(self._loader())
        self.model.train()
        bar = tqdm(total=total, initial=self.step, disable=self.rank != 0 or None, desc="train", dynamic_ncols=True)
        window_loss, window_tasks, window_examples, t0 = [], defaultdict(list), 0, time.perf_counter()
        while self.step < total:
            lr = lr_at(self.step, base=self.cfg.lr, warmup=self.cfg.warmup, total=self.schedule_steps,
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
            if self.step % self.cfg.log_every == 0 or self.step == total:
                elapsed = time.perf_counter() - t0
                row = {"step": self.step, "loss": sum(window_loss) / len(window_loss), "lr": lr,
                       "grad_norm": float(grad_norm), "examples_per_s": window_examples / elapsed}
                # loss/TASK: the task's mean per-token loss; share/TASK: its share of the optimised loss
                row.update({k: sum(v) / len(v) for k, v in sorted(window_tasks.items())})
                self._log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", ex_s=f"{row['examples_per_s']:.0f}")
                window_loss, window_tasks, window_examples, t0 = [], defaultdict(list), 0, time.perf_counter()
            if self.step % self.cfg.save_every == 0 or self.step == total:
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
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = list(csv.DictReader(path.open())) if path.exists() else []
        rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        fields = list(dict.fromkeys(k for r in rows for k in r))
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
        log.info("%s", " ".join(f"{k}={v}" for k, v in rows[-1].items()))

    def _truncate_log(self, step: int) -> None:
        for name in ("log.csv", "eval.csv"):
            path = self.out / name
            if not path.exists():
                continue
            rows = [r for r in csv.DictReader(path.open()) if int(r["step"]) <= step]
            fields = list(dict.fromkeys(k for r in rows for k in r)) or ["step"]
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)

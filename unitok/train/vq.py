"""Train the VQ-VAE tokenizers and measure how faithfully their codes round-trip.

    python -m unitok.train.vq --what image --out tokenizers/image_vq --steps 5000
    python -m unitok.train.vq --what dense --out tokenizers/dense_vq --steps 2400

Training data is world scenes by default (``unitok.data.world``, split ``train``); any iterable of record
dicts works too (``--records path/to/lmdb`` reads a ``RecordStore``), resized to the tokenizer's size.
Quality is measured on held-out scenes (split ``val``): PSNR/SSIM for images, mIoU / mask IoU / depth
AbsRel and delta<1.25 for dense maps, plus codebook perplexity and the fraction of codes used. The metric
formulas are ``unitok.metrics``, the evaluators' own; the optimiser and schedule are the ``Trainer``'s
(``unitok.train.optim``).

``unitok tokenizers train --what image|dense`` runs ``main``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.schema import DEPTH_SCALE, decode_png, decode_rgb, depth_metres
from ..data.store import RecordStore
from ..data.world import SHAPES, WorldConfig, make_scene
from ..metrics import class_ious, confusion_counts, mean_depth_errors, pixel_accuracy, psnr, ssim
from ..modalities.vq.config import MAP_KINDS, DepthBins, VQVAEConfig
from ..modalities.vq.tokenizer import DenseTokenizer, ImageTokenizer, load_tokenizer
from .optim import adamw, lr_at

log = logging.getLogger(__name__)

SEG_CLASS_NAMES = ("background", *SHAPES)  # class id k = SHAPES.index(shape) + 1, as record['segmentation']


# --------------------------------------------------------------------------------------------------
# records -> arrays


def _resized(array: np.ndarray, size: int, resample: int) -> np.ndarray:
    if array.shape[0] == size and array.shape[1] == size:
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), resample))


def record_image(record: dict, size: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8, resized (bilinear) to ``size`` when given."""
    image = decode_rgb(record["image"], what=f"{record.get('id', '?')}: image")
    return image if size is None else _resized(image, size, Image.BILINEAR)


def record_segmentation(record: dict, size: int | None = None) -> np.ndarray:
    """(H, W) uint8 class ids: 0 background, k = SHAPES.index(shape) + 1.

    Uses ``record['segmentation']`` when the record has it; otherwise paints the objects' visible-pixel
    masks (disjoint by construction in the world, so paint order does not matter)."""
    if record.get("segmentation") is not None:
        seg = decode_png(record["segmentation"], what=f"{record.get('id', '?')}: segmentation")
    else:
        seg = np.zeros((record["height"], record["width"]), np.uint8)
        for obj in record.get("objects", []):
            if obj.get("mask") is None or obj.get("category") not in SHAPES:
                continue
            mask = decode_png(obj["mask"], what=f"{record.get('id', '?')}: object mask") > 127
            seg[mask] = SHAPES.index(obj["category"]) + 1
    return seg if size is None else _resized(seg, size, Image.NEAREST)


def record_masks(record: dict, size: int | None = None) -> list[np.ndarray]:
    """The objects' visible-pixel masks, (H, W) bool each."""
    masks = []
    for obj in record.get("objects", []):
        if obj.get("mask") is not None:
            m = (decode_png(obj["mask"], what=f"{record.get('id', '?')}: object mask") > 127).astype(np.uint8)
            masks.append((m if size is None else _resized(m, size, Image.NEAREST)) > 0)
    return masks


def record_depth(record: dict, size: int | None = None) -> np.ndarray | None:
    """(H, W) float32 metres from ``record['depth']`` (uint16 PNG, ``DEPTH_SCALE`` units), 0 where a pixel
    has no reading; None when the record has no depth map (imported photos), so such records train only the
    segmentation and mask kinds."""
    if record.get("depth") is None:
        return None
    depth = depth_metres(decode_png(record["depth"], what=f"{record.get('id', '?')}: depth"))
    if size is not None and depth.shape != (size, size):
        depth = np.asarray(Image.fromarray(depth, mode="F").resize((size, size), Image.NEAREST))
    return depth.astype(np.float32)


def world_records(count: int, *, split: str = "train", world_seed: int = 0, size: int = 64, start: int = 0) -> Iterator[dict]:
    cfg = WorldConfig(seed=world_seed, size=size)
    for i in range(start, start + count):
        yield make_scene(cfg, i, split)


def _take(records: Iterable[dict] | None, count: int, *, split: str, world_seed: int, size: int) -> list[dict]:
    source = world_records(count, split=split, world_seed=world_seed, size=size) if records is None else records
    out = []
    for rec in source:
        out.append(rec)
        if len(out) >= count:
            break
    if not out:
        raise ValueError("no records to train or measure on")
    return out


def load_records(path: str | Path) -> Iterable[dict]:
    """Records of an LMDB store written by ``unitok.data.store``."""
    return RecordStore(path)


def encodable_depth(depth_m: torch.Tensor) -> torch.Tensor:
    """What the tokenizer encodes for depth: a pixel with no reading (0) becomes 1 mm, the nearest bin.
    Measurement leaves such pixels out (``depth_quality``)."""
    return depth_m.clamp_min(1.0 / DEPTH_SCALE)


# --------------------------------------------------------------------------------------------------
# metrics


def code_usage(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Perplexity (exp of the entropy of the code histogram) and the fraction of the codebook used."""
    counts = torch.bincount(codes.flatten().long(), minlength=codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"perplexity": float(entropy.exp()), "usage": float((counts > 0).sum() / codebook_size)}


def segmentation_quality(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """mIoU of class-id maps (N, H, W) over the whole set, as the ``miou`` evaluator computes it
    (``unitok.metrics``), also over the foreground classes alone (class 0 is background), and pixel accuracy."""
    counts = confusion_counts(target.numpy(), pred.numpy())
    ious = class_ious(counts)
    fg = [v for k, v in ious.items() if k > 0]
    return {"seg_miou": float(np.mean(list(ious.values()))), "seg_miou_fg": float(np.mean(fg)) if fg else float("nan"),
            "seg_pixel_acc": pixel_accuracy(counts)}


def depth_quality(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """AbsRel, delta<1.25 and RMSE of depth maps (N, H, W) in metres, as the ``depth`` evaluator computes them
    (``unitok.metrics``): per image over the pixels with a reading (> 0), averaged over images."""
    errors = mean_depth_errors(pred.numpy(), target.numpy())
    return {"depth_absrel": errors["abs_rel"], "depth_delta1": errors["delta1"], "depth_rmse": errors["rmse"]}


# --------------------------------------------------------------------------------------------------
# quality measurement


def _batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def image_quality(tok: ImageTokenizer, images: torch.Tensor, *, batch_size: int = 100) -> dict[str, float]:
    """Round-trip ``images`` (N, H, W, 3) uint8 through ``tok``."""
    codes, recon = [], []
    for sl in _batches(len(images), batch_size):
        c = tok.encode(images[sl])
        codes.append(c)
        recon.append(tok.decode(c))
    codes_t, recon_t = torch.cat(codes), torch.cat(recon).cpu()
    # What a tokenizer that keeps only each image's mean colour would score: the floor any codes must beat.
    means = images.double().mean((1, 2), keepdim=True).round().expand_as(images).to(torch.uint8)
    return {
        "psnr": float(psnr(recon_t, images).mean()),
        "ssim": float(ssim(recon_t, images).mean()),
        **code_usage(codes_t, tok.codebook_size),
        "psnr_mean_colour_baseline": float(psnr(means, images).mean()),
        "ssim_mean_colour_baseline": float(ssim(means, images).mean()),
        "num_images": len(images),
    }


def dense_quality(
    tok: DenseTokenizer, seg: torch.Tensor, masks: torch.Tensor, depth: torch.Tensor, *, batch_size: int = 100
) -> dict[str, float]:
    """Round-trip segmentation (N, H, W) int, masks (M, H, W) bool and depth (N, H, W) metres (0: no reading)."""
    out: dict[str, float] = {}
    all_codes = []

    def round_trip(maps: torch.Tensor, kind: str) -> torch.Tensor:
        dec = []
        for sl in _batches(len(maps), batch_size):
            c = tok.encode(maps[sl], kind)
            all_codes.append(c)
            dec.append(tok.decode(c, kind).cpu())
        return torch.cat(dec)

    out.update(segmentation_quality(round_trip(seg, "segmentation"), seg))
    if len(masks):
        m_hat = round_trip(masks, "mask")
        inter = (m_hat & masks).flatten(1).sum(1).double()
        union = (m_hat | masks).flatten(1).sum(1).double().clamp_min(1)
        out["mask_iou"] = float((inter / union).mean())
    if len(depth):
        out.update(depth_quality(round_trip(encodable_depth(depth), "depth"), depth))
        # The part of the depth error that binning alone causes (no codes involved).
        binned = tok.depth_bins.to_metres(tok.depth_bins.to_bins(encodable_depth(depth)))
        out["depth_absrel_binning_only"] = depth_quality(binned, depth)["depth_absrel"]
    out.update(code_usage(torch.cat(all_codes), tok.codebook_size))
    out["num_maps"] = len(seg)
    return out


def dense_arrays(records: Sequence[dict], size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Segmentation (N, H, W) uint8 of every record, instance masks (M, H, W) bool, and depth (N', H, W)
    metres (0: no reading) of the records that have a depth map (N' may be 0)."""
    seg = torch.from_numpy(np.stack([record_segmentation(r, size) for r in records]))
    masks = [m for r in records for m in record_masks(r, size)]
    mask_t = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, size, size, dtype=torch.bool)
    depths = [d for d in (record_depth(r, size) for r in records) if d is not None]
    depth = torch.from_numpy(np.stack(depths)) if depths else torch.zeros(0, size, size)
    return seg, mask_t, depth


def measure_quality(
    tokenizer: ImageTokenizer | DenseTokenizer,
    records: Iterable[dict] | None = None,
    *,
    n_scenes: int = 200,
    world_seed: int = 0,
    split: str = "val",
    batch_size: int = 100,
) -> dict[str, float]:
    """Round-trip quality of ``tokenizer`` on ``n_scenes`` records (default: held-out world scenes)."""
    size = tokenizer.image_size[0]
    recs = _take(records, n_scenes, split=split, world_seed=world_seed, size=size)
    if isinstance(tokenizer, ImageTokenizer):
        images = torch.from_numpy(np.stack([record_image(r, size) for r in recs]))
        return image_quality(tokenizer, images, batch_size=batch_size)
    return dense_quality(tokenizer, *dense_arrays(recs, size), batch_size=batch_size)


# --------------------------------------------------------------------------------------------------
# training


def _round_to_storage(model: torch.nn.Module) -> None:
    """Make the in-memory weights exactly what ``save`` stores (float16), so the saved asset encodes
    exactly as the trained model did."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())


class _Loop:
    """The shared optimisation loop; ``loss_fn(step, gen) -> (loss, codes)`` draws its own batch."""

    def __init__(self, model: torch.nn.Module, *, steps: int, lr: float, seed: int, threads: int | None,
                 time_budget_s: float | None, log_every: int, what: str):
        self.model, self.steps, self.lr = model, steps, lr
        self.time_budget_s, self.log_every, self.what = time_budget_s, log_every, what
        self.gen = torch.Generator().manual_seed(seed)
        self.threads = threads
        # Every weight decays, norms and biases too: the recipe the shipped assets were trained with.
        self.opt = adamw(model, lr=lr, betas=(0.9, 0.99), weight_decay=1e-4, decays=lambda name, param: True)

    def run(self, loss_fn: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]], codebook_size: int) -> dict:
        # One thread by default: on a machine whose cores other jobs also use, two OpenMP threads spend most
        # of their time waiting on each other (measured 0.45 s/step with 1 thread vs 2.7 s with 2).
        old_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads or 1)
        self.model.train()
        t0, cpu0 = time.perf_counter(), time.process_time()
        window: list[torch.Tensor] = []
        step, loss_v = 0, float("nan")
        try:
            for step in range(self.steps):
                lr = lr_at(step, base=self.lr, warmup=min(100, self.steps // 10 + 1), total=self.steps, min_ratio=0.1)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                loss, codes = loss_fn(step, self.gen)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.opt.step()
                loss_v = float(loss.detach())
                window.append(codes.detach().flatten())
                if (step + 1) % self.log_every == 0 or step + 1 == self.steps:
                    use = code_usage(torch.cat(window), codebook_size)
                    log.info("%s step %d/%d loss %.4f perplexity %.1f usage %.3f (%.0fs)", self.what, step + 1,
                             self.steps, loss_v, use["perplexity"], use["usage"], time.perf_counter() - t0)
                    window = []
                if self.time_budget_s is not None and time.perf_counter() - t0 > self.time_budget_s:
                    log.warning("%s: time budget %.0fs reached at step %d", self.what, self.time_budget_s, step + 1)
                    break
        finally:
            torch.set_num_threads(old_threads)
        self.model.eval()
        _round_to_storage(self.model)
        return {"steps_run": step + 1, "train_seconds": round(time.perf_counter() - t0, 1),
                "train_cpu_seconds": round(time.process_time() - cpu0, 1), "final_loss": loss_v}


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips of a batch (..., W): the world has no preferred left/right."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


def fit_image_tokenizer(
    records: Iterable[dict] | None = None,
    *,
    n_images: int = 4000,
    steps: int = 2400,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    world_seed: int = 0,
    size: int = 64,
    config: VQVAEConfig | None = None,
    threads: int | None = None,
    time_budget_s: float | None = None,
    log_every: int = 100,
) -> tuple[ImageTokenizer, dict]:
    """Train an image tokenizer; returns it (weights already float16-exact) and training stats."""
    torch.manual_seed(seed)
    cfg = config or VQVAEConfig(image_size=(size, size))
    tok = ImageTokenizer(cfg)
    recs = _take(records, n_images, split="train", world_seed=world_seed, size=size)
    data = torch.from_numpy(np.stack([record_image(r, cfg.image_size[0]) for r in recs]))  # (N, H, W, 3)
    model = tok.model

    def loss_fn(step: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        x = _flip(data[idx].permute(0, 3, 1, 2).float() / 127.5 - 1, gen)  # (B, 3, H, W) in [-1, 1]
        recon, codes, commit = model(x)
        # L1 keeps edges sharp, L2 punishes the rare large colour error; both on [-1, 1] pixels.
        return F.l1_loss(recon, x) + F.mse_loss(recon, x) + commit, codes

    stats = _Loop(model, steps=steps, lr=lr, seed=seed, threads=threads, time_budget_s=time_budget_s,
                  log_every=log_every, what="image").run(loss_fn, cfg.codebook_size)
    stats.update(n_images=len(data), batch_size=batch_size, lr=lr, seed=seed, world_seed=world_seed)
    return tok, stats


def fit_dense_tokenizer(
    records: Iterable[dict] | None = None,
    *,
    n_images: int = 4000,
    steps: int = 2400,
    batch_size: int = 24,
    lr: float = 2e-3,
    seed: int = 0,
    world_seed: int = 0,
    size: int = 64,
    config: VQVAEConfig | None = None,
    depth: DepthBins | None = None,
    threads: int | None = None,
    time_budget_s: float | None = None,
    log_every: int = 100,
) -> tuple[DenseTokenizer, dict]:
    """Train the dense tokenizer on segmentation, instance masks and depth of the same scenes.

    Each step takes one batch of each map kind (a third of ``batch_size`` each), so every step
    updates the shared codebook with all three."""
    torch.manual_seed(seed)
    cfg = config or VQVAEConfig(image_size=(size, size))
    tok = DenseTokenizer(cfg, num_classes=len(SEG_CLASS_NAMES), class_names=SEG_CLASS_NAMES, depth=depth)
    recs = _take(records, n_images, split="train", world_seed=world_seed, size=size)
    seg, masks, depth_m = dense_arrays(recs, cfg.image_size[0])
    labels = {
        "segmentation": tok.segmentation_labels(seg),
        "mask": masks.long(),
        "depth": tok.depth_bins.to_bins(encodable_depth(depth_m)),
    }
    for kind in MAP_KINDS:
        if not len(labels[kind]):
            log.warning("dense: no %s maps in the training records; that kind stays untrained", kind)
            del labels[kind]
    model = tok.model
    per_kind = max(1, batch_size // len(labels))

    def loss_fn(step: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        total, codes = 0.0, []
        for kind, lab in labels.items():
            y = _flip(lab[torch.randint(len(lab), (per_kind,), generator=gen)], gen)
            logits, c, commit = model(y, kind)
            total = total + F.cross_entropy(logits, y) + commit
            codes.append(c.flatten())
        return total, torch.cat(codes)

    stats = _Loop(model, steps=steps, lr=lr, seed=seed, threads=threads, time_budget_s=time_budget_s,
                  log_every=log_every, what="dense").run(loss_fn, cfg.codebook_size)
    stats.update(n_images=len(recs), n_masks=len(masks), n_depth=len(depth_m), batch_size=batch_size, lr=lr, seed=seed,
                 world_seed=world_seed)
    return tok, stats


def _measure_and_save(tok: ImageTokenizer | DenseTokenizer, stats: dict, out: str | Path | None, n_val: int,
                      val_records: Iterable[dict] | None, world_seed: int, command: str | None) -> dict:
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = measure_quality(tok, val_records, n_scenes=n_val, world_seed=world_seed)
    finally:
        torch.set_num_threads(old_threads)
    metrics["measure_seconds"] = round(time.perf_counter() - t0, 1)
    result = {**stats, **metrics, "spec": tok.spec()}
    if out is not None:
        notes = {"command": command, "training": stats, "val_quality": metrics}
        result["saved"] = str(tok.save(out, notes=notes))
        # The figures are those of the saved asset itself: check it encodes exactly as the trained model.
        if not torch.equal(_probe_codes(load_tokenizer(out)), _probe_codes(tok)):
            raise RuntimeError(f"{out}: the saved asset encodes differently from the trained model")
    return result


def _probe_codes(tok: ImageTokenizer | DenseTokenizer) -> torch.Tensor:
    size = tok.image_size[0]
    recs = list(world_records(4, split="val", size=size))
    if isinstance(tok, ImageTokenizer):
        return tok.encode(torch.from_numpy(np.stack([record_image(r, size) for r in recs])))
    seg, masks, depth = dense_arrays(recs, size)
    return torch.cat([tok.encode_segmentation(seg), tok.encode_mask(masks), tok.encode_depth(encodable_depth(depth))])


def train_image_tokenizer(out: str | Path | None, *, n_val: int = 200, command: str | None = None,
                          records: Iterable[dict] | None = None, val_records: Iterable[dict] | None = None,
                          **fit_kwargs: Any) -> dict:
    """Train (``fit_image_tokenizer`` kwargs), measure on ``n_val`` held-out records (``val_records``,
    default: world val scenes), save to ``out`` when given (``<out>.safetensors`` + ``<out>.json``, the
    figures and ``command`` recorded in the json's notes); return the metrics dict."""
    tok, stats = fit_image_tokenizer(records, **fit_kwargs)
    return _measure_and_save(tok, stats, out, n_val, val_records, fit_kwargs.get("world_seed", 0), command)


def train_dense_tokenizer(out: str | Path | None, *, n_val: int = 200, command: str | None = None,
                          records: Iterable[dict] | None = None, val_records: Iterable[dict] | None = None,
                          **fit_kwargs: Any) -> dict:
    """As ``train_image_tokenizer`` for the dense (segmentation / mask / depth) tokenizer."""
    tok, stats = fit_dense_tokenizer(records, **fit_kwargs)
    return _measure_and_save(tok, stats, out, n_val, val_records, fit_kwargs.get("world_seed", 0), command)


# --------------------------------------------------------------------------------------------------
# command line


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--what", choices=("image", "dense"), required=True, help="which tokenizer to train")
    parser.add_argument("--out", required=True, help="asset prefix: writes OUT.safetensors and OUT.json")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--n-images", type=int, default=4000, help="training scenes")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 image, 24 dense (8 per map kind)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0, help="init and batch-sampling seed")
    parser.add_argument("--world-seed", type=int, default=0, help="seed of the world the scenes come from")
    parser.add_argument("--size", type=int, default=64, help="image / map side in pixels")
    parser.add_argument("--grid", type=int, default=8, help="code grid side (grid x grid codes)")
    parser.add_argument("--patch", type=int, default=4, help="stem patch size (grid 16 at 64px: --patch 2)")
    parser.add_argument("--codebook-size", type=int, default=512)
    parser.add_argument("--records", default=None, help="train on this LMDB record store instead of the world")
    parser.add_argument("--val-records", default=None, help="measure on this LMDB store instead of world val scenes")
    parser.add_argument("--n-val", type=int, default=200, help="held-out scenes to measure on")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-budget", type=float, default=None, help="stop training after this many seconds")
    return parser


def run_from_args(args: argparse.Namespace, command: str | None = None) -> dict:
    config = VQVAEConfig.for_grid(args.size, args.grid, patch=args.patch, codebook_size=args.codebook_size)
    records = load_records(args.records) if args.records else None
    val_records = load_records(args.val_records) if args.val_records else None
    train = train_image_tokenizer if args.what == "image" else train_dense_tokenizer
    optional = {"batch_size": args.batch_size} if args.batch_size else {}
    return train(args.out, command=command, records=records, val_records=val_records, n_val=args.n_val, n_images=args.n_images,
                 steps=args.steps, lr=args.lr, seed=args.seed, world_seed=args.world_seed, size=args.size,
                 config=config, threads=args.threads, time_budget_s=args.time_budget, **optional)


def main(argv: Sequence[str] | None = None) -> int:
    import json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = add_train_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)
    result = run_from_args(args, command="python -m unitok.train.vq " + " ".join(argv))
    print(json.dumps({k: v for k, v in result.items() if k != "spec"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

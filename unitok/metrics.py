"""Metric arithmetic, defined once: what the evaluators (``unitok.eval``) and the VQ-VAE trainer's
round-trip measurement (``unitok.train.vq``) both compute.

It imports nothing of unitok, like ``errors.py``, so both layers may use it: train may not import eval
(``docs/architecture.md``), and ``unitok.eval`` loads every evaluator (pycocotools, pycocoevalcap) on import.
The evaluators own accumulation, input checks and key names; the functions here own the formulas.

Segmentation: IoU from a confusion over the whole set (not a mean of per-image IoUs), for every class
present in the references or the predictions. Depth (metres): errors over an image's valid pixels
(reference finite and > 0, so 0 = no reading is left out), averaged over images (NYUv2/KITTI, Eigen et
al. 2014). Images: PSNR and SSIM per image of uint8 (B, H, W, C) batches.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

if TYPE_CHECKING:  # torch only for the image metrics: the evaluators' registry loads without it (`unitok tasks check`)
    import torch


# --------------------------------------------------------------------------------------------------
# segmentation


def confusion_counts(reference: np.ndarray, prediction: np.ndarray, *,
                     ignore_index: int | None = None) -> dict[tuple[int, int], int]:
    """(reference class, predicted class) -> pixels, over the reference pixels that count (class id >= 0
    and not ``ignore_index``). Sparse: class ids need not be small or contiguous."""
    ref = np.asarray(reference).astype(np.int64).ravel()
    pred = np.asarray(prediction).astype(np.int64).ravel()
    keep = ref >= 0 if ignore_index is None else (ref >= 0) & (ref != ignore_index)
    if np.any(pred[keep] < 0):
        raise ValueError("predicted class ids must be non-negative")
    pairs, counts = np.unique(np.stack([ref[keep], pred[keep]], axis=1), axis=0, return_counts=True)
    return {(r, p): n for (r, p), n in zip(pairs.tolist(), counts.tolist())}


def class_ious(counts: Mapping[tuple[int, int], int], *, ignore_index: int | None = None) -> dict[int, float]:
    """IoU_c = TP_c / (TP_c + FP_c + FN_c) of every class in ``counts`` (``confusion_counts``, summed over
    a set), except ``ignore_index``: a prediction of it is no class, only a false negative of the reference's."""
    ids = sorted({c for pair in counts for c in pair} - {ignore_index})
    tp = {c: counts.get((c, c), 0) for c in ids}
    ref_count = dict.fromkeys(ids, 0)
    pred_count = dict.fromkeys(ids, 0)
    for (r, p), n in counts.items():
        ref_count[r] = ref_count.get(r, 0) + n
        if p in pred_count:
            pred_count[p] += n
    return {c: tp[c] / (ref_count[c] + pred_count[c] - tp[c]) for c in ids}


def pixel_accuracy(counts: Mapping[tuple[int, int], int]) -> float:
    """Correct pixels over all counted pixels (``counts`` must hold at least one)."""
    return sum(n for (r, p), n in counts.items() if r == p) / sum(counts.values())


# --------------------------------------------------------------------------------------------------
# depth

DEPTH_KEYS = ("abs_rel", "rmse", "delta1", "delta2", "delta3")


def depth_errors(prediction: np.ndarray, reference: np.ndarray, *, min_depth: float = 1e-3,
                 max_depth: float | None = None) -> dict[str, float] | None:
    """One image's depth errors (metres) over its valid pixels: reference finite, > 0 (0 is no reading)
    and <= ``max_depth`` if set. Predictions are clipped to [``min_depth``, ``max_depth``] (NaN to
    ``min_depth``) so ratios stay finite. None when no pixel is valid.

    abs_rel = mean |p - g| / g, rmse = sqrt(mean (p - g)^2), delta_k = fraction of max(p/g, g/p) < 1.25^k."""
    gt = np.asarray(reference, dtype=np.float64)
    pred = np.asarray(prediction, dtype=np.float64)
    valid = np.isfinite(gt) & (gt > 0)
    if max_depth is not None:
        valid &= gt <= max_depth
    if not valid.any():
        return None
    g = gt[valid]
    p = np.clip(np.nan_to_num(pred[valid], nan=min_depth), min_depth, max_depth)
    ratio = np.maximum(p / g, g / p)
    errors = {"abs_rel": float(np.mean(np.abs(p - g) / g)), "rmse": float(np.sqrt(np.mean((p - g) ** 2)))}
    errors.update({f"delta{k}": float(np.mean(ratio < 1.25**k)) for k in (1, 2, 3)})
    return errors


def mean_depth_errors(predictions: Iterable[np.ndarray], references: Iterable[np.ndarray],
                      **options: float | None) -> dict[str, float]:
    """``depth_errors`` of each (prediction, reference) pair, averaged over the images with a valid pixel."""
    per_image = [e for p, g in zip(predictions, references) if (e := depth_errors(p, g, **options)) is not None]
    if not per_image:
        raise ValueError("no reference pixel was valid (> 0) in any image")
    return {key: sum(e[key] for e in per_image) / len(per_image) for key in DEPTH_KEYS}


# --------------------------------------------------------------------------------------------------
# images


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of uint8 (B, H, W, C) images; identical images give 100 dB."""
    import torch

    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    return torch.where(mse > 0, 10 * torch.log10(255.0**2 / mse.clamp_min(1e-12)), torch.full_like(mse, 100.0))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    import torch

    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of uint8 (B, H, W, C) images (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
    K1 0.01, K2 0.03, valid region, averaged over channels)."""
    import torch.nn.functional as F

    x = pred.permute(0, 3, 1, 2).double() / 255.0
    y = target.permute(0, 3, 1, 2).double() / 255.0
    c = x.shape[1]
    win = _gaussian_window().to(x)[None, None].repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)

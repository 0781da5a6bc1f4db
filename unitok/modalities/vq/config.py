"""VQ-VAE configuration: the sizes of one network, the depth binning, and the dense map kinds.

What ``<prefix>.json`` of a tokenizer asset records under ``model`` and ``depth`` (``tokenizer.py``); the
networks that these sizes build are in ``networks.py``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from ...errors import UniTokError

if TYPE_CHECKING:  # torch only where depths are binned: a task spec reads MAP_KINDS without it (`unitok tasks list`)
    import torch

# The kinds of dense map one dense tokenizer codes, each a per-pixel label: segmentation class ids, instance
# mask on/off, depth bin. The order is part of the asset: it numbers the decoder's per-kind bias rows.
MAP_KINDS = ("segmentation", "mask", "depth")


class TokenizerSpecError(UniTokError, ValueError):
    """An asset or an expected spec does not match this tokenizer."""


@dataclass(frozen=True)
class VQVAEConfig:
    """Sizes of one VQ-VAE. The code grid is ``image_size / (patch * 2**(len(channels) - 1))``.

    The stem cuts the input into ``patch x patch`` pieces (a strided conv, as a ViT patch embedding) and the
    decoder ends with a pixel shuffle of the same factor: no convolution runs at full resolution, which is
    what makes these models trainable in minutes on two CPU cores.
    """

    image_size: tuple[int, int] = (64, 64)
    patch: int = 4
    # Width at each resolution; each stage after the first halves it. (64, 128) measured no better on the
    # world at several times the cost per step (tokenizers/README.md).
    channels: tuple[int, ...] = (32, 64)
    res_blocks: int = 1  # encoder residual blocks per resolution
    decoder_res_blocks: int = 2  # the decoder does the harder half of the work
    latent_dim: int = 32  # D: what the decoder receives per code
    embed_dim: int = 16  # dense maps: width of the per-pixel label embedding
    codebook_size: int = 512  # K
    # Codes are looked up in a low-dimensional space (ViT-VQGAN's factorised codes): more of the codebook
    # gets used than when matching in the full latent space.
    codebook_dim: int = 16
    cosine_codebook: bool = False
    ema_decay: float = 0.9
    commitment_weight: float = 0.25
    kmeans_init: bool = True  # initialise the codebook by k-means on the first training batch
    # Codes whose EMA usage count per batch falls below this are re-seeded from the batch. Keep it well under
    # the mean count (batch * h * w / K, 2 for batch 16 at 8x8 and K 512), or live codes churn.
    dead_code_threshold: float = 0.1
    # "vq": VectorQuantize (learned EMA codebook). "fsq": finite scalar quantisation (Mentzer et al. 2023),
    # an implicit grid codebook of prod(fsq_levels) codes with nothing to collapse; codebook_size must match.
    quantizer: str = "vq"
    fsq_levels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "fsq_levels", tuple(int(v) for v in self.fsq_levels))
        if self.quantizer not in ("vq", "fsq"):
            raise ValueError(f"quantizer must be 'vq' or 'fsq'; got {self.quantizer!r}")
        if self.quantizer == "fsq" and math.prod(self.fsq_levels) != self.codebook_size:
            raise ValueError(
                f"fsq_levels {self.fsq_levels} give {math.prod(self.fsq_levels)} codes, not codebook_size {self.codebook_size}"
            )
        if len(self.image_size) != 2:
            raise ValueError(f"image_size must be (H, W); got {self.image_size}")
        if not self.channels:
            raise ValueError("channels must list at least one stage")
        if self.patch < 1:
            raise ValueError(f"patch must be >= 1; got {self.patch}")
        factor = self.patch * 2 ** (len(self.channels) - 1)
        for side in self.image_size:
            if side % factor:
                raise ValueError(
                    f"image_size {self.image_size} is not divisible by patch * 2**(len(channels)-1) = {factor}"
                )
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2; got {self.codebook_size}")

    @property
    def grid(self) -> tuple[int, int]:
        factor = self.patch * 2 ** (len(self.channels) - 1)
        return (self.image_size[0] // factor, self.image_size[1] // factor)

    @classmethod
    def for_grid(cls, image_size: int | tuple[int, int], grid: int, **overrides: Any) -> "VQVAEConfig":
        """A config with a ``grid x grid`` code grid for a square image: one more 2x stage per halving."""
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        patch = int(overrides.pop("patch", cls.patch))
        if size[0] != size[1] or grid <= 0 or size[0] % (grid * patch):
            raise ValueError(f"grid {grid} with patch {patch} does not tile square image_size {size}")
        ratio = size[0] // (grid * patch)
        if ratio & (ratio - 1):
            raise ValueError(f"image_size {size} / (grid {grid} * patch {patch}) = {ratio} is not a power of two")
        base = overrides.pop("channels", None) or cls.channels
        stages = int(math.log2(ratio)) + 1
        widths = tuple(base[min(i, len(base) - 1)] for i in range(stages))
        return cls(image_size=size, patch=patch, channels=widths, **overrides)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VQVAEConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TokenizerSpecError(f"model spec has unknown keys {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class DepthBins:
    """Depth in metres <-> bin ids, log-spaced: equal *relative* error at every distance (what AbsRel
    measures). Depths outside ``[min_m, max_m]`` are clamped into the end bins."""

    min_m: float = 1.0  # the world's depth spans 1.6 m (near cards) to 11.5 m (far ground)
    max_m: float = 12.0
    bins: int = 64  # 3.9% wide bins: binning alone costs ~1% AbsRel

    def __post_init__(self) -> None:
        if not 0 < self.min_m < self.max_m:
            raise ValueError(f"depth range must satisfy 0 < min_m < max_m; got [{self.min_m}, {self.max_m}]")
        if self.bins < 2:
            raise ValueError(f"depth bins must be >= 2; got {self.bins}")

    def _log_edges(self) -> torch.Tensor:
        import torch

        return torch.linspace(math.log(self.min_m), math.log(self.max_m), self.bins + 1, dtype=torch.float64)

    def to_bins(self, depth_m: torch.Tensor) -> torch.Tensor:
        import torch

        inner = self._log_edges()[1:-1].to(depth_m.device)
        return torch.bucketize(depth_m.double().clamp_min(1e-6).log(), inner)

    def to_metres(self, bins: torch.Tensor) -> torch.Tensor:
        edges = self._log_edges()
        centres = ((edges[:-1] + edges[1:]) / 2).exp().float().to(bins.device)  # geometric bin centres
        return centres[bins]

    def to_dict(self) -> dict:
        return {"min_m": self.min_m, "max_m": self.max_m, "bins": self.bins, "spacing": "log"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DepthBins":
        if data.get("spacing", "log") != "log":
            raise TokenizerSpecError(f"depth.spacing: only 'log' is supported; got {data.get('spacing')!r}")
        return cls(min_m=float(data["min_m"]), max_m=float(data["max_m"]), bins=int(data["bins"]))


"""VQ-VAE tokenizers: images and dense maps as short grids of discrete codes.

Unified-IO writes image outputs as VQ-GAN codes; UViM writes dense outputs (segmentation, depth) as
codes of a small VQ-VAE trained on the maps themselves. Here both are small convolutional VQ-VAEs whose
quantizer is vector-quantize-pytorch's ``VectorQuantize``. ``ImageTokenizer`` turns an RGB image into an
``h x w`` grid of codes and back; ``DenseTokenizer`` does the same for three kinds of map -- semantic
segmentation, binary instance masks and depth -- with one shared codebook, so the unified vocabulary
needs one dense-code block whatever the map kind.

Assets are two files, never pickle: ``<prefix>.safetensors`` (weights, stored float16) and
``<prefix>.json`` (the spec: architecture, codebook size, grid, image size, map kinds, ``format_version``,
and the sha256 of the weights). The vocabulary sizes its code blocks from ``spec()``.

Dimension letters in shape notes: B batch, H W image/map size, h w code grid, C channels,
D latent dim, K codebook size, N classes of one map kind.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
import torch.nn as nn
from einops import rearrange
from safetensors.torch import load_file, save_file

from ..errors import UniTokError

FORMAT_VERSION = 1
MAP_KINDS = ("segmentation", "mask", "depth")


class TokenizerSpecError(UniTokError, ValueError):
    """An asset or an expected spec does not match this tokenizer."""


# --------------------------------------------------------------------------------------------------
# configuration


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
        return torch.linspace(math.log(self.min_m), math.log(self.max_m), self.bins + 1, dtype=torch.float64)

    def to_bins(self, depth_m: torch.Tensor) -> torch.Tensor:
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


# --------------------------------------------------------------------------------------------------
# networks


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: a code must not depend on what else is in the batch.
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    """(B, C_in, H, W) -> (B, D, h, w)."""

    def __init__(self, in_channels: int, cfg: VQVAEConfig):
        super().__init__()
        width = cfg.channels[0]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, cfg.patch, stride=cfg.patch)]
        for i, c in enumerate(cfg.channels):
            if i:
                layers.append(nn.Conv2d(width, c, 4, stride=2, padding=1))
            layers.extend(ResBlock(c) for _ in range(cfg.res_blocks))
            width = c
        layers += [_norm(width), nn.SiLU(), nn.Conv2d(width, cfg.latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, D, h, w) -> (B, out_channels, H, W): conv stages up to H/patch, then a pixel shuffle."""

    def __init__(self, cfg: VQVAEConfig, out_channels: int, head_kernel: int = 3):
        super().__init__()
        widths = cfg.channels
        self.inp = nn.Conv2d(cfg.latent_dim, widths[-1], 3, padding=1)
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1, -1, -1):  # from the coarsest stage up
            layers.extend(ResBlock(widths[i]) for _ in range(cfg.decoder_res_blocks))
            if i:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i], widths[i - 1], 3, padding=1)]
        layers += [
            _norm(widths[0]), nn.SiLU(),
            nn.Conv2d(widths[0], out_channels * cfg.patch**2, head_kernel, padding=head_kernel // 2),
            nn.PixelShuffle(cfg.patch),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inp(z)
        if bias is not None:  # (B, C) conditioning, e.g. which kind of map to draw
            h = h + bias[:, :, None, None]
        return self.net(h)


class Quantizer(nn.Module):
    """Codes for a feature map: (B, D, h, w) -> quantised (B, D, h, w), codes (B, h, w), commitment loss."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        # imported here: vector-quantize-pytorch (through einx) costs seconds to import, and most commands
        # (tasks list, data, eval of text tasks) never build a quantizer
        from vector_quantize_pytorch import FSQ, VectorQuantize

        self.kind = cfg.quantizer
        if cfg.quantizer == "fsq":
            self.vq = FSQ(levels=list(cfg.fsq_levels), dim=cfg.latent_dim)
        else:
            self.vq = VectorQuantize(
                dim=cfg.latent_dim,
                codebook_size=cfg.codebook_size,
                codebook_dim=cfg.codebook_dim,
                use_cosine_sim=cfg.cosine_codebook,
                decay=cfg.ema_decay,
                commitment_weight=cfg.commitment_weight,
                kmeans_init=cfg.kmeans_init,
                threshold_ema_dead_code=cfg.dead_code_threshold,
            )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = z.shape[-2:]
        flat = rearrange(z, "b d h w -> b (h w) d")
        if self.kind == "fsq":
            zq, codes = self.vq(flat)
            commit = flat.new_zeros(())
        else:
            initted = self.vq._codebook.initted
            if self.training or bool(initted):
                zq, codes, commit = self.vq(flat)
            else:
                # VectorQuantize k-means-initialises its codebook on the first batch it sees, training or not;
                # at inference that would make codes depend on whatever was encoded first. An untrained
                # tokenizer (tests, smoke runs) instead encodes against its all-zero codebook: every code 0.
                initted.fill_(True)
                try:
                    zq, codes, commit = self.vq(flat)
                finally:
                    initted.fill_(False)
        return rearrange(zq, "b (h w) d -> b d h w", h=h, w=w), codes.view(-1, h, w), commit

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> quantised latents (B, D, h, w)."""
        h, w = codes.shape[-2:]
        flat = codes.flatten(1)
        zq = self.vq.indices_to_codes(flat) if self.kind == "fsq" else self.vq.get_output_from_indices(flat)
        return rearrange(zq, "b (h w) d -> b d h w", h=h, w=w)  # zq: (B, h*w, D)


class ImageVQVAE(nn.Module):
    """RGB in [-1, 1] -> codes -> RGB."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(3, cfg)
        self.quantizer = Quantizer(cfg)
        self.decoder = Decoder(cfg, 3)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.encoder(x))[1]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(codes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) -> reconstruction (B, 3, H, W), codes (B, h, w), commitment loss."""
        zq, codes, commit = self.quantizer(self.encoder(x))
        return self.decoder(zq), codes, commit


class DenseVQVAE(nn.Module):
    """Label maps of several kinds through one shared encoder, codebook and decoder.

    Every map kind is a per-pixel label (segmentation class, mask on/off, depth bin). A per-kind embedding
    table turns labels into features, and a per-kind bias tells the decoder which kind to draw, so codes are
    shared across kinds while each kind keeps its own input table and output head (logits over its labels).
    The decoder draws ``embed_dim`` full-resolution features (a 1x1 conv + pixel shuffle: cheap even for 64
    depth bins) that each kind's 1x1 head turns into logits.
    """

    def __init__(self, cfg: VQVAEConfig, num_labels: Mapping[str, int]):
        super().__init__()
        self.cfg = cfg
        self.kinds = tuple(num_labels)
        self.embed = nn.ModuleDict({k: nn.Embedding(n, cfg.embed_dim) for k, n in num_labels.items()})
        self.kind_bias = nn.Embedding(len(self.kinds), cfg.channels[-1])
        self.encoder = Encoder(cfg.embed_dim, cfg)
        self.quantizer = Quantizer(cfg)
        self.decoder = Decoder(cfg, cfg.embed_dim, head_kernel=1)
        self.heads = nn.ModuleDict(
            {k: nn.Sequential(nn.SiLU(), nn.Conv2d(cfg.embed_dim, n, 1)) for k, n in num_labels.items()}
        )

    def _bias(self, kind: str, batch: int, device: torch.device) -> torch.Tensor:
        idx = torch.full((batch,), self.kinds.index(kind), dtype=torch.long, device=device)
        return self.kind_bias(idx)

    def _embed(self, labels: torch.Tensor, kind: str) -> torch.Tensor:
        return rearrange(self.embed[kind](labels), "b h w c -> b c h w")

    def encode(self, labels: torch.Tensor, kind: str) -> torch.Tensor:
        return self.quantizer(self.encoder(self._embed(labels, kind)))[1]

    def decode_logits(self, codes: torch.Tensor, kind: str) -> torch.Tensor:
        zq = self.quantizer.lookup(codes)
        return self.heads[kind](self.decoder(zq, self._bias(kind, zq.shape[0], zq.device)))

    def forward(self, labels: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """labels (B, H, W) long -> logits (B, N, H, W), codes (B, h, w), commitment loss."""
        zq, codes, commit = self.quantizer(self.encoder(self._embed(labels, kind)))
        logits = self.heads[kind](self.decoder(zq, self._bias(kind, zq.shape[0], zq.device)))
        return logits, codes, commit


# --------------------------------------------------------------------------------------------------
# tokenizers: validation, encode/decode, spec, save/load


def _asset_paths(path: str | Path) -> tuple[Path, Path]:
    """``dir/`` -> dir/tokenizer.{json,safetensors}; ``x``, ``x.json``, ``x.safetensors`` -> x.{json,safetensors}."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer"
    elif p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".json"), p.with_name(p.name + ".safetensors")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _first_difference(expected: Any, got: Any, where: str) -> str | None:
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping):
            return f"'{where}': expected a mapping {expected!r}, got {got!r}"
        for key, value in expected.items():
            sub = f"{where}.{key}" if where else str(key)
            if key not in got:
                return f"'{sub}': expected {value!r}, got nothing (key missing)"
            diff = _first_difference(value, got[key], sub)
            if diff:
                return diff
        return None
    if isinstance(expected, float) or isinstance(got, float):
        same = isinstance(got, (int, float)) and math.isclose(float(expected), float(got), rel_tol=1e-9)
    else:
        same = expected == got
    return None if same else f"'{where}': expected {expected!r}, got {got!r}"


class _VQTokenizer:
    """What the image and dense tokenizers share: codes checks, spec, save/load, inference context."""

    kind: ClassVar[str]
    model: nn.Module
    config: VQVAEConfig

    def __init__(self, *, autocast: bool | None = None):
        # None: bf16 autocast on CUDA only. On CPUs without native bf16 (AVX2, as on the project's machines)
        # a bf16 conv or matmul is slower than fp32 by two orders of magnitude, so CPU stays fp32.
        self.autocast = autocast

    # -- properties the vocabulary and callers rely on
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.image_size

    @property
    def num_codes(self) -> int:
        """Codes per image/map: the sequence length a target of this tokenizer costs."""
        return self.grid[0] * self.grid[1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "_VQTokenizer":
        self.model.to(device)
        return self

    def spec(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "codebook_size": self.codebook_size,
            "grid": list(self.grid),
            "image_size": list(self.image_size),
            "model": self.config.to_dict(),
            **self._extra_spec(),
        }

    def _extra_spec(self) -> dict:
        return {}

    def check_compatible(self, expected_spec: Mapping[str, Any]) -> None:
        """Raise ``TokenizerSpecError`` naming the first key of ``expected_spec`` this tokenizer differs on.

        Only keys present in ``expected_spec`` are compared, so a vocabulary can pin just what it depends on
        (kind, codebook_size, grid ...)."""
        diff = _first_difference(_jsonable(dict(expected_spec)), _jsonable(self.spec()), "")
        if diff:
            raise TokenizerSpecError(f"{self.kind} tokenizer does not match the expected spec at {diff}")

    # -- checks
    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
            raise TypeError(f"codes must be an integer tensor; got dtype {codes.dtype}")
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid:
            raise ValueError(f"codes must have shape (B, {self.grid[0]}, {self.grid[1]}); got {tuple(codes.shape)}")
        if codes.numel():
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >= self.codebook_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"code {bad} out of range [0, {self.codebook_size})")
        return codes.long().to(self.device)

    def _check_map(self, maps: torch.Tensor, what: str) -> torch.Tensor:
        maps = torch.as_tensor(maps)
        if maps.ndim != 3:
            raise ValueError(f"{what} must be a batch (B, H, W); got shape {tuple(maps.shape)}")
        if tuple(maps.shape[1:]) != self.image_size:
            raise ValueError(
                f"{what} must be {self.image_size[0]}x{self.image_size[1]} (H x W); "
                f"got {maps.shape[1]}x{maps.shape[2]}"
            )
        return maps

    def _amp(self) -> torch.autocast:
        dev = self.device.type
        enabled = (dev == "cuda") if self.autocast is None else self.autocast
        return torch.autocast(dev, dtype=torch.bfloat16, enabled=enabled)

    # -- persistence
    def save(self, path: str | Path, *, notes: Mapping[str, Any] | None = None) -> Path:
        """Write ``<prefix>.safetensors`` (float16 weights) and ``<prefix>.json`` (spec); return the json path.

        ``path`` is a prefix (``tokenizers/image_vq``) or an existing directory (``dir/tokenizer.*``).
        ``notes`` (e.g. how the asset was trained, what it measured) is stored under ``"notes"``."""
        json_path, weights_path = _asset_paths(path)
        weights_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in self.model.state_dict().items()
        }
        save_file(state, str(weights_path), metadata={"format_version": str(FORMAT_VERSION), "kind": self.kind})
        doc = {
            **self.spec(),
            "weights": {"file": weights_path.name, "dtype": "float16", "sha256": _sha256(weights_path)},
        }
        if notes:
            doc["notes"] = _jsonable(dict(notes))
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(json_path)
        return json_path

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu", autocast: bool | None = None):
        """Load an asset written by ``save`` (safetensors + json only); the spec decides the class."""
        json_path, weights_path = _asset_paths(path)
        if not json_path.exists():
            raise FileNotFoundError(f"tokenizer spec {json_path} not found")
        doc = json.loads(json_path.read_text())
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise TokenizerSpecError(f"{json_path}: format_version {version!r} not supported (expected {FORMAT_VERSION})")
        kind = doc.get("kind")
        target = {c.kind: c for c in (ImageTokenizer, DenseTokenizer)}.get(kind)
        if target is None:
            raise TokenizerSpecError(f"{json_path}: unknown tokenizer kind {kind!r}")
        if cls is not _VQTokenizer and not issubclass(target, cls):
            raise TokenizerSpecError(f"{json_path}: 'kind': expected {cls.kind!r}, got {kind!r}")
        weights_path = json_path.with_name(doc.get("weights", {}).get("file", weights_path.name))
        if not weights_path.exists():
            raise FileNotFoundError(f"tokenizer weights {weights_path} not found (named by {json_path})")
        sha = doc.get("weights", {}).get("sha256")
        if sha and sha != _sha256(weights_path):
            raise TokenizerSpecError(f"{weights_path} does not match the sha256 recorded in {json_path}")
        tok = target._from_spec(doc, autocast=autocast)
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights_path)).items()}
        expected = tok.model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        resized = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                   if k in state and state[k].shape != v.shape]
        if missing or unexpected or resized:
            raise TokenizerSpecError(
                f"{weights_path} does not fit the architecture in {json_path}: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}, shapes (file vs spec) {resized[:3]}"
            )
        tok.model.load_state_dict(state)
        tok.model.eval()
        return tok.to(device)


class ImageTokenizer(_VQTokenizer):
    """RGB images <-> ``(h, w)`` grids of codes in ``[0, codebook_size)``."""

    kind = "image"

    def __init__(self, config: VQVAEConfig | None = None, *, autocast: bool | None = None):
        super().__init__(autocast=autocast)
        self.config = config or VQVAEConfig()
        self.model = ImageVQVAE(self.config).eval()

    @classmethod
    def _from_spec(cls, doc: Mapping[str, Any], *, autocast: bool | None) -> "ImageTokenizer":
        return cls(VQVAEConfig.from_dict(doc["model"]), autocast=autocast)

    def _extra_spec(self) -> dict:
        return {"channels": 3}

    def to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] -> float (B, 3, H, W) in [-1, 1], checked."""
        images = torch.as_tensor(images)
        H, W = self.image_size
        if images.ndim != 4:
            raise ValueError(
                "images must be a batch: uint8 (B, H, W, 3) or float (B, 3, H, W); "
                f"got shape {tuple(images.shape)}"
            )
        if images.dtype == torch.uint8:
            if images.shape[-1] != 3:
                raise ValueError(f"uint8 images must be (B, H, W, 3) RGB; got {images.shape[-1]} channels (last dim)")
            x = images.permute(0, 3, 1, 2).float() / 255.0
        elif images.dtype.is_floating_point:
            if images.shape[1] != 3:
                raise ValueError(f"float images must be (B, 3, H, W) RGB; got {images.shape[1]} channels (dim 1)")
            x = images.float()
            if x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
                raise ValueError(
                    f"float images must lie in [0, 1]; got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]"
                )
        else:
            raise TypeError(f"images must be uint8 or float; got dtype {images.dtype}")
        if tuple(x.shape[-2:]) != (H, W):
            raise ValueError(f"images must be {H}x{W} (H x W); got {x.shape[-2]}x{x.shape[-1]}")
        return (x.clamp(0, 1) * 2 - 1).to(self.device)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] -> LongTensor (B, h, w)."""
        x = self.to_model_input(images)
        with self._amp():
            return self.model.encode(x).long()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> uint8 (B, H, W, 3)."""
        codes = self._check_codes(codes)
        with self._amp():
            x = self.model.decode(codes).float()  # (B, 3, H, W) in [-1, 1]
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class DenseTokenizer(_VQTokenizer):
    """Segmentation maps, binary masks and depth maps <-> ``(h, w)`` grids of codes from one codebook.

    The code ids are shared by all map kinds; which decoder head reads them is the task's business
    (a segmentation task decodes with ``decode_segmentation``)."""

    kind = "dense"

    def __init__(
        self,
        config: VQVAEConfig | None = None,
        *,
        num_classes: int = 6,
        class_names: tuple[str, ...] | None = None,
        depth: DepthBins | None = None,
        autocast: bool | None = None,
    ):
        super().__init__(autocast=autocast)
        self.config = config or VQVAEConfig()
        self.num_classes = int(num_classes)
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {self.num_classes}")
        self.class_names = tuple(class_names) if class_names is not None else None
        self.depth_bins = depth or DepthBins()
        labels = {"segmentation": self.num_classes, "mask": 2, "depth": self.depth_bins.bins}
        self.model = DenseVQVAE(self.config, labels).eval()

    @classmethod
    def _from_spec(cls, doc: Mapping[str, Any], *, autocast: bool | None) -> "DenseTokenizer":
        names = doc.get("class_names")
        return cls(
            VQVAEConfig.from_dict(doc["model"]),
            num_classes=int(doc["num_classes"]),
            class_names=tuple(names) if names is not None else None,
            depth=DepthBins.from_dict(doc["depth"]),
            autocast=autocast,
        )

    def _extra_spec(self) -> dict:
        return {
            "map_kinds": list(MAP_KINDS),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "depth": self.depth_bins.to_dict(),
        }

    # -- maps -> per-pixel labels the model reads
    def segmentation_labels(self, maps: torch.Tensor) -> torch.Tensor:
        maps = self._check_map(maps, "segmentation maps")
        if maps.dtype.is_floating_point or maps.dtype == torch.bool:
            raise TypeError(f"segmentation maps must be integer class ids; got dtype {maps.dtype}")
        if maps.numel() and (int(maps.min()) < 0 or int(maps.max()) >= self.num_classes):
            raise ValueError(
                f"segmentation class ids must be in [0, {self.num_classes}); "
                f"got values in [{int(maps.min())}, {int(maps.max())}]"
            )
        return maps.long()

    def mask_labels(self, masks: torch.Tensor) -> torch.Tensor:
        masks = self._check_map(masks, "masks")
        if masks.dtype != torch.bool:
            if masks.dtype.is_floating_point or (masks.numel() and (int(masks.min()) < 0 or int(masks.max()) > 1)):
                raise TypeError(f"masks must be bool (or 0/1 integers); got dtype {masks.dtype}")
        return masks.long()

    def depth_labels(self, depth_m: torch.Tensor) -> torch.Tensor:
        depth_m = self._check_map(depth_m, "depth maps")
        if not depth_m.dtype.is_floating_point:
            raise TypeError(f"depth maps must be float metres; got dtype {depth_m.dtype}")
        if depth_m.numel() and not (torch.isfinite(depth_m).all() and (depth_m > 0).all()):
            raise ValueError("depth maps must be finite and positive (metres)")
        return self.depth_bins.to_bins(depth_m)

    def labels(self, maps: torch.Tensor, kind: str) -> torch.Tensor:
        if kind not in MAP_KINDS:
            raise ValueError(f"unknown map kind {kind!r}; expected one of {MAP_KINDS}")
        return getattr(self, f"{kind}_labels")(maps)

    # -- public API
    @torch.inference_mode()
    def encode(self, maps: torch.Tensor, kind: str) -> torch.Tensor:
        """maps (B, H, W) of ``kind`` -> LongTensor (B, h, w)."""
        labels = self.labels(maps, kind).to(self.device)
        with self._amp():
            return self.model.encode(labels, kind).long()

    @torch.inference_mode()
    def decode_labels(self, codes: torch.Tensor, kind: str) -> torch.Tensor:
        if kind not in MAP_KINDS:
            raise ValueError(f"unknown map kind {kind!r}; expected one of {MAP_KINDS}")
        codes = self._check_codes(codes)
        with self._amp():
            return self.model.decode_logits(codes, kind).float().argmax(1)  # (B, H, W)

    def encode_segmentation(self, maps: torch.Tensor) -> torch.Tensor:
        """Class-id maps (B, H, W) int, 0 = background -> codes (B, h, w)."""
        return self.encode(maps, "segmentation")

    def decode_segmentation(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> class ids (B, H, W) int64."""
        return self.decode_labels(codes, "segmentation")

    def encode_mask(self, masks: torch.Tensor) -> torch.Tensor:
        """Binary masks (B, H, W) bool -> codes (B, h, w)."""
        return self.encode(masks, "mask")

    def decode_mask(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> masks (B, H, W) bool."""
        return self.decode_labels(codes, "mask").bool()

    def encode_depth(self, depth_m: torch.Tensor) -> torch.Tensor:
        """Depth (B, H, W) float metres -> codes (B, h, w). Depths outside the spec's range are clamped."""
        return self.encode(depth_m, "depth")

    def decode_depth(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> depth (B, H, W) float32 metres (bin centres)."""
        return self.depth_bins.to_metres(self.decode_labels(codes, "depth"))


def load_tokenizer(path: str | Path, **kwargs: Any) -> ImageTokenizer | DenseTokenizer:
    """Load any VQ tokenizer asset; its spec's ``kind`` picks the class."""
    return _VQTokenizer.load(path, **kwargs)


def read_spec(path: str | Path) -> dict:
    """The spec of an asset without building the model (what the vocabulary needs to size its blocks)."""
    json_path, _ = _asset_paths(path)
    doc = json.loads(json_path.read_text())
    return {k: v for k, v in doc.items() if k not in ("weights", "notes")}

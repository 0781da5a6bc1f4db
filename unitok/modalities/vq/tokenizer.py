"""VQ-VAE tokenizers: images and dense maps as short grids of discrete codes.

Unified-IO writes image outputs as VQ-GAN codes; UViM writes dense outputs (segmentation, depth) as
codes of a small VQ-VAE trained on the maps themselves. Here both are small convolutional VQ-VAEs whose
quantizer is vector-quantize-pytorch's ``VectorQuantize`` (``networks.py``; sizes in ``config.py``).
``ImageTokenizer`` turns an RGB image into an ``h x w`` grid of codes and back; ``DenseTokenizer`` does
the same for three kinds of map -- semantic segmentation, binary instance masks and depth -- with one
shared codebook, so the unified vocabulary needs one dense-code block whatever the map kind.

Assets are two files, never pickle: ``<prefix>.safetensors`` (weights, stored float16) and
``<prefix>.json`` (the spec: architecture, codebook size, grid, image size, map kinds, ``format_version``,
and the sha256 of the weights). The vocabulary sizes its code blocks from ``spec()``.

Dimension letters in shape notes: B batch, H W image/map size, h w code grid.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .config import MAP_KINDS, DepthBins, TokenizerSpecError, VQVAEConfig
from .networks import DenseVQVAE, ImageVQVAE

FORMAT_VERSION = 1


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

    def decode(self, codes: torch.Tensor, kind: str) -> torch.Tensor:
        """codes (B, h, w) -> maps (B, H, W) of ``kind`` in its own units: class ids, bool masks or metres."""
        labels = self.decode_labels(codes, kind)
        if kind == "depth":
            return self.depth_bins.to_metres(labels)
        return labels.bool() if kind == "mask" else labels


def load_tokenizer(path: str | Path, **kwargs: Any) -> ImageTokenizer | DenseTokenizer:
    """Load any VQ tokenizer asset; its spec's ``kind`` picks the class."""
    return _VQTokenizer.load(path, **kwargs)


def read_spec(path: str | Path) -> dict:
    """The spec of an asset without building the model (what the vocabulary needs to size its blocks)."""
    json_path, _ = _asset_paths(path)
    doc = json.loads(json_path.read_text())
    return {k: v for k, v in doc.items() if k not in ("weights", "notes")}

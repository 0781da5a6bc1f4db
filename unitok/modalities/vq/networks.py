"""VQ-VAE networks: convolutional encoder and decoder around a vector quantizer.

Dimension letters in shape notes: B batch, H W image/map size, h w code grid, C channels,
D latent dim, N classes of one map kind.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
from einops import rearrange

from .config import VQVAEConfig


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


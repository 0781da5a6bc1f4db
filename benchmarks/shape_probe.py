"""Does the model learn object identity? Single-object world scenes, "what shape is it?", five shapes.

Each arm trains from scratch on the same images, in the same order, with the same optimiser, and is
scored on the same held-out scenes after every ``--eval-every`` examples:

* ``cnn``: a plain CNN (the ``deep`` stem's convolutions, average-pooled, a linear head): the yardstick.
* ``vit``: UniTok's ``conv`` stem, two standard ``nn.TransformerEncoderLayer``s, mean-pooled linear head.
* ``unitok-conv``, ``unitok-deep``: ``UniTokModel`` answering through its decoder (one step from BOS,
  cross-attention, the tied output head scored over the five label ids), with the ``conv`` or ``deep``
  patch stem and the default ``init: fan_in``.
* ``unitok-deep-gpt2``: the same with ``init: gpt2`` (every weight and embedding at std 0.02), the
  initialisation that kept the decoder path at chance.
* ``unitok-deep-bow``: ``unitok-deep`` trained with the bag-of-target-tokens loss on the pooled encoder
  output beside the decoder's (``train.bow_weight``).

    python benchmarks/shape_probe.py --examples 19200 --out benchmarks/results/shape_probe.json

Writes {arm: [[examples seen, val accuracy], ...]} and the seconds each arm took.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unitok.data.world_scene import SHAPES, single_object_images  # noqa: E402
from unitok.model.config import ModelConfig  # noqa: E402
from unitok.model.transformer import PatchStem, UniTokModel  # noqa: E402
from unitok.train.trainer import bow_loss, row_losses  # noqa: E402

LABELS = torch.tensor([10, 11, 12, 13, 14])  # five ids standing for the five shape words
BOS, PROMPT = 2, [20, 21, 22]


def single_object_scenes(n: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = single_object_images(n, seed, size)
    return torch.from_numpy(x), torch.from_numpy(y)


def model_config(stem: str, bow: bool, size: int, init: str = "fan_in") -> ModelConfig:
    return ModelConfig(vocab_size=64, d_model=128, n_heads=4, enc_layers=2, dec_layers=2, image_size=size,
                       patch_stem=stem, bow_head=bow, init=init)


class Classifier(nn.Module):
    """The baselines: features (B, D, h, w) or tokens, mean-pooled, a linear head."""

    def __init__(self, arm: str, size: int):
        super().__init__()
        cfg = model_config("deep" if arm == "cnn" else "conv", False, size)
        self.stem = PatchStem(cfg)
        self.pos = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.d_model)) if arm == "vit" else None
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, 4 * cfg.d_model, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False) if arm == "vit" else None
        self.head = nn.Linear(cfg.d_model, len(SHAPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x).flatten(2).transpose(1, 2)  # (B, P, D)
        if self.blocks is not None:
            h = self.blocks(h + self.pos)
        return self.head(h.mean(1))


class DecoderProbe(nn.Module):
    """UniTokModel answering the shape through its decoder, as every task does."""

    def __init__(self, stem: str, bow: bool, size: int, bow_weight: float = 0.5, init: str = "fan_in"):
        super().__init__()
        self.model = UniTokModel(model_config(stem, bow, size, init))
        self.bow, self.bow_weight = bow, bow_weight

    def run(self, x: torch.Tensor):
        b = x.shape[0]
        prompt = torch.tensor([PROMPT]).expand(b, -1)
        memory, mask = self.model.encode(prompt, torch.ones_like(prompt, dtype=torch.bool), x[:, None])
        logits = self.model.decode(torch.full((b, 1), BOS), memory, mask)
        return logits, (self.model.pooled_logits(memory, mask, x.shape[1] * self.model.cfg.num_patches) if self.bow else None)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, pooled = self.run(x)
        target, weights = LABELS[y][:, None], torch.ones(len(y), 1)
        sums, counts = row_losses(logits, target, weights)
        loss = (sums / counts).mean()
        return loss + self.bow_weight * bow_loss(pooled, target, weights).mean() if pooled is not None else loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0][:, 0, LABELS]


def build(arm: str, size: int, bow_weight: float) -> nn.Module:
    if arm in ("cnn", "vit"):
        return Classifier(arm, size)
    stem = arm.split("-")[1]
    return DecoderProbe(stem, arm.endswith("-bow"), size, bow_weight, "gpt2" if arm.endswith("-gpt2") else "fan_in")


def train_arm(arm: str, data, *, examples: int, eval_every: int, batch: int = 32, lr: float = 1e-3,
              seed: int = 0, size: int = 64, bow_weight: float = 0.5, net: nn.Module | None = None,
              eps: float = 1e-8) -> dict:
    """Train ``net`` (default: ``build(arm)`` from seed ``seed``) and score it every ``eval_every`` examples."""
    x_train, y_train, x_val, y_val = data
    if net is None:
        torch.manual_seed(seed)
        net = build(arm, size, bow_weight)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05, eps=eps)
    order = torch.Generator().manual_seed(seed)
    curve, seen, t0 = [], 0, time.perf_counter()
    while seen < examples:
        idx = torch.randint(len(x_train), (batch,), generator=order)
        loss = net.loss(x_train[idx], y_train[idx]) if hasattr(net, "loss") else F.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += batch
        if seen % eval_every < batch or seen >= examples:
            with torch.no_grad():
                net.eval()
                acc = float((net(x_val).argmax(1) == y_val).float().mean())
                net.train()
            curve.append([seen, round(acc, 4)])
            print(f"{arm:16s} {seen:6d} examples  val acc {acc:.3f}  {time.perf_counter() - t0:5.0f}s", flush=True)
    return {"curve": curve, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["cnn", "vit", "unitok-conv", "unitok-deep", "unitok-deep-gpt2"])
    ap.add_argument("--examples", type=int, default=19200)
    ap.add_argument("--eval-every", type=int, default=3200)
    ap.add_argument("--train-scenes", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bow-weight", type=float, default=0.5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = (*single_object_scenes(args.train_scenes, seed=1), *single_object_scenes(400, seed=2))
    results = {arm: train_arm(arm, data, examples=args.examples, eval_every=args.eval_every, lr=args.lr,
                            bow_weight=args.bow_weight) for arm in args.arms}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"examples": args.examples, "train_scenes": args.train_scenes, "arms": results},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()

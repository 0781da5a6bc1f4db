"""Where the decoder path lost object identity: the single-object shape probe (``shape_probe.py``) with
one part of the model changed at a time, starting from the old ``init: gpt2``.

Decoder arms (``UniTokModel`` answering through its decoder, micro size, ``deep`` stem, ``init: gpt2``):

* ``gpt2``: as it was (every weight and embedding at std 0.02, output projections / sqrt(2 x layers)).
* ``gpt2-meanattn``: cross-attention replaced by a plain mean over the memory (is attention the cause?).
* ``gpt2-eps``: AdamW eps 1e-16 (are the gradients too small for Adam?).
* ``linear-fan-in``: every ``nn.Linear`` at std 1/sqrt(fan-in), no depth scaling; embeddings stay 0.02.
* ``embed-fan-in``: token, prompt- and target-position embeddings at std 1/sqrt(d); linears stay 0.02.
* ``both-fan-in``: the two above together.
* ``both-fan-in-depth``: every weight matrix and embedding (image-slot embeddings too) at 1/sqrt(fan-in),
  output projections also / sqrt(2 x layers).

Pooled-head arms (the encoder, the mean of its image outputs, then a head): what between the pooled
features and the logits makes the plateau?

* ``pool-linear``: a linear head (PyTorch's default init).
* ``pool-head02``: the head at std 0.02 (bias starting at 0), as the tied embedding is.
* ``pool-vo``: value and output projections at 0.02 (0.02 / sqrt(8)) and a small learned start state
  added before the linear head, as the decoder's cross-attention has.
* ``pool-vo-norm-head02``: that, then RMSNorm and the 0.02 head, as the decoder has.

    python benchmarks/init_probe.py --examples 12800 --out benchmarks/results/init_probe.json

Each arm: one thread, seed 0, the same 20,000 training scenes in the same order, 400 held-out scenes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shape_probe import PROMPT, DecoderProbe, single_object_scenes, train_arm  # noqa: E402

DECODER_ARMS = ("gpt2", "gpt2-meanattn", "gpt2-eps", "linear-fan-in", "embed-fan-in", "both-fan-in", "both-fan-in-depth")
POOLED_ARMS = ("pool-linear", "pool-head02", "pool-vo", "pool-vo-norm-head02")


def uniform_cross_attention(model) -> None:
    """Every decoder block's cross-attention becomes the plain mean of its values over the memory."""
    for block in model.decoder:
        att = block.cross_attn

        def forward(x, src=None, *, mask=None, causal=False, kv=None, cache=None, att=att):
            _, v = att.project_kv(src)
            w = mask.to(v.dtype).expand(-1, att.n_heads, x.shape[1], -1)
            y = (w / w.sum(-1, keepdim=True)) @ v
            b, h, t, dh = y.shape
            return att.out(y.transpose(1, 2).reshape(b, t, h * dh))
        att.forward = forward


def decoder_arm(arm: str) -> DecoderProbe:
    net = DecoderProbe("deep", False, 64, init="gpt2")
    m = net.model
    depth = math.sqrt(2 * (m.cfg.enc_layers + m.cfg.dec_layers))
    if arm == "gpt2-meanattn":
        uniform_cross_attention(m)
    if arm in ("linear-fan-in", "both-fan-in"):
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=mod.weight.shape[1] ** -0.5)
    if arm in ("embed-fan-in", "both-fan-in"):
        for emb in (m.embed, m.target_pos, m.prompt_pos):
            nn.init.normal_(emb.weight, std=m.cfg.d_model ** -0.5)
    if arm == "both-fan-in-depth":
        for name, p in m.named_parameters():
            if p.dim() == 2 and name.endswith("weight") and not name.startswith("patch_embed"):
                std = p.shape[1] ** -0.5
                nn.init.normal_(p, std=std / depth if name.endswith(("out.weight", "down.weight")) else std)
    return net


class PooledProbe(nn.Module):
    """UniTok's encoder, the mean of its image outputs, then a head (see the arms above)."""

    def __init__(self, arm: str):
        super().__init__()
        self.arm = arm
        self.model = DecoderProbe("deep", False, 64, init="gpt2").model
        d = self.model.cfg.d_model
        self.head = nn.Linear(d, 5)
        if arm.endswith("head02"):
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self.norm = nn.RMSNorm(d)
        self.v = nn.Linear(d, d, bias=False)
        nn.init.normal_(self.v.weight, std=0.02)
        self.o = nn.Linear(d, d, bias=False)
        nn.init.normal_(self.o.weight, std=0.02 / math.sqrt(8))
        self.start = nn.Parameter(torch.randn(d) * 0.028)  # ~ a 0.02 token embedding plus a 0.02 position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        prompt = torch.tensor([PROMPT]).expand(b, -1)
        memory, _ = self.model.encode(prompt, torch.ones_like(prompt, dtype=torch.bool), x[:, None])
        h = memory[:, :self.model.cfg.num_patches].mean(1)
        if self.arm.startswith("pool-vo"):
            h = self.start + self.o(self.v(h))
        if self.arm == "pool-vo-norm-head02":
            h = self.norm(h)
        return self.head(h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=[*DECODER_ARMS, *POOLED_ARMS])
    ap.add_argument("--examples", type=int, default=12800)
    ap.add_argument("--eval-every", type=int, default=3200)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = (*single_object_scenes(20000, seed=1), *single_object_scenes(400, seed=2))
    results = {}
    for arm in args.arms:
        torch.manual_seed(0)
        net = PooledProbe(arm) if arm.startswith("pool-") else decoder_arm(arm)
        eps = 1e-16 if arm == "gpt2-eps" else 1e-8
        results[arm] = train_arm(arm, data, examples=args.examples, eval_every=args.eval_every, net=net, eps=eps)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"examples": args.examples, "arms": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()

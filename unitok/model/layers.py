"""Transformer layers: attention with QK-norm and a KV cache, Multiway FFN experts, blocks.

Shape letters: B batch, T target (decoder) length, S source (encoder) length, H heads,
D model width, Dh head width, E experts; for divided space-time attention N image slots, P patches
per slot, L prompt length (S = N * P + L).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import ModelConfig


def step_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear`` for decoding steps. With a single row under torch.compile it is written as a
    reduction, so inductor emits the matrix-vector product itself, fused with its neighbours, rather
    than one BLAS call per projection: at batch 1 the per-call cost is what dominates (the step
    measured 2.1 -> 1.55 ms for the tiny config). With more rows BLAS is faster."""
    if torch.compiler.is_compiling() and x.numel() == x.shape[-1]:
        return (x.unsqueeze(-2) * weight).sum(-1)  # (1, D_in) x (D_out, D_in) -> (1, D_out)
    return F.linear(x, weight)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` that also takes a bf16 input (bf16 autocast): the norm is computed in float32
    and returned in the input's dtype, as Llama's does. torch's own op, given a bf16 input and a
    float32 weight (or the reverse), falls back to its unfused path and warns; for float32 input and
    weight this is exactly ``nn.RMSNorm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if x.dtype == torch.float32 and (w is None or w.dtype == torch.float32):
            return F.rms_norm(x, self.normalized_shape, w, self.eps)
        w = None if w is None else w.float()  # a bf16 model (--dtype bfloat16) as well
        return F.rms_norm(x.float(), self.normalized_shape, w, self.eps).to(x.dtype)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x, approximate="tanh")``, written as x * sigmoid(2u) where that is faster: it is the
    same function (0.5 * (1 + tanh(u)) = sigmoid(2u); the two differ by float rounding, < 1e-6).

    * Under torch.compile: inductor's vectorised tanh costs ~2.9x its sigmoid (a batch-16 decoding
      step's (16, 768) activation measured 40 -> 14 us).
    * fp32 inference: in place, ~2.3x faster than ATen's tanh-gelu on this CPU (an encoder layer's
      (512, 768) activation measured 1.43 -> 0.62 ms).
    (``benchmarks/step_kernels.py`` measures both.)
    * Training (eager, with autograd) and bf16 keep the ATen op: one fused backward, one rounding.
    """
    a, b = 1.5957691216057308, 0.07135481627260025  # 2u = a x + b x^3 = 2 sqrt(2 / pi) (x + 0.044715 x^3)
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(x * (a + b * x * x))
    if x.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad):
        u = x * x
        return u.mul_(b).add_(a).mul_(x).sigmoid_().mul_(x)
    return F.gelu(x, approximate="tanh")


class KVCache:
    """Per-layer decoder state: growing self-attention K/V and cross-attention K/V computed once."""

    def __init__(self, batch: int, max_len: int, n_heads: int, head_dim: int, dtype: torch.dtype, device):
        shape = (batch, n_heads, max_len, head_dim)
        # Uninitialised: attention only ever reads the first ``length`` positions.
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0
        self.cross: tuple[torch.Tensor, torch.Tensor] | None = None
        self.rows: dict[str, torch.Tensor] = {}  # other per-row decoding state (``UniTokModel`` box readout)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        end = self.length + t
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: torch.Tensor, *, cross: bool = True) -> None:
        """Select batch rows (beam search keeps the surviving hypotheses). ``cross=False`` keeps the
        cross-attention K/V as they are: right when rows only move among copies of one input."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)
        if cross and self.cross is not None:
            self.cross = (self.cross[0].index_select(0, index), self.cross[1].index_select(0, index))
        self.rows = {k: v.index_select(0, index) for k, v in self.rows.items()}


@dataclass
class Slots:
    """Where the image slots sit in the encoder's input, for divided space-time attention
    (``model.video_attention: divided``): the first ``n * patches`` tokens, slot by slot, then the prompt."""
    n: int
    patches: int
    time_mask: torch.Tensor  # (B*P, 1, N, N): a slot attends to the present slots and to itself
    space_mask: torch.Tensor  # (B*N, 1, 1, P + L): a slot's patches attend to their own slot and the valid prompt
    mask: torch.Tensor  # (B, 1, 1, S): the prompt's queries attend to every valid token

    @classmethod
    def of(cls, image_mask: torch.Tensor, patches: int, mask: torch.Tensor) -> "Slots":
        """image_mask: (B, N) bool; mask: (B, S) bool, the whole input's."""
        b, n = image_mask.shape
        # Every query keeps at least one key (itself): an absent slot's tokens are computed but never
        # read, since every other query masks them, and a row of no keys would give NaN.
        eye = torch.eye(n, dtype=torch.bool, device=mask.device)
        time_mask = (image_mask[:, None, :] | eye).repeat_interleave(patches, 0)[:, None]
        own = torch.ones(b * n, patches, dtype=torch.bool, device=mask.device)
        space_mask = torch.cat([own, mask[:, n * patches:].repeat_interleave(n, 0)], 1)[:, None, None]
        return cls(n, patches, time_mask, space_mask, mask[:, None, None, :])


class Attention(nn.Module):
    """Multi-head attention, pre-projection QK-norm (ViT-22B) so logits stay tame in bf16."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim)
        self.k_norm = RMSNorm(cfg.head_dim)
        self.dropout = cfg.dropout

    def _heads(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, H, L, Dh), normalised per head by ``norm`` before the transpose, where
        each head's vector is contiguous (RMSNorm over a transposed view is several times slower)."""
        b, n, _ = x.shape
        x = x.view(b, n, self.n_heads, self.head_dim)
        return (x if norm is None else norm(x)).transpose(1, 2)

    def project_kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(src).chunk(2, dim=-1)
        return self._heads(k, self.k_norm), self._heads(v)

    def forward(self, x: torch.Tensor, src: torch.Tensor | None = None, *, mask: torch.Tensor | None = None,
                causal: bool = False, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """x: (B, T, D) queries; src: (B, S, D) keys/values source (None: self-attention);
        mask: (B, 1, 1, S) bool, True = may attend; kv: precomputed (k, v) for src."""
        q = self._heads(self.q(x), self.q_norm)
        if kv is None:
            kv = self.project_kv(x if src is None else src)
        k, v = kv
        if cache is not None:
            first = cache.length == 0
            k, v = cache.append(k, v)
            # A multi-token prefill starts at 0 and is causal; later single-token steps see all keys.
            causal = causal and first and q.shape[2] > 1
        return self.out(self._attend(q, k, v, mask, causal))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        """SDPA over heads (B, H, T, Dh), merged back to (B, T, D) before the output projection."""
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        b, h, t, dh = y.shape
        return y.transpose(1, 2).reshape(b, t, h * dh)

    def within_slots(self, x: torch.Tensor, slots: Slots) -> torch.Tensor:
        """The spatial half of divided space-time attention, x: (B, S, D): each image slot's patches attend
        to their own slot and the prompt; the prompt's tokens attend to every valid token. With one slot
        this is ``forward`` over the whole input (for the valid queries)."""
        n, p = slots.n, slots.patches
        q = self._heads(self.q(x), self.q_norm)
        k, v = self.project_kv(x)  # (B, H, S, Dh)

        def per_slot(t: torch.Tensor) -> torch.Tensor:  # (B, H, S, Dh) -> (B*N, H, P + L, Dh)
            own = rearrange(t[:, :, :n * p], "b h (n p) e -> (b n) h p e", n=n)
            return torch.cat([own, t[:, :, n * p:].repeat_interleave(n, 0)], 2)

        patches = self._attend(rearrange(q[:, :, :n * p], "b h (n p) e -> (b n) h p e", n=n), per_slot(k),
                               per_slot(v), slots.space_mask)  # (B*N, P, D)
        prompt = self._attend(q[:, :, n * p:], k, v, slots.mask)  # (B, L, D)
        return self.out(torch.cat([rearrange(patches, "(b n) p d -> b (n p) d", n=n), prompt], 1))

    def step(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None,
             length: int | None = None) -> torch.Tensor:
        """Attention for one query per row, x: (B, 1, D), over ``kv`` (k, v): (B, H, L, Dh).

        Self-attention passes ``length``: x's own K/V are written into the cache buffers ``kv`` at
        position ``length - 1`` and the query attends to the first ``length`` positions (causal by
        construction). Cross-attention passes the K/V computed once and the memory mask (B, 1, L).
        """
        q = self._heads(step_linear(x, self.q.weight), self.q_norm)  # (B, H, 1, Dh)
        k, v = kv
        if length is not None:
            new_k, new_v = step_linear(x, self.kv.weight).chunk(2, dim=-1)
            new_k, new_v = self._heads(new_k, self.k_norm), self._heads(new_v)
            k[:, :, length - 1:length] = new_k
            v[:, :, length - 1:length] = new_v
            k, v = k[:, :, :length], v[:, :, :length]
        # Written out rather than SDPA: for a single query the SDPA CPU kernels cost more in setup
        # than in arithmetic, and this form fuses into a couple of loops under torch.compile.
        scores = (q @ k.transpose(-1, -2))[:, :, 0] * self.head_dim ** -0.5  # (B, H, L)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        y = (scores.softmax(-1)[:, :, None] @ v).reshape(x.shape)  # (B, H, 1, Dh) -> (B, 1, D)
        return step_linear(y, self.out.weight)


class FFN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = int(cfg.d_model * cfg.ffn_mult)
        self.up = nn.Linear(cfg.d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(gelu_tanh(self.up(x)))

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return step_linear(gelu_tanh(step_linear(x, self.up.weight)), self.down.weight)


class MultiwayFFN(nn.Module):
    """VLMo/BEiT-3 Multiway FFN: one expert per modality; each token goes to its modality's expert.

    Attention is shared across modalities; only the FFN is split, which is what lets one model
    keep modality-specific features while fusing them in attention.
    """

    def __init__(self, cfg: ModelConfig, n_experts: int):
        super().__init__()
        self.experts = nn.ModuleList(FFN(cfg) for _ in range(n_experts))

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D); expert_ids: (B, L) long in [0, E)."""
        if len(self.experts) == 1:
            return self.experts[0](x)
        flat, ids = x.reshape(-1, x.shape[-1]), expert_ids.reshape(-1)
        out = torch.empty_like(flat)
        for e, expert in enumerate(self.experts):
            sel = (ids == e).nonzero(as_tuple=True)[0]
            if sel.numel() == ids.numel():  # every token is this expert's: no gather and scatter
                return expert(x).to(x.dtype)
            if sel.numel():
                out.index_copy_(0, sel, expert(flat.index_select(0, sel)).to(out.dtype))
        return out.view_as(x)

    def step(self, x: torch.Tensor, expert_ids: torch.Tensor, present: tuple[int, ...]) -> torch.Tensor:
        """Routing without data-dependent shapes (for a compiled decoding step): ``present`` names the
        experts the rows use, known to the caller; one expert runs alone, several run densely and mix."""
        if len(self.experts) == 1:
            return self.experts[0].step(x)
        if len(present) == 1:
            return self.experts[present[0]].step(x)
        out = torch.zeros_like(x)
        for e in present:
            out = torch.where((expert_ids == e)[..., None], self.experts[e].step(x), out)
        return out


class EncoderBlock(nn.Module):
    """Pre-norm encoder block. ``model.block``: ``sequential`` (attention, then FFN, each with its own norm)
    or ``parallel`` (both read one norm of x and are summed, ViT-22B). ``model.video_attention: divided``
    (TimeSformer) puts attention across the image slots at each patch position first, with its own norm
    and residual, and restricts the block's attention to ``Attention.within_slots``."""

    def __init__(self, cfg: ModelConfig, n_experts: int):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.d_model), Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model) if cfg.block == "sequential" else None  # parallel: the FFN reads norm1's
        self.ffn = MultiwayFFN(cfg, n_experts)
        divided = cfg.video_attention == "divided"
        self.time_norm = RMSNorm(cfg.d_model) if divided else None
        self.time_attn = Attention(cfg) if divided else None  # output starts at zero (``UniTokModel._init_weights``)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, expert_ids: torch.Tensor,
                slots: Slots | None = None) -> torch.Tensor:
        """x: (B, S, D); mask: (B, 1, 1, S); slots: given for divided attention over an input with images."""
        if slots is not None:
            x = self.across_slots(x, slots)
            h = self.norm1(x)
            a = self.attn.within_slots(h, slots)
        else:
            h = self.norm1(x)
            a = self.attn(h, mask=mask)
        if self.norm2 is None:
            return x + a + self.ffn(h, expert_ids)
        x = x + a
        return x + self.ffn(self.norm2(x), expert_ids)

    def across_slots(self, x: torch.Tensor, slots: Slots) -> torch.Tensor:
        """The temporal half of divided attention: each patch attends to the same patch position of the
        example's other present slots (video frames); the prompt's tokens pass through."""
        n, p = slots.n, slots.patches
        frames = rearrange(x[:, :n * p], "b (n p) d -> (b p) n d", n=n)
        moved = self.time_attn(self.time_norm(frames), mask=slots.time_mask)  # (B*P, N, D)
        return torch.cat([x[:, :n * p] + rearrange(moved, "(b p) n d -> b (n p) d", p=p), x[:, n * p:]], 1)


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: causal self-attention, cross-attention to the encoder, Multiway FFN.
    ``model.block: parallel``: all three read one norm of x and their outputs are summed (ViT-22B's
    parallel block, carried to the decoder; docs/architecture.md says why all three)."""

    def __init__(self, cfg: ModelConfig, n_experts: int):
        super().__init__()
        sequential = cfg.block == "sequential"
        self.norm1, self.self_attn = RMSNorm(cfg.d_model), Attention(cfg)
        self.norm2, self.cross_attn = RMSNorm(cfg.d_model) if sequential else None, Attention(cfg)
        self.norm3, self.ffn = RMSNorm(cfg.d_model) if sequential else None, MultiwayFFN(cfg, n_experts)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor, expert_ids: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        kv = None
        if cache is not None:
            if cache.cross is None:  # cross-attention K/V depend only on the input: compute once
                cache.cross = self.cross_attn.project_kv(memory)
            kv = cache.cross
        h = self.norm1(x)
        a = self.self_attn(h, causal=True, cache=cache)
        if self.norm2 is None:
            return x + a + self.cross_attn(h, memory, mask=memory_mask, kv=kv) + self.ffn(h, expert_ids)
        x = x + a
        x = x + self.cross_attn(self.norm2(x), memory, mask=memory_mask, kv=kv)
        return x + self.ffn(self.norm3(x), expert_ids)

    def step(self, x: torch.Tensor, length: int, k_buf: torch.Tensor, v_buf: torch.Tensor,
             cross_kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor, expert_ids: torch.Tensor,
             present: tuple[int, ...]) -> torch.Tensor:
        """One decoding step (x: (B, 1, D)) at position ``length - 1``; the same math as ``forward``."""
        h = self.norm1(x)
        a = self.self_attn.step(h, (k_buf, v_buf), length=length)
        if self.norm2 is None:
            return x + a + self.cross_attn.step(h, cross_kv, memory_mask) + self.ffn.step(h, expert_ids, present)
        x = x + a
        x = x + self.cross_attn.step(self.norm2(x), cross_kv, memory_mask)
        return x + self.ffn.step(self.norm3(x), expert_ids, present)

"""The UniTok encoder-decoder.

Encoder input = [patches of image slot 0 | slot 1 | ... | prompt tokens]: images enter as ViT patch
embeddings (continuous, not codes), each slot with its own learned slot embedding (a second image,
or video frames in time order), and the prompt as embeddings of the unified vocabulary.
The decoder is causal, cross-attends to the encoder, and predicts ids of the same vocabulary
(embedding shared with the encoder and tied to the output head, as in OFA/T5).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import ModelConfig
from .layers import DecoderBlock, EncoderBlock, KVCache, RMSNorm, Slots, step_linear

# inductor settings for the compiled decoding steps (see ``UniTokModel.compiled``)
STEP_COMPILE_OPTIONS = {"cpp_wrapper": True, "size_asserts": False, "alignment_asserts": False,
                        "scalar_asserts": False}

TEXT_EXPERT, VISION_EXPERT = 0, 1
MAX_REGION_MARKS = 4  # boxes of one prompt that get their own mark; later boxes share the last


def sincos_1d(n: int, dim: int) -> torch.Tensor:
    """(n, dim) sin-cos code of positions 0..n-1 with wavelengths from 4 to 2n: nearby positions get
    similar codes, far ones dissimilar."""
    half = dim // 2
    freq = (math.pi / 2) * (2.0 / n) ** (torch.arange(half, dtype=torch.float32) / max(1, half - 1))
    ang = torch.arange(n, dtype=torch.float32)[:, None] * freq[None, :]
    return F.pad(torch.cat([ang.sin(), ang.cos()], 1), (0, dim - 2 * half))


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """(1, grid*grid, dim) fixed 2-D sin-cos position code: half the channels for y, half for x."""
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    pos = torch.arange(grid, dtype=torch.float32)
    ang = pos[:, None] * freq[None, :]  # (grid, quarter)
    one = torch.cat([ang.sin(), ang.cos()], 1)  # (grid, dim/2)
    y, x = one[:, None, :].expand(grid, grid, -1), one[None, :, :].expand(grid, grid, -1)
    code = torch.cat([y, x], -1).reshape(grid * grid, -1)
    return F.pad(code, (0, dim - code.shape[1]))[None]


class PatchStem(nn.Module):
    """ViT patch embedding: (B, 3, H, W) -> (B, D, H/p, W/p).

    * ``linear``: the plain ViT projection of each p x p patch.
    * ``conv``: the same patch grid through stride-2 3x3 convolutions ("Early convolutions help
      transformers see better", Xiao et al. 2021).
    * ``deep``: a convolutional tower (each stride-2 stage followed by a stride-1 3x3 convolution,
      GroupNorm after each, the output normalised per image) plus the plain linear patch projection.
      Object shape is a local pattern a few pixels wide: on single-object world scenes a plain CNN
      of this form tells the five shapes apart within ~10k examples, while the ``conv`` stem's
      features stay at chance well past that (``benchmarks/shape_probe.py``); its output also varies
      across images ~30x less than the position code it is added to. The tower's norms work per
      image, which removes what is absolute (the background colour): the linear projection of the
      raw pixels, added to it, carries that.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, p = cfg.d_model, cfg.patch_size
        self.linear = nn.Conv2d(3, d, kernel_size=p, stride=p) if cfg.patch_stem == "deep" else None
        if cfg.patch_stem == "linear":
            self.net = nn.Conv2d(3, d, kernel_size=p, stride=p)
            return
        stages = int(math.log2(p))
        layers, ch = [], 3
        for i in range(stages):
            out = max(32, d // 2 ** (stages - 1 - i)) if i < stages - 1 else d
            if cfg.patch_stem == "deep" and i < stages - 1:
                layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), _group_norm(out), nn.GELU(),
                           nn.Conv2d(out, out, 3, padding=1), _group_norm(out), nn.GELU()]
            else:
                layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.GELU()]
            ch = out
        layers = layers[:-1]  # no activation after the last projection
        if cfg.patch_stem == "deep":
            layers.append(nn.GroupNorm(1, d))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y if self.linear is None else y + self.linear(x)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class UniTokModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set from the vocabulary before building the model")
        self.cfg = cfg
        d = cfg.d_model
        n_experts = len(cfg.experts) if cfg.multiway else 1
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.patch_embed = PatchStem(cfg)
        grid = cfg.image_size // cfg.patch_size
        # Fixed 2-D sin-cos positions plus a learned residual: from-scratch ViTs localise far
        # sooner with a fixed spatial prior (MAE/ViT-22B use sin-cos too).
        self.register_buffer("patch_sincos", sincos_2d(grid, d), persistent=False)
        self.patch_pos = nn.Parameter(torch.zeros(1, cfg.num_patches, d))
        self.slot_embed = nn.Embedding(cfg.max_images, d)
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, 1, d))  # stands in for hidden patches (BEiT)
        # one learned mark per box of the prompt, added to the first image's patches under that box
        self.region_embed = nn.Embedding(MAX_REGION_MARKS, d) if cfg.region_marks and cfg.coord_range else None
        # decoder: the mean of the first image's encoded patches under the box just written, projected
        self.box_readout = nn.Linear(d, d, bias=False) if cfg.box_readout and cfg.coord_range else None
        self.prompt_pos = nn.Embedding(cfg.max_prompt_len, d)
        self.target_pos = nn.Embedding(cfg.max_target_len, d)
        n_shared = cfg.shared_expert_layers if cfg.multiway else 0
        self.encoder = nn.ModuleList(
            EncoderBlock(cfg, 1 if i >= cfg.enc_layers - n_shared else n_experts) for i in range(cfg.enc_layers))
        self.enc_norm = RMSNorm(d)
        self.decoder = nn.ModuleList(DecoderBlock(cfg, n_experts) for _ in range(cfg.dec_layers))
        self.dec_norm = RMSNorm(d)
        token_expert = torch.zeros(cfg.vocab_size, dtype=torch.long)
        if cfg.multiway:
            for start, end, expert in cfg.expert_ranges:
                token_expert[start:end] = expert
        self.register_buffer("token_expert", token_expert, persistent=False)
        # Bag-of-target-tokens head on the pooled encoder output (training only; see ``pooled_logits``)
        self.bow_head = nn.Linear(d, cfg.vocab_size) if cfg.bow_head else None
        self._init_weights()

    def _init_weights(self) -> None:
        """Every weight matrix and embedding at std 1/sqrt(fan-in) (``init: fan_in``), or at 0.02 with the
        residual output projections further scaled by 1/sqrt(2 * layers) (``init: gpt2``, GPT-2's).

        0.02 is GPT-2's constant, chosen for d_model 768, where it is close to 1/sqrt(d). At the widths
        this engine trains on CPUs (128-256) it makes every token embedding, the decoder's start state and
        the tied output head 3-4x smaller than unit scale, and through the decoder path the encoder then
        learns object identity only after a long plateau: on single-object scenes the micro model answers
        "which shape?" at chance (0.20) after 12.8k examples with ``gpt2`` and ~0.9 with ``fan_in``
        (``benchmarks/shape_probe.py``; docs/architecture.md, "Initialisation")."""
        cfg = self.cfg

        def std(fan_in: int) -> float:
            return 0.02 if cfg.init == "gpt2" else fan_in ** -0.5

        for m in self.modules():
            if m is self.bow_head:  # PyTorch's default init: a probe-like head the encoder learns through fast
                continue
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std(m.weight.shape[-1]))
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.patch_pos, std=0.02)  # a learned residual on the fixed sin-cos code
        if self.region_embed is not None:  # at the scale of the (normalised) patch features it marks
            nn.init.normal_(self.region_embed.weight, std=1.0)
        if self.box_readout is not None:  # its input is unit-scale per channel: out at the embeddings' scale
            nn.init.normal_(self.box_readout.weight, std=1.0 / cfg.d_model)
        if cfg.coord_range:
            start, end = cfg.coord_range
            with torch.no_grad():  # ordinal prior: 1-D sin-cos code of the bin, at the embedding's scale
                code = sincos_1d(end - start, cfg.d_model)
                self.embed.weight[start:end] = code * (std(cfg.d_model) / code.std())
        if cfg.init == "gpt2":
            depth = math.sqrt(2 * (cfg.enc_layers + cfg.dec_layers))
            for name, p in self.named_parameters():  # GPT-2: residual output projections scaled by depth
                if name.endswith(("out.weight", "down.weight")):
                    nn.init.normal_(p, std=0.02 / depth)
        for block in self.encoder:  # divided attention starts as the identity across slots (TimeSformer)
            if block.time_attn is not None:
                nn.init.zeros_(block.time_attn.out.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------- encoder
    def encode(self, prompt: torch.Tensor, prompt_mask: torch.Tensor, images: torch.Tensor | None = None,
               image_mask: torch.Tensor | None = None, patch_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """prompt: (B, L) ids, prompt_mask: (B, L) bool; images: (B, N, 3, H, W) float, image_mask: (B, N) bool;
        patch_mask: (B, N, P) bool, patches replaced by the mask embedding (masked image modelling).
        Returns memory (B, S, D) and its mask (B, S) with S = N * patches + L."""
        cfg = self.cfg
        b, length = prompt.shape
        if length > cfg.max_prompt_len:
            raise ValueError(f"prompt has {length} tokens; this model takes at most {cfg.max_prompt_len} (model.max_prompt_len)")
        parts, masks, experts = [], [], []
        if images is not None and images.shape[1] > 0:
            n = images.shape[1]
            if image_mask is None:
                image_mask = torch.ones(images.shape[:2], dtype=torch.bool, device=images.device)
            if n > cfg.max_images:
                raise ValueError(f"{n} images given; this model takes at most {cfg.max_images} (model.max_images)")
            if images.shape[-2:] != (cfg.image_size, cfg.image_size):
                raise ValueError(f"images must be {cfg.image_size}x{cfg.image_size} (model.image_size) after preprocessing, got {tuple(images.shape[-2:])}")
            if patch_mask is not None:
                # Blank hidden patches' pixels too: the conv stem's receptive field spans neighbouring
                # patches, so replacing only their embeddings would leak their content.
                g = cfg.image_size // cfg.patch_size
                pixel_mask = patch_mask.view(b, n, 1, g, 1, g, 1).expand(-1, -1, -1, -1, cfg.patch_size, -1, cfg.patch_size)
                images = images.masked_fill(pixel_mask.reshape(b, n, 1, cfg.image_size, cfg.image_size), 0.0)
            x = self.patch_embed(rearrange(images, "b n c h w -> (b n) c h w"))  # (B*N, D, h, w)
            x = rearrange(x, "(b n) d h w -> b n (h w) d", b=b)
            if self.region_embed is not None:
                x = torch.cat([x[:, :1] + self.region_marks(prompt, prompt_mask).to(x.dtype), x[:, 1:]], 1)
            if patch_mask is not None:
                x = torch.where(patch_mask[..., None], self.mask_embed.to(x.dtype), x)
            x = x + (self.patch_sincos + self.patch_pos).unsqueeze(1)
            x = x + self.slot_embed.weight[:n][None, :, None, :]
            parts.append(rearrange(x, "b n p d -> b (n p) d"))
            masks.append(image_mask.repeat_interleave(cfg.num_patches, dim=1))
            experts.append(torch.full(masks[-1].shape, VISION_EXPERT, dtype=torch.long, device=prompt.device))
        parts.append(self.embed(prompt) + self.prompt_pos.weight[:length])
        masks.append(prompt_mask)
        experts.append(torch.full(prompt.shape, TEXT_EXPERT, dtype=torch.long, device=prompt.device))
        x, mask, expert_ids = torch.cat(parts, 1), torch.cat(masks, 1), torch.cat(experts, 1)
        attn_mask = mask[:, None, None, :]
        slots = None
        if cfg.video_attention == "divided" and len(parts) > 1:
            slots = Slots.of(image_mask, cfg.num_patches, mask)
        for block in self.encoder:
            x = block(x, attn_mask, expert_ids, slots)
        return self.enc_norm(x), mask

    def region_marks(self, prompt: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, P, D): for each box of the prompt (four coordinate tokens x0 y0 x1 y1, in order), its
        learned mark added to every patch the box overlaps; zero where the prompt names no box.

        A box given as coordinate tokens must otherwise be bound to the patches it covers by attention
        alone: the tokens' codes and the patches' position code are unrelated, and at CPU scale that
        binding is not learned within the budget (region classification stays at chance while shape
        on single-object scenes is learned). The mark states the box on the patches themselves, as
        SAM's dense prompts and visual-prompt tuning do; the coordinate tokens stay in the prompt."""
        start, end = self.cfg.coord_range
        out = torch.zeros(prompt.shape[0], self.cfg.num_patches, self.cfg.d_model, device=prompt.device)
        is_coord = (prompt >= start) & (prompt < end) & prompt_mask
        for row in torch.nonzero(is_coord.sum(1) >= 4).flatten().tolist():
            boxes = prompt[row][is_coord[row]]
            boxes = boxes[:boxes.numel() // 4 * 4].view(-1, 4)  # (K, 4): x0 y0 x1 y1
            which = self.region_embed.weight[torch.arange(len(boxes), device=prompt.device).clamp(max=MAX_REGION_MARKS - 1)]
            out[row] = self.patches_under(boxes).float().T @ which  # (P, K) @ (K, D)
        return out[:, None]

    def patches_under(self, boxes: torch.Tensor) -> torch.Tensor:
        """(..., 4) coordinate-token ids x0 y0 x1 y1 -> (..., P) bool: the patches each box overlaps.
        Patch column c spans [c, c + 1) in grid units and bin b lies at b / (bins - 1) of the image; a
        degenerate box still covers the cell it falls in."""
        start, end = self.cfg.coord_range
        g = self.cfg.image_size // self.cfg.patch_size
        v = (boxes - start).clamp(0, end - start - 1).float() * (g / (end - start - 1))  # grid units
        x0, x1 = torch.minimum(v[..., 0], v[..., 2]), torch.maximum(v[..., 0], v[..., 2])
        y0, y1 = torch.minimum(v[..., 1], v[..., 3]), torch.maximum(v[..., 1], v[..., 3])
        cells = torch.arange(g, device=boxes.device, dtype=torch.float32)
        cols = (cells + 1 > x0[..., None]) & (cells < torch.maximum(x1, x0 + 1e-3)[..., None])  # (..., g)
        rows = (cells + 1 > y0[..., None]) & (cells < torch.maximum(y1, y0 + 1e-3)[..., None])
        return (rows[..., :, None] & cols[..., None, :]).flatten(-2)

    def box_readouts(self, window: torch.Tensor, run: torch.Tensor, patches: torch.Tensor,
                     patch_valid: torch.Tensor) -> torch.Tensor:
        """The decoder's box readout (``model.box_readout``), (B, T, D).

        window: (B, T, 4) each position's input token and the three before it; run: (B, T) how many
        coordinate tokens in a row end at each position; patches: (B, P, D) the first image's encoded
        patches, patch_valid: (B, P). Where a box's fourth coordinate is the input (``run`` a multiple
        of 4), the mean of the patches under that box, projected; zero elsewhere.

        Pix2Seq names a box's class right after its coordinates, so the label must come from the
        patches those four tokens denote. Through cross-attention alone that binding of coordinate
        codes to patch positions is a long plateau (detection boxes land but carry chance labels);
        this hands the decoder the box's content directly, as RoI pooling does in two-stage detectors."""
        ends = (run > 0) & (run % 4 == 0)
        inside = self.patches_under(window) & ends[..., None] & patch_valid[:, None, :]  # (B, T, P)
        inside = inside.to(patches.dtype)
        pooled = inside @ patches / inside.sum(-1, keepdim=True).clamp(min=1.0)
        return self.box_readout(pooled)

    def pooled_logits(self, memory: torch.Tensor, memory_mask: torch.Tensor, n_image_tokens: int = 0) -> torch.Tensor:
        """(B, V) logits of the bag-of-target-tokens objective: a linear head on the mean of the valid
        image-patch outputs of the encoder (the first ``n_image_tokens`` of ``memory``; the prompt's
        where a row has no image). Trained beside the decoder (``train.bow_weight``), it gives the
        encoder a short, direct gradient path: through cross-attention alone the encoder learns object
        identity only after a long plateau (see docs/architecture.md, "Training")."""
        if self.bow_head is None:
            raise ValueError("this model has no bag-of-tokens head (model.bow_head: false)")
        w = memory_mask.to(memory.dtype)[..., None]
        if n_image_tokens:
            image_w = w[:, :n_image_tokens]
            has_image = image_w.sum(1) > 0  # (B, 1)
            w = torch.cat([image_w, w[:, n_image_tokens:] * (~has_image[:, None]).to(w.dtype)], 1)
        pooled = (memory * w).sum(1) / w.sum(1).clamp(min=1.0)
        return self.bow_head(pooled)

    # ---------------------------------------------------------------- decoder
    def decode(self, target_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
               caches: list[KVCache] | None = None, n_image_tokens: int = 0) -> torch.Tensor:
        """target_in: (B, T) ids (bos + target[:-1] in training; the last token when cached).
        ``n_image_tokens``: how many of ``memory``'s first positions are image patches (the box readout
        reads the first image's). Returns logits (B, T, V)."""
        start = caches[0].length if caches else 0
        t = target_in.shape[1]
        if start + t > self.cfg.max_target_len:
            raise ValueError(f"target of {start + t} tokens exceeds model.max_target_len={self.cfg.max_target_len}")
        x = self.embed(target_in) + self.target_pos.weight[start:start + t]
        if self.box_readout is not None and n_image_tokens >= self.cfg.num_patches:
            if caches:
                raise ValueError("the box readout needs the whole prefix: decode it uncached, or step by step with decode_step")
            x = x + self._readouts_of(target_in, memory, memory_mask).to(x.dtype)
        expert_ids = self.token_expert[target_in]
        attn_mask = memory_mask[:, None, None, :]
        for i, block in enumerate(self.decoder):
            x = block(x, memory, attn_mask, expert_ids, cache=caches[i] if caches else None)
        return F.linear(self.dec_norm(x), self.embed.weight)

    def _is_coord(self, ids: torch.Tensor) -> torch.Tensor:
        start, end = self.cfg.coord_range
        return (ids >= start) & (ids < end)

    def _readouts_of(self, target_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """``box_readouts`` for a whole teacher-forced sequence (B, T)."""
        is_coord = self._is_coord(target_in)
        count = is_coord.long().cumsum(1)
        run = count - torch.cummax(torch.where(is_coord, 0, count), 1).values  # coordinates in a row so far
        t = target_in.shape[1]
        window = torch.stack([F.pad(target_in, (k, 0))[:, :t] for k in (3, 2, 1, 0)], -1)
        p = self.cfg.num_patches
        return self.box_readouts(window, run, memory[:, :p], memory_mask[:, :p])

    def new_caches(self, batch: int, max_len: int, dtype: torch.dtype, device) -> list[KVCache]:
        return [KVCache(batch, max_len, self.cfg.n_heads, self.cfg.head_dim, dtype, device) for _ in self.decoder]

    # ---------------------------------------------------------------- one token at a time
    def start_caches(self, memory: torch.Tensor, max_len: int, memory_mask: torch.Tensor | None = None,
                     n_image_tokens: int = 0) -> list[KVCache]:
        """Caches for ``decode_step``: ``max_len`` self-attention positions, cross-attention K/V of
        ``memory`` (B, S, D) computed here once (and, with the box readout and an image, the first
        image's patches and the last four tokens of each row)."""
        b = memory.shape[0]
        caches = self.new_caches(b, max_len, memory.dtype, memory.device)
        for block, cache in zip(self.decoder, caches):
            cache.cross = block.cross_attn.project_kv(memory)
        p = self.cfg.num_patches
        if self.box_readout is not None and n_image_tokens >= p:
            if memory_mask is None:
                raise ValueError("start_caches: the box readout needs memory_mask")
            caches[0].rows = {"window": torch.zeros(b, 4, dtype=torch.long, device=memory.device),
                              "run": torch.zeros(b, dtype=torch.long, device=memory.device),
                              "patches": memory[:, :p], "patch_valid": memory_mask[:, :p]}
        return caches

    def decode_step(self, tokens: torch.Tensor, caches: list[KVCache], memory_mask: torch.Tensor, *,
                    compiled: bool = False, width: int | None = None) -> torch.Tensor:
        """tokens: (B,) each row's latest token. Returns logits (B, width) for the next position:
        ids ``0 .. width - 1`` (default: the whole vocabulary).

        The same function as ``decode`` with caches, with the per-token overhead cut (one-query
        attention written out, routing without data-dependent shapes), so that ``compiled=True``
        (``torch.compile``) can trace it once: the prefix length is a dynamic dimension, so steps
        attend over the positions filled so far without a recompilation per position.
        ``width``: constrained decoding only ever takes ids below the largest one its grammars allow
        (text tasks: the specials and text blocks, 465 of the 1,553 ids), so the output head needs
        only those rows of the embedding.
        """
        args = self.step_inputs(tokens, caches, memory_mask, width)
        fn = self.compiled(self.step_logits) if compiled else self.step_logits
        logits = fn(*args)
        self.advance_caches(caches)
        return logits

    def step_inputs(self, tokens: torch.Tensor, caches: list[KVCache], memory_mask: torch.Tensor,
                    width: int | None = None, expert_ids: torch.Tensor | None = None) -> tuple:
        """The arguments of ``step_logits`` for the next position of ``caches`` (``expert_ids``: the
        tokens' experts, when the caller has them already)."""
        pos = caches[0].length
        if pos >= min(caches[0].k.shape[2], self.cfg.max_target_len):
            raise ValueError(f"decoding step {pos} is past the cache ({caches[0].k.shape[2]}) or "
                             f"model.max_target_len={self.cfg.max_target_len}")
        width = self.cfg.vocab_size if width is None else width
        if not 0 < width <= self.cfg.vocab_size:
            raise ValueError(f"output width {width} is outside the vocabulary (1 .. {self.cfg.vocab_size})")
        expert_ids = self.token_expert[tokens] if expert_ids is None else expert_ids
        present = tuple(sorted(set(expert_ids.tolist()))) if self.cfg.multiway else (0,)
        # The prefix length and the output width travel as tensors' sizes, not as Python ints that
        # a compiled step would bake in (dynamo specialises size 1: position 0 gets a graph of its
        # own; every width shares one).
        prefix = torch.empty(pos + 1, device=tokens.device)
        if pos > 0:
            torch._dynamo.maybe_mark_dynamic(prefix, 0)
        vocab = torch.empty(width, device=tokens.device)
        torch._dynamo.maybe_mark_dynamic(vocab, 0)
        readout, rows = None, caches[0].rows
        if self.box_readout is not None and rows:  # this step's token joins the row's window
            rows["run"] = torch.where(self._is_coord(tokens), rows["run"] + 1, 0)
            rows["window"] = torch.cat([rows["window"][:, 1:], tokens[:, None]], 1)
            readout = self.box_readouts(rows["window"][:, None], rows["run"][:, None], rows["patches"],
                                        rows["patch_valid"])  # (B, 1, D)
        return (tokens, prefix, vocab, expert_ids, present, [c.k for c in caches], [c.v for c in caches],
                [c.cross for c in caches], memory_mask, readout)

    @staticmethod
    def advance_caches(caches: list[KVCache]) -> None:
        for c in caches:
            c.length += 1

    def compiled(self, fn):
        """``torch.compile(fn)``, built once per model and function (kept off the module's state).

        For a decoding step the per-call cost of the generated Python wrapper is a large share of
        the step (~25 GEMM calls, each with its tensor views and size asserts): inductor's C++
        wrapper removes it (a batch-16 tiny step measured 2.84 -> 2.57 ms, ``benchmarks/step_kernels.py``),
        at the price of a longer first compile (~25 s; later processes load it from inductor's cache).
        The inputs are built by ``step_inputs`` with fixed layouts, so the wrapper's stride asserts are off."""
        table = self.__dict__.setdefault("_compiled_fns", {})
        key = getattr(fn, "__func__", fn)
        if key not in table:
            table[key] = torch.compile(fn, options=STEP_COMPILE_OPTIONS)
        return table[key]

    def step_logits(self, tokens, prefix, vocab, expert_ids, present, k_bufs, v_bufs, cross,
                    memory_mask, readout=None) -> torch.Tensor:
        """Logits (B, len(vocab)) at position ``len(prefix) - 1``; writes that position's K/V into the
        buffers. ``readout``: (B, 1, D) the box readout for this position, or None."""
        length = prefix.shape[0]  # positions filled after this step
        x = (self.embed(tokens) + self.target_pos.weight[length - 1])[:, None]  # (B, 1, D)
        if readout is not None:
            x = x + readout.to(x.dtype)
        attn_mask, expert_ids = memory_mask[:, None, :], expert_ids[:, None]
        for block, k_buf, v_buf, kv in zip(self.decoder, k_bufs, v_bufs, cross):
            x = block.step(x, length, k_buf, v_buf, kv, attn_mask, expert_ids, present)
        return step_linear(self.dec_norm(x[:, 0]), self.embed.weight[:vocab.shape[0]])

    def forward(self, prompt, prompt_mask, target_in, images=None, image_mask=None, patch_mask=None,
                pooled: bool = False):
        """Logits (B, T, V); with ``pooled``, also the bag-of-tokens logits (B, V) (``pooled_logits``)."""
        memory, memory_mask = self.encode(prompt, prompt_mask, images, image_mask, patch_mask)
        n_image_tokens = images.shape[1] * self.cfg.num_patches if images is not None else 0
        logits = self.decode(target_in, memory, memory_mask, n_image_tokens=n_image_tokens)
        if not pooled:
            return logits
        return logits, self.pooled_logits(memory, memory_mask, n_image_tokens)

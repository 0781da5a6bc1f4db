"""Model configuration: one dataclass, built from the ``model:`` section of ``configs/*.yaml``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


# annotation -> (accepted types, what the error says); bool is an int in Python, so it is refused for int/float
_SCALARS = {"int": ((int,), "an integer"), "float": ((int, float), "a number"), "bool": ((bool,), "a boolean"),
            "str": ((str,), "a string")}
# string fields that name one of a few options: field -> the options
_CHOICES = {"patch_stem": ("linear", "conv", "deep"), "init": ("fan_in", "gpt2"), "block": ("sequential", "parallel"),
            "video_attention": ("joint", "divided")}


@dataclass
class ModelConfig:
    vocab_size: int = 0  # set from the vocabulary when the model is built
    d_model: int = 256
    n_heads: int = 4
    enc_layers: int = 4
    dec_layers: int = 4
    ffn_mult: float = 4.0
    image_size: int = 64  # images are resized to image_size x image_size before patching
    patch_size: int = 8
    patch_stem: str = "conv"  # "linear": one p x p conv (plain ViT); "conv": stride-2 conv stack (early
    #                           convolutions); "deep": conv stages with stride-1 convs and GroupNorm
    init: str = "fan_in"  # "fan_in": every weight matrix and embedding at std 1/sqrt(fan-in); "gpt2": std 0.02,
    #                      residual output projections also scaled by 1/sqrt(2 * layers)
    block: str = "sequential"  # "sequential": attention, then FFN, each with its own pre-norm; "parallel": every
    #                           sublayer of a block reads one norm of its input, their outputs summed (ViT-22B)
    video_attention: str = "joint"  # "joint": every token attends to all tokens; "divided": encoder blocks attend
    #                                 across image slots at each patch position, then within each slot (TimeSformer)
    region_marks: bool = False  # patches inside a box given in the prompt get a learned mark (see UniTokModel)
    box_readout: bool = False  # decoder: a box's last coordinate brings in the mean of the patches it covers
    bow_head: bool = False  # a bag-of-target-tokens head on the pooled encoder output (train.bow_weight)
    max_images: int = 4  # image slots in the encoder (a second image, video frames)
    max_prompt_len: int = 64  # text positions in the encoder
    max_target_len: int = 128  # positions in the decoder
    experts: tuple[str, ...] = ("text", "vision")
    shared_expert_layers: int = 0  # top encoder layers where every token uses one shared expert (VLMo)
    multiway: bool = True  # False: one FFN for all tokens (the ablation)
    dropout: float = 0.0
    # [(start, end, expert)] id ranges: which expert each decoder token id routes to; from the vocabulary.
    expert_ranges: list[tuple[int, int, int]] = field(default_factory=list)
    # [start, end) of the coordinate bins; their embeddings start as a smooth code of the bin's
    # position, so neighbouring bins begin similar (and, with the tied head, score alike).
    coord_range: tuple[int, int] | None = None

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def __post_init__(self) -> None:
        for f in fields(self):  # config values arrive untyped from YAML and --set
            types, what = _SCALARS.get(f.type, (None, ""))
            value = getattr(self, f.name)
            if types and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
                raise ValueError(f"model.{f.name} must be {what}, got {value!r}")
        if tuple(self.experts) != ("text", "vision"):
            # The encoder routes patches to expert 1 and prompt tokens to expert 0 (TEXT_EXPERT, VISION_EXPERT)
            raise ValueError(f"model.experts must be ['text', 'vision'] (in that order), got {list(self.experts)}")
        self.experts = tuple(self.experts)
        self.expert_ranges = [tuple(r) for r in self.expert_ranges]
        self.coord_range = tuple(self.coord_range) if self.coord_range else None
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.image_size % self.patch_size:
            raise ValueError(f"model.image_size ({self.image_size}) must be divisible by model.patch_size ({self.patch_size})")
        for name, options in _CHOICES.items():
            if getattr(self, name) not in options:
                listed = ", ".join(repr(o) for o in options[:-1]) + f" or {options[-1]!r}"
                raise ValueError(f"model.{name} must be {listed}, got {getattr(self, name)!r}")
        if self.patch_stem in ("conv", "deep") and self.patch_size & (self.patch_size - 1):
            raise ValueError(f"model.patch_stem 'conv' needs a power-of-two patch_size, got {self.patch_size}")
        if self.shared_expert_layers > self.enc_layers:
            raise ValueError("model.shared_expert_layers cannot exceed model.enc_layers")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["experts"] = list(self.experts)
        d["expert_ranges"] = [list(r) for r in self.expert_ranges]
        d["coord_range"] = list(self.coord_range) if self.coord_range else None
        return d

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "model") -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

"""The synthetic world: seeded scenes of coloured shapes with every annotation.

A scene is fully determined by ``(seed, index, size)``: ``make_scene(WorldConfig(seed=0), 7)`` is the
same record on every machine. Geometry is drawn in unit coordinates and scaled to ``size``, so no
code depends on the default 64x64.

Objects are painted far-to-near (larger ``depth`` is farther), so nearer objects really occlude
farther ones; each object's box is the box of its *visible* pixels, which is what a detector sees.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .schema import png_bytes

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
SIZES = {"small": (0.16, 0.22), "medium": (0.26, 0.34), "large": (0.38, 0.46)}
BACKGROUNDS = {"gray": (105, 105, 105), "black": (22, 22, 26), "navy": (20, 28, 72), "brown": (78, 52, 30)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
# Splits draw from disjoint random streams of the same world.
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    size: int = 64  # image side in pixels
    min_objects: int = 1
    max_objects: int = 5
    min_visible: float = 0.45  # an object keeps at least this fraction of its pixels unoccluded


def _shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean HxW mask of one shape centred at (cx, cy) with half-extent r (pixels)."""
    canvas = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(canvas)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        s = r * 0.9
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=255)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r * 0.85), (cx - r, cy + r * 0.85)], fill=255)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=255)
    elif shape == "cross":
        t = r * 0.38
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=255)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(canvas) > 127


def _box_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    # Pixel-edge convention: a single pixel at column x spans [x, x+1).
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _describe(obj: dict) -> str:
    return f"{obj['size']} {obj['colour']} {obj['shape']}"


def _list_phrase(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _captions(objects: list[dict], background: str, rng: np.random.Generator) -> list[str]:
    n = len(objects)
    noun = "shape" if n == 1 else "shapes"
    things = [f"a {o['colour']} {o['shape']}" for o in objects]
    sized = [f"a {_describe(o)}" for o in objects]
    caps = [
        f"{NUMBER_WORDS[n]} {noun} on a {background} background: {_list_phrase(things)}.",
        f"a {background} scene with {_list_phrase(sized)}.",
        f"there {'is' if n == 1 else 'are'} {_list_phrase(things)}.",
    ]
    biggest = max(objects, key=lambda o: (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]))
    caps.append(f"the largest shape is a {biggest['colour']} {biggest['shape']}.")
    order = rng.permutation(len(caps))
    return [caps[i] for i in order]


def make_scene(cfg: WorldConfig, index: int, split: str = "train") -> dict:
    """Render scene ``index`` of ``split`` of the world ``cfg`` as a record dict (see ``schema``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index, cfg.size])
    size = cfg.size
    background = str(rng.choice(list(BACKGROUNDS)))
    base = np.array(BACKGROUNDS[background], dtype=np.float32)
    # A mild vertical gradient + noise so backgrounds are not trivially flat.
    grad = np.linspace(-12, 12, size, dtype=np.float32)[:, None, None]
    noise = rng.normal(0, 4, (size, size, 3)).astype(np.float32)
    image = np.clip(base + grad + noise, 0, 255)

    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placed: list[dict] = []
    occupied = np.zeros((size, size), dtype=bool)
    attempts = 0
    while len(placed) < n and attempts < 200:
        attempts += 1
        shape = str(rng.choice(SHAPES))
        colour = str(rng.choice(list(COLOURS)))
        size_name = str(rng.choice(list(SIZES)))
        lo, hi = SIZES[size_name]
        r = rng.uniform(lo, hi) * size / 2
        cx, cy = rng.uniform(r, size - r, size=2)
        mask = _shape_mask(shape, cx, cy, r, size)
        if mask.sum() < 4:
            continue
        # New objects are placed *behind* everything so far: they may only lose pixels.
        visible = mask & ~occupied
        if visible.sum() < cfg.min_visible * mask.sum():
            continue
        # Keep objects of one (shape, colour) unique so captions/refs can name them unambiguously.
        if any(o["shape"] == shape and o["colour"] == colour for o in placed):
            continue
        placed.append({"shape": shape, "colour": colour, "size": size_name, "full_mask": mask, "mask": visible})
        occupied |= mask

    # Depth: placement order is front-to-back; give each object a depth in (0, 1), nearer = smaller.
    depths = np.sort(rng.uniform(0.15, 0.85, size=len(placed)))
    objects = []
    for obj, depth in zip(placed, depths):
        obj["depth"] = float(depth)
    for obj in reversed(placed):  # paint far-to-near
        image[obj["full_mask"]] = COLOURS[obj["colour"]]
    for obj in placed:
        objects.append(
            {
                "box": _box_of(obj["mask"]),
                "category": obj["shape"],
                "shape": obj["shape"],
                "colour": obj["colour"],
                "size": obj["size"],
                "depth": obj["depth"],
                "mask": png_bytes(obj["mask"].astype(np.uint8) * 255),
            }
        )
    # Records list objects left-to-right: a stable, human-readable order (Pix2Seq found random order
    # works as well for detection; deterministic order makes references like "the left one" easy).
    objects.sort(key=lambda o: (o["box"][0], o["box"][1]))
    image_u8 = image.astype(np.uint8)
    return {
        "id": f"world-{cfg.seed}-{split}-{index}",
        "image": png_bytes(image_u8),
        "width": size,
        "height": size,
        "background": background,
        "objects": objects,
        "captions": _captions(objects, background, rng),
    }


def world_meta(cfg: WorldConfig, split: str = "train") -> dict:
    """Metadata a store of world records carries (categories, attribute vocabularies, provenance)."""
    return {
        "dataset": "world",
        "categories": list(SHAPES),
        "colours": list(COLOURS),
        "sizes": list(SIZES),
        "backgrounds": list(BACKGROUNDS),
        "provenance": {"generator": "unitok.data.world", "seed": cfg.seed, "size": cfg.size, "split": split},
    }


def iter_world(cfg: WorldConfig, count: int, split: str = "train", start: int = 0):
    for i in range(start, start + count):
        yield make_scene(cfg, i, split)

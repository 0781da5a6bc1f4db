"""Scene geometry of the synthetic world: sampling a layout, painting it, and its dense maps.

Scenes, image pairs and clips all draw their geometry here, so they share one painter and one depth
model. The camera looks down at a ground plane: the top image row sees far ground, the bottom row
near ground. Each shape is a flat card standing on the ground at its lowest pixel row, so lower
shapes are nearer, as in a photograph. A per-card factor below 1 pulls the card a little in front of
the ground it stands on; since every pixel of a card is at or above its base row, where the ground is
at least as far, every object is strictly nearer than the background behind it.

Occlusion follows depth: shapes are painted far-to-near, so a shape that hides part of another is
always the nearer one. Geometry is drawn in pixels of a configurable square side, never assuming 64.

A scene is drawn in two steps: a ``Plan`` (background, and each object's shape, colour and size), then
a layout that places the planned objects. The plan is shaped so that no answer is guessable from the
wording of a question (see ``sample_plan``): the object count is uniform, and one kind of shape or one
colour (the scene's *count focus*) appears zero to three times, uniformly, so "how many circles are
there?" has no favourite answer. Backgrounds are balanced exactly over every block of four scenes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .schema import DEPTH_SCALE, png_bytes

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
# Half-extent of a shape as a fraction of half the image side. The classes do not overlap, so "larger"
# between two size classes is never in doubt.
SIZES = {"small": (0.16, 0.22), "medium": (0.26, 0.34), "large": (0.38, 0.46)}
BACKGROUNDS = {"gray": (105, 105, 105), "black": (22, 22, 26), "navy": (20, 28, 72), "brown": (78, 52, 30)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# Splits draw from disjoint random streams of the same world.
SPLITS = ("train", "val", "test")
# The version of what the generators write. Bump it whenever a record of the same (seed, split, index)
# changes; stores carry it in their metadata (``world_version``) and a store of another version is refused
# when opened (``store.RecordStore``). Stores written before versions were recorded count as version 1.
# 2: de-biased language (no text-only shortcuts, see docs/architecture.md), count-focus plans, balanced
#    backgrounds, objects' ``base`` row.
WORLD_VERSION = 2
# Counting questions about one kind of shape or one colour are answered zero .. COUNT_FOCUS_MAX.
COUNT_FOCUS_MAX = 3

GROUND_FAR_M = 12.0  # depth of the ground seen by the top image row
GROUND_NEAR_M = 2.0  # ... and by the bottom row
CARD_FACTOR = (0.8, 0.95)  # a card's depth over the depth of the ground at its base row
# A nearer shape counts as hiding another when this much of the other is seen covered by it: a corner
# touching a few pixels does not show a viewer which of the two is in front.
OCCLUSION_MIN_PIXELS = 3
OCCLUSION_MIN_FRACTION = 0.03
_PLACEMENT_ATTEMPTS = 400  # per object
_SIZE_ATTEMPTS = 25  # failed placements of an object before its size class is redrawn


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    size: int = 64  # image side in pixels
    min_objects: int = 1
    max_objects: int = 5
    min_visible: float = 0.45  # an object keeps at least this fraction of its pixels unoccluded

    def __post_init__(self):
        if self.size < 16:
            raise ValueError(f"WorldConfig.size={self.size}: shapes need at least 16 pixels a side")
        if not 1 <= self.min_objects <= self.max_objects < len(NUMBER_WORDS):
            raise ValueError(f"WorldConfig objects {self.min_objects}..{self.max_objects}: need "
                             f"1 <= min_objects <= max_objects <= {len(NUMBER_WORDS) - 1} (counts are words)")


@dataclass
class Shape:
    """One object before occlusion: its attributes, its distance, and every pixel it covers."""
    shape: str
    colour: str
    size: str
    depth: float  # metres, on the depth map's millimetre grid
    full: np.ndarray  # (H, W) bool, including the pixels that nearer shapes hide


@dataclass
class Scene:
    background: str
    backdrop: np.ndarray  # (H, W, 3) uint8: the background before any shape is painted
    shapes: list[Shape]  # nearest first
    focus: tuple[str, str] = ("shape", SHAPES[0])  # the plan's count focus: ("shape", s) or ("colour", c)


@dataclass
class Plan:
    """What a scene will hold before any geometry: background and (shape, colour, size) per object.

    ``focus`` is ("shape", s) or ("colour", c): the plan holds exactly ``focus_count`` objects of it.
    """
    background: str
    objects: list[tuple[str, str, str]]  # (shape, colour, size); (shape, colour) unique
    focus: tuple[str, str]
    focus_count: int


def scene_rng(cfg: WorldConfig, split: str, index: int, *stream: int) -> np.random.Generator:
    """The random stream of one record; ``stream`` keeps record kinds (scene, pair, clip) apart."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return np.random.default_rng([cfg.seed, SPLITS.index(split), index, cfg.size, *stream])


@lru_cache(maxsize=16)
def ground_depth(size: int) -> np.ndarray:
    """(H,) metres of ground seen by each row; inverse depth is linear in the row, as on a real plane.
    (Cached and read-only.)"""
    v = (np.arange(size) + 0.5) / size
    depth = 1.0 / (1.0 / GROUND_FAR_M + v * (1.0 / GROUND_NEAR_M - 1.0 / GROUND_FAR_M))
    depth.flags.writeable = False
    return depth


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """(H, W) bool mask of one shape centred at (cx, cy) with half-extent r (pixels)."""
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


def box_of(mask: np.ndarray) -> list[float]:
    """[x0, y0, x1, y1] of the True pixels, pixel-edge convention: column x spans [x, x+1)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def visible_masks(shapes: list[Shape]) -> list[np.ndarray]:
    """What each shape (nearest first) still shows once every nearer shape is painted over it."""
    out: list[np.ndarray] = []
    covered = np.zeros_like(shapes[0].full) if shapes else None
    for s in shapes:
        out.append(s.full & ~covered)
        covered = covered | s.full
    return out


def balanced_pick(cfg: WorldConfig, split: str, index: int, options, *stream: int):
    """One of ``options`` for record ``index``, each exactly once in every aligned block of len(options)
    consecutive indices (in a random order per block), so a label drawn this way is balanced in any store."""
    k = len(options)
    block = scene_rng(cfg, split, index // k, 7, *stream).permutation(k)
    return list(options)[int(block[index % k])]


@lru_cache(maxsize=None)
def count_joint(min_objects: int, max_objects: int) -> np.ndarray:
    """P(object count n, focus count k) with both marginals uniform and k <= n: (n values, k values).

    Found by iterative proportional fitting on the support k <= n (feasible since k's range is no longer
    than n's, see ``COUNT_FOCUS_MAX``), so neither "how many shapes" nor "how many circles" has a mode.
    """
    ns = np.arange(min_objects, max_objects + 1)
    ks = np.arange(0, min(COUNT_FOCUS_MAX, max_objects) + 1)
    p = (ks[None, :] <= ns[:, None]).astype(np.float64)
    for _ in range(2000):
        p *= (1.0 / len(ns)) / p.sum(1, keepdims=True)
        p *= (1.0 / len(ks)) / p.sum(0, keepdims=True)
    return p / p.sum()


def _count_width(max_objects: int) -> int:
    return min(COUNT_FOCUS_MAX, max_objects) + 1


@lru_cache(maxsize=None)
def _count_cdf(min_objects: int, max_objects: int) -> np.ndarray:
    cdf = np.cumsum(count_joint(min_objects, max_objects).ravel())
    cdf.flags.writeable = False
    return cdf


def sample_plan(cfg: WorldConfig, rng: np.random.Generator, background: str | None = None) -> Plan:
    """Background, object count, the count focus and every object's attributes (no geometry).

    (n, k) come from ``count_joint``; the focus (a shape or a colour, either kind equally often) is held
    by exactly k objects, and the other n - k objects are drawn uniformly from what is not the focus.
    Attributes stay exchangeable: every colour and every shape is equally likely overall.
    """
    if background is None:
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    joint = _count_cdf(cfg.min_objects, cfg.max_objects)
    cell = min(int(np.searchsorted(joint, rng.random(), side="right")), len(joint) - 1)
    n, k = cfg.min_objects + cell // _count_width(cfg.max_objects), cell % _count_width(cfg.max_objects)
    colours = list(COLOURS)
    if rng.integers(2) == 0:
        focus = ("shape", SHAPES[rng.integers(len(SHAPES))])
        pairs = [(focus[1], colours[c]) for c in rng.permutation(len(colours))[:k]]
        others_shapes, others_colours = [s for s in SHAPES if s != focus[1]], colours
    else:
        focus = ("colour", colours[rng.integers(len(colours))])
        pairs = [(SHAPES[s], focus[1]) for s in rng.permutation(len(SHAPES))[:k]]
        others_shapes, others_colours = list(SHAPES), [c for c in colours if c != focus[1]]
    while len(pairs) < n:
        pair = (others_shapes[rng.integers(len(others_shapes))], others_colours[rng.integers(len(others_colours))])
        if pair not in pairs:
            pairs.append(pair)
    sizes = list(SIZES)
    objects = [(s, c, sizes[rng.integers(len(sizes))]) for s, c in pairs]
    return Plan(background, [objects[i] for i in rng.permutation(n)], focus, k)


def _backdrop(background: str, size: int, rng: np.random.Generator) -> np.ndarray:
    # A mild vertical gradient + noise so backgrounds are not trivially flat.
    grad = np.linspace(-12, 12, size, dtype=np.float32)[:, None, None]
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * 4
    return np.clip(np.array(BACKGROUNDS[background], np.float32) + grad + noise, 0, 255).astype(np.uint8)


def _sample_shape(cfg: WorldConfig, rng: np.random.Generator, shape: str, colour: str, size_name: str) -> Shape | None:
    r = rng.uniform(*SIZES[size_name]) * cfg.size / 2
    cx, cy = rng.uniform(r, cfg.size - r, size=2)
    full = shape_mask(shape, cx, cy, r, cfg.size)
    if full.sum() < 4:
        return None
    base_row = np.nonzero(full.any(axis=1))[0].max()
    depth = round(float(ground_depth(cfg.size)[base_row] * rng.uniform(*CARD_FACTOR)), 3)
    return Shape(shape, colour, size_name, depth, full)


def _fits(candidate: Shape, shapes: list[Shape], cfg: WorldConfig) -> bool:
    """Whether adding ``candidate`` keeps every shape nameable and visible enough.

    (shape, colour) stays unique so captions and references can always name an object; depths stay
    distinct on the millimetre grid so "nearer" is never a tie.
    """
    if any((s.shape, s.colour) == (candidate.shape, candidate.colour) or s.depth == candidate.depth
           for s in shapes):
        return False
    trial = sorted([*shapes, candidate], key=lambda s: s.depth)
    return all(v.sum() >= max(4, cfg.min_visible * s.full.sum()) for s, v in zip(trial, visible_masks(trial)))


def layout(cfg: WorldConfig, plan: Plan, rng: np.random.Generator) -> Scene:
    """Place the plan's objects one by one; a placement that breaks ``_fits`` is redrawn.

    After ``_SIZE_ATTEMPTS`` failed placements an object's size class is redrawn (a crowded scene cannot
    always take another large shape), and from half the attempts on it is small. With the default
    config every object fits (shapes, colours and counts are exactly the plan's); a config crowded beyond
    that leaves out an object that never fits, as the world always did, and everything said about the
    scene is computed from the objects placed.
    """
    backdrop = _backdrop(plan.background, cfg.size, rng)
    sizes = list(SIZES)
    shapes: list[Shape] = []
    for shape, colour, size_name in plan.objects:
        for attempt in range(_PLACEMENT_ATTEMPTS):
            if attempt and attempt % _SIZE_ATTEMPTS == 0:
                size_name = sizes[rng.integers(len(sizes))] if attempt < _PLACEMENT_ATTEMPTS // 2 else sizes[0]
            candidate = _sample_shape(cfg, rng, shape, colour, size_name)
            if candidate is not None and _fits(candidate, shapes, cfg):
                shapes = sorted([*shapes, candidate], key=lambda s: s.depth)
                break
    return Scene(plan.background, backdrop, shapes, plan.focus)


def sample_scene(cfg: WorldConfig, rng: np.random.Generator, background: str | None = None) -> Scene:
    """A plan (``sample_plan``) laid out (``layout``)."""
    return layout(cfg, sample_plan(cfg, rng, background), rng)


def single_object_images(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, size, size) float32 images in [-1, 1] with one shape each, and each shape's index in
    ``SHAPES``: the object-identity probe (``benchmarks/shape_probe.py``, ``tests/test_shape_identity.py``)."""
    cfg = WorldConfig(seed=seed, size=size, min_objects=1, max_objects=1)
    rng = np.random.default_rng(seed)
    x, y = np.zeros((n, 3, size, size), np.float32), np.zeros(n, np.int64)
    for i in range(n):
        scene = sample_scene(cfg, rng)
        x[i] = paint(scene.backdrop, scene.shapes).transpose(2, 0, 1) / 127.5 - 1
        y[i] = SHAPES.index(scene.shapes[0].shape)
    return x, y


def paint(backdrop: np.ndarray, shapes: list[Shape]) -> np.ndarray:
    """(H, W, 3) uint8 image: shapes (nearest first) painted far-to-near, so nearer ones occlude."""
    image = backdrop.copy()
    for s in reversed(shapes):
        image[s.full] = COLOURS[s.colour]
    return image


def dense_maps(shapes: list[Shape], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(segmentation (H, W) uint8 class ids, depth (H, W) uint16 millimetres), painted like the image."""
    seg = np.zeros((size, size), np.uint8)
    ground_mm = np.round(ground_depth(size) * DEPTH_SCALE).astype(np.uint16)
    depth = np.repeat(ground_mm[:, None], size, axis=1)
    for s in reversed(shapes):
        seg[s.full] = SHAPES.index(s.shape) + 1
        depth[s.full] = round(s.depth * DEPTH_SCALE)
    return seg, depth


def _hides(front_visible: np.ndarray, back_full: np.ndarray) -> bool:
    """Whether a shape, where it is seen, covers enough of another shape to show it is in front."""
    covered = int((front_visible & back_full).sum())
    return covered >= max(OCCLUSION_MIN_PIXELS, OCCLUSION_MIN_FRACTION * back_full.sum())


def object_order(shapes: list[Shape]) -> list[int]:
    """Record order of shapes (indices into the nearest-first list): left to right by visible box.

    A stable, human-readable order (Pix2Seq found random order works as well for detection; a fixed
    order makes "the left one" easy to read off a record).
    """
    boxes = [box_of(v) for v in visible_masks(shapes)]
    return sorted(range(len(shapes)), key=lambda i: (boxes[i][0], boxes[i][1]))


def object_records(shapes: list[Shape]) -> list[dict]:
    """The ``objects`` field: one dict per shape, in ``object_order``.

    Besides box/category/attributes/mask, each carries ``visible`` (fraction of the shape left
    unoccluded), ``occluded_by`` (record indices of the objects seen covering part of it, see
    ``_hides``), which the language generators use for "partly hidden" and "in front of", and ``base``
    (the row below the full shape's lowest pixel: where the card stands, which sets its depth up to
    ``CARD_FACTOR``).
    """
    order = object_order(shapes)
    rank = {old: new for new, old in enumerate(order)}
    visible = visible_masks(shapes)
    records = []
    for i in order:
        s, v = shapes[i], visible[i]
        records.append({
            "box": box_of(v),
            "category": s.shape,
            "shape": s.shape,
            "colour": s.colour,
            "size": s.size,
            "depth": s.depth,
            "mask": png_bytes(v.astype(np.uint8) * 255),
            "visible": round(float(v.sum() / s.full.sum()), 3),
            "occluded_by": sorted(rank[j] for j in range(i) if _hides(visible[j], s.full)),
            "base": float(np.nonzero(s.full.any(axis=1))[0].max() + 1),  # the full shape's bottom edge
        })
    return records


def base_meta(kind: str, cfg: WorldConfig, split: str) -> dict:
    """Metadata every world dataset carries: vocabularies and how to regenerate it."""
    return {
        "dataset": kind,
        "world_version": WORLD_VERSION,
        "categories": list(SHAPES),
        "colours": list(COLOURS),
        "sizes": list(SIZES),
        "backgrounds": list(BACKGROUNDS),
        "depth_scale": DEPTH_SCALE,
        "palette": {name: list(rgb) for name, rgb in {**COLOURS, **BACKGROUNDS}.items()},  # RGB of every named colour
        "provenance": {"generator": "unitok.data.world", "kind": kind, "seed": cfg.seed, "size": cfg.size,
                       "split": split, "min_objects": cfg.min_objects, "max_objects": cfg.max_objects,
                       "min_visible": cfg.min_visible},
    }

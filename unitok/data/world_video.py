"""Short world clips for action recognition: one shape moves steadily, the others stay still.

The mover's path is chosen so that its swept area touches no other shape: nothing is occluded or
revealed along the way, so every still object keeps its box in every frame, the mover's box shifts by
exactly ``step`` pixels a frame, and the action label is the only thing that changes over time.
The background (including its noise) is the same in every frame: a fixed camera.
"""
from __future__ import annotations

import numpy as np

from .schema import png_bytes
from .world_scene import COLOURS, SHAPES, Shape, WorldConfig, base_meta, box_of, object_order, \
    object_records, paint, sample_scene, scene_rng, visible_masks

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
TRAVEL = 0.25  # fraction of the image side the mover covers over the whole clip
_CLIP_STREAM = 2
_ATTEMPTS = 50


def _shifted(s: Shape, dx: int, dy: int) -> Shape:
    # Callers check the path stays inside the image, so rolling never wraps pixels around.
    return Shape(s.shape, s.colour, s.size, s.depth, np.roll(s.full, (dy, dx), axis=(0, 1)))


def _path_clear(shapes: list[Shape], i: int, dx: int, dy: int, frames: int) -> bool:
    """Whether shape i can travel (dx, dy) per frame for ``frames`` frames inside the image, touching nothing."""
    ys, xs = np.nonzero(shapes[i].full)
    size = shapes[i].full.shape[0]
    far_x, far_y = dx * (frames - 1), dy * (frames - 1)
    if min(xs.min() + far_x, ys.min() + far_y) < 0 or max(xs.max() + far_x, ys.max() + far_y) >= size:
        return False
    swept = np.logical_or.reduce([_shifted(shapes[i], dx * t, dy * t).full for t in range(frames)])
    return not any((swept & s.full).any() for j, s in enumerate(shapes) if j != i)


def _boxes(shapes: list[Shape], order: list[int]) -> list[list[float]]:
    visible = visible_masks(shapes)
    return [box_of(visible[k]) for k in order]


def make_clip(cfg: WorldConfig, index: int, split: str = "train", frames: int = 4) -> dict:
    """Clip ``index`` of ``split``: T = ``frames`` PNG frames and the action "<colour> <shape> moves <dir>".

    ``objects`` are frame 0's; ``tracks[t][k]`` is object k's box in frame t; ``mover`` indexes objects.
    """
    if frames < 2:
        raise ValueError(f"make_clip: frames={frames}, a motion needs at least 2")
    rng = scene_rng(cfg, split, index, _CLIP_STREAM)
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    step = max(1, round(TRAVEL * cfg.size / (frames - 1)))
    dx, dy = (step * d for d in DIRECTIONS[direction])
    for _ in range(_ATTEMPTS):
        scene = sample_scene(cfg, rng)
        movers = [i for i in range(len(scene.shapes)) if _path_clear(scene.shapes, i, dx, dy, frames)]
        if movers:
            break
    else:
        raise RuntimeError(f"clip {index}: no shape can move {direction} {step}px x {frames - 1} in {_ATTEMPTS} draws")
    m = movers[rng.integers(len(movers))]
    timeline = [[_shifted(s, dx * t, dy * t) if j == m else s for j, s in enumerate(scene.shapes)]
                for t in range(frames)]
    order = object_order(scene.shapes)
    objects = object_records(scene.shapes)
    mover = order.index(m)
    return {
        "id": f"world_video-{cfg.seed}-{split}-{index}",
        "frames": [png_bytes(paint(scene.backdrop, shapes)) for shapes in timeline],
        "width": cfg.size,
        "height": cfg.size,
        "background": scene.background,
        "action": f"{objects[mover]['colour']} {objects[mover]['shape']} moves {direction}",
        "mover": mover,
        "direction": direction,
        "objects": objects,
        "tracks": [_boxes(shapes, order) for shapes in timeline],
    }


def video_meta(cfg: WorldConfig, split: str = "train", frames: int = 4) -> dict:
    actions = sorted(f"{c} {s} moves {d}" for c in COLOURS for s in SHAPES for d in DIRECTIONS)
    return {**base_meta("world_video", cfg, split), "actions": actions, "directions": list(DIRECTIONS),
            "frames": frames}

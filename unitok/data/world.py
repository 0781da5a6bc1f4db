"""The synthetic world: seeded scenes of coloured shapes with every annotation, plus pairs and clips.

A record is fully determined by ``(seed, split, index, size)``: ``make_scene(WorldConfig(seed=0), 7)``
is the same bytes on every machine (for one ``WORLD_VERSION``, which every store's metadata records; a
store of another version is refused when opened). The world is made of:

    world_scene      plans (what a scene holds), geometry: layout, occlusion, painting, segmentation, depth
    world_language   captions, referring expressions, region descriptions, image-text matching
    world_questions  VQA (closed answer set) and entailment
    world_pairs      two-image statements (NLVR2-style)          -> dataset "world_pairs"
    world_video      clips in which one shape moves              -> dataset "world_video"

This module is the entry point: ``KINDS`` maps each dataset name to a pair of functions,
``make(cfg, index, split) -> record`` and ``meta(cfg, split) -> metadata``, so the CLI builds any kind
the same way (``iter_world(cfg, count, split, start, kind)``, ``meta_for(kind, cfg, split)``).

Scene record (``make_scene``), beyond schema's id/image/width/height:
    background    str, the scene-classification label (balanced over every 4 consecutive indices)
    objects       list, left to right by visible box: box, category (= shape), shape,
                  colour, size, depth (metres; nearer = smaller; an occluder is always nearer), mask
                  (PNG L, 255 = visible pixel), visible (fraction unoccluded), occluded_by (indices),
                  base (row below the full shape: where the card stands on the ground)
    segmentation  PNG L (H, W): 0 background, SHAPES.index(shape) + 1 on each object's visible pixels
    depth         PNG I;16 (H, W): millimetres (meta depth_scale = 1000); ground plane behind objects
    captions      list[str], each naming every object's size, colour and shape and the background;
                  refs [{expression, object, box}]; regions [{box, description, object, category}];
                  vqa [{question, answer, type}]; entailment [{statement, label}]; itm [{text, match}]

No label is guessable from the text of its prompt alone (``tests/test_shortcuts.py`` fits blind
baselines and holds them to chance): see the generators' docstrings for how each is balanced.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .schema import DEPTH_SCALE, png_bytes
from .world_language import captions, description, itm, referring_expressions, regions
from .world_pairs import make_pair, pairs_meta
from .world_questions import VQA_TYPES, answer_set, entailment, vqa
from .world_scene import BACKGROUNDS, COLOURS, NUMBER_WORDS, SHAPES, SIZES, SPLITS, WORLD_VERSION, \
    Scene, WorldConfig, balanced_pick, base_meta, dense_maps, object_records, paint, sample_scene, scene_rng
from .world_video import make_clip, video_meta

__all__ = ["BACKGROUNDS", "COLOURS", "DEPTH_SCALE", "KINDS", "NUMBER_WORDS", "SHAPES", "SIZES", "SPLITS",
           "WORLD_VERSION", "WorldConfig", "iter_world", "make_clip", "make_pair", "make_scene", "meta_for",
           "pairs_meta", "scene_of", "video_meta", "world_meta"]


def scene_of(cfg: WorldConfig, index: int, split: str = "train") -> tuple[Scene, np.random.Generator]:
    """The geometry of scene ``index`` and its random stream, positioned for the language that follows.

    The background is balanced over every block of four indices (scene classification has no mode)."""
    rng = scene_rng(cfg, split, index)
    return sample_scene(cfg, rng, balanced_pick(cfg, split, index, BACKGROUNDS)), rng


def make_scene(cfg: WorldConfig, index: int, split: str = "train") -> dict:
    """Render scene ``index`` of ``split`` of the world ``cfg`` as a record dict (fields above)."""
    scene, rng = scene_of(cfg, index, split)
    objects = object_records(scene.shapes)
    segmentation, depth = dense_maps(scene.shapes, cfg.size)
    caps = captions(objects, scene.background, cfg.size, rng)
    return {
        "id": f"world-{cfg.seed}-{split}-{index}",
        "image": png_bytes(paint(scene.backdrop, scene.shapes)),
        "width": cfg.size,
        "height": cfg.size,
        "background": scene.background,
        "objects": objects,
        "segmentation": png_bytes(segmentation),
        "depth": png_bytes(depth),
        "captions": caps,
        "description": description(objects, scene.background, cfg.size),  # names every object (text-to-image prompts)
        "refs": referring_expressions(objects, cfg.size, rng),
        "regions": regions(objects),
        "vqa": vqa(objects, scene.background, cfg.size, rng, scene.focus),
        "entailment": entailment(objects, scene.background, cfg.size, rng),
        "itm": itm(objects, scene.background, cfg.size, (cfg.min_objects, cfg.max_objects), rng),
    }


def world_meta(cfg: WorldConfig, split: str = "train") -> dict:
    """Metadata a store of world scenes carries: vocabularies, the VQA answer set, provenance."""
    return {**base_meta("world", cfg, split), "answers": answer_set(cfg.max_objects), "vqa_types": list(VQA_TYPES)}


KINDS: dict[str, tuple[Callable[[WorldConfig, int, str], dict], Callable[[WorldConfig, str], dict]]] = {
    "world": (make_scene, world_meta),
    "world_pairs": (make_pair, pairs_meta),
    "world_video": (make_clip, video_meta),
}


def _kind(kind: str):
    if kind not in KINDS:
        raise ValueError(f"unknown world kind {kind!r}; expected one of {sorted(KINDS)}")
    return KINDS[kind]


def meta_for(kind: str, cfg: WorldConfig, split: str = "train") -> dict:
    return _kind(kind)[1](cfg, split)


def iter_world(cfg: WorldConfig, count: int, split: str = "train", start: int = 0,
               kind: str = "world") -> Iterator[dict]:
    """Records ``start .. start+count-1`` of one kind (default: scenes)."""
    make = _kind(kind)[0]
    for i in range(start, start + count):
        yield make(cfg, i, split)

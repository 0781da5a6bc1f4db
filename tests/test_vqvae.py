"""VQ-VAE tokenizers: round trips, validation errors, save/load, spec checks, quality floors.

Two tiny tokenizers are trained once per module (well under a minute together); the shipped assets in
``tokenizers/`` are checked against the floors documented in ``tokenizers/README.md``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unitok.data.schema import png_bytes
from unitok.data.world import SHAPES, WorldConfig, make_scene
from unitok.metrics import psnr, ssim
from unitok.modalities.vq.config import DepthBins, TokenizerSpecError, VQVAEConfig
from unitok.modalities.vq.tokenizer import DenseTokenizer, ImageTokenizer, load_tokenizer, read_spec
from unitok.train.vq import (
    code_usage,
    dense_arrays,
    depth_quality,
    fit_dense_tokenizer,
    fit_image_tokenizer,
    measure_quality,
    record_depth,
    record_image,
    record_segmentation,
    segmentation_quality,
    train_dense_tokenizer,
    world_records,
)

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tokenizers"
SIZE = 32  # the tiny tokenizers work on 32x32 scenes: no code may assume 64x64
# One stage of 4x4 patches: an 8x8 code grid, 64 codes. Trains to well above the blank baselines in ~5 s of CPU.
TINY = dict(image_size=(SIZE, SIZE), patch=4, channels=(32,), decoder_res_blocks=1, latent_dim=32,
            embed_dim=8, codebook_size=64, codebook_dim=8)


@pytest.fixture(scope="module")
def image_tok() -> ImageTokenizer:
    tok, stats = fit_image_tokenizer(n_images=256, steps=200, batch_size=16, lr=3e-3, size=SIZE,
                                     config=VQVAEConfig(**TINY), log_every=1000)
    assert stats["steps_run"] == 200
    return tok


@pytest.fixture(scope="module")
def dense_tok() -> DenseTokenizer:
    tok, _ = fit_dense_tokenizer(n_images=256, steps=200, batch_size=24, lr=3e-3, size=SIZE,
                                 config=VQVAEConfig(**TINY), depth=DepthBins(1.0, 12.0, 16), log_every=1000)
    return tok


@pytest.fixture(scope="module")
def val_images() -> torch.Tensor:
    return torch.from_numpy(np.stack([record_image(r) for r in world_records(8, split="val", size=SIZE)]))


# -- quality floors of freshly trained tiny tokenizers ------------------------------------------------


def test_tiny_image_tokenizer_beats_mean_colour(image_tok):
    q = measure_quality(image_tok, n_scenes=32)
    # Keeping only each image's mean colour scores ~15 dB on the world: codes must carry the shapes.
    assert q["psnr"] > q["psnr_mean_colour_baseline"] + 2, q
    assert q["ssim"] > q["ssim_mean_colour_baseline"], q
    assert q["usage"] > 0.2 and q["perplexity"] > 8, q


def test_tiny_dense_tokenizer_beats_blank_maps(dense_tok):
    recs = list(world_records(32, split="val", size=SIZE))
    q = measure_quality(dense_tok, recs, n_scenes=32)
    seg, _, depth = dense_arrays(recs, SIZE)
    blank_miou = segmentation_quality(torch.zeros_like(seg), seg)["seg_miou"]  # everything background
    flat_depth = depth_quality(torch.full_like(depth, float(depth.median())), depth)  # one depth everywhere
    assert q["seg_miou"] > blank_miou + 0.2, (q, blank_miou)
    assert q["depth_absrel"] < 0.5 * flat_depth["depth_absrel"], (q, flat_depth)
    assert q["mask_iou"] > 0.5, q


# -- shapes, dtypes, determinism ------------------------------------------------------------------------


def test_image_round_trip_shapes(image_tok, val_images):
    codes = image_tok.encode(val_images)
    assert codes.shape == (8, *image_tok.grid) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < image_tok.codebook_size
    out = image_tok.decode(codes)
    assert out.shape == val_images.shape and out.dtype == torch.uint8
    # float (B, 3, H, W) in [0, 1] is the same image as uint8 (B, H, W, 3)
    as_float = val_images.permute(0, 3, 1, 2).float() / 255
    assert torch.equal(image_tok.encode(as_float), codes)
    assert image_tok.grid == (SIZE // 4, SIZE // 4) and image_tok.image_size == (SIZE, SIZE)


def test_batched_equals_unbatched(image_tok, dense_tok, val_images):
    batched = image_tok.encode(val_images)
    single = torch.cat([image_tok.encode(val_images[i : i + 1]) for i in range(len(val_images))])
    assert torch.equal(batched, single)
    assert torch.equal(image_tok.decode(batched[:3]), torch.cat([image_tok.decode(batched[i : i + 1]) for i in range(3)]))
    seg = torch.from_numpy(np.stack([record_segmentation(r) for r in world_records(6, split="val", size=SIZE)]))
    b = dense_tok.encode_segmentation(seg)
    assert torch.equal(b, torch.cat([dense_tok.encode_segmentation(seg[i : i + 1]) for i in range(6)]))


def test_dense_round_trip_types(dense_tok):
    recs = list(world_records(4, split="val", size=SIZE))
    seg = torch.from_numpy(np.stack([record_segmentation(r) for r in recs]))
    depth = torch.from_numpy(np.stack([record_depth(r) for r in recs]))
    masks = seg > 0
    for codes in (dense_tok.encode_segmentation(seg), dense_tok.encode_depth(depth), dense_tok.encode_mask(masks)):
        assert codes.shape == (4, *dense_tok.grid) and codes.dtype == torch.int64
    seg_hat = dense_tok.decode_segmentation(dense_tok.encode_segmentation(seg))
    assert seg_hat.shape == seg.shape and seg_hat.dtype == torch.int64 and int(seg_hat.max()) < 6
    d_hat = dense_tok.decode_depth(dense_tok.encode_depth(depth))
    assert d_hat.dtype == torch.float32 and float(d_hat.min()) > 0
    m_hat = dense_tok.decode_mask(dense_tok.encode_mask(masks))
    assert m_hat.dtype == torch.bool and m_hat.shape == masks.shape


def test_depth_bins_round_trip():
    bins = DepthBins(1.0, 10.0, 64)
    d = torch.tensor([1.0, 2.5, 9.99, 0.2, 50.0])
    back = bins.to_metres(bins.to_bins(d))
    rel = ((back - d.clamp(1, 10)).abs() / d.clamp(1, 10))
    assert float(rel.max()) < (10 ** (1 / 64) - 1)  # within one bin's relative width


# -- errors ---------------------------------------------------------------------------------------------


def test_codes_out_of_range(image_tok, dense_tok):
    k = image_tok.codebook_size
    codes = torch.zeros(1, *image_tok.grid, dtype=torch.long)
    codes[0, 0, 0] = k
    with pytest.raises(ValueError, match=rf"code {k} out of range \[0, {k}\)"):
        image_tok.decode(codes)
    codes[0, 0, 0] = -1
    with pytest.raises(ValueError, match="out of range"):
        dense_tok.decode_segmentation(codes)
    with pytest.raises(ValueError, match=r"\(B, 8, 8\); got \(1, 4, 4\)"):
        image_tok.decode(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        image_tok.decode(torch.zeros(1, *image_tok.grid))


def test_wrong_channels_and_size(image_tok, dense_tok):
    with pytest.raises(ValueError, match="got 4 channels"):
        image_tok.encode(torch.zeros(2, SIZE, SIZE, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="got 1 channels"):
        image_tok.encode(torch.zeros(2, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match=rf"must be {SIZE}x{SIZE} \(H x W\); got 64x48"):
        image_tok.encode(torch.zeros(2, 64, 48, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch"):
        image_tok.encode(torch.zeros(SIZE, SIZE, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_tok.encode(torch.full((1, 3, SIZE, SIZE), 255.0))
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 6\)"):
        dense_tok.encode_segmentation(torch.full((1, SIZE, SIZE), 6))
    with pytest.raises(ValueError, match="got 16x16"):
        dense_tok.encode_depth(torch.ones(1, 16, 16))
    with pytest.raises(ValueError, match="finite and positive"):
        dense_tok.encode_depth(torch.zeros(1, SIZE, SIZE))
    with pytest.raises(TypeError, match="float metres"):
        dense_tok.encode_depth(torch.ones(1, SIZE, SIZE, dtype=torch.long))


def test_untrained_tokenizer_encodes_without_learning_from_inputs():
    # VectorQuantize would k-means-initialise its codebook from the first batch encoded; inference must not.
    tok = ImageTokenizer(VQVAEConfig(**TINY))
    x = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)
    first = tok.encode(x)
    assert not bool(tok.model.quantizer.vq._codebook.initted)
    assert torch.equal(tok.encode(x[:1]), first[:1]) and first.shape == (2, *tok.grid)


# -- save / load / spec ---------------------------------------------------------------------------------


def test_save_load_identical(image_tok, dense_tok, val_images, tmp_path):
    json_path = image_tok.save(tmp_path / "img")
    assert json_path == tmp_path / "img.json" and (tmp_path / "img.safetensors").exists()
    loaded = ImageTokenizer.load(tmp_path / "img")
    codes = image_tok.encode(val_images)
    assert torch.equal(loaded.encode(val_images), codes)
    assert torch.equal(loaded.decode(codes), image_tok.decode(codes))
    assert loaded.spec() == image_tok.spec()

    dense_tok.save(tmp_path)  # a directory: dir/tokenizer.{json,safetensors}
    d2 = load_tokenizer(tmp_path)
    assert isinstance(d2, DenseTokenizer) and d2.spec() == dense_tok.spec()
    seg = torch.from_numpy(np.stack([record_segmentation(r) for r in world_records(4, split="val", size=SIZE)]))
    assert torch.equal(d2.encode_segmentation(seg), dense_tok.encode_segmentation(seg))


def test_spec_contents(image_tok, dense_tok, tmp_path):
    spec = image_tok.spec()
    assert spec["kind"] == "image" and spec["codebook_size"] == 64
    assert spec["grid"] == [8, 8] and spec["image_size"] == [SIZE, SIZE] and spec["format_version"] == 1
    d = dense_tok.spec()
    assert d["kind"] == "dense" and d["num_classes"] == len(SHAPES) + 1
    assert d["class_names"][0] == "background" and d["depth"]["bins"] == 16
    image_tok.save(tmp_path / "img", notes={"command": "test"})
    on_disk = read_spec(tmp_path / "img.json")
    assert on_disk == json.loads(json.dumps(spec))


def test_check_compatible_names_the_key(image_tok, dense_tok, tmp_path):
    image_tok.check_compatible({"kind": "image", "codebook_size": 64, "grid": [8, 8]})
    with pytest.raises(TokenizerSpecError, match=r"'codebook_size': expected 512, got 64"):
        image_tok.check_compatible({"kind": "image", "codebook_size": 512})
    with pytest.raises(TokenizerSpecError, match=r"'grid'"):
        image_tok.check_compatible({"grid": [16, 16]})
    with pytest.raises(TokenizerSpecError, match=r"'model.latent_dim'"):
        image_tok.check_compatible({"model": {"latent_dim": 999}})
    with pytest.raises(TokenizerSpecError, match=r"'depth.bins'"):
        dense_tok.check_compatible({"depth": {"bins": 64}})
    dense_tok.save(tmp_path / "dense")
    with pytest.raises(TokenizerSpecError, match=r"'kind': expected 'image', got 'dense'"):
        ImageTokenizer.load(tmp_path / "dense")


def test_load_rejects_tampered_assets(image_tok, tmp_path):
    image_tok.save(tmp_path / "img")
    doc = json.loads((tmp_path / "img.json").read_text())
    doc["model"]["latent_dim"] = 48
    doc["weights"].pop("sha256")
    (tmp_path / "img.json").write_text(json.dumps(doc))
    with pytest.raises(TokenizerSpecError, match="does not fit the architecture"):
        ImageTokenizer.load(tmp_path / "img")
    image_tok.save(tmp_path / "img")
    doc = json.loads((tmp_path / "img.json").read_text())
    doc["format_version"] = 99
    (tmp_path / "img.json").write_text(json.dumps(doc))
    with pytest.raises(TokenizerSpecError, match="format_version 99"):
        ImageTokenizer.load(tmp_path / "img")
    image_tok.save(tmp_path / "img")
    (tmp_path / "img.safetensors").write_bytes((tmp_path / "img.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(TokenizerSpecError, match="sha256"):
        ImageTokenizer.load(tmp_path / "img")


# -- helpers: record fields, metrics ----------------------------------------------------------------------


def test_segmentation_from_masks_matches_the_field():
    rec = make_scene(WorldConfig(seed=3, size=SIZE), 1, "val")
    seg = record_segmentation(rec)
    assert seg.shape == (SIZE, SIZE) and seg.dtype == np.uint8
    expected = {SHAPES.index(o["category"]) + 1 for o in rec["objects"]}
    assert set(np.unique(seg)) - {0} <= expected and (seg > 0).any()
    # Records without the field (imported data) get it painted from the objects' visible masks.
    derived = record_segmentation({k: v for k, v in rec.items() if k != "segmentation"})
    assert (derived == seg).all()
    # A record carrying the fields is read as is.
    rec2 = {**rec, "segmentation": png_bytes(np.full((SIZE, SIZE), 2, np.uint8)),
            "depth": png_bytes(np.full((SIZE, SIZE), 4250, np.uint16))}
    assert (record_segmentation(rec2) == 2).all()
    assert np.allclose(record_depth(rec2), 4.25)
    assert record_depth({k: v for k, v in rec.items() if k != "depth"}) is None


def test_trains_from_a_record_store(tmp_path):
    from unitok.data.store import RecordStore, write_store

    write_store(tmp_path / "train", world_records(12, split="train", size=48))  # resized to SIZE on the way in
    write_store(tmp_path / "val", world_records(4, split="val", size=48))
    result = train_dense_tokenizer(tmp_path / "dense", records=RecordStore(tmp_path / "train"),
                                   val_records=RecordStore(tmp_path / "val"), n_val=4, n_images=12, steps=2,
                                   batch_size=6, size=SIZE, config=VQVAEConfig(**TINY), log_every=1000)
    assert result["n_images"] == 12 and result["num_maps"] == 4 and "depth_absrel" in result
    notes = json.loads((tmp_path / "dense.json").read_text())["notes"]
    assert notes["training"]["steps_run"] == 2 and "seg_miou" in notes["val_quality"]


def test_round_trip_metrics_are_the_evaluators():
    """The VQ measurement scores maps exactly as the miou and depth evaluators do (one definition,
    unitok.metrics): IoU over the whole set, depth per image over the pixels with a reading."""
    from unitok.eval import evaluate
    from unitok.tasks.outputs import DenseMap

    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 10, (3, 8, 8)).astype(np.float32)
    gt[0, :3] = 0  # no reading: left out, not scored as 1 mm
    pred = gt * rng.uniform(0.7, 1.4, gt.shape).astype(np.float32)
    ours = depth_quality(torch.from_numpy(pred), torch.from_numpy(gt))
    theirs = evaluate("depth", [(DenseMap(p, "depth"), DenseMap(g, "depth")) for p, g in zip(pred, gt)])
    assert ours == {"depth_absrel": pytest.approx(theirs["abs_rel"]), "depth_delta1": pytest.approx(theirs["delta1"]),
                    "depth_rmse": pytest.approx(theirs["rmse"])}
    seg = rng.integers(0, 6, (3, 8, 8))
    seg_hat = np.where(rng.random(seg.shape) < 0.7, seg, rng.integers(0, 6, seg.shape))
    theirs = evaluate("miou", [(DenseMap(p, "segmentation"), DenseMap(g, "segmentation")) for p, g in zip(seg_hat, seg)])
    ours = segmentation_quality(torch.from_numpy(seg_hat), torch.from_numpy(seg))
    assert ours["seg_miou"] == pytest.approx(theirs["miou"]) and ours["seg_pixel_acc"] == pytest.approx(theirs["pixel_accuracy"])
    rec = {"id": "r", "depth": png_bytes(np.array([[0, 1500]], np.uint16))}
    assert record_depth(rec).tolist() == [[0.0, 1.5]]  # 0 mm stays "no reading"


def test_metric_sanity():
    img = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    assert torch.allclose(psnr(img, img), torch.full((2,), 100.0, dtype=torch.float64))
    assert torch.allclose(ssim(img, img), torch.ones(2, dtype=torch.float64))
    assert float(ssim(img, 255 - img).mean()) < 0.1
    use = code_usage(torch.arange(16).repeat(4), 32)
    assert abs(use["perplexity"] - 16) < 1e-6 and use["usage"] == 0.5


# -- the shipped assets -------------------------------------------------------------------------------------

# Floors a little under what the shipped assets measure on the first 24 val scenes (tokenizers/README.md:
# image 24.7 dB / SSIM 0.755 / usage 0.82; dense mIoU 0.889, mask IoU 0.887, AbsRel 0.024, delta1 0.977).
SHIPPED_FLOORS = {
    "image_vq": {"psnr": (">", 24.0), "ssim": (">", 0.72), "usage": (">", 0.6)},
    "dense_vq": {"seg_miou": (">", 0.85), "mask_iou": (">", 0.85), "depth_absrel": ("<", 0.035),
                 "depth_delta1": (">", 0.95)},
}


@pytest.mark.parametrize("name", sorted(SHIPPED_FLOORS))
def test_shipped_assets_reach_documented_floors(name):
    path = ASSETS / name
    assert (ASSETS / f"{name}.json").exists() and (ASSETS / f"{name}.safetensors").exists(), f"{path} missing"
    assert (ASSETS / f"{name}.safetensors").stat().st_size < 3_000_000
    tok = load_tokenizer(path)
    spec = read_spec(path)
    tok.check_compatible(spec)
    assert spec["kind"] == ("image" if name == "image_vq" else "dense")
    q = measure_quality(tok, n_scenes=24)
    for key, (op, floor) in SHIPPED_FLOORS[name].items():
        assert (q[key] > floor) if op == ">" else (q[key] < floor), (key, q[key], floor, q)

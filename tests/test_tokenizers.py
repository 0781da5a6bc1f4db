"""Round trips for the text and coordinate tokenizers, and the vocabulary layout contract."""
from __future__ import annotations

import random

import pytest

from unitok.modalities.codec import Codec
from unitok.modalities.coords import CoordQuantizer
from unitok.modalities.text import TextTokenizer
from unitok.modalities.vocab import NUM_SPECIAL_SLOTS, Vocabulary, VocabularyMismatch


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    sentences = [f"a {s} {c} {shape} is left of the {c2} {shape2}."
                 for s in ("small", "large") for c in ("red", "blue", "green") for shape in ("circle", "square")
                 for c2 in ("white", "purple") for shape2 in ("cross", "diamond")] * 3
    return TextTokenizer.train(sentences, tmp_path_factory.mktemp("tok") / "text.model", vocab_size=300)


def test_text_round_trip_including_unseen_characters(text):
    for s in ["a large red circle.", "is the blue square left of the cross?", "Ünïcödé ✓ 42 — naïve"]:
        assert text.decode(text.encode(s)) == s  # byte_fallback: nothing is lost to <unk>


def test_text_model_reloads_identically(text, tmp_path):
    path = tmp_path / "copy.model"
    path.write_bytes(text.proto)
    again = TextTokenizer.from_file(path)
    assert again.encode("a small green square") == text.encode("a small green square")
    assert again.fingerprint == text.fingerprint


def test_text_model_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        TextTokenizer.from_file(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        TextTokenizer.from_file(bad)


@pytest.mark.parametrize("bins", [2, 64, 1000])
@pytest.mark.parametrize("extent", [64, 97, 640])
def test_coordinate_round_trip_error_is_bounded(bins, extent):
    q = CoordQuantizer(bins)
    rng = random.Random(bins * extent)
    for _ in range(500):
        v = rng.uniform(0, extent)
        b = q.quantize(v, extent)
        assert 0 <= b < bins
        assert abs(q.dequantize(b, extent) - v) <= q.max_error(extent) + 1e-9
        assert q.quantize(q.dequantize(b, extent), extent) == b  # bins are fixed points
    assert q.quantize(-5, extent) == 0 and q.quantize(extent * 2, extent) == bins - 1  # clipped
    assert q.quantize(0, extent) == 0 and q.quantize(extent, extent) == bins - 1  # edges map to the end bins


def test_box_codec_round_trip(text):
    codec = Codec.build(text, 128)
    box = [3.0, 10.5, 40.0, 63.0]
    ids = codec.encode_box(box, 64, 64)
    assert all(codec.is_coord(i) for i in ids) and len(ids) == 4
    assert all(abs(a - b) <= 64 / 254 + 1e-9 for a, b in zip(codec.decode_box(ids, 64, 64), box))
    assert codec.decode_text(codec.encode_text("a red circle")) == "a red circle"


def test_vocabulary_layout_and_mismatch(text):
    v = Vocabulary.build(text_size=text.size, coord_bins=64, image_codes=256)
    assert v.range("specials") == (0, NUM_SPECIAL_SLOTS)
    assert v.range("text") == (NUM_SPECIAL_SLOTS, NUM_SPECIAL_SLOTS + text.size)
    assert v.range("image")[1] == v.size
    assert Vocabulary.from_dict(v.to_dict()).differences(v) == []
    other = Vocabulary.build(text_size=text.size, coord_bins=128, image_codes=256)
    with pytest.raises(VocabularyMismatch, match="coords.*64 vs 128"):
        v.check_same(other, what="checkpoint x")
    with pytest.raises(KeyError, match="no 'dense' block"):
        v.range("dense")

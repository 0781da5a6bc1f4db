"""LMDB record stores: round trip, DataLoader workers (fork and spawn), and every way a store can be broken."""
from __future__ import annotations

import multiprocessing as mp
import pickle
import subprocess
import sys
import textwrap

import lmdb
import msgpack
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from unitok.data.schema import META_KEY, SCHEMA_VERSION
from unitok.data.store import RecordStore, StoreError, StoreWriter, write_store
from unitok.data.world import WorldConfig, iter_world, world_meta

N = 24
CFG = WorldConfig(seed=1, size=32)


class RecordIds(Dataset):
    """Module-level so 'spawn' workers can unpickle it; each worker reads through its own LMDB handle."""

    def __init__(self, store: RecordStore):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple[int, str, int]:
        record = self.store[i]
        return i, record["id"], len(record["image"])


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "world"
    assert write_store(path, iter_world(CFG, N), world_meta(CFG)) == N
    return path


def test_round_trip(store_path):
    store = RecordStore(store_path)
    assert len(store) == N
    assert store.meta["schema_version"] == SCHEMA_VERSION and store.meta["count"] == N
    assert store.meta["categories"] == world_meta(CFG)["categories"]
    assert list(store) == list(iter_world(CFG, N))
    with pytest.raises(IndexError, match="out of range"):
        store[N]


def test_pickle_drops_the_environment(store_path):
    store = RecordStore(store_path)
    store[0]  # opens the environment in this process
    assert store._env is not None
    clone = pickle.loads(pickle.dumps(store))
    assert clone._env is None and store._env is not None
    assert clone[3] == store[3]


def test_several_readers_of_one_store_in_one_process(store_path):
    """py-lmdb refuses a second handle on one environment per process: readers must share it."""
    a, b = RecordStore(store_path), RecordStore(store_path.parent / ".." / store_path.parent.name / "world")
    assert a[1] == b[1]
    a.close()
    assert b[2]["id"] == RecordStore(store_path)[2]["id"]  # still open for the others
    with RecordStore(store_path) as c:
        assert len(c) == N


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_every_record(store_path, context):
    store = RecordStore(store_path)
    store[0]  # a handle opened in the parent must not leak into workers
    loader = DataLoader(RecordIds(store), batch_size=5, num_workers=2, multiprocessing_context=mp.get_context(context))
    seen = {}
    for indices, ids, sizes in loader:
        for i, rid, size in zip(indices.tolist(), ids, sizes.tolist()):
            seen[i] = (rid, size)
    expected = {i: (r["id"], len(r["image"])) for i, r in enumerate(iter_world(CFG, N))}
    assert seen == expected


def _raw_put(path, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(path), subdir=True)
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


def test_corrupt_value_names_the_key(tmp_path):
    path = tmp_path / "s"
    write_store(path, iter_world(CFG, 3), world_meta(CFG))
    _raw_put(path, b"%010d" % 1, b"\xc1 not msgpack")
    store = RecordStore(path)
    assert store[0]["id"] and store[2]["id"]
    with pytest.raises(StoreError, match=r"key '0000000001' is corrupt"):
        store[1]


def test_writer_killed_before_metadata_is_refused(tmp_path):
    """A writer that dies after committing records but before the metadata leaves an unreadable store."""
    path = tmp_path / "s"
    script = textwrap.dedent(f"""
        import os
        from unitok.data.store import StoreWriter
        w = StoreWriter({str(path)!r}, {{"dataset": "x"}}, commit_every=2)
        for i in range(5):
            w.add({{"id": str(i)}})
        os._exit(9)  # killed: no close(), no metadata
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    with pytest.raises(StoreError, match="no metadata key .*incomplete"):
        RecordStore(path)


def test_failed_writer_leaves_no_metadata(tmp_path):
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s") as w:
            w.add({"id": "0"})
            raise RuntimeError("boom")
    with pytest.raises(StoreError, match="incomplete"):
        RecordStore(tmp_path / "s")


def test_truncated_store_is_refused_not_a_crash(tmp_path):
    path = tmp_path / "s"
    write_store(path, ({"id": str(i), "blob": bytes(5000)} for i in range(40)), {})
    data = path / "data.mdb"
    with open(data, "r+b") as f:  # reading past the end of a mapped file would be SIGBUS
        f.truncate(data.stat().st_size // 2)
    with pytest.raises(StoreError, match="truncated"):
        RecordStore(path)
    with open(data, "r+b") as f:
        f.truncate(100)
    with pytest.raises(StoreError, match="cannot open"):
        RecordStore(path)


def test_wrong_schema_version_and_bad_metadata(tmp_path):
    path = tmp_path / "s"
    write_store(path, iter_world(CFG, 2), {})
    _raw_put(path, META_KEY, msgpack.packb({"schema_version": SCHEMA_VERSION + 1, "count": 2}))
    with pytest.raises(StoreError, match=f"schema_version {SCHEMA_VERSION + 1} but this unitok reads {SCHEMA_VERSION}"):
        RecordStore(path)
    _raw_put(path, META_KEY, msgpack.packb({"schema_version": SCHEMA_VERSION}))
    with pytest.raises(StoreError, match="no valid record count"):
        RecordStore(path)
    _raw_put(path, META_KEY, msgpack.packb([1, 2]))
    with pytest.raises(StoreError, match="metadata is a list"):
        RecordStore(path)


def test_missing_store_and_existing_store(tmp_path, store_path):
    with pytest.raises(StoreError, match="no LMDB store here"):
        RecordStore(tmp_path / "nothing")
    with pytest.raises(StoreError, match="already exists"):
        StoreWriter(store_path)
    assert len(RecordStore(store_path)) == N  # untouched


def test_tensor_collation_of_decoded_images(store_path):
    """What training does with a record: decode the PNG in the worker and stack."""
    from unitok.data.schema import decode_rgb

    store = RecordStore(store_path)
    batch = torch.stack([torch.from_numpy(decode_rgb(store[i]["image"]).copy()).permute(2, 0, 1) for i in range(4)])
    assert batch.shape == (4, 3, CFG.size, CFG.size) and batch.dtype == torch.uint8


# --- tools behind `unitok data inspect|show|stats` -------------------------------------------------------


def test_inspect_lists_fields_counts_and_categories(store_path):
    from unitok.data.tools import inspect

    text = inspect(store_path)
    assert f"records    {N}" in text and "dataset    world" in text
    assert "image" in text and " png" in text
    assert "objects[].box" in text and "objects[].mask" in text
    assert "categories (5): circle, square, triangle, diamond, cross" in text
    assert "(scanned the first 3)" in inspect(store_path, limit=3)


def test_stats_reports_distributions(store_path):
    from unitok.data.tools import stats

    text = stats(store_path)
    n_objects = sum(len(r["objects"]) for r in iter_world(CFG, N))
    assert f"categories (total {n_objects})" in text
    assert "objects per image" in text and "box size" in text and "caption length" in text


def test_show_draws_image_panels_and_text(store_path, tmp_path):
    from PIL import Image

    from unitok.data.tools import show

    out = show(store_path, 2, tmp_path / "deep" / "r2.png", scale=3)
    with Image.open(out) as img:
        width, height = img.size
    record = RecordStore(store_path)[2]
    panels = 1 + ("segmentation" in record) + ("depth" in record)
    assert width >= panels * 3 * CFG.size and height > 3 * CFG.size  # panels side by side, text below
    with pytest.raises(IndexError):
        show(store_path, N, tmp_path / "x.png")


def test_an_interrupted_world_build_is_generated_again_and_a_build_is_atomic(tmp_path, monkeypatch):
    from conftest import REPO

    from unitok import recipes
    from unitok.config import load_config

    run = load_config(REPO / "configs" / "tiny.yaml", {"data.root": str(tmp_path), "data.world.train": 6, "data.world.val": 4})
    tasks = {"t": type("Spec", (), {"data": "world"})()}
    half = tmp_path / "world" / "train"
    with pytest.raises(RuntimeError):  # a build killed midway, as an older non-atomic build left it
        with StoreWriter(half) as w:
            w.extend(iter_world(WorldConfig(seed=0), 3, "train"))
            raise RuntimeError("killed")
    with pytest.raises(StoreError, match="incomplete"):
        RecordStore(half)
    recipes.prepare_data(run, tasks)
    assert len(RecordStore(half)) == 6 and len(RecordStore(tmp_path / "world" / "val")) == 4
    # a build that fails leaves nothing under the store's own path
    monkeypatch.setattr(recipes, "iter_world", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        recipes.build_world_store("world", "test", 5, tmp_path / "world" / "test")
    assert not (tmp_path / "world" / "test").exists()
    assert sorted(p.name for p in (tmp_path / "world").iterdir()) == ["train", "val"]  # no leftover build

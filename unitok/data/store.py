"""LMDB record stores: one environment per dataset split, msgpack values, a metadata key.

Readers are safe in DataLoader workers under fork and spawn: the environment is opened lazily in
the process that first reads (``readonly=True, lock=False, readahead=False``) and is dropped when
the store is pickled, so each worker opens its own handle.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import lmdb
import msgpack

from .schema import META_KEY, SCHEMA_VERSION


class StoreError(ValueError):
    """A store is missing, from another schema version, or holds a corrupt value."""


def _key(index: int) -> bytes:
    return b"%010d" % index


class StoreWriter:
    """Writes records to a new LMDB store; ``close()`` (or leaving the ``with``) writes the metadata.

    Records are committed in batches; the metadata key is written last, so a store without it is
    known to be incomplete and the reader refuses it.
    """

    def __init__(self, path: str | os.PathLike, meta: dict | None = None, *, commit_every: int = 256,
                 map_size: int = 1 << 36):
        self.path = Path(path)
        if (self.path / "data.mdb").exists():
            raise StoreError(f"{self.path}: a store already exists here; remove it or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta or {})
        self._env = lmdb.open(str(self.path), map_size=map_size, subdir=True, meminit=False)
        self._txn = self._env.begin(write=True)
        self._count = 0
        self._commit_every = commit_every

    def add(self, record: dict) -> None:
        self._txn.put(_key(self._count), msgpack.packb(record, use_bin_type=True))
        self._count += 1
        if self._count % self._commit_every == 0:
            self._txn.commit()
            self._txn = self._env.begin(write=True)

    def extend(self, records: Iterable[dict]) -> None:
        for r in records:
            self.add(r)

    def close(self) -> None:
        if self._env is None:
            return
        meta = {**self.meta, "schema_version": SCHEMA_VERSION, "count": self._count}
        self._txn.put(META_KEY, msgpack.packb(meta, use_bin_type=True))
        self._txn.commit()
        self._env.sync()
        self._env.close()
        self._env = None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # leave no metadata: the partial store stays unreadable, not silently short
            self._txn.abort()
            self._env.close()
            self._env = None
            return
        self.close()


class RecordStore:
    """Random access to the records of one store. ``store[i]`` is a dict; ``store.meta`` the metadata."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / "data.mdb").exists():
            raise StoreError(f"{self.path}: no LMDB store here (expected {self.path / 'data.mdb'})")
        self._env = None
        self.meta = self._read_meta()
        version = self.meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema_version {version} but this unitok reads {SCHEMA_VERSION}")
        self._len = int(self.meta["count"])

    def _open(self) -> lmdb.Environment:
        if self._env is None:
            self._env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, subdir=True,
                                  max_readers=512)
        return self._env

    def _get(self, key: bytes) -> Any:
        with self._open().begin(buffers=False) as txn:
            raw = txn.get(key)
        if raw is None:
            raise StoreError(f"{self.path}: key {key.decode()!r} is missing")
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception as e:
            raise StoreError(f"{self.path}: value of key {key.decode()!r} is corrupt ({e})") from e

    def _read_meta(self) -> dict:
        try:
            return self._get(META_KEY)
        except StoreError as e:
            raise StoreError(f"{e} (the metadata key is written last; the store may be incomplete)") from e

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self._len:
            raise IndexError(f"{self.path}: index {index} out of range for {self._len} records")
        return self._get(_key(index))

    def __iter__(self) -> Iterator[dict]:
        for i in range(self._len):
            yield self[i]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_env"] = None  # each process opens its own handle
        return state

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


def write_store(path: str | os.PathLike, records: Iterable[dict], meta: dict | None = None) -> int:
    """Write ``records`` to a new store at ``path``; returns the count."""
    with StoreWriter(path, meta) as w:
        w.extend(records)
        n = w._count
    return n

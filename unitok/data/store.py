"""LMDB record stores: one environment per dataset split, msgpack values, a metadata key.

Readers are safe in DataLoader workers under fork and spawn: the environment is opened lazily in
the process that first reads (``readonly=True, lock=False, readahead=False``) and is dropped when
the store is pickled, so each worker opens its own handle.

py-lmdb allows one open handle per environment per process, and a forked child inherits the
parent's (its registry included), so readers share handles through ``_acquire``/``_release``: one
handle per (process, store), reference counted; a child that finds its parent's handle closes its
own copy of it and opens a fresh one.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import lmdb
import msgpack

from ..errors import UniTokError
from .schema import META_KEY, SCHEMA_VERSION


class StoreError(UniTokError, ValueError):
    """A store is missing, from another schema version, or holds a corrupt value."""


def _key(index: int) -> bytes:
    return b"%010d" % index


_HANDLES: dict[str, tuple[int, lmdb.Environment, int]] = {}  # resolved path -> (owner pid, env, users)
_HANDLES_LOCK = threading.Lock()


def _reset_lock_in_child() -> None:
    global _HANDLES_LOCK  # a fork while another thread held the lock would leave it held forever
    _HANDLES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


def _open_readonly(path: Path) -> lmdb.Environment:
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True, max_readers=512)
    except lmdb.Error as e:
        raise StoreError(f"{path}: cannot open the LMDB store ({e})") from e
    # LMDB maps the file: reading a page past the end of a truncated file kills the process with
    # SIGBUS instead of raising, so compare the size the store claims with the file on disk first.
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = (path / "data.mdb").stat().st_size
    if have < need:
        env.close()
        raise StoreError(f"{path}: data.mdb is truncated ({have} bytes, the store needs {need})")
    return env


def _acquire(path: Path) -> lmdb.Environment:
    key, pid = str(path.resolve()), os.getpid()
    with _HANDLES_LOCK:
        held = _HANDLES.pop(key, None)
        if held is not None:
            owner, env, users = held
            if owner == pid:
                _HANDLES[key] = (owner, env, users + 1)
                return env
            # Inherited through fork: closing it here (read-only, no lock file) only unmaps this
            # process's copy; the parent's handle is untouched.
            env.close()
        env = _open_readonly(path)
        _HANDLES[key] = (pid, env, 1)
        return env


def _release(path: Path) -> None:
    key, pid = str(path.resolve()), os.getpid()
    with _HANDLES_LOCK:
        held = _HANDLES.get(key)
        if held is None or held[0] != pid:
            return
        owner, env, users = held
        if users > 1:
            _HANDLES[key] = (owner, env, users - 1)
        else:
            del _HANDLES[key]
            env.close()


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

    def __init__(self, path: str | os.PathLike, *, check_world: bool = True):
        self.path = Path(path)
        if not (self.path / "data.mdb").exists():
            raise StoreError(f"{self.path}: no LMDB store here (expected {self.path / 'data.mdb'})")
        self._env: lmdb.Environment | None = None
        self._env_pid = 0
        try:
            self.meta = self._read_meta()
            self._len = self._check_meta(self.meta)
            if check_world:
                self._check_world(self.meta)
        except BaseException:
            self.close()
            raise

    def _check_meta(self, meta: Any) -> int:
        if not isinstance(meta, dict):
            raise StoreError(f"{self.path}: metadata is a {type(meta).__name__}, expected a map")
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema_version {version} but this unitok reads {SCHEMA_VERSION}")
        count = meta.get("count")
        if not isinstance(count, int) or count < 0:
            raise StoreError(f"{self.path}: metadata has no valid record count (count={count!r})")
        return count

    def _check_world(self, meta: dict) -> None:
        """A store the synthetic world wrote must be of the world version this code generates: records of
        another version differ (other scenes, other language), so mixing them with fresh ones, or training
        on them, would silently use data of another world. ``check_world=False`` reads it anyway (inspection)."""
        provenance = meta.get("provenance")
        if not (isinstance(provenance, dict) and provenance.get("generator") == "unitok.data.world"):
            return
        from .world_scene import WORLD_VERSION

        version = meta.get("world_version", 1)  # stores written before versions were recorded
        if version != WORLD_VERSION:
            raise StoreError(f"{self.path}: built by world version {version}, but this unitok generates world "
                             f"version {WORLD_VERSION}; delete the store and rebuild it (`unitok train`/`unitok eval` "
                             f"rebuild missing world stores, or `unitok data build`)")

    def _open(self) -> lmdb.Environment:
        if self._env is None or self._env_pid != os.getpid():  # a forked copy opens its own
            self._env = _acquire(self.path)
            self._env_pid = os.getpid()
        return self._env

    def _get(self, key: bytes) -> Any:
        try:
            with self._open().begin(buffers=False) as txn:
                raw = txn.get(key)
        except lmdb.Error as e:
            raise StoreError(f"{self.path}: reading key {key.decode()!r} failed ({e})") from e
        if raw is None:
            raise StoreError(f"{self.path}: key {key.decode()!r} is missing")
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception as e:
            raise StoreError(f"{self.path}: value of key {key.decode()!r} is corrupt ({e})") from e

    def _read_meta(self) -> dict:
        try:
            with self._open().begin() as txn:
                missing = txn.get(META_KEY) is None
        except lmdb.Error as e:
            raise StoreError(f"{self.path}: reading the metadata failed ({e})") from e
        if missing:
            raise StoreError(f"{self.path}: no metadata key {META_KEY.decode()!r}; it is written last, so the "
                             "writer did not finish (killed or failed) and the store is incomplete")
        return self._get(META_KEY)

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
        if self._env is not None and self._env_pid == os.getpid():
            _release(self.path)
        self._env = None

    def __enter__(self) -> "RecordStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_store(path: str | os.PathLike, records: Iterable[dict], meta: dict | None = None) -> int:
    """Write ``records`` to a new store at ``path``; returns the count."""
    with StoreWriter(path, meta) as w:
        w.extend(records)
        n = w._count
    return n

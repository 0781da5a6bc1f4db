"""Data loading: LMDB record store vs a folder of PNG + JSON files, through a torch DataLoader.

Builds N world scenes both ways (same samples), then for each backend and worker count reads every
sample, decodes its image (PNG -> float CHW normalised to [-1, 1]) with its boxes and labels, and
collates batches. One untimed warm-up epoch starts the workers and warms the page cache; then
``--epochs`` timed epochs, of which the median is reported. Both stores are on the same disk and
read from a warm page cache, so this measures per-sample overhead (open/read/parse), not disk speed.

    python benchmarks/data_loading.py --n 2000 --out results/data_loading.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from unitok.data.store import RecordStore, write_store
from unitok.data.world import WorldConfig, iter_world, world_meta


def _image_tensor(png: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(png)) as img:
        array = np.array(img.convert("RGB"))  # (H, W, 3) uint8
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(127.5).sub_(1.0)  # (3, H, W) in [-1, 1]


def _targets(objects: list[dict], categories: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    boxes = torch.tensor([o["box"] for o in objects], dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([categories[o["category"]] for o in objects], dtype=torch.long)
    return boxes, labels


class LmdbSamples(Dataset):
    def __init__(self, path: Path):
        self.store = RecordStore(path)
        self.categories = {c: i for i, c in enumerate(self.store.meta["categories"])}

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int):
        record = self.store[i]
        return (_image_tensor(record["image"]), *_targets(record["objects"], self.categories))


class FolderSamples(Dataset):
    """``{i}.png`` holds the image, ``{i}.json`` everything else (binary fields as sibling PNG files)."""

    def __init__(self, root: Path):
        self.root = root
        meta = json.loads((root / "meta.json").read_text())
        self.n = meta["count"]
        self.categories = {c: i for i, c in enumerate(meta["categories"])}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        ann = json.loads((self.root / f"{i:06d}.json").read_text())
        png = (self.root / f"{i:06d}.png").read_bytes()
        return (_image_tensor(png), *_targets(ann["objects"], self.categories))


def collate(batch):
    """(B, 3, H, W) images; boxes (sum n_i, 4) and labels (sum n_i,) concatenated, with counts (B,).

    A few large tensors per batch rather than two small ones per image: every tensor a worker sends
    back costs a shared-memory handle, which would dominate the time at this image size.
    """
    images, boxes, labels = zip(*batch)
    counts = torch.tensor([len(b) for b in boxes])
    return torch.stack(images), torch.cat(boxes), torch.cat(labels), counts


def _write_folder(root: Path, records, meta: dict) -> int:
    """Write each record as PNG + JSON; masks/segmentation/depth as their own PNG files."""
    root.mkdir(parents=True)
    count = 0
    for i, record in enumerate(records):
        stem = f"{i:06d}"
        (root / f"{stem}.png").write_bytes(record["image"])
        ann = {}
        for key, value in record.items():
            if key == "image":
                continue
            if isinstance(value, bytes):
                name = f"{stem}_{key}.png"
                (root / name).write_bytes(value)
                ann[key] = name
            elif key == "objects":
                ann[key] = []
                for k, obj in enumerate(value):
                    obj = dict(obj)
                    if isinstance(obj.get("mask"), bytes):
                        name = f"{stem}_mask{k}.png"
                        (root / name).write_bytes(obj["mask"])
                        obj["mask"] = name
                    ann[key].append(obj)
            else:
                ann[key] = value
        (root / f"{stem}.json").write_text(json.dumps(ann))
        count += 1
    (root / "meta.json").write_text(json.dumps({**meta, "count": count}))
    return count


def _disk_usage(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def _measure(dataset: Dataset, workers: int, batch_size: int, epochs: int, seed: int) -> dict:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    n = sum(images.shape[0] for images, *_ in loader)  # warm-up: starts workers, warms caches
    first = time.perf_counter() - t0
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        seen = sum(images.shape[0] for images, *_ in loader)
        times.append(time.perf_counter() - t0)
        assert seen == n == len(dataset)
    epoch_s = statistics.median(times)
    return {"examples_per_s": n / epoch_s, "epoch_s": epoch_s, "epoch_times_s": times, "first_epoch_s": first}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="scenes")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per configuration (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the data (default: a temp dir)")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="unitok-bench-")) if args.dir is None else args.dir
    lmdb_path, folder_path = work / "lmdb", work / "folder"
    for p in (lmdb_path, folder_path):
        if p.exists():
            shutil.rmtree(p)
    try:
        cfg = WorldConfig(seed=args.seed, size=args.size)
        t0 = time.perf_counter()
        records = list(iter_world(cfg, args.n))
        generate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_store(lmdb_path, records, world_meta(cfg))
        lmdb_write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _write_folder(folder_path, records, world_meta(cfg))
        folder_write_s = time.perf_counter() - t0
        del records

        results = []
        for workers in args.workers:
            for backend, dataset in (("lmdb", LmdbSamples(lmdb_path)), ("folder", FolderSamples(folder_path))):
                r = _measure(dataset, workers, args.batch_size, args.epochs, args.seed)
                results.append({"backend": backend, "workers": workers, **r})
                print(f"  {backend:<6} workers={workers}: {r['examples_per_s']:,.0f} examples/s", file=sys.stderr)
        lmdb_bytes, lmdb_files = _disk_usage(lmdb_path)
        folder_bytes, folder_files = _disk_usage(folder_path)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    rate = {(r["backend"], r["workers"]): r["examples_per_s"] for r in results}
    ratios = {str(w): rate["lmdb", w] / rate["folder", w] for w in args.workers}
    lines = ["| DataLoader workers | LMDB (examples/s) | PNG+JSON folder (examples/s) | LMDB / folder |",
             "|---:|---:|---:|---:|"]
    for w in args.workers:
        lines.append(f"| {w} | {rate['lmdb', w]:,.0f} | {rate['folder', w]:,.0f} | {ratios[str(w)]:.2f}x |")
    table = "\n".join(lines)
    print(table)
    print(f"\n{args.n} scenes {args.size}x{args.size}, batch {args.batch_size}, median of {args.epochs} epochs; "
          f"build: generate {generate_s:.1f} s, LMDB write {lmdb_write_s:.1f} s, folder write {folder_write_s:.1f} s; "
          f"on disk: LMDB {lmdb_bytes / 2**20:.1f} MiB in {lmdb_files} files, "
          f"folder {folder_bytes / 2**20:.1f} MiB in {folder_files} files")

    out = {
        "benchmark": "data_loading",
        "command": "python benchmarks/data_loading.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "torch_threads": torch.get_num_threads()},
        "build_s": {"generate": generate_s, "lmdb_write": lmdb_write_s, "folder_write": folder_write_s},
        "disk": {"lmdb_bytes": lmdb_bytes, "lmdb_files": lmdb_files, "folder_bytes": folder_bytes,
                 "folder_files": folder_files},
        "results": results,
        "lmdb_over_folder": ratios,
        "table_markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

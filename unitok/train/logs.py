"""A run's logs: ``log.csv`` (a row every ``log_every`` steps), ``eval.csv`` (a row per evaluation) and, with
``train.tensorboard: true``, the same scalars as TensorBoard events in ``tensorboard/``.

Rows are appended, one line each, so a row costs the same at step 100,000 as at step 100. Only a row with a
column the file lacks (a task first drawn in a later window, a new metric) rewrites the file, once, under the
wider header. On resume the rows after the checkpoint's step are dropped (``truncate``), and TensorBoard's
events after it are purged, so an exactly resumed run logs what the uninterrupted run would have.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from ..config import ConfigError

TENSORBOARD_DIR = "tensorboard"


class RunLog:
    def __init__(self, out: str | Path, *, tensorboard: bool = False, source: str = ""):
        self.out = Path(out)
        self.tensorboard = tensorboard
        self._writer = None
        self._purge_step: int | None = None
        if tensorboard:
            _summary_writer(source)  # asked for and not installed: say so before any step runs

    def write(self, row: dict, name: str = "log.csv") -> dict[str, str]:
        """Append ``row`` to ``out/name`` (floats to 6 significant digits); returns the row as written."""
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        written = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        header = _header(path)
        if header and set(written) <= set(header):
            with path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=header, restval="").writerow(written)
        else:  # a new file, or a column the file lacks: rewrite it once under the wider header
            rows = _rows(path) + [written]
            _rewrite(path, rows, list(dict.fromkeys([*header, *written])))
        if self.tensorboard:
            self._scalars(row)
        return written

    def truncate(self, step: int) -> None:
        """Drop every row after ``step`` (all of them at 0: a fresh start is not spliced onto an old run),
        and a torn last line a kill mid-append left; TensorBoard's events after ``step`` go too."""
        for name in ("log.csv", "eval.csv"):
            path = self.out / name
            if path.exists():
                rows = [r for r in _rows(path) if int(r["step"]) <= step]
                _rewrite(path, rows, (_header(path) if rows else None) or ["step"])
        self.close()
        self._purge_step = step + 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._purge_step = None

    def _scalars(self, row: dict) -> None:
        if self._writer is None:
            self._writer = _summary_writer()(log_dir=str(self.out / TENSORBOARD_DIR), purge_step=self._purge_step)
        step = int(row["step"])
        for key, value in row.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key != "step" and number and math.isfinite(value):  # not the stage name, nor a NaN metric
                self._writer.add_scalar(key, value, step)
        self._writer.flush()


def _summary_writer(source: str = ""):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package, which unitok does not require
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}field 'train.tensorboard': true, but the tensorboard package is not installed; "
                          "`pip install tensorboard`, or set train.tensorboard: false") from None
    return SummaryWriter


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="") as f:
            return next(csv.reader(f), [])
    except FileNotFoundError:
        return []


def _rows(path: Path) -> list[dict]:
    """The file's rows, without a torn line (fewer fields than the header, or an unreadable step)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if None not in r.values() and None not in r and _is_int(r.get("step"))]


def _is_int(text) -> bool:
    try:
        int(text)
        return True
    except (TypeError, ValueError):
        return False


def _rewrite(path: Path, rows: list[dict], fields: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)

"""Results tables: ``{task: {metric key: value}}`` as Markdown and JSON files."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping


def _cell(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table with one row per (task, metric key), tasks in the given order.

    Long rather than wide: tasks report different keys (captioning has six, grounding two), so a
    task x key grid would be mostly empty.
    """
    lines = ["| task | metric | value |", "|---|---|---:|"]
    for task, metrics in results.items():
        for key, value in metrics.items():
            lines.append(f"| {task} | {key} | {_cell(value)} |")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # readers never see a half-written file


def write_results(results: Mapping[str, Mapping[str, float]], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir`` (created if needed); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = {task: {key: float(v) for key, v in metrics.items()} for task, metrics in results.items()}
    json_path, md_path = out / "metrics.json", out / "metrics.md"
    _write_atomic(json_path, json.dumps(plain, indent=2) + "\n")
    _write_atomic(md_path, format_table(plain))
    return json_path, md_path

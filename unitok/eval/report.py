"""Results tables: ``{task: {metric key: value}}`` as Markdown and JSON files.

A task's entry may also carry the baselines ``unitok eval`` adds (see ``unitok.inference.evaluate``):
``blind`` ({key: value with the inputs withheld}), ``gain`` ({key: value - blind, signed so > 0 means
the inputs helped}), ``vision_gain`` (the primary key's gain), ``primary``, ``blind_fill_rgb``,
``constant`` ({key: value of always giving ``constant_answer``}) and ``constant_answer``. Those become
columns of the table, not rows.
"""
from __future__ import annotations

import json
import math
import os
from numbers import Real
from pathlib import Path
from typing import Any, Mapping

#: per-task entries that describe baselines rather than being metric keys
BASELINE_FIELDS = ("primary", "blind", "gain", "vision_gain", "blind_fill_rgb", "constant", "constant_answer")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metric_keys(metrics: Mapping[str, Any]) -> list[str]:
    """A task entry's metric keys, in order (the baseline fields left out)."""
    return [k for k, v in metrics.items()
            if k not in BASELINE_FIELDS and isinstance(v, Real) and not isinstance(v, bool)]


def _columns(results: Mapping[str, Mapping[str, Any]]) -> tuple[bool, bool]:
    return (any("blind" in m for m in results.values()), any("constant" in m for m in results.values()))


def _row(task: str, key: str, metrics: Mapping[str, Any], blind: bool, constant: bool) -> str:
    cells = [task, key, _cell(metrics[key])]
    if blind:
        cells += [_cell(metrics.get("blind", {}).get(key)), _cell(metrics.get("gain", {}).get(key))]
    if constant:
        cells.append(_cell(metrics.get("constant", {}).get(key)))
    return "| " + " | ".join(cells) + " |"


def _header(blind: bool, constant: bool) -> list[str]:
    names, align = ["task", "metric", "value"], ["---", "---", "---:"]
    if blind:
        names, align = names + ["blind", "gain"], align + ["---:", "---:"]
    if constant:
        names, align = names + ["constant"], align + ["---:"]
    return ["| " + " | ".join(names) + " |", "|" + "|".join(align) + "|"]


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table with one row per (task, metric key), tasks in the given order; with baselines,
    ``blind``, ``gain`` and ``constant`` columns and, below the table, what they mean and the constant
    answers.

    Long rather than wide: tasks report different keys (captioning has six, grounding two), so a
    task x key grid would be mostly empty.
    """
    blind, constant = _columns(results)
    lines = _header(blind, constant)
    for task, metrics in results.items():
        for key in metric_keys(metrics):
            lines.append(_row(task, key, metrics, blind, constant))
    notes = []
    if blind:
        notes.append("blind: the same examples with the inputs withheld (every image, second image and video "
                     "frame a flat canvas of the evaluated images' mean colour; a task without image input gets "
                     "an empty prompt). gain: value - blind, signed so that > 0 means the inputs helped "
                     "(also for lower-is-better keys such as abs_rel).")
    if constant:
        notes.append("constant: always giving the most frequent target of the task's train split:")
        notes += [f"- {task}: {json.dumps(m['constant_answer'])}" for task, m in results.items() if "constant_answer" in m]
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def format_summary(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A compact table for the terminal: per task its primary metric (and retrieval R@1 where reported),
    with the blind value, the gain and the constant baseline when present."""
    blind, constant = _columns(results)
    lines = _header(blind, constant)
    for task, metrics in results.items():
        keys = metric_keys(metrics)
        if not keys:
            continue
        primary = metrics.get("primary") if metrics.get("primary") in keys else keys[0]
        for key in [primary] + [k for k in ("retrieval_r@1",) if k in keys and k != primary]:
            lines.append(_row(task, key, metrics, blind, constant))
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """JSON-ready: numbers as floats, containers walked, strings and None kept."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    return float(value)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # readers never see a half-written file


def write_results(results: Mapping[str, Mapping[str, Any]], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir`` (created if needed); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = {task: _plain(metrics) for task, metrics in results.items()}
    json_path, md_path = out / "metrics.json", out / "metrics.md"
    _write_atomic(json_path, json.dumps(plain, indent=2) + "\n")
    _write_atomic(md_path, format_table(plain))
    return json_path, md_path

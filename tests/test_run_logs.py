"""A run's logs (`unitok.train.logs`): log.csv and eval.csv appended row by row, cut back on resume, and
TensorBoard events when `train.tensorboard` asks for them."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from unitok.config import ConfigError
from unitok.train.logs import TENSORBOARD_DIR, RunLog

REPO = Path(__file__).resolve().parents[1]


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_rows_are_appended_not_rewritten(tmp_path):
    logs = RunLog(tmp_path)
    logs.write({"step": 1, "loss": 2.0, "loss/caption": 2.5})
    path = tmp_path / "log.csv"
    inode, first_line = path.stat().st_ino, path.read_text().splitlines()[:2]
    for step in range(2, 6):
        logs.write({"step": step, "loss": 1.0 / step, "loss/caption": 1.5})
    assert path.stat().st_ino == inode, "log.csv was replaced, not appended to"
    assert path.read_text().splitlines()[:2] == first_line
    assert [r["step"] for r in rows(path)] == ["1", "2", "3", "4", "5"] and rows(path)[2]["loss"] == "0.333333"


def test_a_new_column_widens_the_header_once_and_earlier_rows_stay(tmp_path):
    logs = RunLog(tmp_path)
    logs.write({"step": 1, "loss": 2.0, "loss/caption": 2.5})
    logs.write({"step": 2, "loss": 1.0, "loss/detection": 3.0})  # a task first drawn in this window
    logs.write({"step": 3, "loss": 0.5})  # a column missing from the row: left empty
    got = rows(tmp_path / "log.csv")
    assert list(got[0]) == ["step", "loss", "loss/caption", "loss/detection"]
    assert got[0]["loss/detection"] == "" and got[1]["loss/caption"] == "" and got[1]["loss/detection"] == "3"
    assert got[2] == {"step": "3", "loss": "0.5", "loss/caption": "", "loss/detection": ""}


def test_truncate_keeps_the_rows_up_to_the_step_and_drops_a_torn_line(tmp_path):
    logs = RunLog(tmp_path)
    for step in (5, 10, 15, 20):
        logs.write({"step": step, "loss": 1.0, "lr": 0.1})
    logs.write({"step": 10, "eval/caption/cider": 0.5}, name="eval.csv")
    logs.write({"step": 20, "eval/caption/cider": 0.7}, name="eval.csv")
    with (tmp_path / "log.csv").open("a") as f:
        f.write("25,0.9")  # a kill mid-append: a short line without its newline
    logs.truncate(15)
    assert [r["step"] for r in rows(tmp_path / "log.csv")] == ["5", "10", "15"]
    assert [r["step"] for r in rows(tmp_path / "eval.csv")] == ["10"]
    logs.write({"step": 20, "loss": 0.8, "lr": 0.1})  # the resumed run goes on from a clean file
    assert [r["step"] for r in rows(tmp_path / "log.csv")] == ["5", "10", "15", "20"]
    logs.truncate(0)  # a fresh start: no row of the old run is kept
    assert rows(tmp_path / "log.csv") == [] and (tmp_path / "log.csv").read_text() == "step\n"


def test_tensorboard_asked_for_without_the_package_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if `tensorboard` were not installed
    with pytest.raises(ConfigError, match=r"my\.yaml: field 'train\.tensorboard'.*pip install tensorboard"):
        RunLog(tmp_path, tensorboard=True, source="my.yaml")
    RunLog(tmp_path).write({"step": 1, "loss": 1.0})  # not asked for: nothing needs the package


def test_tensorboard_events_hold_the_scalars_and_a_resume_purges_the_later_ones(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = RunLog(tmp_path, tensorboard=True)
    logs.truncate(0)
    for step in (1, 2, 3):
        logs.write({"step": step, "stage": "warm", "loss": 1.0 / step, "loss/caption": 2.0})
    logs.write({"step": 3, "eval/caption/cider": 0.25}, name="eval.csv")
    logs.close()
    resumed = RunLog(tmp_path, tensorboard=True)
    resumed.truncate(2)  # resumed from the checkpoint of step 2: step 3 is trained again
    resumed.write({"step": 3, "loss": 0.125, "loss/caption": 1.0})
    resumed.close()

    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    assert {"loss", "loss/caption", "eval/caption/cider"} <= set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 0.5), (3, 0.125)]
    assert [e.step for e in events.Scalars("eval/caption/cider")] == []  # purged with step 3


def test_unitok_train_prints_where_its_logs_go(tmp_path, monkeypatch, capsys):
    from unitok import cli, recipes

    monkeypatch.setattr(recipes, "train", lambda run, out, **kw: (None, {}))
    cli.main(["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(tmp_path / "run")])
    assert f"logs: {tmp_path / 'run'} (log.csv, eval.csv)" in capsys.readouterr().out
    cli.main(["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(tmp_path / "run"),
              "--set", "train.tensorboard=true"])
    assert f"TensorBoard: {tmp_path / 'run' / TENSORBOARD_DIR}" in capsys.readouterr().out

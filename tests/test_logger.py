"""The run logger writes ``train.csv`` at flushes, and on its own clock while a run goes on."""

from __future__ import annotations

import csv
from pathlib import Path

from hope_agent.train.logger import Logger


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_log_writes_the_csv_once_its_flush_interval_has_passed(tmp_path: Path) -> None:
    due = Logger(tmp_path, 10, tensorboard=False, progress=False, flush_every_s=0.0)
    due.log(1, {"charts/SPS": 5.0})
    due.log(2, {"charts/SPS": 6.0, "losses/value": 0.5})
    assert _rows(tmp_path / "train.csv") == [
        {"global_step": "1", "charts/SPS": "5.0", "losses/value": ""},
        {"global_step": "2", "charts/SPS": "6.0", "losses/value": "0.5"},
    ]


def test_log_waits_for_the_flush_inside_its_interval(tmp_path: Path) -> None:
    logger = Logger(tmp_path, 10, tensorboard=False, progress=False, flush_every_s=3600.0)
    logger.log(1, {"charts/SPS": 5.0})
    assert not (tmp_path / "train.csv").exists()
    logger.flush()
    assert _rows(tmp_path / "train.csv") == [{"global_step": "1", "charts/SPS": "5.0"}]

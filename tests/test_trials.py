"""Trials of K sub-episodes (the adapt family): success per sub-episode and the trial gain with
its interval, from the evaluator into metrics.json."""

import json
from pathlib import Path

import numpy as np
import pytest
from test_train_e2e import tiny_config

from hope_agent.cli import train
from hope_agent.train.evaluator import _TrialRecord


def _infos(trial: list[int], end: list[bool], success: list[bool]) -> dict:
    n = len(trial)
    return {
        "trial_episode": np.array(trial),
        "_trial_episode": np.ones(n, bool),
        "sub_episode_end": np.array(end),
        "_sub_episode_end": np.ones(n, bool),
        "success": np.array(success),
        "_success": np.ones(n, bool),
    }


def test_trial_record_reads_success_at_each_sub_episode_end() -> None:
    record = _TrialRecord(3)
    valid = np.ones(3, bool)
    record.add(_infos([0, 0, 0], [False, False, False], [True, True, True]), valid)  # mid-way
    record.add(_infos([0, 0, 0], [True, True, True], [False, True, False]), valid)
    record.add(_infos([1, 1, 1], [True, True, True], [True, True, False]), valid)
    record.add(_infos([2, 2, 2], [True, True, True], [True, True, False]), valid)
    # An invalid row (an autoreset step) counts nothing.
    record.add(_infos([2, 2, 2], [True, True, True], [True, True, True]), np.zeros(3, bool))
    out = record.summary(slice(0, 3))
    np.testing.assert_allclose(out["sub_episode_success"], [1 / 3, 2 / 3, 2 / 3])
    mean, low, high = out["trial_gain"]
    assert mean == pytest.approx(1 / 3) and low <= mean <= high
    # The deterministic row is left out of the stochastic summary.
    np.testing.assert_allclose(record.summary(slice(0, 2))["sub_episode_success"], [0.5, 1, 1])
    assert _TrialRecord(2).summary(slice(0, 2)) == {}


def test_rows_without_trials_report_none_beside_rows_with_them() -> None:
    """A batch that evaluates an adapt task beside a task of another family: only the adapt
    rows have a trial summary."""
    record = _TrialRecord(4)
    infos = _infos([0, 0, 0, 0], [True, True, False, False], [True, False, False, False])
    for key in ("trial_episode", "sub_episode_end", "success"):
        infos[f"_{key}"] = np.array([True, True, False, False])
    record.add(infos, np.ones(4, bool))
    assert record.summary(slice(2, 4)) == {}
    np.testing.assert_allclose(record.summary(slice(0, 2))["sub_episode_success"], [0.5])


def test_an_adapt_run_reports_the_trial_gain(tmp_path: Path) -> None:
    cfg = tiny_config("curriculum=adapt", "steps_per_task=128", "model=mlp", "eval.every=0")
    train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["trial_gain_per_task"]) == {"adapt_east_north", "adapt_west_south"}
    for per_k in metrics["sub_episode_success"].values():
        assert len(per_k) == 3 and all(0.0 <= s <= 1.0 for s in per_k)
    assert -1.0 <= metrics["trial_gain"] <= 1.0
    header = (tmp_path / "curves.csv").read_text().splitlines()[0]
    assert "sub_episode_success" in header and "trial_gain" in header

"""Checkpoints written before the redesign (9221ef1, training-checkpoint format 3): evaluation
loads them and reproduces their run's own evaluation exactly; resuming one is refused in one
line that says why."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from hope_agent.build import as_train_config, build_runner
from hope_agent.cli import evaluate
from hope_agent.io import CheckpointError
from hope_agent.train.report import read_matrix_csv

OLD_RUN = Path(__file__).parent / "data" / "run_9221ef1"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    return run


def test_an_old_checkpoint_evaluates_to_its_run_s_own_figures(old_run: Path) -> None:
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        cfg = compose("eval", [f"run_dir={old_run}", "device=cpu", f"out_dir={old_run / 'ev'}"])
    evaluate(cfg)
    # Success counts exactly; returns to float32 rounding (another CPU's vector units round
    # differently: the figures were written on another machine).
    for name, rtol in (("perf_matrix.csv", 0.0), ("return_matrix.csv", 1e-6)):
        np.testing.assert_allclose(
            read_matrix_csv(old_run / "ev" / name), read_matrix_csv(OLD_RUN / name), rtol=rtol
        )
    old_last = (OLD_RUN / "curves.csv").read_text().splitlines()[-1].split(",")
    new_last = (old_run / "ev" / "curves.csv").read_text().splitlines()[-1].split(",")
    assert len(new_last) == len(old_last)
    for new, old in zip(new_last, old_last, strict=True):
        try:
            assert float(new) == pytest.approx(float(old), rel=1e-6, abs=1e-9)
        except ValueError:
            assert new == old  # the task's name


def test_resuming_an_old_checkpoint_is_refused_in_one_line(old_run: Path) -> None:
    runner = build_runner(as_train_config((old_run / "config.yaml").read_text()), old_run)
    with pytest.raises(CheckpointError, match="format 'hope_agent.train/3'") as info:
        runner.run(resume_from=old_run / "checkpoints" / "stage_00")
    assert "\n" not in str(info.value) and "new run directory" in str(info.value)

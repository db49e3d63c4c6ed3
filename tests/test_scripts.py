"""The scripts run from any directory and turn bad input into one clear line on stderr."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hope_agent.train.report import read_matrix_csv

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "steps_per_task=128",
    "ppo.num_envs=2",
    "ppo.rollout_len=64",
    "ppo.seq_len=16",
    "ppo.num_minibatches=2",
    "ppo.epochs=1",
    "eval.episodes=1",
    "video.enabled=false",
    "logger.progress=false",
    "logger.tensorboard=false",
    "device=cpu",
    "model=mlp",
]


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_then_evaluate_scripts(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    tasks = "curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{}}]"
    done = _run("train_curriculum.py", *TINY, tasks, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "perf_matrix.csv").is_file()
    done = _run("evaluate_forgetting.py", f"run_dir={run_dir}", "device=cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(
        read_matrix_csv(run_dir / "evaluation" / "perf_matrix.csv"),
        read_matrix_csv(run_dir / "perf_matrix.csv"),
    )
    # Evaluation writes nothing into the working directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("train_curriculum.py", ["model=nope"], "model"),
        ("train_curriculum.py", ["curriculum.tasks=[{id:hope/NoSuchTask-v0}]"], "NoSuchTask"),
        ("train_curriculum.py", ["ppo.num_envs=0"], "ppo.num_envs"),
        ("evaluate_forgetting.py", ["run_dir=/no/such/run"], "/no/such/run"),
        ("record_rollouts.py", ["checkpoint=/no/such/checkpoint"], "/no/such/checkpoint"),
    ],
)
def test_bad_input_gives_one_clear_error(
    tmp_path: Path, script: str, args: list[str], expected: str
) -> None:
    done = _run(script, *args, "hydra.run.dir=" + str(tmp_path / "r"), cwd=tmp_path)
    assert done.returncode != 0
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()

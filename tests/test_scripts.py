"""The scripts run from any directory and turn bad input into one clear line on stderr."""

from pathlib import Path

import numpy as np
import pytest
from conftest import ScriptRunner
from hydra import compose, initialize_config_module

from hope_agent.build import ConfigError, validate_train_config
from hope_agent.train.config import register_configs
from hope_agent.train.report import read_matrix_csv

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


def test_train_then_evaluate_scripts(tmp_path: Path, run_script: ScriptRunner) -> None:
    run_dir = tmp_path / "run"
    tasks = "curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{}}]"
    done = run_script("train_curriculum.py", *TINY, tasks, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "perf_matrix.csv").is_file()
    done = run_script("evaluate_forgetting.py", f"run_dir={run_dir}", "device=cpu", cwd=tmp_path)
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
        # Plain ids are not task entries: the error says how to write one.
        ("train_curriculum.py", ["curriculum.tasks=[HalfCheetah-v5,Hopper-v5]"], "{id:NAME}"),
        ("train_curriculum.py", ["eval.reference_auc=[0.5,1.5,0.5,0.5]"], "eval.reference_auc"),
        ("evaluate_forgetting.py", ["run_dir=/no/such/run"], "/no/such/run"),
        ("record_rollouts.py", ["checkpoint=/no/such/checkpoint"], "/no/such/checkpoint"),
    ],
)
def test_bad_input_gives_one_clear_error(
    tmp_path: Path, run_script: ScriptRunner, script: str, args: list[str], expected: str
) -> None:
    done = run_script(script, *args, "hydra.run.dir=" + str(tmp_path / "r"), cwd=tmp_path)
    assert done.returncode != 0
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize(
    "values",
    [
        "[0.5,0.5,0.5]",
        "[0.5,0.5,0.5,1.5]",
        "[0.5,0.5,-0.1,0.5]",
        "[0.5,nan,0.5,0.5]",
        "[inf,0,0,0]",
    ],
)
def test_bad_reference_auc_is_refused_before_training(values: str) -> None:
    # The default curriculum has 4 tasks: one AUC in [0, 1] each.
    register_configs()
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        cfg = compose("config", overrides=[f"eval.reference_auc={values}"])
        fine = compose("config", overrides=["eval.reference_auc=[0,0.25,0.5,1]"])
    with pytest.raises(
        ConfigError, match=r"eval.reference_auc must be null or 4 numbers in \[0, 1\]"
    ):
        validate_train_config(cfg)
    validate_train_config(fine)

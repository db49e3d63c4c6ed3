"""Sweeps on Hydra launchers: a 2-seed x 2-method multirun through the joblib launcher on the
CPU, compared from its multirun directory alone; the Slurm launcher config composes."""

import importlib.util
from pathlib import Path

import pytest
import yaml
from conftest import ScriptRunner
from hydra import compose, initialize_config_module

from hope_agent.compare import find_runs, write_comparison
from hope_agent.train.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
TASKS = (
    "curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{goal:[0.6,0.0]},name:east},"
    "{id:hope/PointReach-v0,kwargs:{goal:[-0.6,0.0]},name:west}]"
)
# Seconds per job: 2 tasks x 64 env steps, one evaluation episode (+ the deterministic one).
TINY = [
    TASKS,
    "model=mlp",
    "steps_per_task=64",
    "ppo.num_envs=1",
    "ppo.rollout_len=32",
    "ppo.seq_len=16",
    "ppo.num_minibatches=1",
    "ppo.epochs=1",
    "eval.episodes=1",
    "eval.every=0",
    "video.enabled=false",
    "logger.progress=false",
    "logger.tensorboard=false",
    "device=cpu",
]


# Four fresh interpreters (imports, evaluation, report pages) take over a minute on 2 cores.
@pytest.mark.slow
def test_two_seed_two_method_multirun_compares_from_its_folder(
    run_script: ScriptRunner, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    done = run_script(
        "train_curriculum.py",
        "--multirun",
        "hydra/launcher=local",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        "seed=0,1",
        "method=finetune,l2",
        *TINY,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The sweep ran through joblib with the n_jobs asked for.
    launcher = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert launcher["_target_"].endswith("JoblibLauncher") and launcher["n_jobs"] == 2
    runs = find_runs([sweep])
    assert len(runs) == 4
    rows = write_comparison([sweep], tmp_path / "cmp", n_resamples=200)
    assert sorted(r.method for r in rows) == ["finetune", "l2"]
    assert all(r.seeds == [0, 1] and len(r.run_dirs) == 2 for r in rows)
    for row in rows:
        perf = row.stats["average_performance"]
        assert perf is not None and 0.0 <= perf.mean <= 1.0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "method=finetune" in table and "method=l2" in table
    assert (tmp_path / "cmp" / "comparison.html").read_text().count("<tr>") == 1 + len(rows)
    # The script takes the multirun folder as it is, without a list of runs.
    spec = importlib.util.spec_from_file_location("compare_script", ROOT / "scripts" / "compare.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(sweep), "--out", str(tmp_path / "cli"), "--resamples", "200"]) == 0
    assert (tmp_path / "cli" / "comparison.csv").read_text().count("\n") == 1 + len(rows)


def _compose_launcher(name: str) -> dict:
    register_configs()
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    return dict(cfg.hydra.launcher)


def test_local_launcher_is_joblib_with_fresh_workers() -> None:
    launcher = _compose_launcher("local")
    assert launcher["_target_"].endswith("JoblibLauncher")
    assert launcher["n_jobs"] == 2 and launcher["backend"] == "loky"


def test_slurm_launcher_composes_when_the_extra_is_installed() -> None:
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("hydra-submitit-launcher is not installed (pip install 'hope-agent[slurm]')")
    launcher = _compose_launcher("slurm")
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["gpus_per_node"] == 1 and "export NCCL_NVLS_ENABLE=0" in launcher["setup"]

"""The batched point-mass vector env equals ``SyncVectorEnv`` over the guarded task envs, bit for
bit: observations, rewards, flags, infos (values, masks, dtypes), faults and random streams."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv
from test_train_e2e import tiny_config

from hope_agent.baselines.sb3 import BatchedVecEnv
from hope_agent.build import ConfigError, build_runner
from hope_agent.cli import train
from hope_agent.rollout.batched import PointBatchEnv
from hope_agent.rollout.vec import make_vector_env
from hope_envs.curriculum import TaskSpec, make_env

GOALS = [[0.6, 0.0], [0.0, 0.6], [-0.5, -0.5]]
CASES: list[tuple[str, dict[str, Any]]] = [
    ("hope/PointReach-v0", {}),
    ("hope/PointReach-v0", {"goal": [0.1, -0.1], "success_radius": 0.3, "ctrl_cost_weight": 0.2}),
    ("hope/PointAdapt-v0", {}),
    ("hope/PointAdapt-v0", {"goals": GOALS, "shaping": "end", "goal_bonus": 2.0}),
    ("hope/PointAdapt-v0", {"goals": GOALS, "shaping": "set", "sub_episode_steps": 7}),
    ("hope/PointAdapt-v0", {"goal_hint": True, "trial_episodes": 2, "sub_episode_steps": 5}),
]


def _assert_infos_equal(a: dict[str, Any], b: dict[str, Any], where: str) -> None:
    assert sorted(a) == sorted(b), where
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype, f"{where}: {key} {x.dtype} != {y.dtype}"
        assert np.array_equal(x, y), f"{where}: {key}"


def _compare(spec: TaskSpec, steps: int, obs_limit: float = 1e6, seed: int = 11) -> int:
    """Steps both vector envs with the same random actions; returns the faults seen."""
    obs_dim, act_dim, n = 7, 3, 6
    sync = make_vector_env(spec, obs_dim, act_dim, n, obs_limit=obs_limit)
    batch = PointBatchEnv(spec, obs_dim, act_dim, n, obs_limit=obs_limit)
    ref, got = sync.reset(seed=seed), batch.reset(seed=seed)
    assert np.array_equal(ref[0], got[0]) and ref[0].dtype == got[0].dtype
    _assert_infos_equal(ref[1], got[1], "reset")
    rng = np.random.default_rng(seed)
    faults = 0
    for t in range(steps):
        # a Gaussian policy's samples leave the box; some rows push hard in one direction
        actions = rng.normal(0.0, 0.8, size=(n, act_dim)).astype(np.float32)
        actions[: n // 2, 0] = 1.5
        ref, got = sync.step(actions), batch.step(actions)
        for name, x, y in zip(("obs", "reward", "terminated", "truncated"), ref, got, strict=False):
            assert x.dtype == y.dtype and np.array_equal(x, y), f"step {t}: {name}"
        _assert_infos_equal(ref[4], got[4], f"step {t}")
        faults += int(np.sum(ref[4].get("env_fault", np.zeros(n, bool))))
    sync.close()
    batch.close()
    return faults


@pytest.mark.parametrize(("env_id", "kwargs"), CASES)
def test_batched_envs_equal_the_sync_vector_env(env_id: str, kwargs: dict[str, Any]) -> None:
    """Several episodes each (the reach limit is 100 steps, a trial 120 or fewer)."""
    _compare(TaskSpec(id=env_id, kwargs=kwargs, steps=1, name="t"), steps=260)


def test_batched_envs_fault_as_the_guard_does() -> None:
    """An observation limit that the pushed rows cross: the same faults, the same resets."""
    spec = TaskSpec(id="hope/PointAdapt-v0", kwargs={}, steps=1, name="t")
    assert _compare(spec, steps=150, obs_limit=0.5) > 0


def test_a_task_without_batched_envs_is_refused_with_the_fix() -> None:
    spec = TaskSpec(id="hope/CheetahRun-v0", kwargs={}, steps=1, name="run")
    with pytest.raises(ValueError, match=r"'run' \(hope/CheetahRun-v0\).*ppo.batched_envs=false"):
        PointBatchEnv(spec, 17, 6, 2)


def _run_files(tmp_path: Path, *overrides: str) -> dict[str, str]:
    cfg = tiny_config(
        "model=mlp", "video.enabled=false", "checkpoint.every=0", "eval.every=128", *overrides
    )
    train(cfg, tmp_path)
    files = {}
    for name in ("curves.csv", "perf_matrix.csv", "train.csv"):
        rows = list(csv.DictReader((tmp_path / name).open()))
        files[name] = repr(
            [{k: v for k, v in r.items() if "time" not in k and "SPS" not in k} for r in rows]
        )
    return files


def test_a_training_run_on_batched_envs_equals_the_run_on_sync_envs(tmp_path: Path) -> None:
    """Two `fast` tasks, the same seed: the same curves, matrix and training log."""
    sync = _run_files(tmp_path / "sync", "ppo.batched_envs=false")
    batched = _run_files(tmp_path / "batched", "ppo.batched_envs=true")
    assert sync == batched


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["ppo.batched_envs=true", "ppo.async_envs=true"], "choose one"),
        (["ppo.batched_envs=true", "method=multitask"], "builds its own training envs"),
        (
            ["ppo.batched_envs=true", "curriculum=locomotion"],
            r"run \(hope/CheetahRun-v0\).*no batched envs.*ppo.batched_envs=false",
        ),
    ],
)
def test_batched_envs_where_they_cannot_run_are_refused_before_work(
    overrides: list[str], match: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=match):
        build_runner(tiny_config(*overrides), tmp_path)


@pytest.mark.parametrize(
    ("overrides", "batched"),
    [
        ([], True),
        (["ppo.batched_envs=false"], False),
        (["ppo.async_envs=true"], False),
        (["method=multitask"], None),
        (["curriculum=locomotion"], False),
    ],
)
def test_batched_envs_by_default_wherever_they_can_run(
    overrides: list[str], batched: bool | None, tmp_path: Path
) -> None:
    """Unset, ``ppo.batched_envs`` steps the envs as one batch where every task has them."""
    make_envs = build_runner(tiny_config(*overrides), tmp_path).make_envs
    assert getattr(make_envs, "keywords", {}).get("batched") == batched


@pytest.mark.parametrize(("env_id", "kwargs"), [CASES[1], CASES[3]])
def test_sb3_batched_vec_env_equals_dummy_vec_env(env_id: str, kwargs: dict[str, Any]) -> None:
    """SB3's view: same-step autoreset, final observations in the infos, float32 rewards."""
    spec = TaskSpec(id=env_id, kwargs=kwargs, steps=1, name="t")
    n = 5
    dummy = DummyVecEnv([partial(make_env, spec, 7, 3) for _ in range(n)])
    batched = BatchedVecEnv(spec, 7, 3, n)
    for venv in (dummy, batched):
        venv.seed(21)
    assert np.array_equal(dummy.reset(), batched.reset())
    rng = np.random.default_rng(0)
    for t in range(260):
        actions = rng.normal(0.0, 0.8, size=(n, 3)).astype(np.float32)
        dummy.step_async(actions)
        batched.step_async(actions)
        (o1, r1, d1, i1), (o2, r2, d2, i2) = dummy.step_wait(), batched.step_wait()
        assert np.array_equal(o1, o2) and np.array_equal(r1, r2) and r1.dtype == r2.dtype, t
        assert np.array_equal(d1, d2), t
        for a, b in zip(i1, i2, strict=True):
            assert a.keys() == b.keys(), t
            for key in a:
                assert np.array_equal(a[key], b[key]), (t, key)

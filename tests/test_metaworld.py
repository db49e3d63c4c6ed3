"""Continual World on Meta-World v3 (skipped without the `metaworld` extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from hope_envs.curriculum import (
    common_spaces,
    defines_success,
    load_curriculum,
    make_env,
    resolve_tasks,
)
from hope_envs.metaworld_tasks import CW10_TASKS, CW20_TASKS, METAWORLD_ID

metaworld = pytest.importorskip("metaworld")
policies = pytest.importorskip("metaworld.policies")


def expert(task: str) -> object:
    """Meta-World's scripted policy for `task` (e.g. hammer-v3 -> SawyerHammerV3Policy)."""
    words = task.removesuffix("-v3").split("-")
    return getattr(policies, "Sawyer" + "".join(w.capitalize() for w in words) + "V3Policy")()


def expert_succeeds(env: gym.Env, task: str, seed: int) -> bool:
    """Whether the scripted policy reaches `info["success"]` within the episode."""
    policy = expert(task)
    obs, _ = env.reset(seed=seed)
    done = False
    while not done:
        action = np.clip(policy.get_action(obs), -1.0, 1.0)  # type: ignore[attr-defined]
        obs, _, terminated, truncated, info = env.step(action)
        if info["success"]:
            return True
        done = terminated or truncated
    return False


# About 2 s per task on a 2-core machine: one runs by default, all ten under `-m slow`.
@pytest.mark.parametrize(
    "task",
    [
        task if task == "handle-press-side-v3" else pytest.param(task, marks=pytest.mark.slow)
        for task in CW10_TASKS
    ],
)
def test_checkers_pass_on_every_cw10_task(task: str) -> None:
    env = gym.make(METAWORLD_ID, task=task)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env, warn=True)
    env.close()


def test_positions_resample_every_reset_and_follow_the_seed() -> None:
    env_a = gym.make(METAWORLD_ID, task="push-v3")
    env_b = gym.make(METAWORLD_ID, task="push-v3")
    first_a, _ = env_a.reset(seed=3)
    second_a, _ = env_a.reset()
    first_b, _ = env_b.reset(seed=3)
    np.testing.assert_array_equal(first_a, first_b)
    # Object (obs[4:7]) and goal (obs[-3:], observed as in Continual World) move between resets.
    assert not np.allclose(first_a[4:7], second_a[4:7])
    assert not np.allclose(first_a[-3:], second_a[-3:]) and np.any(first_a[-3:] != 0)
    action = np.array([0.2, -0.1, 0.3, 1.0], np.float32)
    assert env_a.reset(seed=3)[0].tolist() == first_a.tolist()
    assert env_a.step(action)[1] == env_b.step(action)[1]


def test_unknown_task_name_lists_close_matches() -> None:
    with pytest.raises(ValueError, match="did you mean hammer-v3"):
        gym.make(METAWORLD_ID, task="hamer-v3")


def test_cw10_and_cw20_build_with_continual_world_settings() -> None:
    cw10 = resolve_tasks(load_curriculum("cw10")["tasks"], 1_000_000)
    assert [spec.kwargs["task"] for spec in cw10] == list(CW10_TASKS)
    assert common_spaces(cw10) == (39, 4)
    assert all(defines_success(spec) for spec in cw10)
    cw20 = resolve_tasks(load_curriculum("cw20")["tasks"], 1_000_000)
    assert [spec.kwargs["task"] for spec in cw20] == list(CW20_TASKS)
    assert len({spec.name for spec in cw20}) == 20 and cw20[10].name == "hammer#2"

    env = make_env(cw10[5], 39, 4)  # handle-press-side
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and info["success"] is False
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated and isinstance(info["success"], bool)
        steps += 1
    assert steps == 200
    env.close()


@pytest.mark.parametrize("task", ["handle-press-side-v3", "faucet-close-v3", "hammer-v3"])
def test_success_is_reachable_on_resampled_positions(task: str) -> None:
    env = gym.make(METAWORLD_ID, task=task)
    assert all(expert_succeeds(env, task, seed) for seed in range(2))
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", CW10_TASKS)
def test_every_cw10_task_is_solvable_in_200_steps(task: str) -> None:
    env = gym.make(METAWORLD_ID, task=task)
    assert np.mean([expert_succeeds(env, task, seed) for seed in range(10)]) >= 0.8
    env.close()


MT1_ENTRY = {"id": "Meta-World/MT1", "kwargs": {"env_name": "button-press-topdown-v3"}}


def test_meta_worlds_own_mt1_id_joins_a_curriculum_scored_by_success() -> None:
    """The form of Meta-World's README: `Meta-World/MT1` with `env_name`, no wrapper of ours."""
    (spec,) = resolve_tasks([MT1_ENTRY], 5)
    assert spec.name == "MT1[env_name=button-press-topdown-v3]"
    assert defines_success(spec)
    assert common_spaces([spec]) == (39, 4)
    env = make_env(spec, 39, 4)
    obs, info = env.reset(seed=0)
    assert obs.shape == (39,) and info["success"] is False
    policy = expert("button-press-topdown-v3")
    solved = False
    for _ in range(200):
        action = np.clip(policy.get_action(obs.astype(np.float64)), -1.0, 1.0)  # type: ignore[attr-defined]
        obs, _, terminated, truncated, info = env.step(action.astype(np.float32))
        assert isinstance(info["success"], bool)
        solved = solved or info["success"]
        if terminated or truncated:
            break
    assert solved
    env.close()


def test_mt1_resolves_in_a_fresh_interpreter_that_never_imported_metaworld(
    tmp_path: Path,
) -> None:
    """Nothing but the id makes `metaworld` register its envs (issue 12's failing example)."""
    code = (
        "import sys; from hope_envs.curriculum import resolve_tasks; "
        "assert 'metaworld' not in sys.modules; "
        f"print(resolve_tasks([{MT1_ENTRY!r}], 5)[0].id)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Meta-World/MT1"

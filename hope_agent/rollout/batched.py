"""A batched vector env for the point-mass tasks: one process, no per-env Python wrappers.

``SyncVectorEnv`` spends about 40-90 us of Python per env step (five wrappers, the env checker,
info dicts merged key by key) around a MuJoCo step of about 2 us. :class:`PointBatchEnv` keeps
the task envs built by :func:`~hope_envs.curriculum.make_env` (their models, data, random
generators and reset rules) but steps them as one batch: the common actions mapped to the task's
bounds at once, one ``mj_step`` per env, then observations, rewards, truncations and infos for
every env from the task's own ``batch_rewards`` (the rule its single-env ``step`` applies to one
row). Resets, sub-episode boundaries and faults go through the envs themselves; the step
counters of a trial live in the batch's arrays, not in the task envs, while they are batched.

It returns what ``SyncVectorEnv`` with next-step autoreset over :func:`vector_env`'s guarded
envs returns, bit for bit: the same observations, rewards, flags and infos, the same env faults
(:class:`~hope_agent.rollout.guard.EnvFaultGuard`'s rules), the same random streams
(``tests/test_batched_envs.py``). Only the tasks of :data:`BATCHED_IDS` have it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.spaces import Box
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from hope_agent.rollout.guard import INSTABILITY_WARNINGS, SIMULATOR_ERRORS
from hope_envs.curriculum import TaskSpec, make_env
from hope_envs.point import PointReachEnv
from hope_envs.point_adapt import PointAdaptEnv
from hope_envs.wrappers import to_task_action

log = logging.getLogger(__name__)

# The task ids whose envs :class:`PointBatchEnv` steps.
BATCHED_IDS: tuple[str, ...] = ("hope/PointReach-v0", "hope/PointAdapt-v0")


def use_batched_envs(asked: bool | None, specs: Sequence[TaskSpec], key: str) -> bool:
    """Whether a run whose config option ``key`` is ``asked`` steps its tasks as batches.

    ``None``: wherever every task has batched envs (they give the same transitions); ``True``:
    required, else one ValueError naming the tasks without them and the fix; ``False``: never.
    """
    others = [f"{s.name} ({s.id})" for s in specs if s.id not in BATCHED_IDS]
    if asked and others:
        raise ValueError(
            f"{key}=true: {', '.join(others)} have no batched envs (those that do: "
            f"{', '.join(BATCHED_IDS)}); set {key}=false."
        )
    return not others if asked is None else bool(asked)


class PointBatchEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of one point-mass task (``spec``) with the curriculum's common spaces,
    stepped as one batch with next-step autoreset (see the module docstring).

    Args:
        spec: the task; its id must be one of :data:`BATCHED_IDS`.
        obs_dim, act_dim: the curriculum's common widths.
        num_envs: copies.
        obs_limit: largest plausible absolute observation value (the fault guard's).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self, spec: TaskSpec, obs_dim: int, act_dim: int, num_envs: int, obs_limit: float = 1e6
    ) -> None:
        if spec.id not in BATCHED_IDS:
            raise ValueError(
                f"ppo.batched_envs=true: task {spec.name!r} ({spec.id}) has no batched envs; "
                f"those that do: {', '.join(BATCHED_IDS)}. Set ppo.batched_envs=false."
            )
        if not obs_limit > 0:
            raise ValueError(f"faults.obs_limit must be > 0, got {obs_limit}")
        self.spec_name = spec.id
        self.envs = [make_env(spec, obs_dim, act_dim) for _ in range(num_envs)]
        self.tasks: list[Any] = [env.unwrapped for env in self.envs]
        self.num_envs = num_envs
        self.obs_limit = obs_limit
        self.faults = 0
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        task_space = self.tasks[0].action_space
        assert isinstance(task_space, Box)
        self._low, self._high = task_space.low, task_space.high
        self._obs_dim = obs_dim
        wrapped_spec = self.envs[0].spec
        self._limit = None if wrapped_spec is None else wrapped_spec.max_episode_steps
        self._adapt = isinstance(self.tasks[0], PointAdaptEnv)
        assert self._adapt or isinstance(self.tasks[0], PointReachEnv)
        n = num_envs
        self._elapsed = np.zeros(n, dtype=np.int64)
        self._goal_index = np.zeros(n, dtype=np.int64)
        self._trial_episode = np.zeros(n, dtype=np.int64)
        self._sub_step = np.zeros(n, dtype=np.int64)
        self._reached = np.zeros(n, dtype=bool)
        self._autoreset = np.zeros(n, dtype=bool)
        self._last_obs = np.zeros((n, obs_dim), dtype=np.float32)
        # views of each env's MuJoCo warning counters, and their values after its last good step
        self._numbers = [task.data.warning.number for task in self.tasks]
        self._warnings = np.stack(self._numbers)[:, INSTABILITY_WARNINGS]

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env (``seed + i`` for env ``i`` where ``seed`` is an int)."""
        if seed is None or isinstance(seed, int):
            seeds: Sequence[int | None] = [
                None if seed is None else seed + i for i in range(self.num_envs)
            ]
        else:
            seeds = seed
        obs = np.zeros((self.num_envs, self._obs_dim), dtype=np.float32)
        infos: dict[str, Any] = {}
        for i, s in enumerate(seeds):
            obs[i], info = self._reset_env(i, s, options)
            infos = self._add_info(infos, info, i)
        self._autoreset[:] = False
        return obs, infos

    def reset_one(self, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset env ``i`` now (same-step autoreset, as SB3's ``VecEnv`` does it): its next
        step is a real one."""
        self._autoreset[i] = False
        return self._reset_env(i)

    def _reset_env(
        self, i: int, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.envs[i].reset(seed=seed, options=options)
        task = self.tasks[i]
        self._elapsed[i] = 0
        if self._adapt:
            self._goal_index[i] = task.goal_index
            self._trial_episode[i], self._sub_step[i], self._reached[i] = 0, 0, False
        self._last_obs[i] = obs
        self._warnings[i] = self._numbers[i][list(INSTABILITY_WARNINGS)]
        return obs, info

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env (an env whose episode ended at the last step is reset instead)."""
        n = self.num_envs
        resetting = self._autoreset.copy()
        stepping = ~resetting
        rows = np.flatnonzero(stepping)
        task_actions = to_task_action(actions, self._low, self._high)
        errors: dict[int, str] = {}
        for i in rows:
            task = self.tasks[i]
            task.data.ctrl[:] = task_actions[i]
            try:
                mujoco.mj_step(task.model, task.data, nstep=task.frame_skip)
            except SIMULATOR_ERRORS as e:
                errors[int(i)] = f"{type(e).__name__}: {e}"
        self._elapsed[rows] += 1
        body = np.stack([np.concatenate((task.data.qpos, task.data.qvel)) for task in self.tasks])
        positions = body[:, :2]
        if self._adapt:
            self._sub_step[rows] += 1
            reward, truncated, info = self.tasks[0].batch_rewards(
                positions,
                self._goal_index,
                self._trial_episode.copy(),
                self._sub_step.copy(),
                self._reached,
                task_actions,
            )
            self._reached = np.where(stepping, info["success"], self._reached)
            for i in np.flatnonzero(stepping & info["sub_episode_end"] & ~truncated):
                self.tasks[i].next_sub_episode()
                self._trial_episode[i] += 1
                self._sub_step[i], self._reached[i] = 0, False
                body[i, :2], body[i, 2:] = self.tasks[i].data.qpos, self.tasks[i].data.qvel
            extra = [(self._sub_step / self.tasks[0].sub_episode_steps)[:, None]]
            if self.tasks[0].goal_hint:
                extra.append(self.tasks[0].goals[self._goal_index])
            body = np.concatenate([body, *extra], axis=1)
        else:
            reward, info = self.tasks[0].batch_rewards(positions, task_actions)
            truncated = np.zeros(n, dtype=bool)
        if self._limit is not None:
            truncated = truncated | (self._elapsed >= self._limit)
        obs = np.zeros((n, self._obs_dim), dtype=np.float32)
        obs[:, : body.shape[1]] = body
        faulty = self._faults(rows, obs, reward, errors)
        ok = stepping & ~faulty
        infos: dict[str, Any] = {}
        for key, value in info.items() if ok.any() else ():
            infos[key] = np.where(ok, value, np.zeros_like(value))
            infos[f"_{key}"] = ok.copy()
        reward = np.where(ok, reward, 0.0)
        truncated = np.where(ok, truncated, faulty)
        obs[faulty] = self._last_obs[faulty]
        self._last_obs[ok] = obs[ok]
        if faulty.any():
            infos["env_fault"], infos["_env_fault"] = faulty.copy(), faulty.copy()
        for i in np.flatnonzero(resetting):
            obs[i], reset_info = self._reset_env(int(i))
            infos = self._add_info(infos, reset_info, int(i))
        terminated = np.zeros(n, dtype=bool)
        self._autoreset = terminated | truncated
        return obs, reward.astype(np.float64), terminated, truncated, infos

    def _faults(
        self, rows: np.ndarray, obs: np.ndarray, reward: np.ndarray, errors: dict[int, str]
    ) -> np.ndarray:
        """The rows whose step was a fault, by :class:`EnvFaultGuard`'s rules, in its order."""
        counts = np.stack(self._numbers)[:, INSTABILITY_WARNINGS]
        stepped = np.zeros(self.num_envs, dtype=bool)
        stepped[rows] = True
        stepped[list(errors)] = False  # the guard keeps its counts where the step raised
        unstable = (counts != self._warnings).any(axis=1)
        suspect = unstable | ~np.isfinite(reward) | ~(np.abs(obs).max(axis=1) <= self.obs_limit)
        self._warnings[stepped] = counts[stepped]
        faulty = np.zeros(self.num_envs, dtype=bool)
        for i in sorted({*errors, *np.flatnonzero(suspect & stepped).tolist()}):
            problem = errors.get(i)
            if problem is None and unstable[i]:
                problem = "MuJoCo reported an unstable simulation (bad qpos, qvel or qacc)"
            elif problem is None and not math.isfinite(float(reward[i])):
                problem = f"non-finite reward {reward[i]}"
            elif problem is None:
                problem = (
                    "non-finite observation"
                    if not np.all(np.isfinite(obs[i]))
                    else f"observation beyond faults.obs_limit={self.obs_limit:g}"
                )
            faulty[i] = True
            self.faults += 1
            log.warning(
                "env fault in %s: %s; the episode ends and the env resets", self.spec_name, problem
            )
        return faulty

    def close_extras(self, **kwargs: Any) -> None:
        """Close every task env."""
        for env in self.envs:
            env.close()

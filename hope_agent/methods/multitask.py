"""Multi-task upper bound: every task of the curriculum interleaved, for the same total budget.

``method=multitask`` (:class:`MultiTask`) brings its own env factory
(:func:`multitask_env_factory`): every env slot is a :class:`MultiTaskEnv` that plays a new task
at each episode, from a fresh random permutation of the tasks. The runner still runs one stage
per task with its budget, so row i of the matrix is the performance after ``i + 1`` stages'
worth of interleaved training, and the last row is the upper bound. With the oracle task id the
runner reads each episode's task from ``info["task_index"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from hope_agent.methods.base import Method
from hope_agent.rollout.guard import EnvFaultGuard
from hope_agent.rollout.vec import VecEnvFactory
from hope_envs.curriculum import TaskSpec, make_env


class MultiTaskEnv(gym.Env[np.ndarray, np.ndarray]):
    """One env slot that plays a different task of the curriculum at each episode.

    Each task's env is built on first use (common spaces, its own time limit) inside an
    :class:`~hope_agent.rollout.guard.EnvFaultGuard`. ``reset(seed=s)`` reseeds the task order
    and, on their next first use, the task envs; ``info["task_index"]`` names the episode's task.

    Args:
        specs: the curriculum's tasks.
        obs_dim: common observation width.
        act_dim: common action width.
        obs_limit: the guards' largest plausible absolute observation value
            (``faults.obs_limit``).
    """

    def __init__(
        self, specs: Sequence[TaskSpec], obs_dim: int, act_dim: int, obs_limit: float = 1e6
    ) -> None:
        if not specs:
            raise ValueError("MultiTaskEnv needs at least one task")
        self.specs, self.obs_dim, self.act_dim = list(specs), obs_dim, act_dim
        self.obs_limit = obs_limit
        self._envs: dict[int, gym.Env] = {}
        first = self._task_env(0)
        self.observation_space = first.observation_space
        self.action_space = first.action_space
        self._order_rng = np.random.default_rng()
        self._order: list[int] = []
        self._unseeded: set[int] = set(range(len(self.specs)))
        self.task_index = 0

    def _task_env(self, j: int) -> gym.Env:
        if j not in self._envs:
            env = make_env(self.specs[j], self.obs_dim, self.act_dim)
            self._envs[j] = EnvFaultGuard(env, self.obs_limit)
        return self._envs[j]

    def _next_task(self) -> int:
        if not self._order:
            self._order = [int(j) for j in self._order_rng.permutation(len(self.specs))]
        return self._order.pop()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode of the next task in this slot's order."""
        super().reset(seed=seed)
        if seed is not None:
            self._order_rng = np.random.default_rng(seed)
            self._order = []
            self._unseeded = set(range(len(self.specs)))
        self.task_index = self._next_task()
        task_seed = None
        if self.task_index in self._unseeded:
            # Seed each task env once, from this slot's stream; later resets continue its RNG.
            task_seed = int(self._order_rng.integers(2**31 - 1))
            self._unseeded.discard(self.task_index)
        obs, info = self._task_env(self.task_index).reset(seed=task_seed, options=options)
        return obs, {**info, "task_index": self.task_index}

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the current task's env."""
        obs, reward, terminated, truncated, info = self._envs[self.task_index].step(action)
        return obs, reward, terminated, truncated, {**info, "task_index": self.task_index}

    def render(self) -> Any:
        """Render the current task's env (built with no render mode: returns ``None``)."""
        return self._envs[self.task_index].render()

    def close(self) -> None:
        """Close every task env built so far."""
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def multitask_env_factory(specs: Sequence[TaskSpec], obs_limit: float = 1e6) -> VecEnvFactory:
    """A runner vector-env factory that ignores the stage's task and interleaves all ``specs``.

    The returned factory has the runner's signature ``(spec, obs_dim, act_dim, num_envs,
    asynchronous)`` and builds ``num_envs`` :class:`MultiTaskEnv` slots with next-step autoreset,
    like :func:`hope_agent.rollout.vec.make_vector_env`; ``obs_limit`` goes to every task env's
    fault guard.
    """
    tasks = list(specs)

    def make(
        spec: TaskSpec, obs_dim: int, act_dim: int, num_envs: int, asynchronous: bool = False
    ) -> gym.vector.VectorEnv:
        if num_envs < 1:
            raise ValueError(f"ppo.num_envs must be >= 1, got {num_envs}")
        fns = [partial(MultiTaskEnv, tasks, obs_dim, act_dim, obs_limit) for _ in range(num_envs)]
        if asynchronous:
            return gym.vector.AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)

    return make


class MultiTask(Method):
    """The multi-task upper bound: its only hook is the env factory above."""

    name = "multitask"

    def env_factory(self, specs: Sequence[TaskSpec], obs_limit: float) -> VecEnvFactory:
        """Every stage trains on all of ``specs`` interleaved."""
        return multitask_env_factory(specs, obs_limit)

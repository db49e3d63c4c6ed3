"""Vector envs for one curriculum task (Gymnasium 1.x, next-step autoreset).

``SyncVectorEnv`` steps the envs in this process (best for a few cheap envs or 2 CPU cores);
``AsyncVectorEnv`` runs one process per env (worth it with many cores or slow physics). Every env
is wrapped in :class:`~hope_agent.rollout.guard.EnvFaultGuard`, so a simulator blow-up ends that
env's episode instead of sending NaNs into training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode

from hope_agent.rollout.batched import PointBatchEnv
from hope_agent.rollout.guard import EnvFaultGuard
from hope_envs.curriculum import TaskSpec, make_env

EnvFn = Callable[[], gym.Env[Any, Any]]
# ``(spec, obs_dim, act_dim, num_envs, asynchronous) -> vector env``: how the trainer gets the
# envs of a stage (a method may bring its own, e.g. multi-task training).
VecEnvFactory = Callable[[TaskSpec, int, int, int, bool], gym.vector.VectorEnv]


def vector_env(
    fns: Sequence[EnvFn], asynchronous: bool = False, obs_limit: float = 1e6
) -> gym.vector.VectorEnv:
    """A next-step-autoreset vector env of the envs built by ``fns``, each one guarded.

    Env factories other than :func:`make_vector_env` (e.g. a method's) should build through this
    function, so that their envs get the same fault handling.
    """
    guarded = [partial(_guard, fn, obs_limit) for fn in fns]
    if asynchronous:
        return gym.vector.AsyncVectorEnv(guarded, autoreset_mode=AutoresetMode.NEXT_STEP)
    return gym.vector.SyncVectorEnv(guarded, autoreset_mode=AutoresetMode.NEXT_STEP)


def _guard(fn: EnvFn, obs_limit: float) -> gym.Env[Any, Any]:
    env = fn()
    return env if isinstance(env, EnvFaultGuard) else EnvFaultGuard(env, obs_limit)


def make_vector_env(
    spec: TaskSpec,
    obs_dim: int,
    act_dim: int,
    num_envs: int,
    asynchronous: bool = False,
    obs_limit: float = 1e6,
    batched: bool = False,
) -> gym.vector.VectorEnv:
    """``num_envs`` guarded copies of ``spec``'s env with common spaces, autoresetting on the
    next step; ``batched``: as one :class:`~hope_agent.rollout.batched.PointBatchEnv` (the same
    transitions; point-mass tasks only).

    With next-step autoreset, the step that ends an episode returns its final observation and the
    following step (whose action is ignored) returns the reset observation; the trainer masks
    that step out (see :mod:`hope_agent.algos.gae`). ``obs_limit`` is the guard's largest
    plausible absolute observation value.
    """
    if num_envs < 1:
        raise ValueError(f"ppo.num_envs must be >= 1, got {num_envs}")
    if batched:
        if asynchronous:
            raise ValueError("batched envs step in this process: drop asynchronous")
        return PointBatchEnv(spec, obs_dim, act_dim, num_envs, obs_limit)
    fns = [partial(make_env, spec, obs_dim, act_dim) for _ in range(num_envs)]
    return vector_env(fns, asynchronous, obs_limit)

"""Vector envs for one curriculum task (Gymnasium 1.x, next-step autoreset).

``SyncVectorEnv`` steps the envs in this process (best for a few cheap envs or 2 CPU cores);
``AsyncVectorEnv`` runs one process per env (worth it with many cores or slow physics).
"""

from __future__ import annotations

from functools import partial

import gymnasium as gym
from gymnasium.vector import AutoresetMode

from hope_envs.curriculum import TaskSpec, make_env


def make_vector_env(
    spec: TaskSpec,
    obs_dim: int,
    act_dim: int,
    num_envs: int,
    asynchronous: bool = False,
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``spec``'s env with common spaces, autoresetting on the next step.

    With next-step autoreset, the step that ends an episode returns its final observation and the
    following step (whose action is ignored) returns the reset observation; the trainer masks
    that step out (see :mod:`hope_agent.algos.gae`).
    """
    if num_envs < 1:
        raise ValueError(f"ppo.num_envs must be >= 1, got {num_envs}")
    fns = [partial(make_env, spec, obs_dim, act_dim) for _ in range(num_envs)]
    if asynchronous:
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)

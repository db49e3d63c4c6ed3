"""Gymnasium registration of every task this package provides, under the `hope/` namespace.

Importing `hope_envs` runs `register_envs()`. Time limits live here, at `register(...)`, so every
consumer of an id (the curriculum, SB3, `gymnasium.make`) sees the same episode length; the one
exception, `hope/PointAdapt-v0`, ends its trials itself because their length is a kwarg.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

# The id prefix of every task of this package: ids are `{NAMESPACE}/<Task>-v<n>`.
NAMESPACE = "hope"
# The render modes of every MuJoCo task of this package (those `MujocoEnv` implements).
RENDER_MODES: tuple[str, ...] = ("human", "rgb_array", "depth_array", "rgbd_tuple")

# (id, entry point, episode length in steps; None where the env ends its episodes itself)
_TASKS: tuple[tuple[str, str, int | None], ...] = tuple(
    (f"{NAMESPACE}/{name}", entry_point, max_episode_steps)
    for name, entry_point, max_episode_steps in (
        ("PointReach-v0", "hope_envs.point:PointReachEnv", 100),
        # A trial's length follows its kwargs (trial_episodes x sub_episode_steps).
        ("PointAdapt-v0", "hope_envs.point_adapt:PointAdaptEnv", None),
        ("CheetahRun-v0", "hope_envs.cheetah:CheetahRunEnv", 1000),
        ("CheetahRunBackward-v0", "hope_envs.cheetah:CheetahRunBackwardEnv", 1000),
        ("CheetahJump-v0", "hope_envs.cheetah:CheetahJumpEnv", 1000),
        ("CheetahFrontStand-v0", "hope_envs.cheetah:CheetahFrontStandEnv", 1000),
        ("CheetahTargetSpeed-v0", "hope_envs.cheetah:CheetahTargetSpeedEnv", 1000),
        # Continual World: 200-step episodes, as CW used.
        ("MetaWorld-v0", "hope_envs.metaworld_tasks:MetaWorldTaskEnv", 200),
    )
)


def register_envs() -> None:
    """Register every task id of this package with Gymnasium (idempotent)."""
    for env_id, entry_point, max_episode_steps in _TASKS:
        if env_id not in registry:
            register(id=env_id, entry_point=entry_point, max_episode_steps=max_episode_steps)


def registered_ids() -> list[str]:
    """Every Gymnasium id this package registers, in a stable order."""
    return [env_id for env_id, _, _ in _TASKS]

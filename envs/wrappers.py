"""One observation and action space for every task of a curriculum, whatever its body.

Observations are flattened 1-D vectors zero-padded at the end to a common width `obs_dim`;
actions live in `Box(-1, 1, (act_dim,))`, and a task with `n <= act_dim` action dimensions
reads the first `n`, rescaled affinely from [-1, 1] to its own bounds (the rest are ignored).
Tasks whose spaces cannot be matched this way (non-Box spaces, image observations, unbounded
actions) are rejected with one error that says why.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box
from numpy.typing import ArrayLike, NDArray


def observation_dim(space: gym.Space[Any]) -> int:
    """Width of a flat vector observation space; ValueError if it is not one."""
    if not isinstance(space, Box):
        raise ValueError(
            f"observation space {space} is not a Box; only flat vector observations can be "
            "padded to a common width (flatten dict observations with "
            "gymnasium.wrappers.FlattenObservation, or use a state-based task)."
        )
    if len(space.shape) != 1 or not np.issubdtype(space.dtype, np.number):
        raise ValueError(
            f"observation space {space} is not a flat numeric vector (image or matrix "
            "observations cannot be padded); use the task's state observations or flatten them."
        )
    return int(space.shape[0])


def action_dim(space: gym.Space[Any]) -> int:
    """Width of a bounded, flat, continuous action space; ValueError if it is not one."""
    if not isinstance(space, Box) or not np.issubdtype(space.dtype, np.floating):
        raise ValueError(
            f"action space {space} is not a continuous Box; curricula map one continuous "
            "action space onto every task, so discrete or dict actions are not supported."
        )
    if len(space.shape) != 1:
        raise ValueError(f"action space {space} is not a flat vector.")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ValueError(
            f"action space {space} is unbounded; [-1, 1] can only be rescaled to finite bounds "
            "(clip the task's actions with gymnasium.wrappers.ClipAction and finite bounds)."
        )
    return int(space.shape[0])


def pad_observation(obs: ArrayLike, obs_dim: int) -> NDArray[np.float32]:
    """Flat float32 copy of `obs` zero-padded at the end to width `obs_dim`."""
    flat = np.asarray(obs, dtype=np.float32).reshape(-1)
    if flat.shape[0] > obs_dim:
        raise ValueError(f"observation of width {flat.shape[0]} does not fit obs_dim={obs_dim}.")
    out = np.zeros(obs_dim, dtype=np.float32)
    out[: flat.shape[0]] = flat
    return out


def to_task_action(
    action: ArrayLike, low: NDArray[np.floating[Any]], high: NDArray[np.floating[Any]]
) -> NDArray[np.floating[Any]]:
    """Map common actions in [-1, 1]^A (`(A,)` or a batch `(B, A)`) to a task's bounds: the
    first `len(low)` dims of each, rescaled.

    Values outside [-1, 1] are clipped first (a Gaussian policy's samples can leave the box).
    """
    n = low.shape[0]
    a = np.clip(np.atleast_1d(np.asarray(action, dtype=np.float64))[..., :n], -1.0, 1.0)
    task_action = low + (a + 1.0) * 0.5 * (high - low)
    # Rounding in the affine map must not step outside the task's own bounds.
    return np.clip(task_action, low, high).astype(low.dtype)


def to_common_action(
    task_action: ArrayLike,
    low: NDArray[np.floating[Any]],
    high: NDArray[np.floating[Any]],
    act_dim: int,
) -> NDArray[np.float32]:
    """Inverse of `to_task_action`: a task action in its bounds as a padded [-1, 1]^A action."""
    a = np.asarray(task_action, dtype=np.float64).reshape(-1)
    span = np.where(high > low, high - low, 1.0)
    out = np.zeros(act_dim, dtype=np.float32)
    out[: a.shape[0]] = 2.0 * (a - low) / span - 1.0
    return out


class CommonSpaces(
    gym.Wrapper[NDArray[np.float32], NDArray[np.float32], Any, Any],
    gym.utils.RecordConstructorArgs,
):
    """Give a task the common spaces `Box(-inf, inf, (obs_dim,))` and `Box(-1, 1, (act_dim,))`.

    Both spaces are float32 and identical for every task of a curriculum (so tasks can share a
    vector env). `info["success"]` is a bool present at every reset and step when
    `defines_success`, and absent otherwise, so a consumer never mistakes a foreign key for a
    success criterion.
    """

    def __init__(self, env: gym.Env[Any, Any], obs_dim: int, act_dim: int, defines_success: bool):
        gym.utils.RecordConstructorArgs.__init__(
            self, obs_dim=obs_dim, act_dim=act_dim, defines_success=defines_success
        )
        super().__init__(env)
        n_obs = observation_dim(env.observation_space)
        n_act = action_dim(env.action_space)
        if n_obs > obs_dim or n_act > act_dim:
            raise ValueError(
                f"task spaces (obs {n_obs}, act {n_act}) exceed the common widths "
                f"(obs_dim={obs_dim}, act_dim={act_dim}); compute them with common_spaces()."
            )
        assert isinstance(env.action_space, Box)
        self._low = env.action_space.low
        self._high = env.action_space.high
        self._obs_dim = obs_dim
        self._defines_success = defines_success
        self.observation_space = Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
        self.action_space = Box(-1.0, 1.0, shape=(act_dim,), dtype=np.float32)

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        info = dict(info)
        if self._defines_success:
            info["success"] = bool(info.get("success", False))
        else:
            info.pop("success", None)
        return info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Reset the task; the observation is padded."""
        obs, info = self.env.reset(seed=seed, options=options)
        return pad_observation(obs, self._obs_dim), self._info(info)

    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the task with `action` mapped to its own action space."""
        task_action = to_task_action(action, self._low, self._high)
        obs, reward, terminated, truncated, info = self.env.step(task_action)
        return pad_observation(obs, self._obs_dim), reward, terminated, truncated, self._info(info)

"""Planar point-mass reaching: the fast task family (the CPU default curriculum and test fixture).

Each task asks the same body to reach a different region of the table. The goal is a constructor
argument and is *not* in the observation, so a single policy trained on several goals in sequence
has to infer the active one from the reward: the tasks conflict, and naive fine-tuning forgets.

`PointMassEnv` is the body shared with the adaptation tasks (`hope_envs.point_adapt`): the
table, the start pose, the control cost and the drawn goal marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco import MujocoEnv
from gymnasium.spaces import Box
from numpy.typing import ArrayLike, NDArray

from hope_envs.registration import RENDER_MODES

_XML = Path(__file__).resolve().parent / "assets" / "point.xml"

# Half-width of the reachable table: the slide joints are limited to [-1, 1].
_TABLE_HALF_WIDTH = 1.0

DEFAULT_CAMERA_CONFIG: dict[str, float] = {"distance": 2.7, "elevation": -90.0, "azimuth": 90.0}


def distances(positions: NDArray[np.float64], goals: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise distances between `(N, 2)` positions and `(N, 2)` (or `(1, 2)`) goals (m).

    `np.vecdot` rounds as `np.linalg.norm` of one row does, so one env and a batch of envs
    (`hope_agent.rollout.batched`) compute the same bits.
    """
    gap = positions - goals
    return np.sqrt(np.vecdot(gap, gap))


def ctrl_costs(weight: float, actions: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """`-weight * ||a||^2` per row of `actions`, the squares summed in the actions' precision."""
    return -weight * np.sum(np.square(actions), axis=-1).astype(np.float64)


def first_row(info: dict[str, NDArray[Any]]) -> dict[str, Any]:
    """The first row of a batch's info arrays as Python scalars (one env's `info`)."""
    return {key: value[0].item() for key, value in info.items()}


class PointMassEnv(MujocoEnv, utils.EzPickle):
    """The point mass on its table: body, start pose, control cost, goal marker (not registered).

    A task subclass passes its own constructor arguments (`arguments`, recorded for pickling with
    the shared ones) and its observation width; it computes rewards for a batch of rows
    (`batch_rewards`, from `distances` and `ctrl_costs`; its `step` is the one-row case) and
    places the drawn goal with `_show_goal`.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 50}
    defines_success: ClassVar[bool] = True
    # The task's name in error messages.
    label: ClassVar[str] = "PointMass"

    def __init__(
        self,
        *,
        arguments: dict[str, Any],
        observation_size: int,
        ctrl_cost_weight: float = 0.05,
        success_radius: float = 0.1,
        reset_noise_scale: float = 0.05,
        default_camera_config: dict[str, float] = DEFAULT_CAMERA_CONFIG,
        **kwargs: Any,
    ) -> None:
        utils.EzPickle.__init__(
            self,
            **arguments,
            ctrl_cost_weight=ctrl_cost_weight,
            success_radius=success_radius,
            reset_noise_scale=reset_noise_scale,
            default_camera_config=default_camera_config,
            **kwargs,
        )
        if success_radius <= 0 or reset_noise_scale < 0:
            raise ValueError(
                f"{self.label} needs success_radius > 0 and reset_noise_scale >= 0, got "
                f"{success_radius} and {reset_noise_scale}."
            )
        self._ctrl_cost_weight = ctrl_cost_weight
        self._success_radius = success_radius
        self._reset_noise_scale = reset_noise_scale
        MujocoEnv.__init__(
            self,
            str(_XML),
            frame_skip=1,
            observation_space=Box(-np.inf, np.inf, shape=(observation_size,), dtype=np.float64),
            default_camera_config=default_camera_config,
            **kwargs,
        )
        self.model.site_size[self.model.site("goal").id, 0] = success_radius

    def _goal_array(self, goal: ArrayLike, what: str = "goal") -> NDArray[np.float64]:
        """`goal` as a position inside the table, else one ValueError naming the fix."""
        goal_array = np.asarray(goal, dtype=np.float64)
        if goal_array.shape != (2,) or not np.all(np.abs(goal_array) < _TABLE_HALF_WIDTH):
            raise ValueError(
                f"{self.label} {what} must be 2 numbers inside the table (-1, 1), got {goal!r}; "
                f"pass e.g. {what}=[0.6, 0.0]."
            )
        return goal_array

    def _show_goal(self, goal: NDArray[np.float64]) -> None:
        # Only drawn: lets rendered rollouts show where the hidden goal is.
        self.model.site_pos[self.model.site("goal").id, :2] = goal

    def _distance_to(self, goal: NDArray[np.float64]) -> float:
        return float(distances(self.data.qpos[None, :2], goal[None])[0])

    def _body_obs(self) -> NDArray[np.float64]:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def _reset_body(self) -> None:
        """Start near the table centre, at rest, drawn from `self.np_random`."""
        noise = self._reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(-noise, noise, size=self.model.nq)
        self.set_state(qpos, np.zeros(self.model.nv))


class PointReachEnv(PointMassEnv):
    r"""A point mass on a table must reach a goal that it cannot see.

    ## Description
    A 0.1 kg sphere slides on a 2 m x 2 m table (two slide joints, limits at +-1 m) pushed by two
    motors of up to 2 N against heavy damping, so its speed follows the force within ~0.05 s
    (at most 1 m/s). Each task fixes one `goal`; several goals form a curriculum whose tasks the
    agent can only tell apart by their rewards. Episodes are 100 steps of 0.02 s (time limit set
    at registration); a small PPO policy solves one goal in a few ten thousand steps.

    ## Action Space
    `Box(-1, 1, (2,), float32)`: the force along x and along y, in units of 2 N.

    ## Observation Space
    `Box(-inf, inf, (4,), float64)`:

    | Num | Observation        | Unit |
    |-----|--------------------|------|
    | 0   | x position         | m    |
    | 1   | y position         | m    |
    | 2   | x velocity         | m/s  |
    | 3   | y velocity         | m/s  |

    The goal is not observed.

    ## Rewards
    `reward = reward_distance + reward_ctrl`, each term also in `info`:
    - `reward_distance = -distance_weight * ||p - goal||` (dense shaping toward the goal),
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Success
    `info["success"]` is true at a step where the distance to the goal is below `success_radius`
    (curricula count an episode as solved if this holds at any step).

    ## Starting State
    Position uniform in `[-reset_noise_scale, reset_noise_scale]^2`, velocity zero; randomness
    only from `self.np_random`.

    ## Episode End
    Never terminates; truncated by the registered time limit (100 steps).

    ## Arguments
    | Parameter           | Type              | Default    | Description                          |
    |---------------------|-------------------|------------|--------------------------------------|
    | `goal`              | sequence of 2     | (0.6, 0.0) | goal position (m), inside the table  |
    | `distance_weight`   | float             | 1.0        | weight of the distance penalty       |
    | `ctrl_cost_weight`  | float             | 0.05       | weight of the control penalty        |
    | `success_radius`    | float             | 0.1        | success distance (m)                 |
    | `reset_noise_scale` | float             | 0.05       | half-width of the start square (m)   |
    """

    label = "PointReach"

    def __init__(
        self, goal: Sequence[float] = (0.6, 0.0), distance_weight: float = 1.0, **kwargs: Any
    ) -> None:
        """`kwargs`: `ctrl_cost_weight`, `success_radius`, `reset_noise_scale` (see the table;
        `PointMassEnv`'s), then `MujocoEnv`'s rendering arguments."""
        self._goal = self._goal_array(goal)
        self._distance_weight = distance_weight
        arguments = {"goal": goal, "distance_weight": distance_weight}
        super().__init__(arguments=arguments, observation_size=4, **kwargs)
        self._show_goal(self._goal)

    @property
    def goal(self) -> NDArray[np.float64]:
        """The goal position (m); a copy, not observed by the agent."""
        return self._goal.copy()

    def _distance(self) -> float:
        return self._distance_to(self._goal)

    def batch_rewards(
        self, positions: NDArray[np.float64], actions: NDArray[np.floating[Any]]
    ) -> tuple[NDArray[np.float64], dict[str, NDArray[Any]]]:
        """Rewards and infos of a batch of steps of this task (rows: envs), from the positions
        after the physics step and the actions taken; `step` is its one-row case."""
        distance = distances(positions, self._goal[None])
        reward_distance = -self._distance_weight * distance
        reward_ctrl = ctrl_costs(self._ctrl_cost_weight, actions)
        info = {
            "distance": distance,
            "success": distance < self._success_radius,
            "reward_distance": reward_distance,
            "reward_ctrl": reward_ctrl,
        }
        return reward_distance + reward_ctrl, info

    def step(  # type: ignore[override]  # MujocoEnv's annotation allows float64 info values only
        self, action: NDArray[np.float32]
    ) -> tuple[NDArray[np.float64], float, bool, bool, dict[str, Any]]:
        """Apply the force `action` for one 0.02 s step; see the class docstring for the reward."""
        self.do_simulation(action, self.frame_skip)
        reward, info = self.batch_rewards(self.data.qpos[None, :2], np.asarray(action)[None])
        if self.render_mode == "human":
            self.render()
        # Truncation comes from the TimeLimit wrapper added by `gymnasium.make`.
        return self._body_obs(), float(reward[0]), False, False, first_row(info)

    def reset_model(self) -> NDArray[np.float64]:
        """Start near the table centre, at rest."""
        self._reset_body()
        return self._body_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        return {"distance": self._distance(), "success": self._distance() < self._success_radius}

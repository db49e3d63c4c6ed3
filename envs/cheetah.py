"""A planar, HalfCheetah-like legged body and five locomotion tasks whose best behaviours conflict.

One body (`assets/cheetah.xml`, written for this project), five rewards: run forward, run
backward, jump, stand on the front legs, hold a target speed. The observation is the same for
every task and does not name the task, so a policy fine-tuned on one task after another loses
the earlier skills unless it keeps them on purpose: the main curriculum for GPU runs.

Every task shares `CheetahEnv`'s body, observation, reset and control cost; a subclass adds its
task reward terms through `_task_reward`. None of them defines success: curricula score them by
normalised return.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco import MujocoEnv
from gymnasium.spaces import Box
from numpy.typing import NDArray

_XML = Path(__file__).resolve().parent / "assets" / "cheetah.xml"

DEFAULT_CAMERA_CONFIG: dict[str, Any] = {
    "type": int(mujoco.mjtCamera.mjCAMERA_TRACKING),
    "trackbodyid": 1,
    "distance": 4.0,
    "elevation": -10.0,
    "azimuth": 90.0,
}

# Torso height (m) when the body stands at rest on its passive joint stiffness.
REST_HEIGHT = 0.6

_COMMON_DOC = """
    ## Body
    A 17 kg planar body: a 0.96 m capsule torso with a head, a back and a front leg of three links
    (thigh, shin, foot) each, passive joint springs that hold a stance, six torque motors. It moves
    in the x-z plane; physics step 0.01 s, 5 physics steps per env step (dt = 0.05 s).

    ## Action Space
    `Box(-1, 1, (6,), float32)`: torques of back thigh, back shin, back foot, front thigh, front
    shin, front foot (gears 110, 85, 55, 95, 60, 30 N m).

    ## Observation Space
    `Box(-inf, inf, (17,), float64)`: torso height z (m), torso pitch (rad), the six joint angles
    (rad), then the velocities of x, z, pitch and the six joints. The x position is excluded, and
    nothing in the observation names the task.

    ## Starting State
    The rest pose plus uniform noise in `[-reset_noise_scale, reset_noise_scale]` on every
    position and `reset_noise_scale * N(0, 1)` on every velocity, drawn from `self.np_random`.

    ## Episode End
    Never terminates (falling over is allowed and costly); truncated by the registered time limit
    (1000 steps, 50 s).

    ## Info
    `x_position`, `x_velocity`, `z_torso`, `pitch`, `z_rear` (height of the torso's rear end),
    and every reward term (`reward_*`, summing to the reward).
"""


class CheetahEnv(MujocoEnv, utils.EzPickle):
    """Shared body, observation, reset and control cost of the cheetah tasks (not registered).

    Subclasses implement `_task_reward` and document their reward terms.
    """

    metadata = {
        "render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"],
        "render_fps": 20,
    }
    defines_success: ClassVar[bool] = False

    def __init__(
        self,
        ctrl_cost_weight: float = 0.1,
        reset_noise_scale: float = 0.1,
        default_camera_config: dict[str, Any] = DEFAULT_CAMERA_CONFIG,
        **kwargs: Any,
    ) -> None:
        if reset_noise_scale < 0:
            raise ValueError(f"reset_noise_scale must be >= 0, got {reset_noise_scale}.")
        self._ctrl_cost_weight = ctrl_cost_weight
        self._reset_noise_scale = reset_noise_scale
        MujocoEnv.__init__(
            self,
            str(_XML),
            frame_skip=5,
            observation_space=Box(-np.inf, np.inf, shape=(17,), dtype=np.float64),
            default_camera_config=default_camera_config,
            **kwargs,
        )
        # Heights come from qpos (exact after the step; site and body poses lag one substep).
        self._base_height = float(self.model.body("torso").pos[2])
        self._rear_offset = float(self.model.site("rear").pos[0])

    def _task_reward(self, x_velocity: float) -> dict[str, float]:
        """The task's reward terms, keyed `reward_<term>`, evaluated after the physics step."""
        raise NotImplementedError

    def _torso_height(self) -> float:
        return self._base_height + float(self.data.qpos[1])

    def _rear_height(self) -> float:
        # A torso-frame point (x, 0, 0) pitched by angle p about y sits at height -x * sin(p).
        return self._torso_height() - self._rear_offset * float(np.sin(self.data.qpos[2]))

    def _state_info(self, x_velocity: float) -> dict[str, float]:
        return {
            "x_position": float(self.data.qpos[0]),
            "x_velocity": x_velocity,
            "z_torso": self._torso_height(),
            "pitch": float(self.data.qpos[2]),
            "z_rear": self._rear_height(),
        }

    def step(  # type: ignore[override]  # MujocoEnv's annotation allows float64 info values only
        self, action: NDArray[np.float32]
    ) -> tuple[NDArray[np.float64], float, bool, bool, dict[str, Any]]:
        """Apply the torques `action` for one 0.05 s step; the reward is the task's terms + ctrl."""
        x_before = float(self.data.qpos[0])
        self.do_simulation(action, self.frame_skip)
        x_velocity = (float(self.data.qpos[0]) - x_before) / self.dt
        reward_info = self._task_reward(x_velocity)
        reward_info["reward_ctrl"] = -self._ctrl_cost_weight * float(np.sum(np.square(action)))
        reward = float(sum(reward_info.values()))
        if self.render_mode == "human":
            self.render()
        # Truncation comes from the TimeLimit wrapper added by `gymnasium.make`.
        return (
            self._get_obs(),
            reward,
            False,
            False,
            {**self._state_info(x_velocity), **reward_info},
        )

    def _get_obs(self) -> NDArray[np.float64]:
        return np.concatenate([self.data.qpos[1:], self.data.qvel]).astype(np.float64)

    def reset_model(self) -> NDArray[np.float64]:
        """Rest pose plus seeded noise."""
        noise = self._reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(-noise, noise, size=self.model.nq)
        qvel = self.init_qvel + noise * self.np_random.standard_normal(self.model.nv)
        self.set_state(qpos, qvel)
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, float]:
        return self._state_info(0.0)


class CheetahRunEnv(CheetahEnv):
    __doc__ = (
        """Run forward (+x) as fast as possible.

    ## Rewards
    `reward = reward_forward + reward_ctrl`:
    - `reward_forward = forward_reward_weight * x_velocity`,
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Arguments
    `forward_reward_weight: float = 1.0`, `ctrl_cost_weight: float = 0.1`,
    `reset_noise_scale: float = 0.1`, plus `MujocoEnv` rendering arguments.
    """
        + _COMMON_DOC
    )

    def __init__(
        self,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.1,
        reset_noise_scale: float = 0.1,
        **kwargs: Any,
    ) -> None:
        utils.EzPickle.__init__(
            self, forward_reward_weight, ctrl_cost_weight, reset_noise_scale, **kwargs
        )
        self._forward_reward_weight = forward_reward_weight
        super().__init__(ctrl_cost_weight, reset_noise_scale, **kwargs)

    def _task_reward(self, x_velocity: float) -> dict[str, float]:
        return {"reward_forward": self._forward_reward_weight * x_velocity}


class CheetahRunBackwardEnv(CheetahEnv):
    __doc__ = (
        """Run backward (-x) as fast as possible.

    ## Rewards
    `reward = reward_backward + reward_ctrl`:
    - `reward_backward = -backward_reward_weight * x_velocity`,
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Arguments
    `backward_reward_weight: float = 1.0`, `ctrl_cost_weight: float = 0.1`,
    `reset_noise_scale: float = 0.1`, plus `MujocoEnv` rendering arguments.
    """
        + _COMMON_DOC
    )

    def __init__(
        self,
        backward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.1,
        reset_noise_scale: float = 0.1,
        **kwargs: Any,
    ) -> None:
        utils.EzPickle.__init__(
            self, backward_reward_weight, ctrl_cost_weight, reset_noise_scale, **kwargs
        )
        self._backward_reward_weight = backward_reward_weight
        super().__init__(ctrl_cost_weight, reset_noise_scale, **kwargs)

    def _task_reward(self, x_velocity: float) -> dict[str, float]:
        return {"reward_backward": -self._backward_reward_weight * x_velocity}


class CheetahJumpEnv(CheetahEnv):
    __doc__ = (
        """Jump: keep the torso high above its rest height, staying in place.

    ## Rewards
    `reward = reward_height + reward_drift + reward_ctrl`:
    - `reward_height = height_reward_weight * max(z_torso - rest_height, 0)` (the torso is only
      above its rest height while the legs push off or the body is airborne),
    - `reward_drift = -drift_cost_weight * x_velocity^2` (so running is not a way to jump),
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Arguments
    `height_reward_weight: float = 10.0`, `drift_cost_weight: float = 0.1`,
    `rest_height: float = 0.6` (m), `ctrl_cost_weight: float = 0.1`,
    `reset_noise_scale: float = 0.1`, plus `MujocoEnv` rendering arguments.
    """
        + _COMMON_DOC
    )

    def __init__(
        self,
        height_reward_weight: float = 10.0,
        drift_cost_weight: float = 0.1,
        rest_height: float = REST_HEIGHT,
        ctrl_cost_weight: float = 0.1,
        reset_noise_scale: float = 0.1,
        **kwargs: Any,
    ) -> None:
        utils.EzPickle.__init__(
            self,
            height_reward_weight,
            drift_cost_weight,
            rest_height,
            ctrl_cost_weight,
            reset_noise_scale,
            **kwargs,
        )
        self._height_reward_weight = height_reward_weight
        self._drift_cost_weight = drift_cost_weight
        self._rest_height = rest_height
        super().__init__(ctrl_cost_weight, reset_noise_scale, **kwargs)

    def _task_reward(self, x_velocity: float) -> dict[str, float]:
        height = max(self._torso_height() - self._rest_height, 0.0)
        return {
            "reward_height": self._height_reward_weight * height,
            "reward_drift": -self._drift_cost_weight * x_velocity**2,
        }


class CheetahFrontStandEnv(CheetahEnv):
    __doc__ = (
        """Stand on the front legs: raise the rear of the torso high, staying in place.

    ## Rewards
    `reward = reward_stand + reward_drift + reward_ctrl`:
    - `reward_stand = stand_reward_weight * (z_rear - rest_height)`, with `z_rear` the height of
      the torso's rear end (highest when the body balances nose-down on its front leg),
    - `reward_drift = -drift_cost_weight * x_velocity^2`,
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Arguments
    `stand_reward_weight: float = 5.0`, `drift_cost_weight: float = 0.1`,
    `rest_height: float = 0.6` (m), `ctrl_cost_weight: float = 0.1`,
    `reset_noise_scale: float = 0.1`, plus `MujocoEnv` rendering arguments.
    """
        + _COMMON_DOC
    )

    def __init__(
        self,
        stand_reward_weight: float = 5.0,
        drift_cost_weight: float = 0.1,
        rest_height: float = REST_HEIGHT,
        ctrl_cost_weight: float = 0.1,
        reset_noise_scale: float = 0.1,
        **kwargs: Any,
    ) -> None:
        utils.EzPickle.__init__(
            self,
            stand_reward_weight,
            drift_cost_weight,
            rest_height,
            ctrl_cost_weight,
            reset_noise_scale,
            **kwargs,
        )
        self._stand_reward_weight = stand_reward_weight
        self._drift_cost_weight = drift_cost_weight
        self._rest_height = rest_height
        super().__init__(ctrl_cost_weight, reset_noise_scale, **kwargs)

    def _task_reward(self, x_velocity: float) -> dict[str, float]:
        return {
            "reward_stand": self._stand_reward_weight * (self._rear_height() - self._rest_height),
            "reward_drift": -self._drift_cost_weight * x_velocity**2,
        }


class CheetahTargetSpeedEnv(CheetahEnv):
    __doc__ = (
        """Hold a target forward speed (neither faster nor slower).

    ## Rewards
    `reward = reward_speed + reward_ctrl`:
    - `reward_speed = -speed_cost_weight * |x_velocity - target_speed|`,
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Arguments
    `target_speed: float = 1.5` (m/s, negative = backward), `speed_cost_weight: float = 1.0`,
    `ctrl_cost_weight: float = 0.1`, `reset_noise_scale: float = 0.1`, plus `MujocoEnv`
    rendering arguments.
    """
        + _COMMON_DOC
    )

    def __init__(
        self,
        target_speed: float = 1.5,
        speed_cost_weight: float = 1.0,
        ctrl_cost_weight: float = 0.1,
        reset_noise_scale: float = 0.1,
        **kwargs: Any,
    ) -> None:
        utils.EzPickle.__init__(
            self, target_speed, speed_cost_weight, ctrl_cost_weight, reset_noise_scale, **kwargs
        )
        self._target_speed = target_speed
        self._speed_cost_weight = speed_cost_weight
        super().__init__(ctrl_cost_weight, reset_noise_scale, **kwargs)

    def _task_reward(self, x_velocity: float) -> dict[str, float]:
        return {"reward_speed": -self._speed_cost_weight * abs(x_velocity - self._target_speed)}

"""A planar, HalfCheetah-like legged body and five locomotion tasks whose best behaviours conflict.

One body (`assets/cheetah.xml`, written for this project), five rewards: run forward, run
backward, jump, stand on the front legs, hold a target speed. The observation is the same for
every task and does not name the task, so a policy fine-tuned on one task after another loses
the earlier skills unless it keeps them on purpose: the main curriculum for GPU runs.

Every task shares `CheetahEnv`'s body, observation, reset and control cost; a subclass declares
its keyword arguments as data (`task_defaults`) and adds its reward terms through `_task_reward`
and its success criterion through `_success`. Run backward is run forward with the sign flipped;
jump and front stand share `CheetahInPlaceEnv`'s reward. Each task reports `info["success"]`, but
curricula score locomotion by normalised return (`defines_success = False`): the success
thresholds are this package's choice, a coarse check of the behaviour, not a measure of how well
it is done.
"""

from __future__ import annotations

import inspect
import textwrap
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco import MujocoEnv
from gymnasium.spaces import Box
from numpy.typing import NDArray

from hope_envs.registration import RENDER_MODES

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
# Success criteria of held behaviours (a speed, a pose) judge the last 2 s (40 env steps): long
# enough that a random policy's lurches do not pass, short enough to be met early in a 50 s
# episode.
SUCCESS_WINDOW_STEPS = 40
# Defaults shared by the in-place tasks (jump, front stand): drift charge, rest and goal heights.
_IN_PLACE_DEFAULTS: dict[str, float] = {
    "drift_cost_weight": 0.1,
    "rest_height": REST_HEIGHT,
    "success_height": 1.0,
}

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
    every reward term (`reward_*`, summing to the reward) and `success` (bool, the task's
    criterion at that step; `False` at reset). Curricula score these tasks by normalised return
    and drop `success` (`defines_success = False`).
"""


class CheetahEnv(MujocoEnv, utils.EzPickle):
    """Shared body, observation, reset and control cost of the cheetah tasks (not registered).

    A task subclass declares its own keyword arguments in `task_defaults` (name -> default; the
    constructor takes them by keyword, checks that they are numbers, the success thresholds
    `success_*` positive, and keeps them in `params`) and implements `_task_reward` and
    `_success`. Its docstring gets the arguments and the shared sections appended, generated from
    the same data, so the documented defaults are the ones in force.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 20}
    # Curricula score locomotion by normalised return; `info["success"]` is a coarse check only.
    defines_success: ClassVar[bool] = False
    task_defaults: ClassVar[Mapping[str, float]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        doc = cls.__dict__.get("__doc__")
        if doc:
            # The shared numeric arguments, with their defaults read from the signature.
            shared = {
                name: parameter.default
                for name, parameter in inspect.signature(CheetahEnv.__init__).parameters.items()
                if isinstance(parameter.default, float)
            }
            arguments = ", ".join(
                f"`{name} = {default:g}`"
                for name, default in {**cls.task_defaults, **shared}.items()
            )
            section = textwrap.fill(
                f"Floats, by keyword only: {arguments}; plus `MujocoEnv`'s rendering arguments.",
                width=96,
                initial_indent="    ",
                subsequent_indent="    ",
            )
            cls.__doc__ = f"{doc.rstrip()}\n\n    ## Arguments\n{section}\n{_COMMON_DOC}"

    def __init__(
        self,
        *,
        ctrl_cost_weight: float = 0.1,
        reset_noise_scale: float = 0.1,
        default_camera_config: dict[str, Any] = DEFAULT_CAMERA_CONFIG,
        **kwargs: Any,
    ) -> None:
        # Keyword-only: the task arguments come first in no order a positional call could name.
        given = {name: kwargs.pop(name, default) for name, default in self.task_defaults.items()}
        utils.EzPickle.__init__(
            self,
            ctrl_cost_weight=ctrl_cost_weight,
            reset_noise_scale=reset_noise_scale,
            default_camera_config=default_camera_config,
            **given,
            **kwargs,
        )
        self._params = {name: _number(value, name) for name, value in given.items()}
        for name, value in self._params.items():
            if name.startswith("success_") and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}.")
        if reset_noise_scale < 0:
            raise ValueError(f"reset_noise_scale must be >= 0, got {reset_noise_scale}.")
        self._ctrl_cost_weight = ctrl_cost_weight
        self._reset_noise_scale = reset_noise_scale
        # x positions of the last SUCCESS_WINDOW_STEPS steps and the one before them.
        self._x_history: deque[float] = deque(maxlen=SUCCESS_WINDOW_STEPS + 1)
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
        self._floor_id = self.model.geom("floor").id
        back_leg = [self.model.body(f"back_{part}").id for part in ("thigh", "shin", "foot")]
        self._back_leg_geoms = np.flatnonzero(np.isin(self.model.geom_bodyid, back_leg))

    @property
    def params(self) -> Mapping[str, float]:
        """The task's own arguments (`task_defaults` overridden by the constructor's), a copy."""
        return dict(self._params)

    def _task_reward(self, x_velocity: float) -> dict[str, float]:
        """The task's reward terms, keyed `reward_<term>`, evaluated after the physics step."""
        raise NotImplementedError

    def _success(self) -> bool:
        """The task's success criterion, evaluated after the physics step."""
        raise NotImplementedError

    def _window_speed(self) -> float | None:
        """Mean x velocity (m/s) over the last 2 s; None until the episode is 2 s old."""
        if len(self._x_history) < SUCCESS_WINDOW_STEPS + 1:
            return None
        return (self._x_history[-1] - self._x_history[0]) / (SUCCESS_WINDOW_STEPS * self.dt)

    def _floor_contacts(self) -> NDArray[np.int_]:
        """Ids of the body geoms touching the floor (only body-floor contacts are enabled)."""
        pairs = self.data.contact.geom
        return np.asarray(pairs[pairs != self._floor_id], dtype=np.int_)

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
        self._x_history.append(float(self.data.qpos[0]))
        reward_info = self._task_reward(x_velocity)
        reward_info["reward_ctrl"] = -self._ctrl_cost_weight * float(np.sum(np.square(action)))
        reward = float(sum(reward_info.values()))
        success = self._success()
        if self.render_mode == "human":
            self.render()
        # Truncation comes from the TimeLimit wrapper added by `gymnasium.make`.
        return (
            self._get_obs(),
            reward,
            False,
            False,
            {**self._state_info(x_velocity), **reward_info, "success": success},
        )

    def _get_obs(self) -> NDArray[np.float64]:
        return np.concatenate([self.data.qpos[1:], self.data.qvel]).astype(np.float64)

    def reset_model(self) -> NDArray[np.float64]:
        """Rest pose plus seeded noise."""
        noise = self._reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(-noise, noise, size=self.model.nq)
        qvel = self.init_qvel + noise * self.np_random.standard_normal(self.model.nv)
        self.set_state(qpos, qvel)
        self._x_history.clear()
        self._x_history.append(float(self.data.qpos[0]))
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        return {**self._state_info(0.0), "success": False}


class CheetahRunEnv(CheetahEnv):
    """Run forward (+x) as fast as possible.

    ## Rewards
    `reward = reward_forward + reward_ctrl`:
    - `reward_forward = forward_reward_weight * x_velocity`,
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Success
    `info["success"]`: the mean forward speed over the last 2 s is at least `success_speed`
    (1.5 m/s). Random actions never met it in 50 episodes; a scripted gait does
    (tests/test_envs.py).
    """

    # The running direction: +1 forward, -1 backward (a subclass). `way` names the weight
    # argument (`<way>_reward_weight`) and the reward term (`reward_<way>`).
    sign: ClassVar[float] = 1.0
    way: ClassVar[str] = "forward"
    task_defaults = {"forward_reward_weight": 1.0, "success_speed": 1.5}

    def _task_reward(self, x_velocity: float) -> dict[str, float]:
        weight = self._params[f"{self.way}_reward_weight"]
        return {f"reward_{self.way}": self.sign * weight * x_velocity}

    def _success(self) -> bool:
        speed = self._window_speed()
        return speed is not None and self.sign * speed >= self._params["success_speed"]


class CheetahRunBackwardEnv(CheetahRunEnv):
    """Run backward (-x) as fast as possible: `CheetahRunEnv` with the sign flipped.

    ## Rewards
    `reward = reward_backward + reward_ctrl`:
    - `reward_backward = -backward_reward_weight * x_velocity`,
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Success
    `info["success"]`: the mean backward speed over the last 2 s is at least `success_speed`
    (1.5 m/s, i.e. mean x velocity <= -1.5 m/s). Random actions never met it in 50 episodes; a
    scripted gait does (tests/test_envs.py).

    """

    sign = -1.0
    way = "backward"
    task_defaults = {"backward_reward_weight": 1.0, "success_speed": 1.5}


class CheetahInPlaceEnv(CheetahEnv):
    """The in-place tasks (jump, front stand, not registered): pay a height, charge any drift.

    `reward_<term> = <term>_reward_weight * _lift()` with the subclass's `term` and `_lift`,
    then `reward_drift = -drift_cost_weight * x_velocity^2`, so running is no way to earn them.
    """

    term: ClassVar[str]

    def _lift(self) -> float:
        """The height (m) the task pays for, evaluated after the physics step."""
        raise NotImplementedError

    def _task_reward(self, x_velocity: float) -> dict[str, float]:
        return {
            f"reward_{self.term}": self._params[f"{self.term}_reward_weight"] * self._lift(),
            "reward_drift": -self._params["drift_cost_weight"] * x_velocity**2,
        }


class CheetahJumpEnv(CheetahInPlaceEnv):
    """Jump: keep the torso high above its rest height, staying in place.

    ## Rewards
    `reward = reward_height + reward_drift + reward_ctrl`:
    - `reward_height = height_reward_weight * max(z_torso - rest_height, 0)`. It pays any torso
      height above rest, not only a jump: a constant torque that straightens the legs holds the
      torso still at 0.67 m with both feet on the floor, earning over 0.6 per step
      (tests/test_envs.py); rearing up on the back leg raises the torso too. Hopping higher
      earns more,
    - `reward_drift = -drift_cost_weight * x_velocity^2` (so running is not a way to jump),
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Success
    `info["success"]`: the body is airborne (no part touches the floor) with the torso at least
    `success_height` (1.0 m, 0.4 m above rest) high at that step: standing tall does not count.
    Random actions never met it in 50 episodes; a scripted crouch-and-extend does
    (tests/test_envs.py).
    """

    term = "height"
    task_defaults = {"height_reward_weight": 10.0, **_IN_PLACE_DEFAULTS}

    def _lift(self) -> float:
        return max(self._torso_height() - self._params["rest_height"], 0.0)

    def _success(self) -> bool:
        airborne = self._floor_contacts().size == 0
        return airborne and self._torso_height() >= self._params["success_height"]


class CheetahFrontStandEnv(CheetahInPlaceEnv):
    """Stand on the front legs: raise the rear of the torso high, staying in place.

    ## Rewards
    `reward = reward_stand + reward_drift + reward_ctrl`:
    - `reward_stand = stand_reward_weight * (z_rear - rest_height)`, with `z_rear` the height of
      the torso's rear end (highest when the body balances nose-down on its front leg),
    - `reward_drift = -drift_cost_weight * x_velocity^2`,
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Success
    `info["success"]`: for the last 2 s the rear end of the torso has been at least
    `success_height` (1.0 m) high with no part of the back leg touching the floor (the body
    rests on its front leg, or on front leg and head in a headstand). Random actions met it in 2
    of 50 episodes, by tipping over nose-first and staying there; a scripted gait does
    (tests/test_envs.py).
    """

    term = "stand"
    task_defaults = {"stand_reward_weight": 5.0, **_IN_PLACE_DEFAULTS}

    def __init__(self, **kwargs: Any) -> None:
        # Consecutive steps (up to now) in the front-stand pose.
        self._stand_steps = 0
        super().__init__(**kwargs)

    def _lift(self) -> float:
        return self._rear_height() - self._params["rest_height"]

    def _success(self) -> bool:
        back_leg_down = bool(np.isin(self._floor_contacts(), self._back_leg_geoms).any())
        in_pose = not back_leg_down and self._rear_height() >= self._params["success_height"]
        self._stand_steps = self._stand_steps + 1 if in_pose else 0
        return self._stand_steps >= SUCCESS_WINDOW_STEPS

    def reset_model(self) -> NDArray[np.float64]:
        """Rest pose plus seeded noise; the pose must be held anew."""
        self._stand_steps = 0
        return super().reset_model()


class CheetahTargetSpeedEnv(CheetahEnv):
    """Hold a target forward speed (neither faster nor slower).

    ## Rewards
    `reward = reward_speed + reward_ctrl`:
    - `reward_speed = -speed_cost_weight * |x_velocity - target_speed|`,
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Success
    `info["success"]`: the mean forward speed over the last 2 s is within `success_tolerance`
    (0.2 m/s) of `target_speed`. Random actions never met it (target 1.5 m/s) in 50 episodes; a
    scripted gait holds it (tests/test_envs.py).

    """

    task_defaults = {"target_speed": 1.5, "speed_cost_weight": 1.0, "success_tolerance": 0.2}

    def _task_reward(self, x_velocity: float) -> dict[str, float]:
        error = abs(x_velocity - self._params["target_speed"])
        return {"reward_speed": -self._params["speed_cost_weight"] * error}

    def _success(self) -> bool:
        speed = self._window_speed()
        target, tolerance = self._params["target_speed"], self._params["success_tolerance"]
        return speed is not None and abs(speed - target) <= tolerance


def _number(value: Any, name: str) -> float:
    """`value` as a float, else one ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    return float(value)

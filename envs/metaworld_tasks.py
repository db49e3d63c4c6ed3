"""Continual World on Meta-World v3, behind one thin Gymnasium id: `hope/MetaWorld-v0`.

`gymnasium.make("hope/MetaWorld-v0", task="hammer-v3")` builds one Meta-World v3 task the way
Continual World trains on it: goal-observable 39-d observations, object and goal positions
resampled at every reset from the env's own seeded generator, 200-step episodes (the time limit
is set at registration), success = `info["success"]`. The id is registered even without
Meta-World installed; building it then raises one error that names the install command.

Why one id with a `task` argument rather than 50 ids: the id list stays the same whether or not
the optional extra is installed, and a curriculum names tasks exactly as Meta-World does.
"""

from __future__ import annotations

import difflib
from types import ModuleType
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from hope_envs.registration import NAMESPACE

METAWORLD_ID = f"{NAMESPACE}/MetaWorld-v0"
INSTALL_HINT = (
    'from a checkout run `pip install -e ".[metaworld]"`, otherwise '
    '`pip install "hope-agent[metaworld]"`'
)

# Continual World's CW10 sequence (Wołczyk et al. 2021) in Meta-World v3 names; CW20 repeats it.
CW10_TASKS: tuple[str, ...] = (
    "hammer-v3",
    "push-wall-v3",
    "faucet-close-v3",
    "push-back-v3",
    "stick-pull-v3",
    "handle-press-side-v3",
    "push-v3",
    "shelf-place-v3",
    "window-close-v3",
    "peg-unplug-side-v3",
)
CW20_TASKS: tuple[str, ...] = CW10_TASKS + CW10_TASKS

# Meta-World builds its task list from this seed; it also keeps MT1 from drawing on (and
# advancing) numpy's global generator. Positions are reseeded at every `reset(seed=...)`.
_CONSTRUCTION_SEED = 0


def require_metaworld() -> ModuleType:
    """Import and return `metaworld`, or raise one ImportError naming the install command."""
    try:
        import metaworld
    except ImportError as err:
        raise ImportError(
            f"Meta-World tasks ({METAWORLD_ID}, curricula cw10/cw20) need the optional "
            f"`metaworld` extra (metaworld 3.1.1): {INSTALL_HINT}."
        ) from err
    return metaworld


def metaworld_task_names() -> list[str]:
    """Every Meta-World v3 task name (needs the extra)."""
    return sorted(require_metaworld().ALL_V3_ENVIRONMENTS)


class MetaWorldTaskEnv(gym.Env[NDArray[np.float64], NDArray[np.float32]]):
    """One Meta-World v3 task with Continual World's per-reset position resampling.

    ## Arguments
    `task: str` (a Meta-World v3 name, e.g. `"hammer-v3"`; required), and the rendering
    arguments `render_mode`, `width`, `height`, `camera_name`, `camera_id`.

    ## Spaces
    Observation `Box((39,), float64)`: hand position, gripper opening, object poses, the same for
    the previous step, then the goal position (observed, as in Continual World). Action
    `Box(-1, 1, (4,), float32)`: hand displacement xyz and gripper effort.

    ## Rewards
    Meta-World's v2 reward function (in [0, 10] per step) with its terms in `info`.

    ## Success
    `info["success"]` (bool) as Meta-World defines it for the task (e.g. the object within a
    task-specific distance of the goal); curricula count an episode as solved if it holds at any
    step. `reset` reports `success=False`.

    ## Seeding
    Meta-World's own `reset` ignores its seed argument. Here `reset(seed=s)` seeds this env's
    generator (Gymnasium semantics) and reseeds Meta-World's from it, so equal seeds give equal
    object and goal positions and every later reset draws new ones. Episodes may not exceed
    Meta-World's 500-step path length.
    """

    defines_success: ClassVar[bool] = True

    def __init__(
        self,
        task: str | None = None,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
        camera_name: str | None = None,
        camera_id: int | None = None,
    ) -> None:
        metaworld = require_metaworld()
        if task not in metaworld.ALL_V3_ENVIRONMENTS:
            close = difflib.get_close_matches(str(task), metaworld.ALL_V3_ENVIRONMENTS, n=3)
            raise ValueError(
                f"{METAWORLD_ID} needs task=<Meta-World v3 name>, got {task!r}"
                + (f"; did you mean {', '.join(close)}?" if close else ".")
                + " List them with hope_envs.metaworld_tasks.metaworld_task_names()."
            )
        self._env = gym.make(
            "Meta-World/MT1",
            env_name=task,
            seed=_CONSTRUCTION_SEED,
            render_mode=render_mode,
            width=width,
            height=height,
            camera_name=camera_name,
            camera_id=camera_id,
            disable_env_checker=True,
        )
        # The Continual World recipe (docs CONTINUAL_RL.md): set one MT1 task once (this makes the
        # goal observable), stop switching tasks on reset, and unfreeze the task's random vector
        # so that every reset draws new positions from the env's seeded generator.
        self._env.get_wrapper_attr("sample_tasks")()
        self._env.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)
        # Meta-World's env class (typed only as an Env by gymnasium).
        sawyer: Any = self._env.unwrapped
        sawyer._freeze_rand_vec = False
        sawyer.seeded_rand_vec = True
        sawyer.seed(_CONSTRUCTION_SEED)
        self._sawyer = sawyer
        self.task = task
        self.metadata = self._sawyer.metadata
        self.render_mode = render_mode
        self.action_space = self._sawyer.action_space
        # Meta-World fixes `observation_space` before the task makes the goal observable; its
        # `sawyer_observation_space` property has the goal bounds the observations respect.
        self.observation_space = self._sawyer.sawyer_observation_space
        self._seeded = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float64], dict[str, Any]]:
        """Reset with new object and goal positions; `seed` reseeds them (Gymnasium semantics)."""
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            # An unseeded first reset draws from fresh entropy, like any Gymnasium env.
            self._sawyer.seed(int(self.np_random.integers(2**31)))
            self._seeded = True
        obs, info = self._env.reset(options=options)
        return obs, {**info, "success": False}

    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[NDArray[np.float64], float, bool, bool, dict[str, Any]]:
        """One Meta-World step; `info["success"]` as a bool."""
        obs, reward, terminated, truncated, info = self._env.step(action)
        return obs, float(reward), terminated, truncated, {**info, "success": bool(info["success"])}

    def render(self) -> Any:
        """Render through Meta-World's MuJoCo renderer (`render_mode` set at construction)."""
        return self._env.render()

    def close(self) -> None:
        """Release the simulator and any renderer."""
        self._env.close()

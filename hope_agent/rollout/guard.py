"""Environment-side fault handling: simulator blow-ups and crashed env workers.

- :class:`EnvFaultGuard` wraps one env: a step that blows up ends the episode as truncated
  (``info["env_fault"]``), and the vector env's next-step autoreset resets that env.
- :class:`RestartingVectorEnv` wraps a vector env: a step that raises (a dead worker) or returns
  non-finite values rebuilds it, reported as a truncation of every env followed by an autoreset
  step, so the trainer needs no special case.

The trainer's own checks live in :mod:`hope_agent.train.faults`; see ``docs/reliability.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

log = logging.getLogger(__name__)

# Warnings MuJoCo raises when the simulation blows up; it then resets mjData by itself.
INSTABILITY_WARNINGS = (
    int(mujoco.mjtWarning.mjWARN_BADQACC),
    int(mujoco.mjtWarning.mjWARN_BADQPOS),
    int(mujoco.mjtWarning.mjWARN_BADQVEL),
)
# Errors a simulator step may raise that mean "this episode's physics is broken", not "the code
# is wrong"; anything else propagates (and, in a vector env, triggers a rebuild).
SIMULATOR_ERRORS: tuple[type[Exception], ...] = (mujoco.FatalError, FloatingPointError)


class EnvRestartError(RuntimeError):
    """A vector env kept failing after ``faults.max_env_restarts`` rebuilds in a row."""


class EnvFaultGuard(gym.Wrapper[Any, Any, Any, Any]):
    """Ends an episode whose simulation blew up instead of letting NaNs into training.

    A step is a fault when the env raises one of :data:`SIMULATOR_ERRORS`, returns a non-finite
    observation or reward or one above ``obs_limit`` in absolute value, or when MuJoCo counted
    an instability warning (it then resets ``mjData`` itself). The faulty step returns the last
    good observation, reward 0, ``truncated=True`` and ``info["env_fault"] = True``.

    Args:
        env: the env to guard.
        obs_limit: largest plausible absolute observation value.
    """

    def __init__(self, env: gym.Env[Any, Any], obs_limit: float = 1e6) -> None:
        super().__init__(env)
        if not obs_limit > 0:
            raise ValueError(f"faults.obs_limit must be > 0, got {obs_limit}")
        self.obs_limit = obs_limit
        self.faults = 0
        self._last_obs: Any = None
        # MujocoEnv keeps one MjData for its lifetime: look its warning stats up once.
        data = getattr(env.unwrapped, "data", None)
        stats = getattr(data, "warning", None)
        self._stats = [] if stats is None else [stats[w] for w in INSTABILITY_WARNINGS]
        self._warnings = self._warning_counts()

    def _warning_counts(self) -> list[int]:
        return [s.number for s in self._stats]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the wrapped env and remember its first observation."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_obs = obs
        self._warnings = self._warning_counts()
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step the wrapped env; a fault ends the episode (see the class docstring)."""
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except SIMULATOR_ERRORS as e:
            return self._fault(f"{type(e).__name__}: {e}")
        counts = self._warning_counts()
        problem = None
        if counts != self._warnings:
            problem = "MuJoCo reported an unstable simulation (bad qpos, qvel or qacc)"
        elif not math.isfinite(float(reward)):
            problem = f"non-finite reward {reward}"
        else:
            arr = np.abs(np.asarray(obs))
            # One comparison catches both: NaN compares false, infinity exceeds any limit.
            if arr.size and not float(arr.max()) <= self.obs_limit:
                problem = (
                    "non-finite observation"
                    if not np.all(np.isfinite(arr))
                    else f"observation beyond faults.obs_limit={self.obs_limit:g}"
                )
        self._warnings = counts
        if problem is not None:
            return self._fault(problem)
        self._last_obs = obs
        return obs, reward, terminated, truncated, info

    def _fault(self, problem: str) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.faults += 1
        spec = self.env.spec.id if self.env.spec is not None else type(self.env.unwrapped).__name__
        log.warning("env fault in %s: %s; the episode ends and the env resets", spec, problem)
        return self._last_obs, 0.0, False, True, {"env_fault": True}


VectorFactory = Callable[[], gym.vector.VectorEnv]


class RestartingVectorEnv(gym.vector.VectorWrapper):
    """Rebuilds a vector env whose step fails (dead worker, error) or returns non-finite values.

    After a failed step the broken env is closed (worker processes terminated), a new one is
    built with ``make`` and reset with a seed derived from the last reset seed and the restart
    count; that step reports every env as truncated (last good observations, zero rewards,
    ``info["env_restart"]``), and the next step returns the new reset observations and infos
    without stepping, as Gymnasium's next-step autoreset does.

    Args:
        make: builds the vector env (called once now and once per restart).
        max_restarts: failures in a row (without a good step between) tolerated before
            :class:`EnvRestartError`.
    """

    def __init__(self, make: VectorFactory, max_restarts: int = 3) -> None:
        super().__init__(make())
        self._make, self.max_restarts = make, max_restarts
        self.restarts = 0
        self._in_a_row = 0
        self._seed = 0
        self._last_obs: Any = None
        self._pending: tuple[Any, dict[str, Any]] | None = None  # the rebuilt env's reset

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every env (as the wrapped vector env does)."""
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self._seed = seed
        self._last_obs, self._pending = obs, None
        return obs, info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every env; a failure rebuilds the vector env (see the class docstring)."""
        n = self.num_envs
        if self._pending is not None:
            (obs, info), self._pending = self._pending, None
            self._last_obs = obs
            return obs, np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), info
        try:
            out = self.env.step(actions)
        # Broad on purpose: a dead worker raises BrokenPipeError or EOFError, and an exception
        # inside a worker is re-raised here with its own type. Every one of them leaves this
        # vector env unusable; a persistent error (a bug) is re-raised after max_restarts.
        except Exception as e:
            return self._restart(f"{type(e).__name__}: {e}", e)
        obs, reward = out[0], out[1]
        if not (np.all(np.isfinite(obs)) and np.all(np.isfinite(reward))):
            return self._restart("non-finite observation or reward", None)
        self._in_a_row = 0
        self._last_obs = obs
        return out

    def _restart(
        self, problem: str, cause: Exception | None
    ) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        n = self.num_envs
        while True:
            self._in_a_row += 1
            if self._in_a_row > self.max_restarts:
                raise EnvRestartError(
                    f"the training envs failed {self._in_a_row} times in a row (last: {problem}); "
                    "fix the environment or raise faults.max_env_restarts"
                ) from cause
            self.restarts += 1
            log.warning("vector env failed (%s); rebuilding it (#%d)", problem, self.restarts)
            self._close_broken()
            seed = int(np.random.SeedSequence([self._seed, self.restarts]).generate_state(1)[0])
            try:
                self.env = self._make()
                self._pending = self.env.reset(seed=seed)
                break
            # Same reason as in step: building or resetting may fail like stepping did.
            except Exception as e:
                problem, cause = f"{type(e).__name__} while rebuilding: {e}", e
        info = {"env_restart": np.ones(n, dtype=bool), "_env_restart": np.ones(n, dtype=bool)}
        return self._last_obs, np.zeros(n), np.zeros(n, dtype=bool), np.ones(n, dtype=bool), info

    def _close_broken(self) -> None:
        env = self.env.unwrapped
        if isinstance(env, gym.vector.AsyncVectorEnv):
            # Its own close first waits for the pending step, which a dead worker never answers
            # (and then skips the termination): end the workers directly.
            for process in env.processes:
                if process.is_alive():
                    process.terminate()
            for process in env.processes:
                process.join()
            for pipe in env.parent_pipes:
                if pipe is not None:
                    pipe.close()
            env.closed = True
            return
        try:
            self.env.close()
        # The env is already broken: a failing close must not hide the restart.
        except Exception as e:
            log.warning("closing the broken vector env failed: %s: %s", type(e).__name__, e)


def count_flag(infos: Mapping[str, Any], key: str) -> int:
    """How many envs of a vector step set the boolean info ``key``."""
    if key not in infos:
        return 0
    mask = np.asarray(infos.get(f"_{key}", np.ones_like(infos[key])), dtype=bool)
    return int(np.sum(np.asarray(infos[key], dtype=bool) & mask))

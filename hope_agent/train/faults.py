"""Fault handling of a training run: simulator blow-ups, crashed env workers, non-finite numbers.

Three layers, each independent of the others (see ``docs/reliability.md``):

- :class:`EnvFaultGuard` wraps one env. A step that raises a simulator error, returns a
  non-finite or huge observation or reward, or makes MuJoCo count an instability warning (MuJoCo
  then silently resets the simulation itself) ends the episode as *truncated*, with the last good
  observation and a zero reward, and sets ``info["env_fault"]``. The vector env's next-step
  autoreset then resets that env; the others keep running.
- :class:`RestartingVectorEnv` wraps a vector env. A step that raises (a dead
  ``AsyncVectorEnv`` worker surfaces as ``BrokenPipeError`` or ``EOFError``, an error inside a
  worker as its own type) or returns non-finite values closes it, builds a new one and resets
  it; every env reports a truncation, then the reset observation on the following
  (autoreset) step, exactly like Gymnasium's next-step autoreset, so the trainer needs no
  special case.
- :func:`first_nonfinite` finds a non-finite tensor among named ones (weights, normaliser
  statistics, backbone memory, a method's state through :func:`named_tensors`); the runner uses
  it to skip updates and to roll back (see :class:`FaultSettings`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

# Warnings MuJoCo raises when the simulation blows up; it then resets mjData by itself.
_INSTABILITY_WARNINGS = (
    int(mujoco.mjtWarning.mjWARN_BADQACC),
    int(mujoco.mjtWarning.mjWARN_BADQPOS),
    int(mujoco.mjtWarning.mjWARN_BADQVEL),
)
# Errors a simulator step may raise that mean "this episode's physics is broken", not "the code
# is wrong"; anything else propagates (and, in a vector env, triggers a rebuild).
SIMULATOR_ERRORS: tuple[type[Exception], ...] = (mujoco.FatalError, FloatingPointError)


@dataclass
class FaultSettings:
    """How the runner reacts to faults (config section ``faults``).

    Attributes:
        max_nonfinite_in_a_row: consecutive updates with a non-finite loss, gradient or rollout
            (memory, values) after which the run rolls back to its last good checkpoint.
        lr_factor: the learning rate of every optimizer group is multiplied by this at each
            rollback.
        max_rollbacks: a run that needs more rollbacks than this stops with
            :class:`TrainingDiverged`.
        obs_limit: an observation entry larger than this in absolute value is a simulator
            blow-up.
        max_env_restarts: consecutive vector-env rebuilds (without a good step in between)
            after which the run stops with :class:`EnvRestartError`.
    """

    max_nonfinite_in_a_row: int = 3
    lr_factor: float = 0.5
    max_rollbacks: int = 3
    obs_limit: float = 1e6
    max_env_restarts: int = 3

    def __post_init__(self) -> None:
        problems = []
        if self.max_nonfinite_in_a_row < 1:
            problems.append(
                f"faults.max_nonfinite_in_a_row must be >= 1 (got {self.max_nonfinite_in_a_row})"
            )
        if not 0.0 < self.lr_factor <= 1.0:
            problems.append(f"faults.lr_factor must lie in (0, 1] (got {self.lr_factor})")
        if self.max_rollbacks < 0:
            problems.append(f"faults.max_rollbacks must be >= 0 (got {self.max_rollbacks})")
        if not self.obs_limit > 0:
            problems.append(f"faults.obs_limit must be > 0 (got {self.obs_limit})")
        if self.max_env_restarts < 0:
            problems.append(f"faults.max_env_restarts must be >= 0 (got {self.max_env_restarts})")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class FaultCounters:
    """Cumulative fault counts of a run (logged as ``faults/<name>``, saved in checkpoints).

    Attributes:
        nonfinite_updates: updates skipped in whole or in part for non-finite numbers.
        skipped_steps: optimizer steps (minibatches) skipped for a non-finite loss or gradient.
        rollbacks: returns to the last good checkpoint.
        env_resets: episodes ended by :class:`EnvFaultGuard`.
        env_restarts: vector envs rebuilt by :class:`RestartingVectorEnv`.
        skipped_task_ends: stage ends whose method hook (a Fisher matrix, a replay harvest) was
            skipped because the stage's last rollout was non-finite.
        lr_scale: product of the learning-rate factors applied so far.
    """

    nonfinite_updates: int = 0
    skipped_steps: int = 0
    rollbacks: int = 0
    env_resets: int = 0
    env_restarts: int = 0
    skipped_task_ends: int = 0
    lr_scale: float = 1.0

    def as_log(self) -> dict[str, float]:
        """The counters as ``faults/<name>`` scalars."""
        return {f"faults/{k}": float(v) for k, v in vars(self).items()}


class TrainingDiverged(RuntimeError):
    """Non-finite numbers kept coming back after ``faults.max_rollbacks`` rollbacks."""


class EnvRestartError(RuntimeError):
    """A vector env kept failing after ``faults.max_env_restarts`` rebuilds in a row."""


def first_nonfinite(named: Iterable[tuple[str, Tensor]]) -> str | None:
    """The name of the first floating-point tensor with a NaN or infinity, else ``None``."""
    for name, t in named:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def named_tensors(tree: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """Every tensor of a tree of dicts, lists and tuples, named by its path (``a.0.b``)."""
    if isinstance(tree, Tensor):
        yield prefix, tree
    elif isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from named_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def nonfinite_rows(leaves: Iterable[Tensor], batch: int) -> Tensor:
    """``(batch,)`` bool: rows where any batch-first leaf holds a NaN or infinity."""
    bad = torch.zeros(batch, dtype=torch.bool)
    for t in leaves:
        if t.is_floating_point():
            bad |= ~torch.isfinite(t.reshape(batch, -1)).all(dim=1).cpu()
    return bad


class EnvFaultGuard(gym.Wrapper[Any, Any, Any, Any]):
    """Ends an episode whose simulation blew up instead of letting NaNs into training.

    A step is a fault when the wrapped env raises one of :data:`SIMULATOR_ERRORS`, returns a
    non-finite observation or reward, an observation entry above ``obs_limit`` in absolute value,
    or when a MuJoCo env counted an instability warning (bad qpos, qvel or qacc: MuJoCo then
    resets ``mjData`` on its own, so the episode would continue from a teleported state). The
    faulty step returns the last good observation, reward 0, ``truncated=True`` and
    ``info["env_fault"] = True``; the next ``reset`` (a vector env's autoreset) restores the env.

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
        self._stats = [] if stats is None else [stats[w] for w in _INSTABILITY_WARNINGS]
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

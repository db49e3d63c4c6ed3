"""Where the training loop's wall-clock time goes: throughput, run clock and a phase breakdown.

:class:`LoopTimer` is injected into the runner and gives every row of an update ``charts/SPS``
(env steps per second of the last rollout + update: the current rate, which a slow evaluation
does not drag down; the run average is ``global_step / charts/wall_time``),
``charts/wall_time`` (seconds since the run started, continued over a resume) and, with the
breakdown on, ``time/<phase>`` for each of :data:`PHASES`: cumulative seconds, charged to the
innermost open phase only, so the phases never add up to more than the wall time.

On CUDA the timer synchronises the device when a phase opens or closes (never per env step), so
that a phase is not charged for work another launched. With the breakdown off
(``logger.timing=false``) it adds no synchronisation and no per-step work. Every figure is a
wall-clock time: comparisons leave out such columns (:func:`is_timing_key`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import gymnasium as gym
import torch

# The phases of the breakdown, in the order of the table of scripts/benchmark_loop.py.
PHASES = (
    "rollout_inference",  # the rollout outside env stepping: policy, normalisers, buffer, GAE
    "env_step",  # the vector env's step (physics, autoreset, fault guard)
    "ppo_update",  # the PPO epochs and the method's after-update hook
    "evaluation",  # periodic and task-end evaluations of every task
    "checkpoint",  # writing checkpoints (with the CSV flush a checkpoint needs)
    "video",  # rollout videos at stage ends
    "logging",  # train.csv, TensorBoard, the progress bar and the per-stage result files
)
_TIMING_MARKERS = ("time", "sps", "wall")


def is_timing_key(name: str) -> bool:
    """Whether a ``train.csv`` column or ``metrics.json`` key holds a wall-clock figure (the ones
    that resume and behaviour comparisons leave out)."""
    lowered = name.lower()
    return any(marker in lowered for marker in _TIMING_MARKERS)


class _Phase:
    """Context manager of one phase (a class, not a generator: it runs at every env step)."""

    __slots__ = ("_name", "_sync", "_timer")

    def __init__(self, timer: LoopTimer, name: str, sync: bool) -> None:
        self._timer, self._name, self._sync = timer, name, sync

    def __enter__(self) -> None:
        self._timer._enter(self._name, self._sync)

    def __exit__(self, *exc_info: object) -> None:
        self._timer._exit(self._sync)


# The phase of a timer without breakdown: does nothing.
_NO_PHASE = contextlib.nullcontext()


class LoopTimer:
    """Clock of a training run (see the module docstring).

    Args:
        breakdown: measure the ``time/<phase>`` seconds (else only SPS and wall time).
        device: the device the agent computes on; a CUDA device is synchronised at phase
            boundaries when ``breakdown`` is on.
    """

    def __init__(self, breakdown: bool = True, device: torch.device | str = "cpu") -> None:
        self.breakdown = breakdown
        self.device = torch.device(device)
        self._sync_device = breakdown and self.device.type == "cuda"
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._stack: list[str] = []
        self._since = 0.0  # when the innermost open phase last started counting
        self._origin = time.perf_counter()  # wall_time is measured from here
        self._iteration = self._origin

    # ----------------------------------------------------------------- run clock
    def start(self, elapsed: float = 0.0) -> None:
        """Start the run's clock, ``elapsed`` seconds in (a resumed run's earlier time)."""
        self._origin = time.perf_counter() - elapsed
        self._iteration = time.perf_counter()

    def wall_time(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self._origin

    def start_iteration(self) -> None:
        """Mark the start of a rollout + update, the span :meth:`sps` divides by."""
        self._iteration = time.perf_counter()

    def sps(self, steps: int) -> float:
        """Env steps per second of ``steps`` steps since :meth:`start_iteration`."""
        return steps / max(time.perf_counter() - self._iteration, 1e-9)

    # ----------------------------------------------------------------- phases
    def phase(self, name: str, sync: bool = True) -> AbstractContextManager[None]:
        """Context manager charging its time to phase ``name`` (one of :data:`PHASES`).

        ``sync=False`` skips the CUDA synchronisation, for a phase whose start and end are
        already host-side points (env stepping).
        """
        if not self.breakdown:
            return _NO_PHASE
        if name not in self.seconds:
            raise ValueError(f"unknown timing phase {name!r}; the phases are {list(PHASES)}")
        return _Phase(self, name, sync)

    def _switch(self, sync: bool) -> None:
        # Charge the time since the last boundary to the phase open until now.
        if sync and self._sync_device:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._since
        self._since = now

    def _enter(self, name: str, sync: bool) -> None:
        self._switch(sync)
        self._stack.append(name)

    def _exit(self, sync: bool) -> None:
        self._switch(sync)
        self._stack.pop()

    def as_log(self) -> dict[str, float]:
        """``charts/wall_time`` and, with the breakdown on, the ``time/<phase>`` seconds so far
        (an open phase counts up to now)."""
        values = {"charts/wall_time": self.wall_time()}
        if self.breakdown:
            open_now = time.perf_counter() - self._since if self._stack else 0.0
            for name, seconds in self.seconds.items():
                extra = open_now if self._stack and self._stack[-1] == name else 0.0
                values[f"time/{name}"] = seconds + extra
        return values

    def wrap_envs(self, envs: gym.vector.VectorEnv) -> gym.vector.VectorEnv:
        """``envs`` with each ``step`` charged to ``env_step`` (``envs`` itself without the
        breakdown: no per-step work is added then)."""
        return _TimedVectorEnv(envs, self) if self.breakdown else envs

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The run clock and the phase totals, for a checkpoint."""
        return {"wall_time": self.wall_time(), "seconds": dict(self.seconds)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the clock and the totals go on from the saved ones."""
        self.start(float(state["wall_time"]))
        saved = state["seconds"]
        self.seconds = {name: float(saved.get(name, 0.0)) for name in PHASES}


class _TimedVectorEnv(gym.vector.VectorWrapper):
    """Charges each ``step`` of the wrapped vector env to the timer's ``env_step`` phase."""

    def __init__(self, env: gym.vector.VectorEnv, timer: LoopTimer) -> None:
        super().__init__(env)
        self._timer = timer

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every env, timed."""
        with self._timer.phase("env_step", sync=False):
            return self.env.step(actions)

"""The trainer's fault handling: non-finite numbers in updates, weights and state.

:func:`first_nonfinite` finds a non-finite tensor among named ones (weights, normaliser
statistics, backbone memory, a method's state through :func:`named_tensors`); the runner uses it
to skip updates and to roll back (see :class:`FaultSettings`). Simulator blow-ups and crashed env
workers are handled on the env side (:mod:`hope_agent.rollout.guard`); see
``docs/reliability.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)


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
        rules = (
            ("max_nonfinite_in_a_row", self.max_nonfinite_in_a_row >= 1, "must be >= 1"),
            ("lr_factor", 0.0 < self.lr_factor <= 1.0, "must lie in (0, 1]"),
            ("max_rollbacks", self.max_rollbacks >= 0, "must be >= 0"),
            ("obs_limit", self.obs_limit > 0, "must be > 0"),
            ("max_env_restarts", self.max_env_restarts >= 0, "must be >= 0"),
        )
        problems = [
            f"faults.{k} {rule} (got {getattr(self, k)})" for k, ok, rule in rules if not ok
        ]
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

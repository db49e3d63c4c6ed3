"""Continual-learning methods as trainer plug-ins (``method=...`` in the training config).

Every method subclasses :class:`hope_agent.methods.base.Method` and uses only its hooks:
``finetune`` (the baseline), ``l2`` and ``ewc`` (:mod:`~hope_agent.methods.regularizers`),
``bc_replay`` (:mod:`~hope_agent.methods.replay`), ``stable_ema``, ``snapshot_replay`` and
``distill`` (:mod:`~hope_agent.methods.consolidation`), ``multitask`` (the upper bound, with its
own envs: :mod:`~hope_agent.methods.multitask`). :func:`make_method` builds one by name from an
options mapping, rejecting unknown options and values of the wrong type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hope_agent.methods.base import Finetune, Method
from hope_agent.methods.consolidation import (
    Distill,
    DistillConfig,
    ObservationStore,
    SnapshotReplay,
    SnapshotReplayConfig,
    StableEMA,
    StableEMAConfig,
)
from hope_agent.methods.multitask import MultiTask, MultiTaskEnv, multitask_env_factory
from hope_agent.methods.regularizers import (
    EWC,
    L2,
    EWCConfig,
    L2Config,
    ParameterRegularizer,
    diagonal_fisher,
)
from hope_agent.methods.replay import BCReplay, BCReplayConfig
from hope_agent.options import options_dataclass

METHODS: dict[str, type[Method]] = {
    "finetune": Finetune,
    "l2": L2,
    "ewc": EWC,
    "bc_replay": BCReplay,
    "multitask": MultiTask,
    "stable_ema": StableEMA,
    "snapshot_replay": SnapshotReplay,
    "distill": Distill,
}

# The options dataclass of each method that takes options.
METHOD_CONFIGS: dict[str, type] = {
    "l2": L2Config,
    "ewc": EWCConfig,
    "bc_replay": BCReplayConfig,
    "stable_ema": StableEMAConfig,
    "snapshot_replay": SnapshotReplayConfig,
    "distill": DistillConfig,
}


def make_method(name: str, options: Mapping[str, Any] | None = None) -> Method:
    """Build the method ``name`` (a key of :data:`METHODS`) with ``options`` for its config.

    Raises ``ValueError`` naming the valid methods or options on an unknown name or option,
    naming the option and its type on a value of the wrong type (``bool`` is no number, and an
    integer option takes only integral values), and the config's own error on a bad value.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    opts = dict(options or {})
    config_cls = METHOD_CONFIGS.get(name)
    if config_cls is None:
        if opts:
            raise ValueError(f"method {name!r} takes no options, got {sorted(opts)}")
        return METHODS[name]()
    return METHODS[name](options_dataclass(f"method {name!r}", config_cls, opts))  # type: ignore[call-arg]


__all__ = [
    "EWC",
    "L2",
    "METHODS",
    "METHOD_CONFIGS",
    "BCReplay",
    "BCReplayConfig",
    "Distill",
    "DistillConfig",
    "SnapshotReplay",
    "SnapshotReplayConfig",
    "EWCConfig",
    "Finetune",
    "L2Config",
    "Method",
    "MultiTask",
    "MultiTaskEnv",
    "ObservationStore",
    "ParameterRegularizer",
    "StableEMA",
    "StableEMAConfig",
    "diagonal_fisher",
    "make_method",
    "multitask_env_factory",
]

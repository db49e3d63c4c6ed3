"""Outer-loop optimizers: the multi-timescale wrapper (CMS outer clock) and M3."""

from hope_agent.optim.m3 import M3, newton_schulz, split_matrix_params
from hope_agent.optim.multitimescale import (
    CLOCKS,
    GroupSettings,
    MultiTimescaleOptimizer,
    apply_group_settings,
)

__all__ = [
    "CLOCKS",
    "M3",
    "GroupSettings",
    "MultiTimescaleOptimizer",
    "apply_group_settings",
    "newton_schulz",
    "split_matrix_params",
]

"""Outer-loop optimizers: the multi-timescale wrapper (CMS outer clock) and M3."""

from hope_agent.optim.m3 import M3, newton_schulz, split_matrix_params
from hope_agent.optim.multitimescale import MultiTimescaleOptimizer

__all__ = ["M3", "MultiTimescaleOptimizer", "newton_schulz", "split_matrix_params"]

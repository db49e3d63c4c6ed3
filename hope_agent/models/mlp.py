"""Stateless baseline: a stack of pre-norm residual MLP blocks applied to every token alone.

    h = h + W_out · GELU(W_in · RMSNorm(h))     (d → hidden_mult·d → d), n_layers times
    y = RMSNorm(h)

It sees one env step at a time, so it has no memory of the episode: the lower bound for what an
in-context memory (GRU, Transformer, HOPE) adds.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from hope_agent.models.base import Backbone, check_input
from hope_agent.models.state import State


@dataclasses.dataclass
class MLPConfig:
    """Sizes of :class:`MLPBackbone`."""

    d_model: int
    n_layers: int = 2
    hidden_mult: int = 4

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "hidden_mult"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MLPConfig.{name} must be an int >= 1, got {value!r}")


@dataclasses.dataclass
class MLPState(State):
    """The (empty) state of the stateless MLP backbone."""


class MLPBlock(nn.Module):
    """Pre-norm residual MLP block ``x + W_out GELU(W_in RMSNorm(x))``."""

    def __init__(self, d_model: int, hidden_mult: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model)
        self.fc_in = nn.Linear(d_model, hidden_mult * d_model)
        self.fc_out = nn.Linear(hidden_mult * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x: (..., d_model)``."""
        return x + self.fc_out(nn.functional.gelu(self.fc_in(self.norm(x))))


class MLPBackbone(Backbone[MLPState]):
    """Per-token residual MLP backbone (no memory; ``is_first`` has nothing to reset)."""

    capturable_forward = True

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        self.blocks = nn.ModuleList(
            MLPBlock(config.d_model, config.hidden_mult) for _ in range(config.n_layers)
        )
        self.norm_out = nn.RMSNorm(config.d_model)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> MLPState:
        """The empty state (the same for every batch size and device)."""
        return MLPState()

    def forward(
        self, x: Tensor, state: MLPState, is_first: Tensor | None = None
    ) -> tuple[Tensor, MLPState]:
        """Map ``x: (B, T, d_model)`` token by token; returns ``(y: (B, T, d_model), state)``."""
        check_input(x, self.d_model, is_first, type(self).__name__)
        h = x
        for block in self.blocks:
            h = block(h)
        return self.norm_out(h), state

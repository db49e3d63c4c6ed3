"""The interface every sequence backbone implements (HOPE, HOPE-Attention, MLP, GRU, Transformer).

A backbone maps a batch of token sequences ``x: (B, T, d_model)`` to outputs of the same shape,
carrying an explicit per-row state across calls. ``is_first[b, t]`` marks an episode start: row b's
state is reset to the backbone's initial state at step t, by masking. Splitting a stream into
several ``forward`` calls at any points, or into single ``step`` calls, gives the same outputs as
one uninterrupted call. The trainer and the agent depend only on this interface.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn

from hope_agent.models.state import State

StateT = TypeVar("StateT", bound=State)

ParamGroup = dict[str, Any]


class Backbone(nn.Module, Generic[StateT]):
    """Abstract sequence backbone with explicit state.

    Subclasses set ``d_model`` and implement ``init_state`` and ``forward``. ``step`` defaults to a
    length-1 ``forward``; subclasses may override it with a faster path that must give the same
    result.
    """

    d_model: int
    # True when ``forward`` (with ``is_first``, inside ``models.titans.static_segments``) runs
    # without host synchronisation and data-dependent control flow, so that a training step
    # through it can be captured in a CUDA graph (``hope_agent.algos.graphed``).
    capturable_forward: bool = False

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> StateT:
        """A fresh state for ``batch_size`` rows (the state at an episode start)."""
        raise NotImplementedError

    def forward(
        self, x: Tensor, state: StateT, is_first: Tensor | None = None
    ) -> tuple[Tensor, StateT]:
        """Process ``x: (B, T, d_model)``; ``is_first: (B, T)`` bool resets rows before step t."""
        raise NotImplementedError

    def step(
        self, x_t: Tensor, state: StateT, is_first: Tensor | None = None
    ) -> tuple[Tensor, StateT]:
        """One step: ``x_t: (B, d_model)``, ``is_first: (B,)`` -> ``(y_t: (B, d_model), state)``."""
        y, state = self(
            x_t.unsqueeze(1), state, None if is_first is None else is_first.unsqueeze(1)
        )
        return y.squeeze(1), state

    def _check_state(self, state: StateT, batch_size: int) -> None:
        """Raise one clear error when ``state`` does not fit ``batch_size`` rows (default: none)."""

    def _check_forward(self, x: Tensor, state: StateT, is_first: Tensor | None) -> bool:
        """Check the arguments of ``forward``; true when ``x`` has no steps, where ``forward``
        returns ``(x, state)``: an empty stream leaves the state as it is."""
        check_input(x, self.d_model, is_first, type(self).__name__)
        self._check_state(state, x.shape[0])
        return x.shape[1] == 0

    def param_groups(self) -> list[ParamGroup]:
        """Optimizer groups, each ``{"params": [...], "period": P, "name": str}``.

        The default is one group of every parameter updated at every optimizer step.
        """
        return [
            {
                "params": [p for p in self.parameters() if p.requires_grad],
                "period": 1,
                "name": "slow",
            }
        ]


def check_input(x: Tensor, d_model: int, is_first: Tensor | None, name: str) -> None:
    """Raise one clear error when ``x`` or ``is_first`` has the wrong shape."""
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(
            f"{name}.forward expects x of shape (B, T, {d_model}), got {tuple(x.shape)}; "
            "use step() for a single (B, d_model) token"
        )
    if is_first is not None and tuple(is_first.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"{name}.forward expects is_first of shape {tuple(x.shape[:2])} (B, T), "
            f"got {tuple(is_first.shape)}"
        )

"""Recurrent baseline: stacked ``nn.GRU`` layers with per-row episode resets.

State ``h: (B, n_layers, d_model)`` (batch first; ``nn.GRU`` wants layers first, so it is
transposed at the call). ``is_first[b, t]`` resets row b's hidden state to zeros (the initial
state) before step t, by masking.

Efficiency: a GRU's reset cannot be folded into one cuDNN/ATen call, so ``forward`` splits the time
axis at the steps where any row resets and runs ``nn.GRU`` once per segment, masking the state at
each segment start. No reset in the sequence means a single call; the worst case (resets at every
step in some row) degrades to one call per token. The split needs the reset positions on the host,
one device sync per ``forward``; ``step`` masks without syncing.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from hope_agent.models.base import Backbone
from hope_agent.models.state import State


@dataclasses.dataclass
class GRUConfig:
    """Sizes of :class:`GRUBackbone`."""

    d_model: int
    n_layers: int = 1

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GRUConfig.{name} must be an int >= 1, got {value!r}")


@dataclasses.dataclass
class GRUState(State):
    """Hidden state of every GRU layer, ``h: (B, n_layers, d_model)``."""

    h: Tensor


class GRUBackbone(Backbone[GRUState]):
    """Stacked GRU over the token sequence; zero initial state, reset by ``is_first``."""

    def __init__(self, config: GRUConfig) -> None:
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        self.gru = nn.GRU(config.d_model, config.d_model, config.n_layers, batch_first=True)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> GRUState:
        """Zero hidden states for ``batch_size`` rows."""
        shape = (batch_size, self.config.n_layers, self.d_model)
        h = torch.zeros(shape, device=next(self.parameters()).device if device is None else device)
        return GRUState(h=h)

    def _check_state(self, state: GRUState, batch_size: int) -> None:
        expected = (batch_size, self.config.n_layers, self.d_model)
        if tuple(state.h.shape) != expected:
            raise ValueError(
                f"GRUBackbone expects state.h of shape {expected} (B, n_layers, d_model), got "
                f"{tuple(state.h.shape)}; build it with init_state({batch_size})"
            )

    def _run(self, x: Tensor, h: Tensor, reset: Tensor) -> tuple[Tensor, Tensor]:
        """Reset rows where ``reset: (B,)``, then run the GRU on ``x: (B, T, d)`` from ``h``."""
        h = h.masked_fill(reset.view(-1, 1, 1), 0.0)
        y, h_n = self.gru(x, h.transpose(0, 1).contiguous())  # h_n: (n_layers, B, d)
        return y, h_n.transpose(0, 1)

    def forward(
        self, x: Tensor, state: GRUState, is_first: Tensor | None = None
    ) -> tuple[Tensor, GRUState]:
        """Run ``x: (B, T, d_model)``; ``is_first: (B, T)`` resets rows before step t."""
        if self._check_forward(x, state, is_first):
            return x, state
        batch, steps = x.shape[:2]
        if is_first is None:
            is_first = torch.zeros(batch, steps, dtype=torch.bool, device=x.device)
        is_first = is_first.bool()
        # Segment starts: t = 0 and every step where some row resets.
        resets = torch.nonzero(is_first[:, 1:].any(dim=0)).flatten() + 1
        bounds = [0, *resets.tolist(), steps]
        h = state.h
        outputs = []
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            y, h = self._run(x[:, start:end], h, is_first[:, start])
            outputs.append(y)
        return torch.cat(outputs, dim=1), GRUState(h=h)

    def step(
        self, x_t: Tensor, state: GRUState, is_first: Tensor | None = None
    ) -> tuple[Tensor, GRUState]:
        """One step ``x_t: (B, d_model)``, ``is_first: (B,)``; no host sync."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(
                f"GRUBackbone.step expects x_t of shape (B, {self.d_model}), got "
                f"{tuple(x_t.shape)}; use forward() for a (B, T, d_model) sequence"
            )
        batch = x_t.shape[0]
        self._check_state(state, batch)
        if is_first is None:
            reset = torch.zeros(batch, dtype=torch.bool, device=x_t.device)
        elif tuple(is_first.shape) != (batch,):
            raise ValueError(
                f"GRUBackbone.step expects is_first of shape ({batch},), got "
                f"{tuple(is_first.shape)}"
            )
        else:
            reset = is_first.bool()
        y, h = self._run(x_t.unsqueeze(1), state.h, reset)
        return y.squeeze(1), GRUState(h=h)

"""Continuum Memory System (CMS): the middle frequencies of HOPE.

"Nested Learning" (Behrouz et al., arXiv 2512.24695, section 7): a chain ``y = MLP_K(... MLP_1(x))``
of residual MLP blocks (``d -> hidden_mult * d -> d``), level ``l`` updated every ``P_l`` optimizer
steps. The levels are ordinary parameters with no per-sequence state: the periods are only
reported, through the backbone's ``param_groups()``, to the multi-timescale optimizer that applies
them. See ``docs/hope.md`` for the decisions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CMS_VARIANTS = ("sequential", "independent")


class CMSLevel(nn.Module):
    """One level's residual branch ``f(z) = W_2 gelu(W_1 z + b_1) + b_2``."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, z: Tensor) -> Tensor:
        """The branch output (the caller adds the residual)."""
        return self.fc2(F.gelu(self.fc1(z)))


class CMS(nn.Module):
    """A stack of :class:`CMSLevel` with update periods.

    ``forward`` returns the increment the block adds to its residual stream:
    ``sequential``: ``MLP_K(... MLP_1(z)) - z`` with ``MLP_l(z) = z + f_l(z)``, i.e. the sum of the
    levels' branches along the chain; ``independent``: ``sum_l f_l(z)``, every level reading ``z``.
    With a single level both equal ``f_1(z)``: the block is then a pre-norm transformer MLP block.
    """

    def __init__(
        self,
        d_model: int,
        periods: tuple[int, ...],
        hidden_mult: int = 4,
        variant: str = "sequential",
    ) -> None:
        super().__init__()
        if variant not in CMS_VARIANTS:
            raise ValueError(f"cms_variant must be one of {CMS_VARIANTS}, got {variant!r}")
        if not periods or any(int(p) < 1 for p in periods):
            raise ValueError(f"CMS needs at least one period, each >= 1; got {periods}")
        self.periods = tuple(int(p) for p in periods)
        self.variant = variant
        self.levels = nn.ModuleList(CMSLevel(d_model, hidden_mult * d_model) for _ in periods)

    def forward(self, z: Tensor) -> Tensor:
        """The residual increment ``(..., d_model) -> (..., d_model)``."""
        if self.variant == "independent":
            out = self.levels[0](z)
            for level in self.levels[1:]:
                out = out + level(z)
            return out
        delta = torch.zeros_like(z)
        # accumulating the branches (not chain(z) - z) avoids cancellation when z is large
        for level in self.levels:
            delta = delta + level(z + delta)
        return delta

    @torch.no_grad()
    def init_from_mlp(self, fc1: nn.Linear, fc2: nn.Linear, level: int = 0) -> None:
        """Initialise from a trained plain MLP ``fc2(gelu(fc1(z)))``: level ``level`` takes its
        weights, every other level gets zero output weights, so ``forward`` equals the MLP exactly
        (with all learning rates 0 the model stays that MLP)."""
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level must be in [0, {len(self.levels)}), got {level}")
        target = self.levels[level]
        assert isinstance(target, CMSLevel)
        shapes = (fc1.weight.shape, fc2.weight.shape)
        if shapes != (target.fc1.weight.shape, target.fc2.weight.shape):
            raise ValueError(
                f"MLP shapes {tuple(fc1.weight.shape)}, {tuple(fc2.weight.shape)} do not match the "
                f"CMS level {tuple(target.fc1.weight.shape)}, {tuple(target.fc2.weight.shape)}; "
                "set cms_hidden_mult to the MLP's hidden width / d_model"
            )
        for i, lvl in enumerate(self.levels):
            assert isinstance(lvl, CMSLevel)
            if i == level:
                lvl.fc1.weight.copy_(fc1.weight)
                lvl.fc2.weight.copy_(fc2.weight)
                _copy_bias(lvl.fc1, fc1)
                _copy_bias(lvl.fc2, fc2)
            else:
                lvl.fc2.weight.zero_()
                lvl.fc2.bias.zero_()


def _copy_bias(dst: nn.Linear, src: nn.Linear) -> None:
    if src.bias is None:
        dst.bias.zero_()
    else:
        dst.bias.copy_(src.bias)

"""Running observation and reward normalisation (as in SB3's ``VecNormalize``).

The statistics are module buffers, so they travel with the agent's ``state_dict`` into every
checkpoint; evaluation simply never calls ``update`` (frozen statistics).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

MomentMerge = Callable[[float, Tensor, Tensor], tuple[float, Tensor, Tensor]]


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of ``(B, *shape)`` batches (Chan et al. merge).

    Statistics are kept in float64 so that millions of updates do not drift.
    """

    mean: Tensor
    var: Tensor
    count: Tensor

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("mean", torch.zeros(self.shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(self.shape, dtype=torch.float64))
        # A tiny prior count keeps the first merge well defined.
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))
        # Set by hope_agent.train.distributed.share_normalizers in a data-parallel run: maps a
        # batch's (count, mean, M2) to those of the union of every rank's batch.
        self.merge_batches: MomentMerge | None = None

    @torch.no_grad()
    def update(self, batch: Tensor) -> None:
        """Merge a batch ``(B, *shape)`` into the running statistics (with
        :attr:`merge_batches` set, the union of every rank's batch); an empty one adds nothing."""
        if tuple(batch.shape[1:]) != self.shape:
            raise ValueError(
                f"RunningMeanStd.update expects a batch of shape (B, {self.shape}), "
                f"got {tuple(batch.shape)}"
            )
        x = batch.detach().to(self.mean.device, torch.float64)
        b_count: float = x.shape[0]
        # An empty batch (possible on one rank of a data-parallel run) adds nothing.
        b_mean = x.mean(0) if b_count else torch.zeros_like(self.mean)
        b_m2 = x.var(0, unbiased=False) * b_count if b_count else torch.zeros_like(self.mean)
        if self.merge_batches is not None:
            b_count, b_mean, b_m2 = self.merge_batches(b_count, b_mean, b_m2)
        if b_count == 0:
            return
        delta = b_mean - self.mean
        total = self.count + b_count
        new_mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_m2 + delta.square() * self.count * b_count / total
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total)


class ObsNormalizer(nn.Module):
    """``clip((obs - mean) / sqrt(var + eps), -clip, clip)`` with running statistics."""

    def __init__(self, obs_dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        if clip <= 0:
            raise ValueError(f"ObsNormalizer: clip must be positive, got {clip}")
        self.rms = RunningMeanStd((obs_dim,))
        self.clip = clip
        self.eps = eps

    def update(self, obs: Tensor) -> None:
        """Merge a batch of raw observations ``(B, obs_dim)``."""
        self.rms.update(obs)

    def forward(self, obs: Tensor) -> Tensor:
        """Normalise raw observations ``(..., obs_dim)`` (no statistics update)."""
        mean = self.rms.mean.to(obs.dtype)
        std = torch.sqrt(self.rms.var + self.eps).to(obs.dtype)
        return ((obs - mean) / std).clamp(-self.clip, self.clip)

    def invert(self, normalized: Tensor) -> Tensor:
        """Raw observations that :meth:`forward` maps to ``normalized`` (exact where unclipped)."""
        mean = self.rms.mean.to(normalized.dtype)
        std = torch.sqrt(self.rms.var + self.eps).to(normalized.dtype)
        return normalized * std + mean


class RewardScaler(nn.Module):
    """Divides rewards by the running std of the discounted return (no mean shift).

    The per-env discounted-return accumulator is training-loop state and lives in the trainer;
    this module holds only the statistics.
    """

    def __init__(self, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        if clip <= 0:
            raise ValueError(f"RewardScaler: clip must be positive, got {clip}")
        self.rms = RunningMeanStd(())
        self.clip = clip
        self.eps = eps

    def update(self, returns: Tensor) -> None:
        """Merge a batch ``(B,)`` of running discounted returns."""
        self.rms.update(returns)

    def forward(self, reward: Tensor) -> Tensor:
        """Scale rewards (any shape) by the current statistics (no update)."""
        std = torch.sqrt(self.rms.var + self.eps).to(reward.dtype)
        return (reward / std).clamp(-self.clip, self.clip)

"""The acting contract: what anything that acts in an environment provides.

Our :class:`~hope_agent.agents.agent.Agent` and the SB3 baselines
(:class:`hope_agent.baselines.sb3.SB3Actor`) both subclass :class:`Actor`, so one episode driver
(:class:`hope_agent.rollout.driver.EpisodeDriver`) serves training rollouts, evaluation, video
recording and the baselines alike. The carry is explicit, as in DreamerV3's
``policy(carry, obs) -> carry, act``: an actor keeps no hidden state between calls.

An actor takes *raw* observations and rewards and applies its own (frozen, at acting time)
normalisers, and it applies the task-id rule itself: callers always pass each row's task index,
and only an actor built for the oracle task id reads it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hope_agent.models.state import State


@dataclass
class AgentState(State):
    """The carry between env steps: backbone memory and the action the env last applied
    (clipped; zeroed in the token at an episode start)."""

    memory: State
    prev_action: Tensor  # (B, act_dim)


@dataclass
class AgentOutput:
    """Head outputs for a batch of steps: every tensor has leading dims ``(B,)`` or ``(B, T)``."""

    mean: Tensor  # (..., act_dim) policy mean
    log_std: Tensor  # (..., act_dim)
    value: Tensor  # (...)
    features: Tensor  # (..., d_model) backbone output y

    def log_prob(self, action: Tensor) -> Tensor:
        """Log-probability of unclipped ``action (..., act_dim)`` under the policy, ``(...)``."""
        return gaussian_log_prob(action, self.mean, self.log_std)

    def entropy(self) -> Tensor:
        """Entropy of the policy, ``(...)``."""
        return gaussian_entropy(self.log_std)


def gaussian_log_prob(action: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Log-density of a diagonal Gaussian, summed over the last dim."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """Entropy of a diagonal Gaussian, summed over the last dim."""
    return (log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)


@dataclass
class StepInputs:
    """What one step's heads see: the normalised observation and scaled previous reward
    ``(B, ...)``, first-step flags, task indices (oracle task-id actors only) and where memory
    restarts (``None``: at ``is_first``)."""

    obs: Tensor
    prev_reward: Tensor
    is_first: Tensor
    task: Tensor | None = None
    reset: Tensor | None = None


@dataclass
class ActResult:
    """One control step of ``B`` envs: what the actor saw, chose, and predicts."""

    obs: Tensor  # (B, obs_dim) the normalised observation
    prev_reward: Tensor  # (B,) the scaled previous reward (the token's input before masking)
    action: Tensor  # (B, act_dim) unclipped sample (log-prob refers to it)
    env_action: Tensor  # (B, act_dim) clipped to [-1, 1], what the env receives
    log_prob: Tensor  # (B,)
    value: Tensor  # (B,)
    output: AgentOutput


# Where action noise comes from: one CPU generator for every row, or one per equal block of rows
# (e.g. one per task when several tasks are evaluated as one batch: each block then draws what it
# would draw alone), or None (torch's default generator).
NoiseSource = torch.Generator | Sequence[torch.Generator] | None


def sample_gaussian(
    mean: Tensor, log_std: Tensor, deterministic: bool | Tensor, generator: NoiseSource
) -> Tensor:
    """``mean + std * noise`` with the noise from ``generator`` (see :data:`NoiseSource`), or the
    mean: everywhere for ``deterministic=True`` (no noise drawn), in the rows a ``(B,)`` bool
    tensor selects."""
    if deterministic is True:
        return mean
    if generator is None or isinstance(generator, torch.Generator):
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    else:
        rows, blocks = mean.shape[0], len(generator)
        if blocks == 0 or rows % blocks:
            raise ValueError(f"{rows} rows cannot be split into {blocks} equal noise blocks")
        shape = (rows // blocks, *mean.shape[1:])
        noise = torch.cat([torch.randn(shape, generator=g, dtype=mean.dtype) for g in generator])
    sample = mean + torch.exp(log_std) * noise.to(mean.device)
    if isinstance(deterministic, Tensor):
        return torch.where(deterministic.to(mean.device).unsqueeze(-1), mean, sample)
    return sample


class Actor(ABC):
    """Anything that acts in the curriculum's envs (see the module docstring).

    A subclass gives its normalisers, its carry and one step of its Gaussian heads
    (:meth:`step_heads`); :meth:`policy`, the call every driver makes, samples and clips the
    same way for all of them.
    """

    obs_dim: int
    act_dim: int

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the actor computes."""

    @abstractmethod
    def init_carry(self, batch_size: int) -> AgentState:
        """A fresh carry for ``batch_size`` rows."""

    @abstractmethod
    def normalize_obs(self, obs: Tensor) -> Tensor:
        """Raw observations ``(..., obs_dim)`` as the actor sees them."""

    @abstractmethod
    def scale_reward(self, reward: Tensor) -> Tensor:
        """Raw rewards as the actor sees them."""

    @abstractmethod
    def predict_world(self, features: Tensor, env_action: Tensor) -> tuple[Tensor, Tensor]:
        """World model ``(Δobs, reward)`` from ``features`` and the applied action (NaN when the
        actor has none)."""

    @abstractmethod
    def step_heads(self, carry: AgentState, step: StepInputs) -> tuple[AgentOutput, State]:
        """Head outputs of one step and the memory after it."""

    def squash(self, sample: Tensor, out: AgentOutput) -> tuple[Tensor, Tensor]:
        """``(action, log_prob)`` of a Gaussian sample: the sample itself by default."""
        return sample, gaussian_log_prob(sample, out.mean, out.log_std)

    def policy(
        self,
        carry: AgentState,
        obs: Tensor,
        prev_reward: Tensor,
        is_first: Tensor,
        *,
        task: Tensor | None = None,
        deterministic: bool | Tensor = False,
        generator: NoiseSource = None,
        reset: Tensor | None = None,
    ) -> tuple[AgentState, ActResult]:
        """Act for one step of ``B`` envs.

        Args:
            carry: from :meth:`init_carry` or the previous call.
            obs: ``(B, obs_dim)`` raw observations.
            prev_reward: ``(B,)`` raw rewards of the previous step (ignored where ``is_first``).
            is_first: ``(B,)`` bool, true at an episode's first step.
            task: ``(B,)`` long task indices (read only by oracle task-id actors).
            deterministic: act with the mean; a ``(B,)`` bool tensor selects rows. With
                ``True`` no noise is drawn from ``generator``.
            generator: the action noise's CPU generator(s) (:data:`NoiseSource`).
            reset: ``(B,)`` bool, where memory restarts (default ``is_first``).

        Returns:
            The carry for the next step (memory and the applied, clipped action) and the step's
            :class:`ActResult`.
        """
        obs, prev_reward = self.normalize_obs(obs), self.scale_reward(prev_reward)
        out, memory = self.step_heads(carry, StepInputs(obs, prev_reward, is_first, task, reset))
        action, log_prob = self.squash(
            sample_gaussian(out.mean, out.log_std, deterministic, generator), out
        )
        env_action = action.clamp(-1.0, 1.0)
        result = ActResult(obs, prev_reward, action, env_action, log_prob, out.value, out)
        return AgentState(memory=memory, prev_action=env_action), result

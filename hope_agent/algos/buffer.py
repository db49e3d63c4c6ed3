"""Rollout storage of sequences for recurrent PPO (truncated BPTT over chunks).

A rollout holds ``T`` steps of ``N`` envs, time-major ``(T, N, ...)``. Time is cut into chunks of
``seq_len`` steps; the backbone memory *entering* each chunk is stored (detached), so that
training replays every chunk from its stored state, with ``is_first`` resetting rows inside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from hope_agent.algos.gae import compute_gae
from hope_agent.models.state import State


@dataclass
class SequenceBatch:
    """A minibatch of ``B`` chunks of ``L`` steps; tensors are ``(B, L, ...)``."""

    obs: Tensor
    next_obs: Tensor
    prev_action: Tensor
    prev_reward: Tensor
    is_first: Tensor
    task: Tensor
    action: Tensor
    env_action: Tensor
    log_prob: Tensor
    value: Tensor
    reward: Tensor
    valid: Tensor
    label: Tensor
    advantages: Tensor
    returns: Tensor
    memory: State  # backbone memory entering each chunk, batch B


_STEP_FIELDS = (
    "obs",
    "next_obs",
    "prev_action",
    "prev_reward",
    "is_first",
    "task",
    "action",
    "env_action",
    "log_prob",
    "value",
    "reward",
    "terminated",
    "truncated",
    "valid",
    "label",
)


class RolloutBuffer:
    """Fixed-size, time-major rollout storage with chunk-start memories.

    Args:
        num_steps: steps per env per rollout (``T``); a multiple of ``seq_len``.
        num_envs: number of envs (``N``).
        obs_dim: observation width.
        act_dim: action width.
        seq_len: chunk length for truncated BPTT.
        device: where the tensors live.
    """

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        obs_dim: int,
        act_dim: int,
        seq_len: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_steps < 1 or num_envs < 1 or seq_len < 1:
            raise ValueError(
                "RolloutBuffer: num_steps, num_envs and seq_len must be >= 1, got "
                f"{num_steps}, {num_envs}, {seq_len}"
            )
        if num_steps % seq_len:
            raise ValueError(
                f"RolloutBuffer: num_steps ({num_steps}) must be a multiple of seq_len "
                f"({seq_len}); change ppo.rollout_len or ppo.seq_len"
            )
        self.num_steps, self.num_envs, self.seq_len = num_steps, num_envs, seq_len
        self.device = torch.device(device)
        t, n = num_steps, num_envs

        def z(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros(t, n, *shape, dtype=dtype, device=self.device)

        self.obs = z(obs_dim)
        self.next_obs = z(obs_dim)
        self.prev_action = z(act_dim)
        self.prev_reward = z()
        self.is_first = z(dtype=torch.bool)
        self.task = z(dtype=torch.long)
        self.action = z(act_dim)
        self.env_action = z(act_dim)
        self.log_prob = z()
        self.value = z()
        self.reward = z()
        self.terminated = z(dtype=torch.bool)
        self.truncated = z(dtype=torch.bool)
        self.valid = z(dtype=torch.bool)
        # The env's hidden task parameter at each step (-1: none reported), for the belief loss.
        self.label = z(dtype=torch.long) - 1
        self.advantages = z()
        self.returns = z()
        self.memories: list[State | None] = [None] * (num_steps // seq_len)

    def add(self, t: int, memory: State | None = None, **values: Tensor) -> None:
        """Write step ``t`` of every env. ``memory`` (the carry entering step t) is required at
        chunk starts (``t % seq_len == 0``) and ignored elsewhere; ``label`` is optional: a run
        that never gives one keeps the buffer's -1 (no label), and no write is spent on it."""
        missing = set(_STEP_FIELDS) - set(values) - {"label"}
        extra = set(values) - set(_STEP_FIELDS)
        if missing or extra:
            raise ValueError(
                f"RolloutBuffer.add: missing fields {sorted(missing)}, "
                f"unknown fields {sorted(extra)}"
            )
        if t % self.seq_len == 0:
            if memory is None:
                raise ValueError(f"RolloutBuffer.add: step {t} starts a chunk and needs its memory")
            self.memories[t // self.seq_len] = memory.detach().to(self.device)
        for name, value in values.items():
            getattr(self, name)[t] = value.to(self.device)

    def compute_advantages(self, next_value: Tensor, gamma: float, lam: float) -> None:
        """Fill ``advantages`` and ``returns`` with GAE (see :func:`compute_gae`)."""
        self.advantages, self.returns = compute_gae(
            self.reward,
            self.value,
            next_value.to(self.device),
            self.terminated,
            self.truncated,
            self.valid,
            gamma,
            lam,
        )

    def _chunks(self, x: Tensor) -> Tensor:
        # (T, N, ...) -> (K, L, N, ...) -> (K, N, L, ...) -> (K*N, L, ...)
        k, n = self.num_steps // self.seq_len, self.num_envs
        x = x.reshape(k, self.seq_len, n, *x.shape[2:]).transpose(1, 2)
        return x.reshape(k * n, self.seq_len, *x.shape[3:])

    def sequences(self, name: str) -> Tensor:
        """A per-step field (e.g. ``"is_first"``) cut into the ``(K * N, L, ...)`` chunks that
        :meth:`minibatches` draws from."""
        if name not in _STEP_FIELDS:
            raise ValueError(f"RolloutBuffer.sequences: {name!r} is not one of {_STEP_FIELDS}")
        return self._chunks(getattr(self, name))

    def minibatches(
        self, num_minibatches: int, rng: np.random.Generator
    ) -> Iterator[SequenceBatch]:
        """Shuffle the ``K * N`` chunks and yield ``num_minibatches`` batches of them."""
        if any(m is None for m in self.memories):
            raise RuntimeError("RolloutBuffer.minibatches called before the rollout was filled")
        n_seq = len(self.memories) * self.num_envs
        if not 1 <= num_minibatches <= n_seq:
            raise ValueError(
                f"ppo.num_minibatches must lie in [1, {n_seq}] (rollout chunks x envs), "
                f"got {num_minibatches}"
            )
        data = {name: self.sequences(name) for name in _STEP_FIELDS}
        data["advantages"] = self._chunks(self.advantages)
        data["returns"] = self._chunks(self.returns)
        # Stacked memories have leaves (K, N, ...): flatten to the (K*N,) chunk order above.
        stacked = State.stack([m for m in self.memories if m is not None])
        memory = stacked.map(lambda t: t.reshape(n_seq, *t.shape[2:]))
        order = torch.as_tensor(rng.permutation(n_seq), device=self.device)
        names = {f.name for f in fields(SequenceBatch)} - {"memory"}
        for idx in torch.tensor_split(order, num_minibatches):
            yield SequenceBatch(memory=memory.index(idx), **{k: data[k][idx] for k in names})

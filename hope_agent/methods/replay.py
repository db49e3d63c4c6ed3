"""Behaviour-cloning replay: distil each finished task's policy while later tasks train.

The idea behind ClonEx (Wołczyk et al., NeurIPS 2022) and the "clone" methods of continual RL:
at the end of task k, keep a few sequences of that task's tokens together with what the policy
answered on them, and while later tasks train add a distillation loss that keeps the policy's
answers on those sequences where they were.

What is stored per finished task (``sequences_per_task`` chunks of the task's last rollout, drawn
at random without replacement):

- the tokens' inputs ``obs, prev_action, prev_reward, is_first, task`` and the ``valid`` mask,
  ``(M, L, ...)``;
- the backbone memory entering each chunk (the rollout's stored chunk-start state, R2D2's
  "stored state" strategy);
- the policy's answers at the end of the task, replayed from that memory: Gaussian ``mean`` and
  ``log_std`` and the ``value``.

The loss on a minibatch of ``batch_size`` stored sequences (from every finished task, uniformly)
is ``coef * (KL(π_old ‖ π_new) + value_coef * (V_new - V_old)^2)``, averaged over valid steps.
The stored memory was produced by earlier weights, so it drifts slightly off what the current
weights would produce; ``burn_in`` leaves the first steps of each sequence out of the loss so that
the memory can settle (R2D2's burn-in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hope_agent.agents.actor import AgentOutput
from hope_agent.agents.agent import Agent
from hope_agent.algos.buffer import RolloutBuffer, SequenceBatch
from hope_agent.algos.ppo import masked_mean
from hope_agent.methods.base import Method, check_rules, require_keys
from hope_agent.models.state import State
from hope_envs.curriculum import TaskSpec

# The stored inputs of a sequence, in SequenceBatch's field names.
INPUTS = ("obs", "prev_action", "prev_reward", "is_first", "task", "valid")
_TARGETS = ("mean", "log_std", "value")


def sample_sequences(buffer: RolloutBuffer, limit: int, seed: int) -> SequenceBatch:
    """At most ``limit`` chunks of a filled rollout buffer, drawn without replacement.

    Every chunk of the rollout when it holds fewer than ``limit``; ``seed`` fixes the draw.
    """
    if limit < 1:
        raise ValueError(f"sample_sequences: limit must be >= 1, got {limit}")
    batch = next(buffer.minibatches(1, np.random.default_rng(seed)))
    if batch.obs.shape[0] <= limit:
        return batch
    return select_rows(batch, torch.arange(limit, device=batch.obs.device))


def select_rows(batch: SequenceBatch, rows: Tensor) -> SequenceBatch:
    """The sequences ``rows`` of ``batch`` (tensors and chunk-start memory alike)."""
    values = {f.name: getattr(batch, f.name)[rows] for f in fields(batch) if f.name != "memory"}
    return SequenceBatch(memory=batch.memory.index(rows), **values)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """``KL(p ‖ q)`` of diagonal Gaussians, summed over the last dim."""
    var_p, var_q = (2.0 * log_std_p).exp(), (2.0 * log_std_q).exp()
    kl = log_std_q - log_std_p + (var_p + (mean_p - mean_q).square()) / (2.0 * var_q) - 0.5
    return kl.sum(-1)


@dataclass
class PolicyTargets:
    """What one model answered on a batch of sequences: the targets of a consistency loss."""

    mean: Tensor  # (B, L, act_dim)
    log_std: Tensor  # (B, L, act_dim)
    value: Tensor  # (B, L)

    @classmethod
    def of(cls, out: AgentOutput) -> PolicyTargets:
        """The detached policy and value of ``out``."""
        return cls(out.mean.detach(), out.log_std.detach(), out.value.detach())

    def rows(self, rows: Tensor, device: torch.device) -> PolicyTargets:
        """The targets of sequences ``rows``, on ``device``."""
        return PolicyTargets(
            self.mean[rows].to(device), self.log_std[rows].to(device), self.value[rows].to(device)
        )

    @classmethod
    def cat(cls, parts: list[PolicyTargets]) -> PolicyTargets:
        """The targets of ``parts`` one after the other (on the CPU)."""
        return cls(
            *(torch.cat([getattr(p, k).cpu() for p in parts]) for k in ("mean", "log_std", "value"))
        )


def consistency_loss(
    target: PolicyTargets, out: AgentOutput, mask: Tensor, value_coef: float
) -> Tensor:
    """``KL(π_target ‖ π_out) + value_coef · (V_out − V_target)²``, averaged over ``mask``."""
    kl = gaussian_kl(target.mean, target.log_std, out.mean, out.log_std)
    loss = masked_mean(kl, mask)
    if value_coef > 0:
        loss = loss + value_coef * masked_mean((out.value - target.value).square(), mask)
    return loss


def loss_mask(valid: Tensor, burn_in: int) -> Tensor:
    """``valid`` without the first ``burn_in`` steps of each sequence (memory warm-up)."""
    mask = valid.clone()
    mask[:, :burn_in] = False
    return mask


def state_from_leaves(template: State, leaves: Sequence[Tensor]) -> State:
    """A state shaped like ``template`` whose tensor leaves are ``leaves`` (in ``leaves()`` order).

    Checkpoints store a state's leaves only (no classes); this rebuilds the tree from a fresh
    state of the same backbone.
    """
    expected = len(template.leaves())
    if expected != len(leaves):
        raise ValueError(
            f"stored backbone memory has {len(leaves)} tensors but this backbone's state has "
            f"{expected}: the replay buffer was saved with another model; resume with the run's "
            "own model config"
        )
    it = iter(leaves)
    return template.map(lambda _: next(it))


@dataclass
class BCReplayConfig:
    """Options of :class:`BCReplay`.

    Attributes:
        coef: weight of the distillation loss in the PPO loss.
        value_coef: weight of the value-distillation term inside it (0: the policy only).
        sequences_per_task: chunks of ``ppo.seq_len`` steps kept per finished task (capped by the
            last rollout's ``rollout_len / seq_len * num_envs`` chunks).
        batch_size: stored sequences replayed per PPO minibatch.
        burn_in: first steps of each replayed sequence left out of the loss.
        renormalize: keep raw observations and normalise them with the agent's current
            statistics at each replay (the inputs an evaluation would show); off, replay the
            observations as normalised in their own task (ablation).
        seed: seed of the sequence draws.
    """

    coef: float = 10.0
    value_coef: float = 0.0
    sequences_per_task: int = 64
    batch_size: int = 8
    burn_in: int = 0
    renormalize: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        rules = {
            "coef >= 0": self.coef >= 0,
            "value_coef >= 0": self.value_coef >= 0,
            "sequences_per_task >= 1": self.sequences_per_task >= 1,
            "batch_size >= 1": self.batch_size >= 1,
            "burn_in >= 0": self.burn_in >= 0,
        }
        check_rules("bc_replay options", rules, self)


class BCReplay(Method):
    """Behaviour-cloning replay of every finished task (see the module docstring)."""

    name = "bc_replay"

    def __init__(self, config: BCReplayConfig | None = None) -> None:
        self.config = config or BCReplayConfig()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        # Every finished task's sequences, concatenated along dim 0.
        self.store: dict[str, Tensor] = {}
        self.memory_leaves: list[Tensor] = []
        self.source_task: Tensor | None = None  # (M,) stage that each sequence comes from

    @property
    def size(self) -> int:
        """Number of stored sequences."""
        return 0 if self.source_task is None else int(self.source_task.shape[0])

    @torch.no_grad()
    def on_task_end(
        self, stage: int, spec: TaskSpec, agent: Agent, buffer: RolloutBuffer | None
    ) -> None:
        """Store ``sequences_per_task`` chunks of the last rollout with the policy's answers."""
        if buffer is None:
            raise ValueError("bc_replay needs the task's last rollout buffer at the task end")
        batch = sample_sequences(buffer, self.config.sequences_per_task, self.config.seed + stage)
        new = sequence_inputs(batch)
        out = sequence_outputs(agent, new, batch.memory)
        new.update(mean=out.mean, log_std=out.log_std, value=out.value)
        if self.config.renormalize:
            new["obs"] = agent.obs_norm.invert(new["obs"])
        leaves = batch.memory.leaves()
        source = torch.full((batch.obs.shape[0],), stage, dtype=torch.long)
        if self.source_task is None:
            self.store = {k: v.detach().clone() for k, v in new.items()}
            self.memory_leaves = [t.detach().clone() for t in leaves]
            self.source_task = source
            return
        if len(leaves) != len(self.memory_leaves):
            raise ValueError(
                "bc_replay: the backbone memory changed structure between tasks "
                f"({len(self.memory_leaves)} vs {len(leaves)} tensors)"
            )
        self.store = {k: torch.cat([self.store[k], v.to(self.store[k])]) for k, v in new.items()}
        self.memory_leaves = [
            torch.cat([old, t.to(old)]) for old, t in zip(self.memory_leaves, leaves, strict=True)
        ]
        self.source_task = torch.cat([self.source_task, source])

    def stored(self, agent: Agent, rows: Tensor) -> tuple[dict[str, Tensor], State, PolicyTargets]:
        """Stored sequences ``rows`` on the agent's device: ``(inputs, memory, targets)``."""
        dev = agent.log_std.device
        template = agent.backbone.init_state(1, dev)
        memory = state_from_leaves(template, [t[rows].to(dev) for t in self.memory_leaves])
        inputs = {k: self.store[k][rows].to(dev) for k in INPUTS}
        if self.config.renormalize:
            inputs["obs"] = agent.normalize_obs(inputs["obs"])
        targets = PolicyTargets(*(self.store[k][rows].to(dev) for k in _TARGETS))
        return inputs, memory, targets

    def distillation_loss(self, agent: Agent, rows: Tensor) -> Tensor:
        """The distillation loss (without ``coef``) on stored sequences ``rows``."""
        inputs, memory, old = self.stored(agent, rows)
        out = sequence_outputs(agent, inputs, memory)
        mask = loss_mask(inputs["valid"], self.config.burn_in)
        return consistency_loss(old, out, mask, self.config.value_coef)

    def extra_loss(self, agent: Agent, batch: SequenceBatch, outputs: AgentOutput) -> Tensor | None:
        """``coef`` x the distillation loss on a fresh random minibatch of stored sequences."""
        if self.size == 0 or self.config.coef == 0:
            return None
        rows = torch.randint(0, self.size, (self.config.batch_size,), generator=self.generator)
        return self.config.coef * self.distillation_loss(agent, rows)

    def state_dict(self) -> dict[str, Any]:
        """The stored sequences, targets, memories and the sampling generator's state."""
        return {
            "store": dict(self.store),
            "memory_leaves": list(self.memory_leaves),
            "source_task": self.source_task,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (tensors may come back on any device)."""
        require_keys("bc_replay", state, ("store", "memory_leaves", "source_task", "generator"))
        self.store = {k: v for k, v in state["store"].items()}
        self.memory_leaves = list(state["memory_leaves"])
        self.source_task = state["source_task"]
        self.generator.set_state(state["generator"].cpu())
        if self.source_task is not None and set(self.store) != {*INPUTS, *_TARGETS}:
            raise ValueError(
                f"bc_replay state holds fields {sorted(self.store)}, expected "
                f"{sorted({*INPUTS, *_TARGETS})}"
            )


def sequence_inputs(batch: SequenceBatch) -> dict[str, Tensor]:
    """The token inputs and ``valid`` mask of a batch of sequences, by field name."""
    return {name: getattr(batch, name) for name in INPUTS}


def sequence_outputs(agent: Agent, inputs: Mapping[str, Tensor], memory: State) -> AgentOutput:
    """The agent's outputs on sequences ``(M, L, ...)`` replayed from their chunk-start memory."""
    out, _ = agent(
        inputs["obs"],
        inputs["prev_action"],
        inputs["prev_reward"],
        inputs["is_first"],
        memory,
        task=inputs["task"],
    )
    return out

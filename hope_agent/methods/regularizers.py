"""Weight regularisers against forgetting: L2 and EWC (Kirkpatrick et al., PNAS 2017).

After each finished task k the method keeps an *anchor* ``θ*_k`` (the weights at the task end)
and a per-weight *importance* ``Ω_k``; while later tasks train it adds to every PPO minibatch

    penalty = coef / 2 · Σ_k Σ_i Ω_k,i (θ_i − θ*_k,i)²        (summed over finished tasks)

- L2: ``Ω = 1`` for every trainable weight (heads, world model and backbone alike).
- EWC: ``Ω`` = the diagonal empirical Fisher information of the policy's log-likelihood,
  estimated on the finished task's last rollout (see :func:`diagonal_fisher`); optionally plus
  the Fisher of a unit-variance Gaussian value model, so that the critic is protected too.

With ``gamma`` set, the *online* variant (Schwarz et al., ICML 2018, "Progress & Compress")
keeps one anchor, the latest, and one importance ``Ω ← γ Ω + Ω_k``: memory no longer grows with
the number of tasks, and ``γ < 1`` lets old tasks fade. Continual World's EWC is this online form
with ``γ = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hope_agent.agents.actor import AgentOutput
from hope_agent.agents.agent import Agent
from hope_agent.algos.buffer import RolloutBuffer, SequenceBatch
from hope_agent.methods.base import Method, check_rules
from hope_agent.methods.replay import (
    sample_sequences,
    select_rows,
    sequence_inputs,
    sequence_outputs,
)
from hope_envs.curriculum import TaskSpec

ParamTensors = dict[str, Tensor]


def trainable_parameters(agent: Agent) -> dict[str, torch.nn.Parameter]:
    """The agent's trainable parameters by name (what the regularisers anchor)."""
    return {name: p for name, p in agent.named_parameters() if p.requires_grad}


def diagonal_fisher(
    agent: Agent, buffer: RolloutBuffer, max_sequences: int = 256, include_value: bool = False
) -> ParamTensors:
    """Per-step diagonal empirical Fisher of the policy, from a filled rollout buffer.

    Each stored chunk of ``L`` steps is replayed through the backbone from its stored memory (as
    PPO replays it) and the gradient of its summed log-likelihood ``g = Σ_t ∇ log π(a_t | h_t)``
    over valid steps is squared; ``F = Σ_chunks g² / Σ_chunks (valid steps)``. One backward pass
    per chunk, not per step, is unbiased for the per-step Fisher when the actions are the
    policy's own samples: the per-step scores are then martingale differences (each has zero
    mean given the history before it), so the cross terms of ``g²`` vanish in expectation. The
    buffer's actions come from the policy just before the last PPO update, close to the final
    one: the estimate is the usual empirical Fisher at the task end.

    With ``include_value``, the Fisher of a unit-variance Gaussian value model
    ``((R_t − V_t) ∇V_t)²`` (same chunked estimate, with the rollout's returns) is added.

    Args:
        agent: the agent at the task end.
        buffer: a filled buffer of the task (advantages and returns computed).
        max_sequences: at most this many chunks, drawn at random (seed 0).
        include_value: add the value model's Fisher.

    Returns:
        ``{name: F}`` for every trainable parameter (zeros where the likelihood does not reach).
    """
    params = trainable_parameters(agent)
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    batch = sample_sequences(buffer, max_sequences, seed=0)
    plist = list(params.values())
    steps = 0
    for i in range(batch.obs.shape[0]):
        seq = select_rows(batch, torch.tensor([i], device=batch.obs.device))
        mask = seq.valid
        n_valid = int(mask.sum())
        if n_valid == 0:
            continue
        steps += n_valid
        out = sequence_outputs(agent, sequence_inputs(seq), seq.memory)
        scores = [(out.log_prob(seq.action) * mask).sum()]
        if include_value:
            scores.append((-0.5 * (out.value - seq.returns).square() * mask).sum())
        for k, score in enumerate(scores):
            grads = torch.autograd.grad(
                score, plist, allow_unused=True, retain_graph=k < len(scores) - 1
            )
            for name, g in zip(params, grads, strict=True):
                if g is not None:
                    fisher[name] += g.square()
    if steps == 0:
        raise ValueError("diagonal_fisher: the buffer holds no valid step; fill it first")
    return {name: f / steps for name, f in fisher.items()}


@dataclass
class L2Config:
    """Options of :class:`L2`.

    Attributes:
        coef: ``coef`` of the penalty ``coef / 2 · Σ Ω (θ − θ*)²``.
        gamma: ``None`` keeps one anchor and importance per finished task; a value in (0, 1]
            selects online consolidation (one anchor, ``Ω ← γ Ω + Ω_k``).
    """

    coef: float = 0.1
    gamma: float | None = None

    def __post_init__(self) -> None:
        self._check({})

    def _check(self, more: dict[str, bool]) -> None:
        rules = {
            "coef >= 0": self.coef >= 0,
            "gamma null or in (0, 1]": self.gamma is None or 0 < self.gamma <= 1,
            **more,
        }
        check_rules(type(self).__name__, rules, self)


@dataclass
class EWCConfig(L2Config):
    """Options of :class:`EWC` (those of :class:`L2Config` plus the Fisher estimate's).

    Attributes:
        fisher_sequences: at most this many rollout chunks per Fisher estimate.
        include_value: add the value model's Fisher to the policy's.
    """

    coef: float = 100.0
    fisher_sequences: int = 256
    include_value: bool = False

    def __post_init__(self) -> None:
        self._check({"fisher_sequences >= 1": self.fisher_sequences >= 1})


class ParameterRegularizer(Method):
    """Quadratic pull towards the weights of finished tasks (see the module docstring).

    Subclasses define :meth:`importance`.
    """

    name = "regularizer"

    def __init__(self, config: L2Config) -> None:
        self.config = config
        self.anchors: list[ParamTensors] = []
        self.importances: list[ParamTensors] = []

    def importance(self, agent: Agent, buffer: RolloutBuffer | None) -> ParamTensors:
        """``Ω`` of the task that just ended, one tensor per trainable parameter."""
        raise NotImplementedError

    @torch.no_grad()
    def consolidate(self, agent: Agent, buffer: RolloutBuffer | None) -> None:
        """Anchor the current weights with their importance (what a task end does)."""
        with torch.enable_grad():
            omega = self.importance(agent, buffer)
        anchor = {name: p.detach().clone() for name, p in trainable_parameters(agent).items()}
        if self.config.gamma is None or not self.anchors:
            self.anchors.append(anchor)
            self.importances.append({k: v.detach().clone() for k, v in omega.items()})
            return
        gamma = self.config.gamma
        self.anchors = [anchor]
        self.importances = [{k: gamma * self.importances[0][k] + omega[k] for k in omega}]

    def on_task_end(
        self, stage: int, spec: TaskSpec, agent: Agent, buffer: RolloutBuffer | None
    ) -> None:
        """Anchor the weights of the task that just ended."""
        self.consolidate(agent, buffer)

    def penalty(self, agent: Agent) -> Tensor | None:
        """``Σ_k Σ_i Ω_k,i (θ_i − θ*_k,i)²`` (without ``coef / 2``); ``None`` before any anchor."""
        if not self.anchors:
            return None
        params = trainable_parameters(agent)
        total = torch.zeros((), device=agent.log_std.device)
        for anchor, omega in zip(self.anchors, self.importances, strict=True):
            if set(anchor) != set(params):
                raise ValueError(
                    f"{self.name}: the anchored parameters do not match the agent's "
                    f"({len(anchor)} vs {len(params)} tensors); resume with the run's own model"
                )
            for name, p in params.items():
                diff = p - anchor[name].to(p.device)
                total = total + (omega[name].to(p.device) * diff.square()).sum()
        return total

    def extra_loss(self, agent: Agent, batch: SequenceBatch, outputs: AgentOutput) -> Tensor | None:
        """``coef / 2`` x :meth:`penalty` (``None`` during the first task)."""
        penalty = self.penalty(agent)
        if penalty is None or self.config.coef == 0:
            return None
        return 0.5 * self.config.coef * penalty

    def state_dict(self) -> dict[str, Any]:
        """Anchors and importances, one dict of tensors per kept anchor."""
        return {"anchors": list(self.anchors), "importances": list(self.importances)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        anchors, importances = state.get("anchors"), state.get("importances")
        if not isinstance(anchors, list) or not isinstance(importances, list):
            raise ValueError(f"{self.name} state needs 'anchors' and 'importances' lists")
        if len(anchors) != len(importances):
            raise ValueError(
                f"{self.name} state holds {len(anchors)} anchors but {len(importances)} importances"
            )
        self.anchors = [dict(a) for a in anchors]
        self.importances = [dict(o) for o in importances]


class L2(ParameterRegularizer):
    """L2 pull towards every finished task's weights, all weights equally important."""

    name = "l2"

    def __init__(self, config: L2Config | None = None) -> None:
        super().__init__(config or L2Config())

    def importance(self, agent: Agent, buffer: RolloutBuffer | None) -> ParamTensors:
        """Ones for every trainable parameter."""
        return {name: torch.ones_like(p) for name, p in trainable_parameters(agent).items()}


class EWC(ParameterRegularizer):
    """Elastic weight consolidation with the policy's diagonal Fisher as importance."""

    name = "ewc"

    def __init__(self, config: EWCConfig | None = None) -> None:
        self.ewc_config = config or EWCConfig()
        super().__init__(self.ewc_config)

    def importance(self, agent: Agent, buffer: RolloutBuffer | None) -> ParamTensors:
        """The diagonal Fisher of :func:`diagonal_fisher` on the task's last rollout."""
        if buffer is None:
            raise ValueError("ewc needs the task's last rollout buffer at the task end")
        cfg = self.ewc_config
        return diagonal_fisher(agent, buffer, cfg.fisher_sequences, cfg.include_value)

"""Proximal policy optimisation for sequence backbones (Schulman et al. 2017).

The loss pieces are pure functions over masked ``(B, L)`` tensors; :class:`PPO` runs the epochs of
truncated-BPTT updates over a :class:`~hope_agent.algos.buffer.RolloutBuffer`:
each chunk is replayed from its stored (detached) backbone memory with ``is_first`` resets, and
autoreset steps (``valid == False``) are masked out of every loss.

    L = -L_clip + vf_coef * L_value - ent_coef * H + bound_coef * L_bound
        + wm_coef * L_world_model + belief_coef * L_belief (+ method extra loss)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from hope_agent.agents.actor import AgentOutput
from hope_agent.agents.agent import Agent
from hope_agent.algos.buffer import RolloutBuffer, SequenceBatch
from hope_agent.algos.graphed import GraphedLossGrad, max_resets

ExtraLoss = Callable[[Agent, SequenceBatch, AgentOutput], "Tensor | None"]


class OptimizerLike(Protocol):
    """What PPO needs of an optimizer (a torch optimizer or a chain of them)."""

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The parameter groups (dicts with ``"params"``)."""
        ...

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients."""
        ...

    def step(self) -> Any:
        """Apply one update."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...

    def advance(self, clock: str, amount: int = 1) -> None:
        """Advance a trainer-driven clock (``"env_steps"``, ``"tasks"``) of the groups' periods."""
        ...

    def reset_state(self, params: Iterable[Tensor]) -> None:
        """Forget the moments and partial sums held for ``params`` (weights rewritten outside)."""
        ...


class GradientSync(Protocol):
    """How data-parallel ranks agree on an update (``hope_agent.train.distributed.World``)."""

    def sum(self, tensor: Tensor) -> Tensor:
        """The elementwise sum of ``tensor`` over the ranks."""
        ...

    def average_gradients(self, params: Sequence[Tensor], weight: float) -> None:
        """Replace each gradient by the ``weight``-weighted mean over the ranks."""
        ...


@dataclass
class PPOConfig:
    """Hyperparameters of the PPO update (rollout sizes live with the trainer).

    Attributes:
        gamma: discount factor.
        gae_lambda: GAE lambda.
        clip_coef: policy ratio clip epsilon.
        clip_value: clip the value update around the old values with ``clip_coef`` too.
        vf_coef: value loss weight.
        ent_coef: entropy bonus weight.
        bound_coef: weight of the loss keeping the policy mean inside [-1, 1] (see
            :func:`bound_loss`).
        wm_coef: world-model auxiliary loss weight (0 disables it).
        belief_coef: weight of the belief loss (:func:`belief_loss`: the agent's belief head
            classifies the env's hidden task parameter from the backbone features; needs
            ``agent.belief_classes``). 0 disables it.
        max_grad_norm: global gradient-norm clip (0 disables it).
        epochs: passes over each rollout.
        num_minibatches: minibatches per epoch (of the rollout's chunks).
        norm_adv: normalise advantages per minibatch.
        target_kl: stop the epochs early once the approximate KL exceeds it (0 disables it).
    """

    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    clip_value: bool = False
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    bound_coef: float = 1.0
    wm_coef: float = 0.5
    belief_coef: float = 0.0
    max_grad_norm: float = 0.5
    epochs: int = 4
    num_minibatches: int = 4
    norm_adv: bool = True
    target_kl: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "gamma in [0, 1]": 0.0 <= self.gamma <= 1.0,
            "gae_lambda in [0, 1]": 0.0 <= self.gae_lambda <= 1.0,
            "clip_coef > 0": self.clip_coef > 0,
            "vf_coef >= 0": self.vf_coef >= 0,
            "ent_coef >= 0": self.ent_coef >= 0,
            "bound_coef >= 0": self.bound_coef >= 0,
            "wm_coef >= 0": self.wm_coef >= 0,
            "belief_coef >= 0": self.belief_coef >= 0,
            "max_grad_norm >= 0": self.max_grad_norm >= 0,
            "epochs >= 1": self.epochs >= 1,
            "num_minibatches >= 1": self.num_minibatches >= 1,
            "target_kl >= 0": self.target_kl >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"PPO config: need {', '.join(bad)} (got {self})")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over entries where ``mask`` is true (0 when none is)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def normalize_advantages(adv: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero-mean, unit-std advantages over the masked entries (others set to 0)."""
    mean = masked_mean(adv, mask)
    std = masked_mean((adv - mean).square(), mask).sqrt()
    return torch.where(mask, (adv - mean) / (std + eps), torch.zeros_like(adv))


def clipped_policy_loss(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_coef: float, mask: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate, as a loss to minimise: ``mean(max(-A r, -A clip(r)))``.

    Returns the loss and detached diagnostics ``approx_kl`` (the low-variance estimator
    ``(r - 1) - log r``) and ``clipfrac``.
    """
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = torch.max(
        -advantages * ratio, -advantages * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    )
    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip_coef).float(), mask),
        }
    return masked_mean(surrogate, mask), stats


def value_loss(
    value: Tensor,
    returns: Tensor,
    mask: Tensor,
    old_value: Tensor | None = None,
    clip_coef: float | None = None,
) -> Tensor:
    """``0.5 * mean((V - R)^2)``; with ``old_value`` and ``clip_coef``, the clipped variant
    ``0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old) - R)^2))``."""
    err = (value - returns).square()
    if old_value is not None and clip_coef is not None:
        clipped = old_value + (value - old_value).clamp(-clip_coef, clip_coef)
        err = torch.max(err, (clipped - returns).square())
    return 0.5 * masked_mean(err, mask)


def bound_loss(mean: Tensor, mask: Tensor, bound: float = 1.0) -> Tensor:
    """``mean(sum_i relu(|mu_i| - bound)^2)``: pulls the Gaussian mean back inside the action box.

    Samples are clipped to [-1, 1]; a mean far outside makes every sample the same action, so the
    policy gradient vanishes exactly when a new task needs the opposite action (rl_games' "bounds
    loss" solves the same problem).
    """
    excess = (mean.abs() - bound).clamp_min(0.0)
    return masked_mean(excess.square().sum(-1), mask)


def world_model_loss(
    pred_delta: Tensor,
    pred_reward: Tensor,
    target_delta: Tensor,
    target_reward: Tensor,
    mask: Tensor,
) -> Tensor:
    """Mean squared error of the next-observation delta (averaged over dims) plus the reward's."""
    obs_err = (pred_delta - target_delta).square().mean(-1)
    return masked_mean(obs_err + (pred_reward - target_reward).square(), mask)


def belief_loss(logits: Tensor, label: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy of ``logits (..., classes)`` against ``label (...)`` over the masked steps
    that have a label (``label >= 0``), and the accuracy there (detached).

    Task-inference supervision (Humplik et al. 2019): the gradient reaches the memory writes of
    earlier steps of the sequence, teaching the backbone to keep what identifies the hidden task.
    """
    has = mask & (label >= 0)
    target = label.clamp_min(0)
    ce = nn.functional.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="none")
    with torch.no_grad():
        hit = (logits.argmax(-1) == target).to(logits.dtype)
        accuracy = masked_mean(hit, has)
    return masked_mean(ce.view_as(label), has), accuracy


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """``1 - Var(target - pred) / Var(target)`` over masked entries (nan if Var(target) = 0)."""
    t, p = target[mask], pred[mask]
    var = t.var(unbiased=False) if t.numel() else torch.tensor(0.0)
    if var.item() == 0:
        return float("nan")
    return float(1.0 - (t - p).var(unbiased=False) / var)


class PPO:
    """The PPO update of a recurrent actor-critic (parts injected).

    Args:
        agent: the :class:`~hope_agent.agents.agent.Agent` being trained.
        optimizer: any optimizer over its parameters (a ``MultiTimescaleOptimizer`` in practice).
        config: :class:`PPOConfig`.
        rng: numpy generator for the minibatch shuffles (seeded by the caller).
        extra_loss: optional ``(agent, batch, outputs) -> loss`` added to the PPO loss, the hook
            continual-learning methods (regularisers, replay) plug into.
        sync: in a data-parallel run, the ranks' gradient synchronisation: each minibatch's
            gradients are averaged over the ranks (weighted by valid steps), its advantages
            normalised and its early-stop KL taken over all ranks, and a non-finite loss on one
            rank skips the step on all; the update is then the one of a single process on the
            ranks' rollouts together. ``None``: one process.
        graph_update: on CUDA, replay each minibatch's loss and gradients from a CUDA graph
            (:class:`~hope_agent.algos.graphed.GraphedLossGrad`, one capture per minibatch
            shape) where that is possible: a backbone with ``capturable_forward``, one process,
            no ``extra_loss``. Elsewhere the update runs eagerly (:attr:`graphed` says which).
            The result equals the eager update to fp32 rounding.
    """

    def __init__(
        self,
        agent: Agent,
        optimizer: OptimizerLike,
        config: PPOConfig,
        rng: np.random.Generator,
        extra_loss: ExtraLoss | None = None,
        sync: GradientSync | None = None,
        graph_update: bool = False,
    ) -> None:
        self.agent, self.optimizer, self.config, self.rng = agent, optimizer, config, rng
        self.extra_loss = extra_loss
        self.sync = sync
        self.graph_update = graph_update
        self._graphs: dict[int, GraphedLossGrad] = {}
        self._max_resets = 0

    @property
    def graphed(self) -> bool:
        """Whether :meth:`update` replays the minibatches from CUDA graphs (``graph_update``
        asked for it and the agent, device and options allow it)."""
        return (
            self.graph_update
            and self.agent.device.type == "cuda"
            and self.sync is None
            and self.extra_loss is None
            and self.agent.backbone.capturable_forward
        )

    def _graph_for(
        self, batch: SequenceBatch, resets: int, params: list[Tensor]
    ) -> GraphedLossGrad:
        """The captured loss of ``batch``'s shape over ``params``, for at most ``resets`` episode
        starts per sequence: the bound only grows, so that a run captures a few graphs, not one
        per rollout."""
        if resets > self._max_resets:
            self._max_resets = resets
            self._graphs.clear()
        key = batch.obs.shape[0]
        graph = self._graphs.get(key)
        if graph is None or [id(p) for p in graph.params] != [id(p) for p in params]:
            graph = self._graphs[key] = GraphedLossGrad(self.loss, params, batch, self._max_resets)
        return graph

    def loss(self, batch: SequenceBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss of one minibatch of chunks and its detached diagnostics."""
        cfg, agent = self.config, self.agent
        out, _ = agent(
            batch.obs,
            batch.prev_action,
            batch.prev_reward,
            batch.is_first,
            batch.memory,
            task=batch.task,
        )
        mask = batch.valid
        log_prob = out.log_prob(batch.action)
        adv = batch.advantages
        if cfg.norm_adv:
            adv = (
                normalize_advantages(adv, mask)
                if self.sync is None
                else self._normalize_over_ranks(adv, mask)
            )
        pg, stats = clipped_policy_loss(log_prob, batch.log_prob, adv, cfg.clip_coef, mask)
        v_loss = value_loss(
            out.value,
            batch.returns,
            mask,
            batch.value if cfg.clip_value else None,
            cfg.clip_coef if cfg.clip_value else None,
        )
        entropy = masked_mean(out.entropy(), mask)
        bound = bound_loss(out.mean, mask)
        loss = pg + cfg.vf_coef * v_loss - cfg.ent_coef * entropy + cfg.bound_coef * bound
        wm = torch.zeros((), device=loss.device)
        if cfg.wm_coef > 0:
            pred_delta, pred_reward = agent.predict_world(out.features, batch.env_action)
            wm = world_model_loss(
                pred_delta, pred_reward, batch.next_obs - batch.obs, batch.reward, mask
            )
            loss = loss + cfg.wm_coef * wm
        if cfg.belief_coef > 0:
            belief, stats["belief_accuracy"] = belief_loss(
                agent.belief_logits(out.features), batch.label, mask
            )
            loss = loss + cfg.belief_coef * belief
            stats["belief"] = belief.detach()
        if self.extra_loss is not None:
            extra = self.extra_loss(agent, batch, out)
            if extra is not None:
                loss = loss + extra
                stats["extra"] = extra.detach()
        stats.update(
            policy=pg.detach(),
            value=v_loss.detach(),
            entropy=entropy.detach(),
            bound=bound.detach(),
            world_model=wm.detach(),
        )
        return loss, stats

    def _normalize_over_ranks(self, adv: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
        """:func:`normalize_advantages` with the mean and std of every rank's minibatch."""
        assert self.sync is not None
        m = mask.to(adv.dtype)
        sums = self.sync.sum(torch.stack([(adv * m).sum(), m.sum()]))
        count = sums[1].clamp_min(1.0)
        mean = sums[0] / count
        std = (self.sync.sum(((adv - mean).square() * m).sum()[None])[0] / count).sqrt()
        return torch.where(mask, (adv - mean) / (std + eps), torch.zeros_like(adv))

    def _agreed(self, value: float, weight: float) -> float:
        """``value`` as a ``weight``-weighted mean over the ranks (itself for one process)."""
        if self.sync is None:
            return value
        sums = self.sync.sum(torch.tensor([value * weight, weight], dtype=torch.float64))
        return float(sums[0] / sums[1]) if float(sums[1]) > 0 else value

    def update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """Run the epochs over a filled buffer (advantages computed); return mean diagnostics.

        A minibatch whose loss or gradient norm is not finite is skipped (no optimizer step, its
        gradients dropped) and counted in ``nonfinite_steps``; the means are over the steps
        taken (``updates``).
        """
        cfg = self.config
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        graphed = self.graphed
        resets = max_resets(buffer.sequences("is_first")) if graphed else 0
        graph: GraphedLossGrad | None = None
        totals: dict[str, float] = {}
        n = skipped = 0
        stop = False
        for _ in range(cfg.epochs):
            for batch in buffer.minibatches(cfg.num_minibatches, self.rng):
                if graphed:
                    graph = self._graph_for(batch, resets, params)
                    loss, stats = graph(batch)
                else:
                    loss, stats = self.loss(batch)
                finite = bool(torch.isfinite(loss))
                weight = float(batch.valid.sum())
                if self.sync is not None:
                    # Every rank must take the same branch, or the gradient all-reduce hangs.
                    finite = self._agreed(float(finite), 1.0) == 1.0
                if not finite:
                    skipped += 1
                    continue
                if graph is None:
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                if self.sync is not None:
                    self.sync.average_gradients(params, weight)
                # An infinite bound still returns the norm, and scales every gradient by 1.
                bound = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
                norm = nn.utils.clip_grad_norm_(params, bound)
                if not bool(torch.isfinite(norm)):
                    # One bad gradient would poison the weights and the optimizer's moments.
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
                if cfg.max_grad_norm > 0:
                    stats["grad_norm"] = norm
                self.optimizer.step()
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
                n += 1
                if (
                    cfg.target_kl > 0
                    and self._agreed(float(stats["approx_kl"]), weight) > cfg.target_kl
                ):
                    stop = True
                    break
            if stop:
                break
        if graph is not None:
            graph.release_grads()
        result = {k: v / n for k, v in totals.items()}
        result["explained_variance"] = explained_variance(
            buffer.value, buffer.returns, buffer.valid
        )
        result["updates"] = float(n)
        result["nonfinite_steps"] = float(skipped)
        return result

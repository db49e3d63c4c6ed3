"""Actor-critic with a world-model head over any sequence backbone (HOPE.md section 5).

Each env step is one token ``[obs_t, a_{t-1}, r_{t-1}, is_first_t]`` (plus a one-hot task id for
the oracle baseline only), linearly embedded to ``d_model`` and fed to the backbone. Heads on the
backbone output ``y_t``:

- policy: a diagonal Gaussian with a state-independent learned log-std. Samples are unbounded;
  the environment receives them clipped to [-1, 1] and the log-probability is that of the
  unclipped sample (as in SB3 and cleanrl). Clipping, not tanh, keeps the log-prob exact without
  a change-of-variables correction. The mean is kept near the action box by PPO's bound loss
  (:func:`hope_agent.algos.ppo.bound_loss`), not by a squashing function: a saturated tanh (or a
  mean far past the bound, whose clipped samples all give the same action) leaves no learning
  signal when the next task needs the opposite action;
- value: ``V(y_t)``;
- world model: ``(Δobs, r) = WM([y_t, a_t])``, the normalised next-observation delta and the
  scaled reward, given the action actually applied. Its loss is an auxiliary training loss and
  the signal for online CMS updates at deployment.

The agent implements the acting contract :class:`~hope_agent.agents.actor.Actor`:
:meth:`Agent.policy` takes raw observations and rewards and applies the agent's normalisers (the
trainer alone updates their statistics, during rollouts); :meth:`Agent.forward`, the sequence
pass that training replays, takes normalised inputs. :meth:`Agent.predict` is the same step in
Stable-Baselines3's calling convention, on numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hope_agent.agents.actor import Actor, AgentOutput, AgentState, NoiseSource, StepInputs
from hope_agent.agents.normalize import ObsNormalizer, RewardScaler
from hope_agent.models.base import Backbone
from hope_agent.models.graphs import GraphedStep
from hope_agent.models.state import State


@dataclass
class AgentOptions:
    """The agent's options that a run's config sets (its ``agent`` section extends these).

    Attributes:
        task_id: oracle baseline: append a one-hot task id to every token.
        task_heads: with ``task_id``, one policy-mean and one value head per task (the
            multi-head setting of task-incremental learning): each task's answers come from its
            own head, read from the shared features; off, one head for all tasks.
        log_std_init: initial log standard deviation of the Gaussian policy.
        wm_hidden: hidden width of the world-model MLP.
        obs_clip: clip of the normalised observations.
        reward_clip: clip of the scaled rewards.
        belief_classes: with more than 0, a belief head: a linear classifier of the env's hidden
            task parameter (e.g. ``PointAdapt``'s goal index) from the backbone features, trained
            by ``ppo.belief_coef`` on labels the env reports (task-inference supervision,
            Humplik et al. 2019). It is a training signal only, unless ``belief_input``.
        belief_input: the policy and value heads also read the belief head's class probabilities
            (detached: only the belief loss trains the belief head), as Humplik et al.'s policy
            reads its belief estimate; needs ``belief_classes``.
    """

    task_id: bool = False
    task_heads: bool = False
    log_std_init: float = -0.5
    wm_hidden: int = 128
    obs_clip: float = 10.0
    reward_clip: float = 10.0
    belief_classes: int = 0
    belief_input: bool = False


@dataclass(kw_only=True)
class AgentConfig(AgentOptions):
    """Sizes of the agent's embedding and heads, given by the curriculum, and its options.

    Attributes:
        obs_dim: observation width (the curriculum's common, padded width).
        act_dim: action width (actions lie in [-1, 1]^act_dim).
        num_tasks: number of tasks; used only when ``task_id`` is true.
    """

    obs_dim: int
    act_dim: int
    num_tasks: int = 1

    def __post_init__(self) -> None:
        if self.obs_dim < 1 or self.act_dim < 1:
            raise ValueError(
                f"AgentConfig: obs_dim and act_dim must be >= 1, got {self.obs_dim}, {self.act_dim}"
            )
        if self.num_tasks < 1:
            raise ValueError(f"AgentConfig: num_tasks must be >= 1, got {self.num_tasks}")
        if self.wm_hidden < 1:
            raise ValueError(f"AgentConfig: wm_hidden must be >= 1, got {self.wm_hidden}")
        if self.belief_classes < 0:
            raise ValueError(
                f"AgentConfig: belief_classes must be >= 0 (0: no belief head), got "
                f"{self.belief_classes}"
            )
        if self.belief_input and self.belief_classes < 1:
            raise ValueError(
                "AgentConfig: belief_input needs a belief head (set agent.belief_classes, or "
                "agent.belief_input=false)"
            )
        if self.task_heads and not self.task_id:
            raise ValueError(
                "AgentConfig: task_heads needs the task id (set agent.task_id=true, or "
                "agent.task_heads=false)"
            )


class Agent(nn.Module, Actor):
    """Actor-critic + world model over a :class:`~hope_agent.models.base.Backbone`.

    Args:
        backbone: any backbone; its ``d_model`` sets the embedding width.
        config: sizes and options (:class:`AgentConfig`).
    """

    def __init__(self, backbone: Backbone, config: AgentConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        d = backbone.d_model
        self.obs_dim, self.act_dim = config.obs_dim, config.act_dim
        self.token_dim = (
            self.obs_dim + self.act_dim + 2 + (config.num_tasks if config.task_id else 0)
        )
        self.embed = nn.Linear(self.token_dim, d)
        self.n_heads = config.num_tasks if config.task_heads else 1
        head_in = d + (config.belief_classes if config.belief_input else 0)
        self.policy_mean = nn.Linear(head_in, self.act_dim * self.n_heads)
        self.log_std = nn.Parameter(torch.full((self.act_dim,), float(config.log_std_init)))
        self.value_head = nn.Linear(head_in, self.n_heads)
        self.world_model = nn.Sequential(
            nn.Linear(d + self.act_dim, config.wm_hidden),
            nn.SiLU(),
            nn.Linear(config.wm_hidden, self.obs_dim + 1),
        )
        self.belief_head = (
            nn.Linear(d, config.belief_classes) if config.belief_classes > 0 else None
        )
        self.obs_norm = ObsNormalizer(self.obs_dim, clip=config.obs_clip)
        # Inference steps on CUDA replay the backbone's step from one graph per batch size
        # (set by the trainer from ``cuda_graphs``); the graphs are built on first use.
        self.cuda_graphs = False
        self._graphs: dict[tuple[int, torch.device], GraphedStep] = {}
        self.reward_scale = RewardScaler(clip=config.reward_clip)
        # Small policy-mean init: start near a zero-mean policy (cleanrl / SB3 practice).
        nn.init.orthogonal_(self.policy_mean.weight, gain=0.01)
        nn.init.zeros_(self.policy_mean.bias)
        nn.init.orthogonal_(self.value_head.weight, gain=1.0)
        nn.init.zeros_(self.value_head.bias)

    # ----------------------------------------------------------------- parameters
    def param_groups(self) -> list[dict]:
        """Optimizer groups: the backbone's own groups (with their periods) plus the heads.

        The embedding and every head are ordinary slow weights (period 1), added to the
        backbone's ``slow`` group when it has one.
        """
        groups = [dict(g) for g in self.backbone.param_groups()]
        backbone_ids = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        for g in groups:
            if g.get("name") == "slow" and int(g.get("period", 1)) == 1:
                g["params"] = list(g["params"]) + rest
                return groups
        return [*groups, {"params": rest, "period": 1, "name": "heads"}]

    # ----------------------------------------------------------------- acting contract
    @property
    def device(self) -> torch.device:
        """Where the agent's weights live."""
        return self.log_std.device

    def init_carry(self, batch_size: int) -> AgentState:
        """A fresh carry for ``batch_size`` rows."""
        return AgentState(
            memory=self.backbone.init_state(batch_size, self.device),
            prev_action=torch.zeros(batch_size, self.act_dim, device=self.device),
        )

    def normalize_obs(self, obs: Tensor) -> Tensor:
        """Raw observations through the (frozen) running normaliser."""
        return self.obs_norm(obs)

    def scale_reward(self, reward: Tensor) -> Tensor:
        """Raw rewards through the (frozen) return-based scaler."""
        return self.reward_scale(reward)

    # ----------------------------------------------------------------- model
    def tokens(
        self,
        obs: Tensor,
        prev_action: Tensor,
        prev_reward: Tensor,
        is_first: Tensor,
        task: Tensor | None = None,
    ) -> Tensor:
        """Embed ``[obs, a_prev, r_prev, is_first (, one-hot task)]`` to ``(..., d_model)``.

        ``obs`` is normalised ``(..., obs_dim)``, ``prev_action`` ``(..., act_dim)``,
        ``prev_reward`` and ``is_first`` ``(...)``; ``task`` ``(...)`` long, read (and required)
        only when the config's ``task_id`` is set: callers pass it always.
        """
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"Agent expects observations of width {self.obs_dim}, got {obs.shape}")
        if prev_action.shape[-1] != self.act_dim:
            raise ValueError(
                f"Agent expects actions of width {self.act_dim}, got {prev_action.shape}"
            )
        first = is_first.to(obs.dtype).unsqueeze(-1)
        keep = 1.0 - first
        parts = [obs, prev_action * keep, prev_reward.unsqueeze(-1) * keep, first]
        if self.config.task_id:
            if task is None:
                raise ValueError("Agent built with task_id=true needs the task index of every step")
            parts.append(nn.functional.one_hot(task, self.config.num_tasks).to(obs.dtype))
        return self.embed(torch.cat(parts, dim=-1))

    def heads(self, y: Tensor, task: Tensor | None = None) -> AgentOutput:
        """Policy and value heads on backbone outputs ``y: (..., d_model)``; with
        ``task_heads``, the heads of ``task (...)``; with ``belief_input``, the heads read ``y``
        and the belief's class probabilities."""
        x = y
        if self.config.belief_input:
            x = torch.cat([y, self.belief_logits(y).detach().softmax(-1)], dim=-1)
        mean, value = self.policy_mean(x), self.value_head(x)
        if self.n_heads > 1:
            if task is None:
                raise ValueError("Agent built with task_heads=true needs the task index")
            index = task.unsqueeze(-1)
            mean = mean.unflatten(-1, (self.n_heads, self.act_dim))
            mean = mean.gather(-2, index.unsqueeze(-1).expand(*index.shape, self.act_dim))
            mean, value = mean.squeeze(-2), value.gather(-1, index)
        return AgentOutput(
            mean=mean,
            log_std=self.log_std.expand(*y.shape[:-1], self.act_dim),
            value=value.squeeze(-1),
            features=y,
        )

    def predict_world(self, features: Tensor, env_action: Tensor) -> tuple[Tensor, Tensor]:
        """World model: ``(Δobs (..., obs_dim), reward (...))`` predicted from ``[y_t, a_t]``."""
        out = self.world_model(torch.cat([features, env_action], dim=-1))
        return out[..., : self.obs_dim], out[..., self.obs_dim]

    def belief_logits(self, features: Tensor) -> Tensor:
        """Belief head: logits ``(..., belief_classes)`` of the hidden task parameter."""
        if self.belief_head is None:
            raise ValueError(
                "Agent has no belief head: set agent.belief_classes to the number of values the "
                "hidden parameter takes (e.g. 2 for PointAdapt with two goals)"
            )
        return self.belief_head(features)

    def forward(
        self,
        obs: Tensor,
        prev_action: Tensor,
        prev_reward: Tensor,
        is_first: Tensor,
        memory: State,
        reset: Tensor | None = None,
        task: Tensor | None = None,
    ) -> tuple[AgentOutput, State]:
        """Sequence pass: inputs ``(B, T, ...)`` from ``memory``; returns outputs ``(B, T, ...)``.

        ``reset`` (default ``is_first``) says where the backbone memory restarts; the token's
        is_first feature always follows ``is_first``.
        """
        x = self.tokens(obs, prev_action, prev_reward, is_first, task)
        y, memory = self.backbone(x, memory, is_first if reset is None else reset)
        return self.heads(y, task), memory

    def step_heads(self, carry: AgentState, step: StepInputs) -> tuple[AgentOutput, State]:
        """One step with ``backbone.step``: the same outputs as :meth:`forward` gives for it."""
        x = self.tokens(step.obs, carry.prev_action, step.prev_reward, step.is_first, step.task)
        reset = step.is_first if step.reset is None else step.reset
        y, memory = self._backbone_step(x, carry.memory, reset)
        return self.heads(y, step.task), memory

    def _backbone_step(self, x: Tensor, memory: State, reset: Tensor) -> tuple[Tensor, State]:
        """``backbone.step``, replayed from a CUDA graph per batch size when :attr:`cuda_graphs`
        is set, the input is on a CUDA device and no gradient is recorded."""
        if not (self.cuda_graphs and x.is_cuda and not torch.is_grad_enabled()):
            return self.backbone.step(x, memory, reset)
        key = (int(x.shape[0]), x.device)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = GraphedStep(self.backbone, key[0], x.device)
        return graph.detached(x, memory, reset)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the captured graphs behind (they belong to this object)."""
        state = dict(super().__getstate__())
        state["_graphs"] = {}
        return state

    # ----------------------------------------------------------------- user-facing
    @torch.no_grad()
    def predict(
        self,
        observation: np.ndarray,
        state: AgentState | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        *,
        reward: np.ndarray | float | None = None,
        task: np.ndarray | int | None = None,
        generator: NoiseSource = None,
    ) -> tuple[np.ndarray, AgentState]:
        """Stable-Baselines3-style inference: raw numpy in, numpy actions in [-1, 1] out.

        Args:
            observation: ``(obs_dim,)`` or ``(n_envs, obs_dim)`` raw observations.
            state: the returned state of the previous call; ``None`` starts fresh episodes.
            episode_start: ``(n_envs,)`` bool, true where an episode starts (resets the memory).
                ``None`` means true on the first call (``state is None``) and false afterwards.
            deterministic: use the policy mean.
            reward: the raw reward the previous action earned (scalar or ``(n_envs,)``; ``None``
                counts as 0); the agent infers the task in context from rewards, so pass it
                when you have it.
            task: task index, only for agents trained with the oracle ``task_id``.
            generator: the action noise's CPU generator(s) (:data:`NoiseSource`).

        Returns:
            ``(action, state)``: action ``(act_dim,)`` or ``(n_envs, act_dim)``.
        """
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        obs = obs.reshape(1, -1) if single else obs
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(
                f"Agent.predict expects observations of shape ({self.obs_dim},) or "
                f"(n_envs, {self.obs_dim}), got {np.shape(observation)}"
            )
        n, device = obs.shape[0], self.device
        fresh = state is None
        carry = self.init_carry(n) if state is None else state
        if episode_start is None:
            episode_start = np.full(n, fresh, dtype=bool)
        first = torch.as_tensor(np.asarray(episode_start, dtype=bool).reshape(n), device=device)
        raw_reward = np.broadcast_to(
            np.asarray(0.0 if reward is None else reward, np.float32), (n,)
        )
        task_t = None
        if task is not None:
            task_t = torch.as_tensor(np.broadcast_to(np.asarray(task), (n,)).copy(), device=device)
        carry, res = self.policy(
            carry,
            torch.as_tensor(obs, device=device),
            torch.as_tensor(raw_reward.copy(), device=device),
            first,
            task=task_t,
            deterministic=deterministic,
            generator=generator,
        )
        action = res.env_action.cpu().numpy()
        return (action[0] if single else action), carry

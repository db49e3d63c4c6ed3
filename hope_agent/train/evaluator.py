"""Evaluation of an agent on every curriculum task, without any training step.

The protocol (CONTINUAL_RL.md): per task, ``episodes`` stochastic episodes plus one deterministic
episode, all run side by side as one batch; fresh memory at each episode start; the env of
episode e of task j always starts from seed ``seed + 1000 * j + e`` and the action noise of task
j comes from a generator seeded with ``seed + 1000 * j``, so every checkpoint meets the same
starts and an evaluation is a deterministic function of the checkpoint. Normalisers stay
frozen. Only the ``online_cms`` mode changes weights, on a copy of the agent.

Performance of a task: the success rate of the stochastic episodes where the task defines
success (``info["success"]`` at any step); else the mean stochastic return normalised with the
task's stored ``(R_random, R_reference)`` and clipped to [0, 1]; else NaN (raw returns are still
reported). With ``episodes == 0`` the deterministic episode alone gives the performance.

World-model error: the squared error of the predicted (normalised) next-observation delta and
(scaled) reward, summed over the episodes' steps, divided by the same sum for the "nothing
changes" prediction (zero delta, zero reward). 0 is a perfect model, 1 is no better than that
baseline.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from hope_agent.agents.agent import Agent
from hope_agent.metrics import normalized_score
from hope_agent.optim import MultiTimescaleOptimizer
from hope_agent.train.faults import EnvFaultGuard
from hope_envs.curriculum import TaskSpec, defines_success, make_env, reference_returns


@dataclass
class TaskEvaluation:
    """The outcome of evaluating one task.

    ``perf`` is the protocol's performance in [0, 1] (NaN when the task has neither success nor
    reference returns); ``*_deterministic`` refer to the deterministic episode.
    """

    task: str
    perf: float
    perf_deterministic: float
    success_rate: float | None
    mean_return: float
    return_deterministic: float
    wm_error: float
    episode_length: float


def cms_group_names(agent: Agent) -> list[str]:
    """Names of the backbone's CMS level groups (``cms.*``), in order."""
    return [
        str(g["name"])
        for g in agent.backbone.param_groups()
        if str(g.get("name", "")).startswith("cms.")
    ]


class OnlineCMS:
    """Deployment clock (HOPE.md section 3): chosen CMS levels learn while the agent acts.

    Each level takes a plain gradient step, ``θ_l ← θ_l − lr · Σ ∇θ_l L_obs``, every ``P_l`` env
    steps (its own period), where ``L_obs`` is the world model's squared error on the
    next-observation delta, averaged over observation dims and live episodes. Neither the reward
    prediction nor a trainer takes part (the reward only enters as the token's input, as in
    training). It always works on a copy, so the trained agent is never modified.

    Args:
        levels: CMS group names (``cms.0``, ...); empty = every CMS level of the backbone.
        lr: inner learning rate.
    """

    def __init__(self, levels: Sequence[str], lr: float) -> None:
        if lr <= 0:
            raise ValueError(f"eval.online_cms.lr must be > 0, got {lr}")
        self.levels, self.lr = list(levels), lr

    def chosen(self, agent: Agent) -> list[str]:
        """The level names this adapter trains on ``agent`` (clear error if there are none)."""
        available = cms_group_names(agent)
        levels = self.levels or available
        unknown = [name for name in levels if name not in available]
        if not levels or unknown:
            raise ValueError(
                f"eval.online_cms needs CMS levels of the backbone; asked for "
                f"{self.levels or 'every level'}, the backbone has {available or 'none'} "
                "(use a hope or hope_attention model, or name existing levels)"
            )
        return levels

    def adapt(self, agent: Agent) -> tuple[Agent, MultiTimescaleOptimizer]:
        """A copy of ``agent`` whose only trainable parameters are the chosen levels, and their
        optimizer (SGD on each level's period)."""
        levels = set(self.chosen(agent))
        clone = copy.deepcopy(agent)
        # Groups first: backbones list only trainable parameters in their groups.
        groups = [
            {"params": list(g["params"]), "period": int(g["period"]), "name": g["name"]}
            for g in clone.backbone.param_groups()
            if g.get("name") in levels
        ]
        for p in clone.parameters():
            p.requires_grad_(False)
        for g in groups:
            for p in g["params"]:
                p.requires_grad_(True)
        return clone, MultiTimescaleOptimizer(groups, base=torch.optim.SGD, lr=self.lr)


def task_performance(spec: TaskSpec, successes: np.ndarray, returns: np.ndarray) -> float:
    """Performance in [0, 1] of episodes with any-step ``successes`` and ``returns`` (NaN when the
    task has neither a success criterion nor stored reference returns)."""
    if successes.size == 0:
        return float("nan")
    if defines_success(spec):
        return float(np.mean(successes))
    ref = reference_returns(spec)
    if ref is None:
        return float("nan")
    return float(normalized_score(float(np.mean(returns)), ref[0], ref[1]))


class Evaluator:
    """Evaluates an agent on every task of a curriculum (see the module docstring).

    Args:
        specs: the curriculum's tasks.
        obs_dim: common observation width.
        act_dim: common action width.
        episodes: stochastic episodes per task (one deterministic episode is added).
        seed: base seed of the per-(task, episode) seeds.
        device: where the agent runs.
        online_cms: optional deployment-clock adaptation.
        obs_limit: largest plausible absolute observation value; each env is wrapped in an
            :class:`~hope_agent.train.faults.EnvFaultGuard`, so a simulator blow-up ends that
            episode (with a logged warning) instead of stopping the run.
    """

    def __init__(
        self,
        specs: Sequence[TaskSpec],
        obs_dim: int,
        act_dim: int,
        episodes: int,
        seed: int,
        device: torch.device,
        online_cms: OnlineCMS | None = None,
        obs_limit: float = 1e6,
    ) -> None:
        if episodes < 0:
            raise ValueError(f"eval.episodes must be >= 0, got {episodes}")
        self.specs, self.obs_dim, self.act_dim = list(specs), obs_dim, act_dim
        self.episodes, self.seed, self.device = episodes, seed, device
        self.online_cms = online_cms
        self.obs_limit = obs_limit
        self._envs: dict[int, list[gym.Env]] = {}

    def _task_envs(self, j: int) -> list[gym.Env]:
        if j not in self._envs:
            self._envs[j] = [
                EnvFaultGuard(make_env(self.specs[j], self.obs_dim, self.act_dim), self.obs_limit)
                for _ in range(self.episodes + 1)
            ]
        return self._envs[j]

    def evaluate(self, agent: Agent, reset_every_step: bool = False) -> list[TaskEvaluation]:
        """Evaluate every task (see :meth:`evaluate_task`)."""
        return [self.evaluate_task(agent, j, reset_every_step) for j in range(len(self.specs))]

    def evaluate_task(self, agent: Agent, j: int, reset_every_step: bool = False) -> TaskEvaluation:
        """Run task ``j``'s evaluation episodes.

        ``reset_every_step`` restarts the backbone memory at every step (the in-context-gain
        control; the token's is_first feature still marks only the true episode start).
        """
        spec = self.specs[j]
        envs = self._task_envs(j)
        b = len(envs)
        optimizer: MultiTimescaleOptimizer | None = None
        if self.online_cms is not None:
            agent, optimizer = self.online_cms.adapt(agent)
        dev = self.device
        generator = torch.Generator().manual_seed(self.seed + 1000 * j)
        raw = np.stack(
            [env.reset(seed=self.seed + 1000 * j + e)[0] for e, env in enumerate(envs)]
        ).astype(np.float32)
        deterministic = torch.zeros(b, dtype=torch.bool)
        deterministic[-1] = True
        task = torch.full((b,), j, dtype=torch.long, device=dev) if agent.config.task_id else None
        reset = torch.ones(b, dtype=torch.bool, device=dev) if reset_every_step else None
        state = agent.init_state(b, dev)
        is_first = torch.ones(b, dtype=torch.bool, device=dev)
        alive = np.ones(b, dtype=bool)
        returns = np.zeros(b)
        lengths = np.zeros(b)
        success = np.zeros(b, dtype=bool)
        err_sum = base_sum = 0.0
        while alive.any():
            with torch.set_grad_enabled(optimizer is not None):
                obs = agent.obs_norm(torch.as_tensor(raw, device=dev))
                res = agent.act(
                    obs,
                    state,
                    is_first,
                    deterministic=deterministic,
                    generator=generator,
                    reset=reset,
                    task=task,
                )
            actions = res.env_action.detach().cpu().numpy()
            next_raw, rewards = raw.copy(), np.zeros(b, dtype=np.float32)
            live_now = alive.copy()
            for e in np.flatnonzero(alive):
                o, r, terminated, truncated, info = envs[e].step(actions[e])
                next_raw[e], rewards[e] = o, r
                returns[e] += r
                lengths[e] += 1
                success[e] |= bool(info.get("success", False))
                if terminated or truncated:
                    alive[e] = False
            with torch.set_grad_enabled(optimizer is not None):
                reward = agent.reward_scale(torch.as_tensor(rewards, device=dev))
                target_delta = agent.obs_norm(torch.as_tensor(next_raw, device=dev)) - obs.detach()
                pred_delta, pred_reward = agent.predict_world(res.output.features, res.env_action)
                obs_err = (pred_delta - target_delta).square()
                err = obs_err.sum(-1) + (pred_reward - reward).square()
                live = torch.as_tensor(live_now, device=dev)
                if optimizer is not None:
                    # Self-supervised (HOPE.md section 3): only the next-observation prediction
                    # error, averaged over dims as the training loss averages it; the reward
                    # prediction stays out of the adaptation.
                    optimizer.zero_grad(set_to_none=True)
                    (obs_err.mean(-1) * live).sum().div(live.sum().clamp_min(1)).backward()
                    optimizer.step()
            base = target_delta.square().sum(-1) + reward.square()
            err_sum += float((err.detach() * live).sum())
            base_sum += float((base * live).sum())
            state = agent.observe_reward(res.state, reward).detach()
            raw = next_raw
            is_first = torch.zeros(b, dtype=torch.bool, device=dev)
        stochastic = slice(0, self.episodes) if self.episodes > 0 else slice(b - 1, b)
        has_success = defines_success(spec)
        return TaskEvaluation(
            task=spec.name,
            perf=task_performance(spec, success[stochastic], returns[stochastic]),
            perf_deterministic=task_performance(spec, success[-1:], returns[-1:]),
            success_rate=float(success[stochastic].mean()) if has_success else None,
            mean_return=float(returns[stochastic].mean()),
            return_deterministic=float(returns[-1]),
            wm_error=err_sum / base_sum if base_sum > 0 else float("nan"),
            episode_length=float(lengths.mean()),
        )

    def close(self) -> None:
        """Close every cached env."""
        for envs in self._envs.values():
            for env in envs:
                env.close()
        self._envs.clear()


@torch.no_grad()
def record_episodes(
    agent: Agent,
    spec: TaskSpec,
    obs_dim: int,
    act_dim: int,
    *,
    task_index: int,
    seed: int,
    episodes: int = 1,
    deterministic: bool = True,
    size: tuple[int, int] = (96, 128),
    frame_skip: int = 1,
) -> list[np.ndarray]:
    """Frames ``(H, W, 3) uint8`` of ``episodes`` consecutive episodes of one task.

    Episode e starts from seed ``seed + e``; ``frame_skip`` keeps every k-th frame (the last
    frame of each episode is always kept).
    """
    if frame_skip < 1 or episodes < 1:
        raise ValueError(
            f"video: episodes and frame_skip must be >= 1, got {episodes}, {frame_skip}"
        )
    env = EnvFaultGuard(make_env(spec, obs_dim, act_dim, render_mode="rgb_array", render_size=size))
    dev = agent.log_std.device
    frames: list[np.ndarray] = []
    task: Tensor | None = None
    if agent.config.task_id:
        task = torch.full((1,), task_index, dtype=torch.long, device=dev)
    generator = torch.Generator().manual_seed(seed)
    try:
        for e in range(episodes):
            raw, _ = env.reset(seed=seed + e)
            state = agent.init_state(1, dev)
            is_first = torch.ones(1, dtype=torch.bool, device=dev)
            done, t = False, 0
            while not done:
                if t % frame_skip == 0:
                    frames.append(np.asarray(env.render()))
                obs = agent.obs_norm(torch.as_tensor(raw, dtype=torch.float32, device=dev)[None])
                res = agent.act(
                    obs,
                    state,
                    is_first,
                    deterministic=deterministic,
                    generator=generator,
                    task=task,
                )
                raw, r, terminated, truncated, _ = env.step(res.env_action[0].cpu().numpy())
                reward = agent.reward_scale(torch.tensor([r], dtype=torch.float32, device=dev))
                state = agent.observe_reward(res.state, reward)
                is_first = torch.zeros(1, dtype=torch.bool, device=dev)
                done = bool(terminated or truncated)
                t += 1
            frames.append(np.asarray(env.render()))
    finally:
        env.close()
    return frames

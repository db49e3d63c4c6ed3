"""A synthetic rollout through the Actor contract, filled into a RolloutBuffer as the runner
fills it (truncations followed by a masked autoreset step and a first step)."""

from collections.abc import Callable

import torch
from torch import Tensor

from hope_agent.agents import ActResult, Agent
from hope_agent.algos import RolloutBuffer

Reward = Callable[[ActResult, Tensor, torch.Generator], Tensor]


@torch.no_grad()
def fill_rollout(
    agent: Agent, buffer: RolloutBuffer, seed: int, reward: Reward, done_prob: float = 0.1
) -> None:
    """Random observations, the policy's own sampled actions, rewards from ``reward(result,
    valid, generator)`` and episodes truncated with probability ``done_prob`` per step."""
    gen = torch.Generator().manual_seed(seed)
    n = buffer.num_envs
    carry = agent.init_carry(n)
    is_first = torch.ones(n, dtype=torch.bool)
    valid = torch.ones(n, dtype=torch.bool)
    obs = torch.randn(n, agent.obs_dim, generator=gen)
    task = torch.zeros(n, dtype=torch.long)
    prev_reward = torch.zeros(n)
    for t in range(buffer.num_steps):
        before = carry
        carry, res = agent.policy(carry, obs, prev_reward, is_first, generator=gen, task=task)
        next_obs = torch.randn(n, agent.obs_dim, generator=gen)
        r = reward(res, valid, gen)
        done = valid & (torch.rand(n, generator=gen) < done_prob)
        buffer.add(
            t,
            memory=before.memory,
            obs=res.obs,
            next_obs=agent.obs_norm(next_obs),
            prev_action=before.prev_action,
            prev_reward=res.prev_reward,
            is_first=is_first,
            task=task,
            action=res.action,
            env_action=res.env_action,
            log_prob=res.log_prob,
            value=res.value,
            reward=r,
            terminated=torch.zeros(n, dtype=torch.bool),
            truncated=done,
            valid=valid,
        )
        prev_reward = r
        is_first, valid, obs = ~valid, ~done, next_obs
    bootstrap = agent.policy(carry, obs, prev_reward, is_first, deterministic=True, task=task)[1]
    buffer.compute_advantages(bootstrap.value, 0.99, 0.95)

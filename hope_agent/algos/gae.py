"""Generalised advantage estimation (Schulman et al. 2016) for vector envs that autoreset.

Gymnasium 1.x vector envs autoreset on the *next* step: the step where an episode ends returns
the final observation, and the following step ignores the action and returns the reset
observation. That following step (an "autoreset step") belongs to no episode: it is masked out of
GAE and of every loss (``valid == False``). Its value estimate, computed by the agent from the
carried memory on the final observation, is exactly V(final obs), so a truncated step bootstraps
from it; a terminated step bootstraps from 0.

Per valid step t, with ``done_t = terminated_t or truncated_t``:

    delta_t = r_t + gamma * (1 - terminated_t) * V_{t+1} - V_t
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}

where V_{t+1} is ``values[t + 1]`` (or ``next_value`` after the last step).
"""

from __future__ import annotations

import torch
from torch import Tensor


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    next_value: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    valid: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Advantages and value targets (returns) of one rollout.

    Args:
        rewards: ``(T, N)`` rewards of each step.
        values: ``(T, N)`` value estimates V(s_t).
        next_value: ``(N,)`` value of the observation after the last step, from the carried state.
        terminated: ``(T, N)`` bool, the episode ended in a terminal state at step t.
        truncated: ``(T, N)`` bool, the episode was cut by a time limit at step t.
        valid: ``(T, N)`` bool, false on autoreset steps (masked out).
        gamma: discount factor in [0, 1].
        lam: GAE lambda in [0, 1].

    Returns:
        ``(advantages, returns)``, both ``(T, N)``; zero on invalid steps.
    """
    if rewards.dim() != 2:
        raise ValueError(f"compute_gae expects (T, N) rewards, got shape {tuple(rewards.shape)}")
    for name, x in (("values", values), ("terminated", terminated), ("truncated", truncated)):
        if x.shape != rewards.shape:
            raise ValueError(
                f"compute_gae: {name} has shape {tuple(x.shape)}, expected {tuple(rewards.shape)}"
            )
    if valid.shape != rewards.shape:
        raise ValueError(
            f"compute_gae: valid has shape {tuple(valid.shape)}, expected {tuple(rewards.shape)}"
        )
    if next_value.shape != rewards.shape[1:]:
        raise ValueError(
            f"compute_gae: next_value has shape {tuple(next_value.shape)}, "
            f"expected ({rewards.shape[1]},)"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"compute_gae: gamma and lam must lie in [0, 1], got {gamma}, {lam}")

    steps = rewards.shape[0]
    term = terminated.to(values.dtype)
    not_done = 1.0 - (terminated | truncated).to(values.dtype)
    live = valid.to(values.dtype)
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        v_next = next_value if t == steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * (1.0 - term[t]) * v_next - values[t]
        last = live[t] * (delta + gamma * lam * not_done[t] * last)
        advantages[t] = last
    returns = (advantages + values) * live
    return advantages, returns

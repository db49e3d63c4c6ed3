"""RL algorithms: GAE, sequence rollout storage, recurrent PPO."""

from hope_agent.algos.buffer import RolloutBuffer, SequenceBatch
from hope_agent.algos.gae import compute_gae
from hope_agent.algos.ppo import (
    PPO,
    PPOConfig,
    clipped_policy_loss,
    masked_mean,
    value_loss,
    world_model_loss,
)

__all__ = [
    "PPO",
    "PPOConfig",
    "RolloutBuffer",
    "SequenceBatch",
    "clipped_policy_loss",
    "compute_gae",
    "masked_mean",
    "value_loss",
    "world_model_loss",
]

"""Agents: actor-critic and world-model heads over any sequence backbone."""

from hope_agent.agents.agent import (
    ActResult,
    Agent,
    AgentConfig,
    AgentOutput,
    AgentState,
    gaussian_entropy,
    gaussian_log_prob,
)

__all__ = [
    "ActResult",
    "Agent",
    "AgentConfig",
    "AgentOutput",
    "AgentState",
    "gaussian_entropy",
    "gaussian_log_prob",
]

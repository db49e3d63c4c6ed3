"""Agents: the acting contract, and actor-critic and world-model heads over any backbone."""

from hope_agent.agents.actor import (
    Actor,
    ActResult,
    AgentOutput,
    AgentState,
    StepInputs,
    gaussian_entropy,
    gaussian_log_prob,
)
from hope_agent.agents.agent import Agent, AgentConfig, AgentOptions

__all__ = [
    "ActResult",
    "StepInputs",
    "Actor",
    "Agent",
    "AgentConfig",
    "AgentOptions",
    "AgentOutput",
    "AgentState",
    "gaussian_entropy",
    "gaussian_log_prob",
]

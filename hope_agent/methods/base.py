"""The contract of continual-learning methods: trainer plug-ins.

A method sees the curriculum only through the hooks of :class:`Method` (around each stage, a
loss on every PPO minibatch, after every update, the agent to evaluate, its own training envs,
its checkpoint state), so regularisers, replay, consolidation or multi-task training plug in
without touching the runner, which calls them through its
:class:`hope_agent.train.runner.TrainingMethod` protocol. ``finetune`` (plain sequential
training) is the baseline every other method is measured against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from hope_agent.agents.actor import AgentOutput
from hope_agent.agents.agent import Agent
from hope_agent.algos.buffer import RolloutBuffer, SequenceBatch
from hope_agent.algos.ppo import ExtraLoss
from hope_agent.rollout.vec import VecEnvFactory
from hope_envs.curriculum import TaskSpec


def require_keys(method: str, state: dict[str, Any], keys: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the keys of ``keys`` that a loaded ``state`` lacks."""
    missing = sorted(set(keys) - set(state))
    if missing:
        raise ValueError(f"{method} state misses {missing}: not a {method} state")


def check_rules(what: str, rules: Mapping[str, bool], config: object) -> None:
    """Raise ``ValueError`` ``"<what>: need <rules broken> (got <config>)"`` if any rule fails."""
    bad = [rule for rule, ok in rules.items() if not ok]
    if bad:
        raise ValueError(f"{what}: need {', '.join(bad)} (got {config})")


class Method:
    """Base class of continual-learning methods; every hook defaults to doing nothing."""

    name = "base"

    def on_task_start(self, stage: int, spec: TaskSpec, agent: Agent) -> None:
        """Called before the first rollout of ``stage``."""

    def extra_loss(self, agent: Agent, batch: SequenceBatch, outputs: AgentOutput) -> Tensor | None:
        """A loss added to the PPO loss of each minibatch (``None``: nothing to add)."""
        return None

    def loss_hook(self) -> ExtraLoss | None:
        """:meth:`extra_loss` for PPO, or ``None`` where the method keeps the base hook: a PPO
        with no extra loss may replay its minibatches from CUDA graphs (``graph_update``)."""
        return None if type(self).extra_loss is Method.extra_loss else self.extra_loss

    def after_update(self, agent: Agent, buffer: RolloutBuffer) -> None:
        """Called after every PPO update (all epochs over one rollout), including a stage's last
        update, before the task-end hook, with the rollout's buffer."""

    def on_task_end(
        self, stage: int, spec: TaskSpec, agent: Agent, buffer: RolloutBuffer | None
    ) -> None:
        """Called after the last update of ``stage``, with the last rollout's buffer."""

    def evaluation_agent(self, agent: Agent) -> Agent:
        """The agent that evaluations and videos measure: the trained one by default."""
        return agent

    def rewritten_parameters(self, agent: Agent) -> list[Tensor]:
        """Parameters :meth:`on_task_end` rewrote (none by default); the trainer forgets their
        optimizer state, whose stale moments would push them back."""
        return []

    def env_factory(self, specs: Sequence[TaskSpec], obs_limit: float) -> VecEnvFactory | None:
        """The method's own training envs (``None``: each stage's task, the default)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The method's state for checkpoints (tensors, arrays, scalars, strings)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class Finetune(Method):
    """Plain sequential fine-tuning: no regulariser, no replay."""

    name = "finetune"

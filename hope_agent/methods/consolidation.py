"""Consolidation: knowledge flows from the fast to the slow parameters (HOPE.md section 3c).

Two methods, neither reading the task id (beyond an oracle agent's input) nor any reward of a
finished task; equations, decisions and config keys in ``docs/consolidation.md``:

- ``stable_ema`` (after CLS-ER, Arani et al., ICLR 2022): a *stable* copy of the agent, the EMA of
  the working weights with a decay per parameter group, moved after every PPO update or at task
  ends; a consistency loss pulls the working policy toward it, on the PPO minibatch and
  optionally on stored sequences of finished tasks. ``snapshot_replay`` is ``stable_ema`` with
  the defaults of the measured recipe (:class:`SnapshotReplayConfig`).
- ``distill`` (after Anand & Precup, NeurIPS 2023): at a stage end the slow CMS levels learn to
  reproduce the whole model on stored sequences, then the fast levels are shrunk (reset).

Both keep an :class:`ObservationStore` of reward-free input sequences of finished stages.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hope_agent.agents.agent import Agent, AgentOutput
from hope_agent.algos.buffer import RolloutBuffer, SequenceBatch
from hope_agent.methods.base import Method, check_rules, require_keys
from hope_agent.methods.replay import (
    INPUTS,
    PolicyTargets,
    consistency_loss,
    loss_mask,
    sample_sequences,
    sequence_inputs,
    sequence_outputs,
    state_from_leaves,
)
from hope_agent.models.cms import CMSLevel
from hope_agent.models.state import State
from hope_envs.curriculum import TaskSpec


class ObservationStore:
    """Reward-free input sequences of finished stages, for replay through any agent.

    Two ways to cut the sequences (``sequences``): ``"episodes"`` (default), sequences that begin
    at an episode's first step, drawn from the last ``window`` steps of every env, so that a
    fresh backbone memory is the memory the agent had there; ``"chunks"``, rollout chunks
    replayed from a fresh memory unless ``store_rewards`` keeps the chunk-start memory (an
    ablation). The other options are :class:`StoreOptions`'.
    """

    def __init__(self, options: StoreOptions) -> None:
        self.options = options
        self.inputs: dict[str, Tensor] = {}
        self.memory_leaves: list[Tensor] = []
        # The last ``window`` steps of every env in the current stage, (N, W, ...) per field.
        self.recent: dict[str, Tensor] = {}

    @property
    def size(self) -> int:
        """Number of stored sequences."""
        return int(self.inputs["obs"].shape[0]) if self.inputs else 0

    def _inputs_of(self, fields: Mapping[str, Tensor], agent: Agent) -> dict[str, Tensor]:
        """The stored form of rollout inputs: raw observations, rewards zeroed (as configured)."""
        new = {k: fields[k].detach() for k in INPUTS}
        if self.options.renormalize:
            new["obs"] = agent.obs_norm.invert(new["obs"])
        if not self.options.store_rewards:
            new["prev_reward"] = torch.zeros_like(new["prev_reward"])
        return {k: v.cpu().clone() for k, v in new.items()}

    @torch.no_grad()
    def observe(self, buffer: RolloutBuffer, agent: Agent) -> None:
        """Keep the rollout's inputs in the per-env window (``episodes`` only)."""
        if self.options.sequences != "episodes":
            return
        steps = self._inputs_of({k: getattr(buffer, k).transpose(0, 1) for k in INPUTS}, agent)
        if self.recent:
            steps = {k: torch.cat([self.recent[k], v], dim=1) for k, v in steps.items()}
        self.recent = {k: v[:, -self.options.window :] for k, v in steps.items()}

    def _episode_sequences(self) -> dict[str, Tensor]:
        """A ``sequence_len`` window of ``recent`` from every episode's first step in it (the
        steps after the episode's end, or after the window's, masked out)."""
        length = self.options.sequence_len
        padded = {
            k: torch.cat([v, v.new_zeros((v.shape[0], length, *v.shape[2:]))], dim=1)
            for k, v in self.recent.items()
        }
        starts = (self.recent["is_first"] & self.recent["valid"]).nonzero().tolist()
        if not starts:
            return {}
        out = {k: torch.stack([v[n, t : t + length] for n, t in starts]) for k, v in padded.items()}
        # Steps of the next episode are no part of this one.
        later = out["is_first"].clone()
        later[:, 0] = False
        out["valid"] &= ~(later.cumsum(1) > 0)
        return out

    @torch.no_grad()
    def add(self, stage: int, buffer: RolloutBuffer | None, agent: Agent) -> None:
        """Keep ``sequences_per_task`` sequences of the finished stage (inputs only).

        ``agent`` holds the observation statistics the last rollout was normalised with.
        """
        if self.options.sequences == "episodes":
            if not self.recent and buffer is not None:
                self.observe(buffer, agent)  # nothing observed yet: the last rollout alone
            pool = self._episode_sequences() if self.recent else {}
            count = int(pool["obs"].shape[0]) if pool else 0
            if count == 0:
                raise ValueError(
                    f"consolidation: no episode of stage {stage} starts in its last "
                    f"{self.options.window} steps per env; give a longer window, or "
                    "sequences=chunks"
                )
            self.recent = {}
            gen = torch.Generator().manual_seed(self.options.seed + stage)
            rows = torch.randperm(count, generator=gen)[: self.options.sequences_per_task]
            new = {k: v[rows] for k, v in pool.items()}
            leaves: list[Tensor] = []
        else:
            if buffer is None:
                raise ValueError(
                    "consolidation needs the task's last rollout buffer at the task end"
                )
            opts = self.options
            batch = sample_sequences(buffer, opts.sequences_per_task, opts.seed + stage)
            new = self._inputs_of(sequence_inputs(batch), agent)
            leaves = [t.detach().cpu().clone() for t in batch.memory.leaves()]
        keep_memory = self.options.store_rewards and self.options.sequences == "chunks"
        if not self.inputs:
            self.inputs = new
            self.memory_leaves = leaves if keep_memory else []
            return
        self.inputs = {k: torch.cat([self.inputs[k], new[k]]) for k in INPUTS}
        if keep_memory:
            self.memory_leaves = [
                torch.cat([old, t]) for old, t in zip(self.memory_leaves, leaves, strict=True)
            ]

    def rows(self, agent: Agent, rows: Tensor) -> tuple[dict[str, Tensor], State]:
        """Stored sequences ``rows`` on the agent's device: ``(inputs, starting memory)``."""
        dev = agent.log_std.device
        inputs = {k: self.inputs[k][rows].to(dev) for k in INPUTS}
        if self.options.renormalize:
            inputs["obs"] = agent.normalize_obs(inputs["obs"])
        if self.memory_leaves:
            template = agent.backbone.init_state(1, dev)
            memory = state_from_leaves(template, [t[rows].to(dev) for t in self.memory_leaves])
        else:
            memory = agent.backbone.init_state(int(rows.shape[0]), dev)
        return inputs, memory

    @torch.no_grad()
    def answers(self, model: Agent, agent: Agent, batch: int = 64) -> PolicyTargets:
        """``model``'s answers on every stored sequence (on the CPU), the inputs normalised as
        ``agent`` normalises them."""
        parts = []
        for start in range(0, self.size, batch):
            inputs, memory = self.rows(agent, torch.arange(start, min(start + batch, self.size)))
            parts.append(PolicyTargets.of(sequence_outputs(model, inputs, memory)))
        return PolicyTargets.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        """The stored inputs and memories, and the current stage's window."""
        return {
            "inputs": dict(self.inputs),
            "memory_leaves": list(self.memory_leaves),
            "recent": dict(self.recent),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a state saved before windows existed has none)."""
        inputs = dict(state["inputs"])
        for name, fields in (("inputs", inputs), ("recent", dict(state.get("recent", {})))):
            if fields and set(fields) != set(INPUTS):
                raise ValueError(
                    f"observation store {name} hold fields {sorted(fields)}, expected "
                    f"{sorted(INPUTS)}"
                )
        self.inputs = {k: v.cpu() for k, v in inputs.items()}
        self.memory_leaves = [t.cpu() for t in state["memory_leaves"]]
        self.recent = {k: v.cpu() for k, v in dict(state.get("recent", {})).items()}


def named_groups(agent: Agent) -> dict[str, str]:
    """Parameter name -> name of its optimizer group in ``agent.param_groups()``."""
    group_of = {
        id(p): str(g.get("name", f"group {i}"))
        for i, g in enumerate(agent.param_groups())
        for p in g["params"]
    }
    return {n: group_of[id(p)] for n, p in agent.named_parameters() if id(p) in group_of}


# ----------------------------------------------------------------------------- stable_ema


@dataclass
class StoreOptions:
    """Options of the :class:`ObservationStore` a method keeps (fields of its config).

    Attributes:
        sequences_per_task: sequences stored per finished task.
        burn_in: first steps of each sequence left out of the losses.
        store_rewards: keep reward inputs (and in ``chunks`` the rollout memory) in the store
            (ablation of the no-old-reward rule).
        renormalize: replay stored observations through the current normaliser; off, as they
            were normalised in their own task (ablation).
        sequences: ``"episodes"`` (sequences from an episode's first step) or ``"chunks"``
            (rollout chunks from a fresh memory: ablation).
        sequence_len: steps of an episode sequence.
        window: steps per env of the stage's end from which episode sequences are drawn.
        seed: seed of the stored-sequence draws.
    """

    sequences_per_task: int = 64
    burn_in: int = 0
    store_rewards: bool = False
    renormalize: bool = True
    sequences: str = "episodes"
    sequence_len: int = 128
    window: int = 1024
    seed: int = 0

    def store_rules(self) -> dict[str, bool]:
        """The checks of these options, for the config's ``__post_init__``."""
        return {
            "sequences_per_task >= 1": self.sequences_per_task >= 1,
            "burn_in >= 0": self.burn_in >= 0,
            "sequences 'episodes' or 'chunks'": self.sequences in ("episodes", "chunks"),
            "1 <= sequence_len <= window": 1 <= self.sequence_len <= self.window,
        }

    def make_store(self) -> ObservationStore:
        """An empty store with these options."""
        return ObservationStore(self)


@dataclass
class StableEMAConfig(StoreOptions):
    """Options of :class:`StableEMA`.

    Attributes:
        coef: weight of the consistency loss on each PPO minibatch.
        replay_coef: weight of the consistency loss on stored sequences of finished tasks
            (0: no store is kept).
        replay_batch: stored sequences per PPO minibatch.
        value_coef: weight of the value term inside both consistency losses.
        decay: EMA decay per PPO update of a period-1 group.
        period_exponent: a group of period ``P`` decays with ``1 − (1 − decay) / P^e``: 0 gives
            every group ``decay``, 1 makes the rate inversely proportional to the period.
        group_decay: explicit decay per group name (``{"cms.2": 0.9999}``), over the rule.
        clock: when the stable copy moves: ``"updates"`` (after every PPO update) or ``"tasks"``
            (at every task end, after the task's last update: with ``decay 0`` the stable copy
            is the model as it finished its last task).
        evaluate: ``"stable"`` (the trainer evaluates the stable model) or ``"working"``.

    The store's options are :class:`StoreOptions`' (a store is kept with ``replay_coef > 0``).
    """

    coef: float = 1.0
    replay_coef: float = 0.0
    replay_batch: int = 8
    value_coef: float = 0.5
    decay: float = 0.99
    period_exponent: float = 0.5
    group_decay: dict[str, float] = field(default_factory=dict)
    clock: str = "updates"
    evaluate: str = "stable"

    def __post_init__(self) -> None:
        check_rules(
            "stable_ema options",
            {
                "coef >= 0": self.coef >= 0,
                "replay_coef >= 0": self.replay_coef >= 0,
                "replay_batch >= 1": self.replay_batch >= 1,
                "value_coef >= 0": self.value_coef >= 0,
                "decay in [0, 1]": 0 <= self.decay <= 1,
                "period_exponent >= 0": self.period_exponent >= 0,
                "group_decay values in [0, 1]": all(
                    isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1
                    for v in self.group_decay.values()
                ),
                **self.store_rules(),
                "clock 'updates' or 'tasks'": self.clock in ("updates", "tasks"),
                "evaluate 'stable' or 'working'": self.evaluate in ("stable", "working"),
            },
            self,
        )


class StableEMA(Method):
    """Stable weights by exponential averaging per group, consistency toward them, evaluation of
    the stable model (see the module docstring)."""

    name = "stable_ema"

    def __init__(self, config: StableEMAConfig | None = None) -> None:
        self.config = config or StableEMAConfig()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.store = self.config.make_store()
        self.stable: Agent | None = None
        # The stable model's answers on the stored sequences (``tasks`` clock only).
        self.replay_targets: PolicyTargets | None = None
        self.updates = 0
        # Stable weights loaded before an agent was seen (a resumed run): applied on first use.
        self._pending: dict[str, Tensor] | None = None

    def group_decays(self, agent: Agent) -> dict[str, float]:
        """The EMA decay of each of the agent's parameter groups, by group name."""
        cfg = self.config
        decays: dict[str, float] = {}
        for i, g in enumerate(agent.param_groups()):
            period = float(g.get("period", 1))
            decays[str(g.get("name", f"group {i}"))] = 1.0 - (1.0 - cfg.decay) / (
                period**cfg.period_exponent
            )
        unknown = sorted(set(cfg.group_decay) - set(decays))
        if unknown:
            raise ValueError(
                f"stable_ema: group_decay names {unknown}, but the agent's parameter groups are "
                f"{sorted(decays)}"
            )
        decays.update({k: float(v) for k, v in cfg.group_decay.items()})
        return decays

    def stable_agent(self, agent: Agent) -> Agent:
        """The stable model (a copy of ``agent`` made on first use).

        Its parameters keep ``requires_grad`` so that it stays an ordinary agent (the evaluator's
        online CMS adapts the trainable levels of the agent it is given); no loss reaches them,
        since every output of the stable model is detached before use.
        """
        if self.stable is None:
            stable = copy.deepcopy(agent)
            stable.zero_grad(set_to_none=True)
            self.stable = stable
            self.group_decays(agent)  # a misspelt group name fails at once, not at the update
        if self._pending is not None:
            self.stable.load_state_dict(self._pending)
            self._pending = None
        return self.stable

    def on_task_start(self, stage: int, spec: TaskSpec, agent: Agent) -> None:
        """Build the stable copy at the first stage (the initial weights start the average)."""
        self.stable_agent(agent)

    def after_update(self, agent: Agent, buffer: RolloutBuffer) -> None:
        """Move the stable copy toward the working weights (on the ``updates`` clock); keep the
        rollout's inputs for the stored sequences."""
        if self.config.clock == "updates":
            self.average(agent)
        if self.config.replay_coef > 0:
            self.store.observe(buffer, agent)

    @torch.no_grad()
    def average(self, agent: Agent) -> None:
        """``θ_s ← α_g θ_s + (1 − α_g) θ_w`` per group ``g``; normalisers copied as they are."""
        stable = self.stable_agent(agent)
        decays = self.group_decays(agent)
        groups = named_groups(agent)
        working = dict(agent.named_parameters())
        for name, p in stable.named_parameters():
            if name in groups:
                p.lerp_(working[name], 1.0 - decays[groups[name]])
        _copy_buffers(agent, stable)
        self.updates += 1

    def extra_loss(self, agent: Agent, batch: SequenceBatch, outputs: AgentOutput) -> Tensor | None:
        """``coef`` x consistency on the minibatch + ``replay_coef`` x on stored sequences."""
        cfg = self.config
        stable = self.stable_agent(agent)
        total: Tensor | None = None
        if cfg.coef > 0:
            with torch.no_grad():
                target = PolicyTargets.of(
                    sequence_outputs(stable, sequence_inputs(batch), batch.memory)
                )
            mask = loss_mask(batch.valid, cfg.burn_in)
            total = cfg.coef * consistency_loss(target, outputs, mask, cfg.value_coef)
        if cfg.replay_coef > 0 and self.store.size > 0:
            rows = torch.randint(0, self.store.size, (cfg.replay_batch,), generator=self.generator)
            inputs, memory = self.store.rows(agent, rows)
            if self.replay_targets is not None:
                target = self.replay_targets.rows(rows, agent.device)
            else:
                with torch.no_grad():
                    target = PolicyTargets.of(sequence_outputs(stable, inputs, memory))
            out = sequence_outputs(agent, inputs, memory)
            mask = loss_mask(inputs["valid"], cfg.burn_in)
            replay = cfg.replay_coef * consistency_loss(target, out, mask, cfg.value_coef)
            total = replay if total is None else total + replay
        return total

    def on_task_end(
        self, stage: int, spec: TaskSpec, agent: Agent, buffer: RolloutBuffer | None
    ) -> None:
        """Move the stable copy (on the ``tasks`` clock); store sequences of the finished task
        for the replayed consistency term."""
        if self.config.clock == "tasks":
            self.average(agent)
        if self.config.replay_coef > 0:
            self.store.add(stage, buffer, agent)
            if self.config.clock == "tasks":
                # The stable model is fixed until the next task end: its answers (with the
                # normaliser of now) are computed once, here.
                self.replay_targets = self.store.answers(self.stable_agent(agent), agent)

    def evaluation_agent(self, agent: Agent) -> Agent:
        """The stable model (``evaluate: stable``) with the working normalisers, else ``agent``."""
        if self.config.evaluate == "working":
            return agent
        stable = self.stable_agent(agent)
        _copy_buffers(agent, stable)
        return stable

    def state_dict(self) -> dict[str, Any]:
        """The stable weights, the store, the update count and the sampling generator."""
        stable = self._pending if self.stable is None else self.stable.state_dict()
        return {
            "stable": None if stable is None else dict(stable),
            "store": self.store.state_dict(),
            "updates": self.updates,
            "generator": self.generator.get_state(),
            "replay_targets": None
            if self.replay_targets is None
            else dataclasses.asdict(self.replay_targets),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the weights reach the stable copy at its next use)."""
        require_keys("stable_ema", state, ("stable", "store", "updates", "generator"))
        self._pending = None if state["stable"] is None else dict(state["stable"])
        if self._pending is not None and self.stable is not None:
            self.stable.load_state_dict(self._pending)
            self._pending = None
        self.store.load_state_dict(state["store"])
        self.updates = int(state["updates"])
        self.generator.set_state(state["generator"].cpu())
        targets = state.get("replay_targets")
        self.replay_targets = None if targets is None else PolicyTargets(**targets)


@torch.no_grad()
def _copy_buffers(source: nn.Module, target: nn.Module) -> None:
    """Copy every buffer (running normaliser statistics) of ``source`` into ``target``."""
    buffers = dict(source.named_buffers())
    for name, b in target.named_buffers():
        b.copy_(buffers[name])


@dataclass
class SnapshotReplayConfig(StableEMAConfig):
    """:class:`StableEMAConfig` with the defaults of the recipe that removed forgetting on
    ``fast`` (``results/h200_2026-12-03_study3``): the stable copy is a snapshot of the model at
    each task end (``clock tasks``, ``decay 0``), no pull on the current minibatch (``coef 0``),
    a KL and value pull toward the snapshot's answers on stored episode sequences of finished
    tasks (``replay_coef 5``, ``replay_batch 4``, ``sequence_len 100``), the working model
    evaluated."""

    coef: float = 0.0
    replay_coef: float = 5.0
    replay_batch: int = 4
    sequence_len: int = 100
    decay: float = 0.0
    period_exponent: float = 0.0
    clock: str = "tasks"
    evaluate: str = "working"


class SnapshotReplay(StableEMA):
    """``method=snapshot_replay``: :class:`StableEMA` with :class:`SnapshotReplayConfig`'s
    defaults (every option can still be overridden, as for ``stable_ema``)."""

    name = "snapshot_replay"

    def __init__(self, config: SnapshotReplayConfig | None = None) -> None:
        super().__init__(config or SnapshotReplayConfig())


# ----------------------------------------------------------------------------- distill


@dataclass
class DistillConfig(StoreOptions):
    """Options of :class:`Distill`.

    Attributes:
        fast_levels: CMS groups whose contribution is transient (shrunk after consolidation).
        slow_levels: CMS groups trained to absorb it; ``None``: every CMS group not fast.
        fast_scale: factor on the fast levels' output weights after consolidation (0 resets
            them: the fast level's branch then adds nothing until it learns again).
        every_tasks: consolidate at the end of every ``every_tasks``-th stage.
        steps: distillation steps per consolidation.
        batch_size: stored sequences per distillation step.
        lr: Adam step size of the distillation (a fresh Adam at each consolidation).
        value_coef: weight of the value term in the distillation loss.

    The store's options are :class:`StoreOptions`'.
    """

    fast_levels: list[str] = field(default_factory=lambda: ["cms.0"])
    slow_levels: list[str] | None = None
    fast_scale: float = 0.0
    every_tasks: int = 1
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    value_coef: float = 0.5

    def __post_init__(self) -> None:
        self.fast_levels = [str(n) for n in self.fast_levels]
        if self.slow_levels is not None:
            self.slow_levels = [str(n) for n in self.slow_levels]
        check_rules(
            "distill options",
            {
                "fast_levels not empty": bool(self.fast_levels),
                "slow_levels null or not empty": self.slow_levels is None or bool(self.slow_levels),
                "fast and slow levels disjoint": not set(self.fast_levels)
                & set(self.slow_levels or ()),
                "fast_scale in [0, 1]": 0 <= self.fast_scale <= 1,
                "every_tasks >= 1": self.every_tasks >= 1,
                "steps >= 0": self.steps >= 0,
                "batch_size >= 1": self.batch_size >= 1,
                "lr > 0": math.isfinite(self.lr) and self.lr > 0,
                "value_coef >= 0": self.value_coef >= 0,
                **self.store_rules(),
            },
            self,
        )


@dataclass
class Consolidation:
    """What one consolidation did: the distillation loss on the stored sequences right after the
    fast levels were shrunk (the slow-only model against the whole model) and after training."""

    stage: int
    sequences: int
    loss_before: float
    loss_after: float


class Distill(Method):
    """Distillation of the whole model into its slow CMS levels at stage ends, then a shrink of
    the fast levels' output weights (``fc2``, by ``fast_scale``). Distillation trains only the
    slow levels; everything shared (embedding, Titans, norms, heads) is left to PPO, so the
    slow-only model is the whole model minus the fast levels' branches (docs/consolidation.md).
    """

    name = "distill"

    def __init__(self, config: DistillConfig | None = None) -> None:
        self.config = config or DistillConfig()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.store = self.config.make_store()
        self.history: list[Consolidation] = []

    def levels(self, agent: Agent) -> tuple[list[str], list[str]]:
        """``(fast, slow)`` group names on ``agent``, checked against its CMS groups."""
        cms = [
            str(g["name"])
            for g in agent.param_groups()
            if str(g.get("name", "")).startswith("cms.")
        ]
        fast = self.config.fast_levels
        slow = self.config.slow_levels
        if slow is None:
            slow = [n for n in cms if n not in fast]
        unknown = sorted((set(fast) | set(slow)) - set(cms))
        if unknown or not slow:
            raise ValueError(
                f"distill needs fast and slow CMS levels; asked for fast {fast}, slow {slow}, the "
                f"backbone has {cms or 'none'} (use a hope or hope_attention model with at least "
                "two cms_periods, or name existing levels)"
            )
        return list(fast), list(slow)

    def slow_parameters(self, agent: Agent) -> list[nn.Parameter]:
        """The parameters distillation trains (those of the slow levels)."""
        _, slow = self.levels(agent)
        return [p for g in agent.param_groups() if g.get("name") in slow for p in g["params"]]

    def rewritten_parameters(self, agent: Agent) -> list[Tensor]:
        """The fast levels' output weights when the task-end hook shrank them (``fast_scale <
        1``): the trainer forgets their optimizer moments."""
        return self.fast_output_parameters(agent) if self.config.fast_scale < 1 else []

    def fast_output_parameters(self, agent: Agent) -> list[Tensor]:
        """The output weights and biases (``fc2``) of the fast levels' branches: what the reset
        shrinks."""
        fast, _ = self.levels(agent)
        fast_ids = {
            id(p) for g in agent.param_groups() if g.get("name") in fast for p in g["params"]
        }
        out: list[Tensor] = []
        for module in agent.modules():
            if isinstance(module, CMSLevel) and id(module.fc2.weight) in fast_ids:
                out.extend([module.fc2.weight, module.fc2.bias])
        return out

    def on_task_start(self, stage: int, spec: TaskSpec, agent: Agent) -> None:
        """Check the levels at the first stage, before any training time is spent."""
        self.levels(agent)

    def after_update(self, agent: Agent, buffer: RolloutBuffer) -> None:
        """Keep the rollout's inputs for the stored sequences."""
        self.store.observe(buffer, agent)

    def on_task_end(
        self, stage: int, spec: TaskSpec, agent: Agent, buffer: RolloutBuffer | None
    ) -> None:
        """Store the stage's sequences; on every ``every_tasks``-th stage, consolidate."""
        self.store.add(stage, buffer, agent)
        if (stage + 1) % self.config.every_tasks == 0:
            self.history.append(self.consolidate(agent, stage))

    def targets(self, agent: Agent) -> PolicyTargets:
        """The whole model's answers on every stored sequence (on the CPU)."""
        return self.store.answers(agent, agent)

    def loss(self, agent: Agent, targets: PolicyTargets, rows: Tensor) -> Tensor:
        """Distillation loss of ``agent`` against ``targets`` on stored sequences ``rows``."""
        inputs, memory = self.store.rows(agent, rows)
        out = sequence_outputs(agent, inputs, memory)
        target = targets.rows(rows.to(targets.mean.device), agent.device)
        return consistency_loss(
            target, out, loss_mask(inputs["valid"], self.config.burn_in), self.config.value_coef
        )

    def consolidate(self, agent: Agent, stage: int = -1) -> Consolidation:
        """Shrink the fast levels and train the slow ones to reproduce the whole model on every
        stored sequence; returns the loss before and after (over all stored sequences)."""
        cfg = self.config
        if self.store.size == 0:
            raise ValueError("distill: no stored sequences to consolidate on; store a task first")
        slow = self.slow_parameters(agent)
        targets = self.targets(agent)
        with torch.no_grad():
            for p in self.fast_output_parameters(agent):
                p.mul_(cfg.fast_scale)
        everything = torch.arange(self.store.size)
        with torch.no_grad():
            before = float(self.loss(agent, targets, everything).detach())
        optimizer = torch.optim.Adam(slow, lr=cfg.lr)
        with torch.enable_grad():
            for _ in range(cfg.steps):
                rows = torch.randint(
                    0, self.store.size, (cfg.batch_size,), generator=self.generator
                )
                loss = self.loss(agent, targets, rows)
                optimizer.zero_grad(set_to_none=True)
                agent.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        # Only the slow levels were stepped: no gradient of this loss may reach PPO's next step.
        agent.zero_grad(set_to_none=True)
        with torch.no_grad():
            after = float(self.loss(agent, targets, everything).detach())
        return Consolidation(stage, self.store.size, before, after)

    def state_dict(self) -> dict[str, Any]:
        """The store, the consolidation history and the sampling generator."""
        return {
            "store": self.store.state_dict(),
            "history": [[c.stage, c.sequences, c.loss_before, c.loss_after] for c in self.history],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        require_keys("distill", state, ("store", "history", "generator"))
        self.store.load_state_dict(state["store"])
        self.history = [
            Consolidation(int(s), int(n), float(b), float(a)) for s, n, b, a in state["history"]
        ]
        self.generator.set_state(state["generator"].cpu())

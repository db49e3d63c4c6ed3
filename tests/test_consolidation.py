"""Consolidation methods: stable_ema (EMA weights per group) and distill (fast -> slow levels)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_PPO
from hydra import compose, initialize_config_module
from rollouts import fill_rollout

from hope_agent.agents import Agent, AgentConfig
from hope_agent.agents.agent import AgentOutput
from hope_agent.algos import RolloutBuffer
from hope_agent.algos.buffer import SequenceBatch
from hope_agent.algos.ppo import PPO, PPOConfig
from hope_agent.cli import train
from hope_agent.io import load_checkpoint, save_checkpoint
from hope_agent.methods import (
    Distill,
    DistillConfig,
    SnapshotReplay,
    StableEMA,
    StableEMAConfig,
    make_method,
)
from hope_agent.methods.consolidation import PolicyTargets, consistency_loss, named_groups
from hope_agent.methods.replay import sequence_outputs
from hope_agent.models.cms import CMSLevel
from hope_agent.models.factory import make_backbone
from hope_agent.optim import MultiTimescaleOptimizer, apply_group_settings
from hope_envs.curriculum import TaskSpec

OBS, ACT = 4, 2
SPEC = TaskSpec(id="x", kwargs={}, steps=1, name="x")  # the hooks never read the spec


def _agent(name: str = "hope") -> Agent:
    torch.manual_seed(0)
    kwargs = {"n_layers": 1, "n_heads": 2, "chunk_size": 4, "cms_periods": (1, 4)}
    backbone = make_backbone(name, 16, **(kwargs if name == "hope" else {}))
    return Agent(backbone, AgentConfig(obs_dim=OBS, act_dim=ACT))


def _filled(agent: Agent, seed: int, steps: int = 16, envs: int = 4) -> RolloutBuffer:
    """A rollout of random observations with the policy's own actions and made-up rewards."""
    buffer = RolloutBuffer(steps, envs, OBS, ACT, seq_len=8)
    fill_rollout(agent, buffer, seed, lambda res, _, gen: torch.randn(envs, generator=gen), 0.0)
    return buffer


def _perturb(agent: Agent, scale: float, seed: int = 1, only: str = "") -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in agent.named_parameters():
            if only in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def _batch(buffer: RolloutBuffer) -> SequenceBatch:
    return next(buffer.minibatches(1, np.random.default_rng(0)))


def _outputs(agent: Agent, batch: SequenceBatch) -> AgentOutput:
    out, _ = agent(batch.obs, batch.prev_action, batch.prev_reward, batch.is_first, batch.memory)
    return out


# ----------------------------------------------------------------------------- stable_ema


def test_ema_update_uses_each_groups_rate_and_copies_the_normalisers() -> None:
    agent = _agent()
    cfg = StableEMAConfig(decay=0.9, period_exponent=1.0, group_decay={"cms.0": 0.5})
    method = StableEMA(cfg)
    method.on_task_start(0, SPEC, agent)
    assert method.group_decays(agent) == pytest.approx({"slow": 0.9, "cms.0": 0.5, "cms.1": 0.975})
    assert method.stable is not None
    before = {n: p.detach().clone() for n, p in method.stable.named_parameters()}
    _perturb(agent, 0.1)
    agent.obs_norm.update(torch.randn(32, OBS) * 3.0 + 1.0)
    method.after_update(agent, _filled(agent, 0))
    groups = named_groups(agent)
    decay = {"slow": 0.9, "cms.0": 0.5, "cms.1": 0.975}
    working = dict(agent.named_parameters())
    assert {"slow", "cms.0", "cms.1"} == set(groups.values())
    for name, p in method.stable.named_parameters():
        a = decay[groups[name]]
        expected = a * before[name] + (1 - a) * working[name].detach()
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-6)
        assert not torch.equal(p, working[name]) and not torch.equal(p, before[name])
    for (name, b), (_, s) in zip(agent.named_buffers(), method.stable.named_buffers(), strict=True):
        assert torch.equal(b, s), name
    assert method.updates == 1


def test_on_the_task_clock_the_stable_copy_moves_only_at_task_ends() -> None:
    agent = _agent()
    method = StableEMA(StableEMAConfig(decay=0.0, period_exponent=0.0, clock="tasks"))
    method.on_task_start(0, SPEC, agent)
    assert method.stable is not None
    initial = copy.deepcopy(method.stable.state_dict())
    _perturb(agent, 0.1)
    method.after_update(agent, _filled(agent, 0))
    for name, p in method.stable.state_dict().items():
        assert torch.equal(p, initial[name]), name
    method.on_task_end(0, SPEC, agent, None)
    working = agent.state_dict()
    for name, p in method.stable.state_dict().items():
        assert torch.equal(p, working[name]), name  # decay 0: the model as it ended the task
    with pytest.raises(ValueError, match="clock 'updates' or 'tasks'"):
        StableEMAConfig(clock="episodes")


def test_task_clock_replay_targets_are_the_finished_models_answers(tmp_path: Path) -> None:
    agent = _agent()
    _perturb(agent, 0.3)
    cfg = StableEMAConfig(
        coef=0.0, replay_coef=1.0, decay=0.0, period_exponent=0.0, clock="tasks", sequence_len=8
    )
    method = StableEMA(cfg)
    method.on_task_start(0, SPEC, agent)
    buffer = _filled(agent, 0)
    method.after_update(agent, buffer)
    method.on_task_end(0, SPEC, agent, buffer)
    assert method.replay_targets is not None
    assert method.replay_targets.mean.shape == (method.store.size, 8, ACT)
    batch = _batch(buffer)
    loss = method.extra_loss(agent, batch, _outputs(agent, batch))
    assert loss is not None and float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    # The next task moves the normaliser: the targets stay what the model did on its own task.
    before = copy.deepcopy(method.replay_targets)
    agent.obs_norm.update(torch.randn(4096, OBS) * 0.5 - 3.0)
    loss = method.extra_loss(agent, batch, _outputs(agent, batch))
    assert loss is not None and float(loss.detach()) > 1e-4
    assert torch.equal(method.replay_targets.mean, before.mean)
    save_checkpoint(tmp_path / "ckpt", {"method": method.state_dict()})
    resumed = StableEMA(cfg)
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt")["method"])
    assert resumed.replay_targets is not None
    assert torch.equal(resumed.replay_targets.value, before.value)


@pytest.mark.parametrize("renormalize", [True, False])
def test_stored_observations_replay_through_the_current_normaliser(renormalize: bool) -> None:
    agent = _agent()
    agent.obs_norm.update(torch.randn(256, OBS) * 2.0 + 1.0)
    buffer = _filled(agent, 0)
    method = StableEMA(StableEMAConfig(replay_coef=1.0, renormalize=renormalize))
    method.on_task_end(0, SPEC, agent, buffer)
    rows = torch.arange(method.store.size)
    stored, _ = method.store.rows(agent, rows)
    raw = agent.obs_norm.invert(stored["obs"])
    torch.testing.assert_close(agent.normalize_obs(raw), stored["obs"], atol=1e-5, rtol=1e-5)
    agent.obs_norm.update(torch.randn(4096, OBS) * 0.5 - 3.0)  # the next task's states
    replayed, _ = method.store.rows(agent, rows)
    if renormalize:
        torch.testing.assert_close(replayed["obs"], agent.normalize_obs(raw), atol=1e-5, rtol=1e-5)
        assert (replayed["obs"] - stored["obs"]).abs().max() > 0.5
    else:
        assert torch.equal(replayed["obs"], stored["obs"])


def test_episode_sequences_replay_what_the_agent_computed_in_its_rollout() -> None:
    """A sequence from an episode's first step, replayed from a fresh memory, gives the values
    the agent gave in the rollout on every step of that episode: the memory it replays with is
    the memory the agent had. (Rewards kept, to isolate the memory.)"""
    agent = _agent()
    _perturb(agent, 0.3)
    agent.obs_norm.update(torch.randn(256, OBS) * 2.0 + 1.0)
    buffer = RolloutBuffer(32, 4, OBS, ACT, seq_len=8)
    fill_rollout(agent, buffer, 0, lambda res, _, gen: torch.randn(4, generator=gen), 0.15)
    method = StableEMA(StableEMAConfig(replay_coef=1.0, store_rewards=True, sequence_len=12))
    method.after_update(agent, buffer)
    method.on_task_end(0, SPEC, agent, buffer)
    store = method.store
    assert store.size == int((buffer.is_first & buffer.valid).sum()) > 4
    inputs, memory = store.rows(agent, torch.arange(store.size))
    with torch.no_grad():
        replayed = sequence_outputs(agent, inputs, memory).value
    raw = agent.obs_norm.invert(buffer.obs)  # (T, N, OBS)
    checked = 0
    for i in range(store.size):
        hit = (raw - store.inputs["obs"][i, 0]).abs().amax(-1) < 1e-5
        (t, n), *_ = hit.nonzero().tolist()
        assert buffer.is_first[t, n]
        steps = int(inputs["valid"][i].sum())
        assert 1 <= steps <= min(12, buffer.num_steps - t)
        expected = buffer.value[t : t + steps, n]
        torch.testing.assert_close(replayed[i, :steps], expected, atol=1e-5, rtol=1e-5)
        # The episode ends where the sequence's valid steps end (the masked autoreset step).
        end = t + steps
        assert end == buffer.num_steps or steps == 12 or not bool(buffer.valid[end, n])
        checked += steps
    assert checked > 40


def test_consistency_loss_is_zero_at_the_stable_model_and_positive_away_from_it() -> None:
    agent = _agent()
    method = StableEMA(StableEMAConfig(coef=1.0, replay_coef=2.0, replay_batch=4))
    method.on_task_start(0, SPEC, agent)
    buffer = _filled(agent, 0)
    method.on_task_end(0, SPEC, agent, buffer)
    assert method.store.size == int(buffer.is_first.sum())  # one sequence per episode start
    batch = _batch(buffer)
    loss = method.extra_loss(agent, batch, _outputs(agent, batch))
    assert loss is not None and float(loss.detach()) == 0.0
    _perturb(agent, 0.05)
    loss = method.extra_loss(agent, batch, _outputs(agent, batch))
    assert loss is not None and float(loss.detach()) > 0
    loss.backward()
    # The loss pulls the working weights only; the stable model is a fixed target.
    assert agent.policy_mean.weight.grad is not None
    assert agent.policy_mean.weight.grad.abs().sum() > 0
    assert method.stable is not None
    assert all(p.grad is None for p in method.stable.parameters())
    # Each term on its own: the replayed one alone still sees the difference.
    replay_only = StableEMA(StableEMAConfig(coef=0.0, replay_coef=1.0))
    replay_only.load_state_dict(method.state_dict())
    replayed = replay_only.extra_loss(agent, batch, _outputs(agent, batch))
    assert replayed is not None and float(replayed.detach()) > 0


def test_evaluation_agent_is_the_stable_model_unless_working_is_asked() -> None:
    agent = _agent()
    method = StableEMA(StableEMAConfig(decay=0.5))
    method.on_task_start(0, SPEC, agent)
    _perturb(agent, 0.1)
    method.after_update(agent, _filled(agent, 0))
    evaluated = method.evaluation_agent(agent)
    assert evaluated is method.stable and evaluated is not agent
    stable_weights = dict(evaluated.named_parameters())
    for name, p in agent.named_parameters():
        assert not torch.equal(stable_weights[name], p), name
    assert StableEMA(StableEMAConfig(evaluate="working")).evaluation_agent(agent) is agent


def test_stable_ema_resumes_exactly_through_a_checkpoint(tmp_path: Path) -> None:
    agent = _agent()
    method = StableEMA(StableEMAConfig(decay=0.8, replay_coef=1.0, replay_batch=3))
    method.on_task_start(0, SPEC, agent)
    for seed in range(3):
        _perturb(agent, 0.05, seed)
        method.after_update(agent, _filled(agent, 0))
    method.on_task_end(0, SPEC, agent, _filled(agent, 0))
    save_checkpoint(tmp_path / "ckpt", {"agent": agent.state_dict(), "method": method.state_dict()})

    tree = load_checkpoint(tmp_path / "ckpt")
    agent2 = _agent()
    agent2.load_state_dict(tree["agent"])
    resumed = StableEMA(StableEMAConfig(decay=0.8, replay_coef=1.0, replay_batch=3))
    resumed.load_state_dict(tree["method"])
    batch = _batch(_filled(agent, 1))
    pairs = ((agent, method), (agent2, resumed))
    for seed in range(3, 6):
        for a, m in pairs:
            _perturb(a, 0.05, seed)
            m.after_update(a, _filled(a, 0))
        losses = [
            m.extra_loss(a, batch, _outputs(a, batch))
            for a, m in ((agent, method), (agent2, resumed))
        ]
        assert torch.equal(losses[0], losses[1])  # same stable weights, same replayed rows
    assert method.stable is not None and resumed.stable is not None
    for p, q in zip(method.stable.parameters(), resumed.stable.parameters(), strict=True):
        assert torch.equal(p, q)
    assert resumed.updates == 6


# ----------------------------------------------------------------------------- distill


def _fast_zeroed(agent: Agent) -> Agent:
    """The slow-only model: the agent with the fast level's branch output removed."""
    slow_only = copy.deepcopy(agent)
    with torch.no_grad():
        for p in Distill().fast_output_parameters(slow_only):
            p.zero_()
    return slow_only


def _distance(agent: Agent, method: Distill, target: PolicyTargets) -> float:
    rows = torch.arange(method.store.size)
    inputs, memory = method.store.rows(agent, rows)
    with torch.no_grad():
        out = sequence_outputs(agent, inputs, memory)
    return float(consistency_loss(target, out, inputs["valid"], 0.5).detach())


def test_distillation_moves_the_fast_levels_knowledge_into_the_slow_levels() -> None:
    agent = _agent()
    _perturb(agent, 0.3)  # a policy whose output depends on the features, and a busy fast level
    method = Distill(DistillConfig(steps=100, batch_size=8, lr=3e-3, sequences_per_task=8))
    method.on_task_start(0, SPEC, agent)
    method.store.add(0, _filled(agent, 0), agent)
    buffer = _filled(agent, 1)
    method.store.add(1, buffer, agent)
    whole = method.targets(agent)
    slow_only_gap = _distance(_fast_zeroed(agent), method, whole)
    fast_out = {id(p) for p in method.fast_output_parameters(agent)}
    slow = {id(p) for p in method.slow_parameters(agent)}
    before = {n: p.detach().clone() for n, p in agent.named_parameters()}

    result = method.consolidate(agent, stage=1)

    assert result.loss_before == pytest.approx(slow_only_gap, rel=1e-5)
    assert result.loss_after < 0.5 * result.loss_before
    assert _distance(agent, method, whole) == pytest.approx(result.loss_after, rel=1e-5)
    for name, p in agent.named_parameters():
        if id(p) in fast_out:
            assert torch.count_nonzero(p) == 0, name  # reset
        elif id(p) in slow:
            assert not torch.equal(p, before[name]), name  # trained
        else:
            assert torch.equal(p, before[name]), name  # shared weights untouched
        assert p.grad is None, name
    levels = [m for m in agent.modules() if isinstance(m, CMSLevel)]
    assert len(levels) == 2 and id(levels[0].fc2.weight) in fast_out


def test_distill_consolidates_at_task_ends_and_resumes_from_its_state(tmp_path: Path) -> None:
    agent = _agent()
    config = DistillConfig(steps=5, batch_size=4, sequences_per_task=4, every_tasks=2)
    method = Distill(config)
    method.on_task_end(0, SPEC, agent, _filled(agent, 0))
    assert method.history == [] and method.store.size == 4
    method.on_task_end(1, SPEC, agent, _filled(agent, 1))
    assert [(c.stage, c.sequences) for c in method.history] == [(1, 8)]
    save_checkpoint(tmp_path / "ckpt", {"agent": agent.state_dict(), "method": method.state_dict()})
    tree = load_checkpoint(tmp_path / "ckpt")
    agent2 = _agent()
    agent2.load_state_dict(tree["agent"])
    resumed = Distill(config)
    resumed.load_state_dict(tree["method"])
    assert resumed.history == method.history
    for a, m in ((agent, method), (agent2, resumed)):
        m.on_task_end(2, SPEC, a, _filled(a, 2))
        m.on_task_end(3, SPEC, a, _filled(a, 3))
    assert resumed.history == method.history and len(method.history) == 2
    for p, q in zip(agent.parameters(), agent2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_distill_needs_fast_and_slow_cms_levels() -> None:
    with pytest.raises(ValueError, match="distill needs fast and slow CMS levels.*none"):
        Distill().on_task_start(0, SPEC, _agent("mlp"))
    with pytest.raises(ValueError, match=r"slow \['cms.7'\].*\['cms.0', 'cms.1'\]"):
        Distill(DistillConfig(slow_levels=["cms.7"])).on_task_start(0, SPEC, _agent())
    with pytest.raises(ValueError, match="fast and slow levels disjoint"):
        DistillConfig(fast_levels=["cms.0"], slow_levels=["cms.0"])


# ----------------------------------------------------------------------------- both


def _reward_poisoned(buffer: RolloutBuffer) -> RolloutBuffer:
    """The same rollout with every reward, and everything computed from rewards, set to NaN."""
    poisoned = copy.deepcopy(buffer)
    for name in ("reward", "prev_reward", "returns", "advantages", "value"):
        getattr(poisoned, name).fill_(float("nan"))
    poisoned.memories = [
        m.map(lambda t: torch.full_like(t, float("nan")) if t.is_floating_point() else t)
        for m in buffer.memories
        if m is not None
    ]
    return poisoned


@pytest.mark.parametrize("name", ["stable_ema", "distill"])
def test_nothing_of_an_old_tasks_rewards_is_read(name: str) -> None:
    """Rewards, returns, values and the reward-fed memory of a stored task may be NaN: the
    method's state and the weights it produces are the same."""
    options = {"replay_coef": 1.0} if name == "stable_ema" else {"steps": 5, "batch_size": 4}
    results = []
    for poison in (False, True):
        agent = _agent()
        method = make_method(name, options)
        method.on_task_start(0, SPEC, agent)
        buffer = _filled(agent, 0)
        method.on_task_end(0, SPEC, agent, _reward_poisoned(buffer) if poison else buffer)
        batch = _batch(_filled(agent, 1))  # the current task's minibatch: rewards allowed
        loss = method.extra_loss(agent, batch, _outputs(agent, batch))
        results.append(
            (method.state_dict(), [p.detach().clone() for p in agent.parameters()], loss)
        )
    (state_a, weights_a, loss_a), (state_b, weights_b, loss_b) = results
    inputs_a, inputs_b = state_a["store"]["inputs"], state_b["store"]["inputs"]
    assert set(inputs_a) == set(inputs_b)
    for key in inputs_a:
        assert torch.equal(inputs_a[key], inputs_b[key]), key
    assert torch.count_nonzero(inputs_a["prev_reward"]) == 0
    assert state_a["store"]["memory_leaves"] == []
    assert all(torch.equal(p, q) for p, q in zip(weights_a, weights_b, strict=True))
    assert (loss_a is None) == (loss_b is None)
    if loss_a is not None:
        assert torch.equal(loss_a, loss_b)


def test_store_rewards_keeps_reward_inputs_and_memory_as_an_ablation() -> None:
    agent = _agent()
    method = StableEMA(StableEMAConfig(replay_coef=1.0, store_rewards=True, sequences="chunks"))
    method.on_task_end(0, SPEC, agent, _filled(agent, 0))
    assert torch.count_nonzero(method.store.inputs["prev_reward"]) > 0
    assert method.store.memory_leaves
    inputs, memory = method.store.rows(agent, torch.tensor([0, 3]))
    assert inputs["obs"].shape == (2, 8, OBS)
    assert all(leaf.shape[0] == 2 for leaf in memory.leaves())


def test_make_method_builds_the_consolidation_methods_from_config_values() -> None:
    ema = make_method("stable_ema", {"decay": 0.9, "group_decay": {"cms.1": 0.99}})
    assert isinstance(ema, StableEMA) and ema.config.group_decay == {"cms.1": 0.99}
    distill = make_method("distill", {"fast_levels": ["cms.0"], "fast_scale": 0.5})
    assert isinstance(distill, Distill) and distill.config.fast_scale == 0.5
    with pytest.raises(ValueError, match="decay in"):
        make_method("stable_ema", {"decay": 1.5})
    with pytest.raises(ValueError, match="evaluate 'stable' or 'working'"):
        make_method("stable_ema", {"evaluate": "best"})
    with pytest.raises(ValueError, match=r"group_decay names \['cms.5'\]"):
        make_method("stable_ema", {"group_decay": {"cms.5": 0.9}}).on_task_start(0, SPEC, _agent())


def test_snapshot_replay_is_stable_ema_with_the_studies_recipe() -> None:
    recipe = {
        "clock": "tasks",
        "decay": 0.0,
        "period_exponent": 0.0,
        "coef": 0.0,
        "replay_coef": 5.0,
        "replay_batch": 4,
        "sequence_len": 100,
        "evaluate": "working",
    }
    snapshot = make_method("snapshot_replay")
    assert isinstance(snapshot, SnapshotReplay) and snapshot.name == "snapshot_replay"
    spelled_out = make_method("stable_ema", recipe)
    assert dataclasses.asdict(snapshot.config) == dataclasses.asdict(spelled_out.config)
    assert make_method("snapshot_replay", {"replay_coef": 2.0}).config.replay_coef == 2.0
    with pytest.raises(ValueError, match="clock 'updates' or 'tasks'"):
        make_method("snapshot_replay", {"clock": "steps"})


@pytest.mark.parametrize("name", ["stable_ema", "distill"])
def test_hooks_in_the_trainers_order_with_ppo_and_a_task_clock_level(name: str) -> None:
    """The calls the runner is to make, in its order, around real PPO updates: the extra loss
    inside each minibatch, after_update and the env clock after each update, the task clock and
    the task-end hook after each stage. cms.1 is on the task clock: it moves once, at the first
    step of the second stage."""
    agent = _agent()
    groups = apply_group_settings(agent.param_groups(), {"cms.1": {"clock": "tasks", "period": 1}})
    optimizer = MultiTimescaleOptimizer(groups, lr=1e-3)
    options = {"replay_coef": 1.0, "replay_batch": 2} if name == "stable_ema" else {"steps": 3}
    method = make_method(name, options)
    ppo = PPO(
        agent,
        optimizer,
        PPOConfig(epochs=1, num_minibatches=2),
        np.random.default_rng(0),
        extra_loss=method.extra_loss,
    )
    slow_level = [p for g in optimizer.param_groups if g["name"] == "cms.1" for p in g["params"]]
    start = [p.detach().clone() for p in slow_level]
    extras = []
    for stage in range(2):
        method.on_task_start(stage, SPEC, agent)
        for update in range(2):
            buffer = _filled(agent, 10 * stage + update)
            stats = ppo.update(buffer)
            assert stats["nonfinite_steps"] == 0
            extras.append(stats.get("extra"))
            optimizer.advance("env_steps", buffer.num_steps * buffer.num_envs)
            method.after_update(agent, _filled(agent, 0))
        if stage == 0:
            assert all(torch.equal(p, s) for p, s in zip(slow_level, start, strict=True))
        optimizer.advance("tasks", 1)
        method.on_task_end(stage, SPEC, agent, buffer)
        optimizer.reset_state(method.rewritten_parameters(agent))
    assert optimizer.update_counts["cms.1"] == 1
    assert optimizer.update_counts["cms.0"] == 8
    if isinstance(method, StableEMA):
        assert method.updates == 4
        assert all(e is not None and np.isfinite(e) for e in extras)
        evaluated = method.evaluation_agent(agent)
        assert evaluated is method.stable
        # Still an ordinary agent: its CMS levels are trainable for the evaluator's online CMS.
        assert all(g["params"] for g in evaluated.backbone.param_groups())
    else:
        assert all(e is None for e in extras) and len(method.history) == 2


TINY_HOPE = [
    "curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{goal:[0.6,0.0]},name:east},"
    "{id:hope/PointReach-v0,kwargs:{goal:[-0.6,0.0]},name:west}]",
    "model=hope",
    "model.d_model=16",
    "model.kwargs.n_heads=2",
    "model.kwargs.cms_periods=[1,4]",
    "steps_per_task=64",
    *TINY_PPO,
    "video.enabled=false",
    "logger.progress=false",
    "logger.tensorboard=false",
    "device=cpu",
]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("stable_ema", ["replay_coef=1.0", "replay_batch=2"]),
        ("snapshot_replay", ["replay_batch=2"]),
        ("distill", ["steps=3", "batch_size=2", "sequences_per_task=2"]),
    ],
)
def test_each_consolidation_method_plugs_into_a_tiny_run(
    name: str, options: list[str], tmp_path: Path
) -> None:
    """Through the config path (``method=NAME method_options=...``), with checkpoints."""
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        extra = [f"+method_options.{o}" for o in options]
        cfg = compose("config", overrides=[*TINY_HOPE, f"method={name}", *extra])
    summary = train(cfg, tmp_path)
    assert summary.perf.shape == (2, 2)
    tree = load_checkpoint(tmp_path / "checkpoints" / "stage_01")
    assert tree["method"]["name"] == name
    restored = make_method(name, dict(cfg.method_options))
    restored.load_state_dict(tree["method"]["state"])
    if isinstance(restored, Distill):
        assert [c.stage for c in restored.history] == [0, 1]
    else:
        # One sequence per episode start: each of the 2 envs starts one 100-step episode in a
        # task of 64 env steps (32 per env), and all 32 steps are in it.
        assert isinstance(restored, StableEMA) and restored.store.size == 2 * 2
        assert int(restored.store.inputs["valid"].sum()) == 2 * 2 * 32

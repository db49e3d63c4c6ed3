"""Continual-learning plug-ins: L2, EWC, behaviour-cloning replay, multi-task interleaving."""

import csv
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from rollouts import fill_rollout

from hope_agent.agents import Agent, AgentConfig
from hope_agent.algos import RolloutBuffer
from hope_agent.build import build_runner
from hope_agent.cli import train
from hope_agent.io import load_checkpoint, save_checkpoint
from hope_agent.methods import (
    EWC,
    L2,
    BCReplay,
    BCReplayConfig,
    EWCConfig,
    L2Config,
    MultiTaskEnv,
    diagonal_fisher,
    make_method,
    multitask_env_factory,
)
from hope_agent.methods.replay import gaussian_kl
from hope_agent.models.factory import make_backbone
from hope_envs.curriculum import TaskSpec

OBS, ACT = 4, 2
SPEC = TaskSpec(id="x", kwargs={}, steps=1, name="x")  # hooks below never read the spec


def _agent(name: str = "mlp", log_std: float = -0.5) -> Agent:
    torch.manual_seed(0)
    return Agent(
        make_backbone(name, 16), AgentConfig(obs_dim=OBS, act_dim=ACT, log_std_init=log_std)
    )


def _fill(agent: Agent, buffer: RolloutBuffer, seed: int = 0, done_prob: float = 0.1) -> None:
    """A rollout of random observations with the policy's own sampled actions."""
    fill_rollout(
        agent, buffer, seed, lambda res, valid, _: res.action[:, 0].clamp(-1, 1) * valid, done_prob
    )


def _filled(agent: Agent, seed: int = 0, steps: int = 16, envs: int = 4) -> RolloutBuffer:
    buffer = RolloutBuffer(steps, envs, OBS, ACT, seq_len=8)
    _fill(agent, buffer, seed)
    return buffer


def _perturb(agent: Agent, scale: float, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


# ----------------------------------------------------------------------------- regularisers
@pytest.mark.parametrize("cls", [L2, EWC])
def test_penalty_is_zero_at_its_anchor_and_grows_quadratically_away(cls: type) -> None:
    agent = _agent("gru")
    method = cls()
    assert method.extra_loss(agent, None, None) is None  # nothing to protect before a task end
    method.on_task_end(0, SPEC, agent, _filled(agent))
    at_anchor = method.extra_loss(agent, None, None)
    assert at_anchor is not None and at_anchor.item() == 0.0
    at_anchor.backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in agent.parameters())
    state = {k: v.clone() for k, v in agent.state_dict().items()}
    penalties = []
    for scale in (1e-3, 2e-3, 4e-3):
        agent.load_state_dict(state)
        _perturb(agent, scale)
        penalties.append(method.penalty(agent).item())
    assert 0 < penalties[0] < penalties[1] < penalties[2]
    # Quadratic in the distance: doubling it multiplies the penalty by 4.
    assert penalties[1] / penalties[0] == pytest.approx(4.0, rel=1e-3)
    assert penalties[2] / penalties[1] == pytest.approx(4.0, rel=1e-3)


def test_l2_penalty_is_the_squared_distance() -> None:
    agent = _agent()
    method = L2(L2Config(coef=0.5))
    method.on_task_end(0, SPEC, agent, None)
    before = {n: p.detach().clone() for n, p in agent.named_parameters()}
    _perturb(agent, 0.01)
    expected = sum(((p - before[n]) ** 2).sum() for n, p in agent.named_parameters())
    torch.testing.assert_close(method.penalty(agent), expected)
    torch.testing.assert_close(method.extra_loss(agent, None, None), 0.25 * expected)


def test_fisher_of_the_policy_mean_bias_is_one_over_variance() -> None:
    # Gaussian policy, actions sampled from it: the Fisher of the mean is 1 / sigma^2 per step,
    # whatever the state; the chunked estimate must find it.
    agent = _agent("mlp", log_std=-0.5)
    buffer = RolloutBuffer(64, 16, OBS, ACT, seq_len=4)  # 256 chunks
    _fill(agent, buffer, done_prob=0.0)
    fisher = diagonal_fisher(agent, buffer, max_sequences=256)
    expected = float(np.exp(1.0))
    assert fisher["policy_mean.bias"].mean().item() == pytest.approx(expected, rel=0.25)
    # The value head and the world model do not enter the policy's likelihood.
    for name in ("value_head.weight", "value_head.bias", "world_model.0.weight"):
        assert torch.all(fisher[name] == 0)
    assert all(torch.all(f >= 0) for f in fisher.values())
    with_value = diagonal_fisher(agent, buffer, max_sequences=32, include_value=True)
    assert with_value["value_head.bias"].item() > 0


def test_online_consolidation_keeps_one_anchor() -> None:
    agent = _agent()
    method = L2(L2Config(coef=1.0, gamma=0.5))
    for stage in range(3):
        _perturb(agent, 0.01, seed=stage)
        method.on_task_end(stage, SPEC, agent, None)
    assert len(method.anchors) == 1
    # Importance: ((1 * 0.5 + 1) * 0.5 + 1) = 1.75 with L2's ones.
    assert torch.all(method.importances[0]["log_std"] == 1.75)
    torch.testing.assert_close(method.anchors[0]["log_std"], agent.log_std.detach())
    separate = L2()
    for stage in range(3):
        separate.on_task_end(stage, SPEC, agent, None)
    assert len(separate.anchors) == 3


def test_regularizer_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    agent = _agent("gru")
    method = EWC()
    method.on_task_end(0, SPEC, agent, _filled(agent))
    _perturb(agent, 0.01)
    save_checkpoint(tmp_path / "ckpt", {"method": method.state_dict()})
    restored = EWC()
    restored.load_state_dict(load_checkpoint(tmp_path / "ckpt")["method"])
    torch.testing.assert_close(restored.penalty(agent), method.penalty(agent))


# ----------------------------------------------------------------------------- replay
def test_gaussian_kl_matches_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    m1, m2, s1, s2 = (torch.randn(5, 3, generator=gen) for _ in range(4))
    p = torch.distributions.Normal(m1, s1.exp())
    q = torch.distributions.Normal(m2, s2.exp())
    expected = torch.distributions.kl_divergence(p, q).sum(-1)
    torch.testing.assert_close(gaussian_kl(m1, s1, m2, s2), expected)


def test_bc_replay_distils_the_stored_policy() -> None:
    agent = _agent("gru")
    method = BCReplay(BCReplayConfig(sequences_per_task=6, batch_size=4))
    assert method.extra_loss(agent, None, None) is None
    method.on_task_end(0, SPEC, agent, _filled(agent, seed=0))
    method.on_task_end(1, SPEC, agent, _filled(agent, seed=1, steps=8, envs=2))  # 2 chunks only
    assert method.size == 6 + 2
    assert method.source_task.tolist() == [0] * 6 + [1] * 2
    rows = torch.arange(method.size)
    # The stored answers are the agent's own: nothing to distil yet.
    assert method.distillation_loss(agent, rows).item() == pytest.approx(0.0, abs=1e-6)
    _perturb(agent, 0.05)
    drifted = method.distillation_loss(agent, rows).item()
    assert drifted > 1e-3
    opt = torch.optim.SGD(agent.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        method.distillation_loss(agent, rows).backward()
        opt.step()
    assert method.distillation_loss(agent, rows).item() < 0.5 * drifted


def test_bc_replay_replays_raw_observations_through_the_current_normaliser() -> None:
    agent = _agent("gru")
    _perturb(agent, 0.3)  # a policy whose answers depend on the observation
    agent.obs_norm.update(torch.randn(256, agent.obs_dim) * 2.0 + 1.0)
    method = BCReplay(BCReplayConfig(sequences_per_task=6))
    method.on_task_end(0, SPEC, agent, _filled(agent, seed=0))
    rows = torch.arange(method.size)
    assert method.distillation_loss(agent, rows).item() == pytest.approx(0.0, abs=1e-5)
    agent.obs_norm.update(torch.randn(4096, agent.obs_dim) * 0.5 - 3.0)  # the next task's states
    inputs, _, _ = method.stored(agent, rows)
    torch.testing.assert_close(inputs["obs"], agent.normalize_obs(method.store["obs"]))
    # Same weights, new statistics: the answers on the old task's states have moved.
    assert method.distillation_loss(agent, rows).item() > 1e-3


def test_methods_feed_the_task_id_to_oracle_agents() -> None:
    torch.manual_seed(0)
    config = AgentConfig(obs_dim=OBS, act_dim=ACT, num_tasks=2, task_id=True)
    agent = Agent(make_backbone("gru", 16), config)
    _perturb(agent, 0.3)  # away from the near-zero initial policy head
    buffer = _filled(agent)  # every step labelled task 0
    replay = BCReplay(BCReplayConfig(sequences_per_task=4))
    replay.on_task_end(0, SPEC, agent, buffer)
    assert replay.distillation_loss(agent, torch.arange(4)).item() == pytest.approx(0.0, abs=1e-6)
    # The stored task index reaches the agent: relabelled sequences get other answers.
    replay.store["task"].fill_(1)
    assert replay.distillation_loss(agent, torch.arange(4)).item() > 1e-3
    fisher = diagonal_fisher(agent, buffer, max_sequences=8)
    assert fisher["embed.weight"][:, -2].abs().sum() > 0  # the task-0 one-hot column
    assert torch.all(fisher["embed.weight"][:, -1] == 0)  # task 1 never seen


def test_bc_replay_with_burn_in_and_value_term() -> None:
    agent = _agent("gru")
    method = BCReplay(BCReplayConfig(sequences_per_task=4, burn_in=8, value_coef=1.0))
    method.on_task_end(0, SPEC, agent, _filled(agent))
    _perturb(agent, 0.05)
    # Every step of 8-step sequences is burn-in: nothing is left in the loss.
    assert method.distillation_loss(agent, torch.arange(4)).item() == 0.0
    method.config.burn_in = 2
    assert method.distillation_loss(agent, torch.arange(4)).item() > 0


def test_bc_replay_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    agent = _agent("gru")
    method = BCReplay(BCReplayConfig(sequences_per_task=5, batch_size=3))
    method.on_task_end(0, SPEC, agent, _filled(agent))
    method.extra_loss(agent, None, None)  # advance the sampling generator
    save_checkpoint(tmp_path / "ckpt", {"method": method.state_dict()})
    restored = BCReplay(BCReplayConfig(sequences_per_task=5, batch_size=3))
    restored.load_state_dict(load_checkpoint(tmp_path / "ckpt")["method"])
    assert restored.size == method.size
    for key, value in method.store.items():
        torch.testing.assert_close(restored.store[key], value)
    for a, b in zip(restored.memory_leaves, method.memory_leaves, strict=True):
        torch.testing.assert_close(a, b)
    _perturb(agent, 0.05)
    # Same next draw of stored sequences, same loss.
    torch.testing.assert_close(
        restored.extra_loss(agent, None, None), method.extra_loss(agent, None, None)
    )
    with pytest.raises(ValueError, match="another model"):
        restored.distillation_loss(_agent("mlp"), torch.arange(2))


# ----------------------------------------------------------------------------- registry
def test_make_method_builds_and_rejects_clearly(tmp_path: Path) -> None:
    assert isinstance(make_method("ewc", {"coef": 5.0, "gamma": 0.9}), EWC)
    assert make_method("l2").config.coef == L2Config().coef
    assert make_method("bc_replay", {"batch_size": 2}).config.batch_size == 2
    # An integral float is an integer, an integer a float.
    replay = make_method("bc_replay", {"batch_size": 4.0, "coef": 3})
    assert replay.config.batch_size == 4 and isinstance(replay.config.batch_size, int)
    assert isinstance(replay.config.coef, float)
    for options, message in (
        ({"coef": "abc"}, "option coef must be a number (got 'abc')"),
        ({"gamma": True}, "option gamma must be a number or null (got True)"),
        ({"include_value": 1}, "option include_value must be true or false (got 1)"),
        ({"fisher_sequences": 2.5}, "option fisher_sequences must be an integer (got 2.5)"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            make_method("ewc", options)
    # The options of the config reach the method.
    runner = build_runner(_tiny_config("method=ewc", "+method_options.coef=10"), tmp_path)
    runner.logger.close()
    assert isinstance(runner.method, EWC) and runner.method.config.coef == 10.0
    with pytest.raises(ValueError, match="valid methods: bc_replay, distill, ewc, finetune, l2"):
        make_method("packnet")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['lambda'\]"):
        make_method("ewc", {"lambda": 1.0})
    with pytest.raises(ValueError, match="gamma null or in"):
        make_method("l2", {"gamma": 1.5})
    with pytest.raises(ValueError, match="takes no options"):
        make_method("finetune", {"coef": 1.0})
    names = {f.name for f in fields(EWCConfig)}
    assert {"coef", "gamma", "fisher_sequences", "include_value"} <= names


# ----------------------------------------------------------------------------- multi-task env
def _point_specs() -> list[TaskSpec]:
    from hope_envs.curriculum import resolve_tasks

    goals = ([0.6, 0.0], [-0.6, 0.0], [0.0, 0.6])
    return resolve_tasks(
        [{"id": "hope/PointReach-v0", "kwargs": {"goal": g}} for g in goals], steps_per_task=64
    )


def test_multitask_env_interleaves_every_task_evenly_and_reproducibly() -> None:
    specs = _point_specs()

    def episode_tasks(seed: int) -> tuple[list[int], list[float]]:
        env = MultiTaskEnv(specs, OBS, ACT)
        tasks, first_obs = [], []
        obs, info = env.reset(seed=seed)
        for _ in range(9):
            tasks.append(info["task_index"])
            first_obs.append(float(obs[0]))
            obs, info = env.reset()
        env.close()
        return tasks, first_obs

    tasks, obs = episode_tasks(3)
    # Each block of 3 episodes is a permutation of the 3 tasks.
    for k in range(3):
        assert sorted(tasks[3 * k : 3 * k + 3]) == [0, 1, 2]
    assert episode_tasks(3) == (tasks, obs)
    assert episode_tasks(4)[0] != tasks or episode_tasks(4)[1] != obs


def test_multitask_vector_env_has_the_runner_signature() -> None:
    specs = _point_specs()
    envs = multitask_env_factory(specs)(specs[0], OBS, ACT, 2, False)
    obs, info = envs.reset(seed=[0, 1])
    assert obs.shape == (2, OBS) and set(info["task_index"]) <= {0, 1, 2}
    envs.close()


# ----------------------------------------------------------------------------- end to end
TWO_TASKS = (
    "curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{goal:[0.6,0.0]},name:east},"
    "{id:hope/PointReach-v0,kwargs:{goal:[-0.6,0.0]},name:west}]"
)
TINY = [
    TWO_TASKS,
    "model=gru",
    "model.d_model=16",
    "steps_per_task=128",
    "ppo.num_envs=2",
    "ppo.rollout_len=32",
    "ppo.seq_len=16",
    "ppo.num_minibatches=2",
    "ppo.epochs=1",
    "eval.episodes=1",
    "video.enabled=false",
    "logger.progress=false",
    "logger.tensorboard=false",
    "device=cpu",
]


def _tiny_config(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        return compose("config", overrides=[*TINY, *overrides])


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("l2", []),
        ("ewc", []),
        ("bc_replay", []),
        ("multitask", []),
        ("multitask", ["agent.task_id=true"]),  # the oracle on interleaved tasks
    ],
)
def test_each_method_trains_over_a_tiny_curriculum(
    name: str, extra: list[str], tmp_path: Path
) -> None:
    # Through the config path, as hope-train runs it: method=NAME selects the plug-in.
    summary = train(_tiny_config(f"method={name}", *extra), tmp_path)
    assert summary.perf.shape == (2, 2) and np.all(np.isfinite(summary.perf))
    assert (tmp_path / "metrics.json").is_file()
    assert f"method: {name}" in (tmp_path / "config.yaml").read_text()
    tree = load_checkpoint(tmp_path / "checkpoints" / "stage_01")
    assert tree["method"]["name"] == name
    with open(tmp_path / "train.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("charts/stage")]
    if name == "multitask":
        assert all(not r.get("losses/extra") for r in rows)
        return
    # The method's loss joins PPO's from the second task on, never during the first.
    first = [r["losses/extra"] for r in rows if float(r["charts/stage"]) == 0]
    second = [r["losses/extra"] for r in rows if float(r["charts/stage"]) == 1]
    assert first and all(v == "" for v in first)
    assert second and all(float(v) >= 0 for v in second)
    restored = make_method(name)
    restored.load_state_dict(tree["method"]["state"])
    if isinstance(restored, BCReplay):
        assert restored.size == 2 * 4  # every chunk of a 2-env, 2-chunk rollout, per task
    else:
        assert isinstance(restored, L2 | EWC) and len(restored.anchors) == 2


def test_multitask_oracle_labels_each_step_with_its_episode_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _tiny_config("method=multitask", "agent.task_id=true", "ppo.rollout_len=128")
    runner = build_runner(cfg, tmp_path)
    c = runner.curriculum
    envs = runner.make_envs(c.specs[0], c.obs_dim, c.act_dim, 2, False)
    truth: list[list[int]] = []
    step = envs.step

    def watched(actions: np.ndarray) -> Any:
        # The task each env's current observation belongs to, before the step.
        truth.append([env.task_index for env in envs.envs])
        return step(actions)

    monkeypatch.setattr(envs, "step", watched)
    runner._rollout(runner._start_segment(envs, 0))
    envs.close()
    runner.logger.close()
    expected = np.array(truth)
    # 128 steps of 100-step episodes: each env played both tasks, in stage 0.
    assert all(set(column) == {0, 1} for column in expected.T)
    np.testing.assert_array_equal(runner.buffer.task.cpu().numpy(), expected)

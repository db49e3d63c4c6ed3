"""The belief loss (task-inference supervision, ``ppo.belief_coef``): a masked cross-entropy on
labels the env reports, whose gradient teaches the backbone's memory what identifies the task."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_e2e import tiny_config

from hope_agent.agents.agent import Agent, AgentConfig
from hope_agent.algos.ppo import belief_loss
from hope_agent.build import ConfigError, build_runner
from hope_agent.cli import train
from hope_agent.models.factory import make_backbone
from hope_envs.curriculum import CurriculumError


def test_belief_loss_is_the_cross_entropy_of_the_labelled_valid_steps() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=gen)
    label = torch.randint(0, 4, (3, 5), generator=gen)
    label[0, 1] = -1  # no label
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3] = False  # an autoreset step
    loss, accuracy = belief_loss(logits, label, mask)
    keep = mask & (label >= 0)
    expected = torch.nn.functional.cross_entropy(logits[keep], label[keep])
    torch.testing.assert_close(loss, expected)
    hits = (logits.argmax(-1) == label)[keep].float().mean()
    torch.testing.assert_close(accuracy, hits)
    # Nothing labelled: no loss, no gradient.
    none, _ = belief_loss(logits, torch.full_like(label, -1), mask)
    assert float(none) == 0.0


@pytest.mark.parametrize("backbone", ["gru", "hope"])
def test_the_belief_gradient_teaches_the_memory_to_keep_a_cue(backbone: str) -> None:
    """The label is shown once, as the reward of step 1, and must be read at every later step:
    only a memory trained through the belief loss can answer there."""
    torch.manual_seed(0)
    agent = Agent(
        make_backbone(backbone, 32, **({"chunk_size": 4} if backbone == "hope" else {})),
        AgentConfig(obs_dim=3, act_dim=2, belief_classes=2),
    )
    b, t = 32, 12
    label = torch.randint(0, 2, (b,)).repeat_interleave(t).view(b, t)
    prev_reward = torch.zeros(b, t)
    prev_reward[:, 1] = 2.0 * label[:, 0] - 1.0
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    obs, prev_action = torch.zeros(b, t, 3), torch.zeros(b, t, 2)
    later = torch.zeros(b, t, dtype=torch.bool)
    later[:, 4:] = True  # three steps or more after the cue

    def accuracy_later() -> float:
        out, _ = agent(obs, prev_action, prev_reward, is_first, agent.backbone.init_state(b))
        return float(belief_loss(agent.belief_logits(out.features), label, later)[1])

    before = accuracy_later()
    opt = torch.optim.Adam(agent.parameters(), lr=3e-3)
    for _ in range(90):
        out, _ = agent(obs, prev_action, prev_reward, is_first, agent.backbone.init_state(b))
        loss, _ = belief_loss(agent.belief_logits(out.features), label, is_first.logical_not())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before < 0.8
    assert accuracy_later() > 0.95


def test_an_agent_without_a_belief_head_says_which_option_adds_one() -> None:
    agent = Agent(make_backbone("mlp", 8), AgentConfig(obs_dim=3, act_dim=2))
    assert agent.belief_head is None
    with pytest.raises(ValueError, match="agent.belief_classes"):
        agent.belief_logits(torch.zeros(1, 8))
    with pytest.raises(ValueError, match="belief_classes must be >= 0"):
        AgentConfig(obs_dim=3, act_dim=2, belief_classes=-1)


def test_belief_coef_without_a_belief_head_is_refused_before_any_work(tmp_path: Path) -> None:
    cfg = tiny_config("curriculum=adapt", "ppo.belief_coef=0.5")
    with pytest.raises(ConfigError, match="ppo.belief_coef > 0 needs a belief head"):
        build_runner(cfg, tmp_path)
    assert not list(tmp_path.iterdir())


def test_an_adapt_run_trains_the_belief_head_on_the_hidden_goal(tmp_path: Path) -> None:
    cfg = tiny_config(
        "curriculum=adapt",
        "steps_per_task=128",
        "eval.every=0",
        "video.enabled=false",
        "agent.belief_classes=2",
        "ppo.belief_coef=1.0",
        n_tasks=1,
    )
    runner = build_runner(cfg, tmp_path)
    seen: list[torch.Tensor] = []
    update = runner.ppo.update

    def spy(buffer):  # type: ignore[no-untyped-def]
        seen.append(buffer.label[buffer.valid].clone())
        return update(buffer)

    runner.ppo.update = spy  # type: ignore[method-assign]
    runner.run()
    labels = torch.cat(seen)
    # Every valid step carries its trial's goal, and both goals occur.
    assert set(labels.tolist()) == {0, 1}
    rows = [r for r in csv.DictReader((tmp_path / "train.csv").open()) if r["losses/belief"]]
    assert rows and all(np.isfinite(float(r["losses/belief"])) for r in rows)
    assert all(0.0 <= float(r["losses/belief_accuracy"]) <= 1.0 for r in rows)


def test_belief_labels_from_envs_that_report_none_are_refused_naming_the_key(
    tmp_path: Path,
) -> None:
    cfg = tiny_config(
        "steps_per_task=64", "eval.every=0", "video.enabled=false",
        "agent.belief_classes=2", "ppo.belief_coef=1.0", n_tasks=1,
    )  # fmt: skip
    with pytest.raises(CurriculumError, match=r"info\['goal_index'\].*ppo.belief_coef=0"):
        train(cfg, tmp_path)


def test_with_belief_input_the_heads_read_the_belief_but_train_only_through_its_loss() -> None:
    torch.manual_seed(0)
    agent = Agent(
        make_backbone("gru", 16),
        AgentConfig(obs_dim=3, act_dim=2, belief_classes=2, belief_input=True),
    )
    assert agent.belief_head is not None
    b, t = 4, 5
    inputs = (torch.randn(b, t, 3), torch.zeros(b, t, 2), torch.randn(b, t))
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    out, _ = agent(*inputs, is_first, agent.backbone.init_state(b))
    # The policy's and value's gradients stop at the belief: only its own loss trains it.
    (out.mean.sum() + out.value.sum()).backward()
    assert agent.belief_head.weight.grad is None
    assert agent.policy_mean.weight.grad is not None
    # Another belief answer, another policy.
    with torch.no_grad():
        agent.belief_head.bias.copy_(torch.tensor([5.0, -5.0]))
        moved, _ = agent(*inputs, is_first, agent.backbone.init_state(b))
    assert not torch.allclose(moved.mean, out.mean)
    assert not torch.allclose(moved.value, out.value)
    with pytest.raises(ValueError, match="belief_input needs a belief head"):
        AgentConfig(obs_dim=3, act_dim=2, belief_input=True)

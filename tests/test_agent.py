"""Agent: step-by-step acting equals the sequence forward; SB3-style predict; heads and groups."""

import importlib.util

import numpy as np
import pytest
import torch

from hope_agent.agents import Agent, AgentConfig, gaussian_entropy, gaussian_log_prob
from hope_agent.models.factory import make_backbone

OBS, ACT, D = 5, 3, 16
SMALL = {
    "mlp": {"n_layers": 1},
    "gru": {"n_layers": 1},
    "transformer": {"n_layers": 1, "n_heads": 2, "context": 8},
    "hope": {"n_layers": 1, "n_heads": 2, "chunk_size": 4, "cms_periods": (1, 2)},
}
NAMES = [n for n in SMALL if n != "hope" or importlib.util.find_spec("hope_agent.models.hope")]


def _agent(name: str, **cfg: object) -> Agent:
    torch.manual_seed(0)
    return Agent(
        make_backbone(name, D, **SMALL[name]), AgentConfig(obs_dim=OBS, act_dim=ACT, **cfg)
    )


@pytest.mark.parametrize("name", NAMES)
def test_policy_over_steps_equals_forward_over_sequence(name: str) -> None:
    agent = _agent(name)
    # Non-trivial normaliser statistics: the policy normalises raw inputs itself.
    agent.obs_norm.update(torch.randn(64, OBS) * 2 + 1)
    agent.reward_scale.update(torch.randn(64) * 3)
    b, t = 3, 11
    obs = torch.randn(b, t, OBS)
    rewards = torch.randn(b, t)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 4] = is_first[2, 7] = True  # episode starts mid-stream in some rows
    gen = torch.Generator().manual_seed(1)
    carry = agent.init_carry(b)
    prev_reward = torch.zeros(b)
    prev_actions, prev_rewards, obs_seen, means, values = [], [], [], [], []
    with torch.no_grad():
        for k in range(t):
            prev_actions.append(carry.prev_action)
            carry, res = agent.policy(carry, obs[:, k], prev_reward, is_first[:, k], generator=gen)
            prev_rewards.append(res.prev_reward)
            obs_seen.append(res.obs)
            means.append(res.output.mean)
            values.append(res.value)
            torch.testing.assert_close(
                res.log_prob, gaussian_log_prob(res.action, res.output.mean, res.output.log_std)
            )
            torch.testing.assert_close(res.obs, agent.obs_norm(obs[:, k]))
            torch.testing.assert_close(res.prev_reward, agent.reward_scale(prev_reward))
            assert res.env_action.abs().max() <= 1.0
            prev_reward = rewards[:, k]
        out, _ = agent(
            torch.stack(obs_seen, 1),
            torch.stack(prev_actions, 1),
            torch.stack(prev_rewards, 1),
            is_first,
            agent.init_carry(b).memory,
        )
    torch.testing.assert_close(out.mean, torch.stack(means, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.value, torch.stack(values, 1), atol=1e-5, rtol=1e-5)


def test_previous_action_and_reward_are_masked_at_episode_start() -> None:
    agent = _agent("mlp")
    obs = torch.randn(2, OBS)
    first = torch.tensor([True, True])
    a = agent.tokens(obs, torch.randn(2, ACT), torch.randn(2), first)
    b = agent.tokens(obs, torch.zeros(2, ACT), torch.zeros(2), first)
    torch.testing.assert_close(a, b)
    c = agent.tokens(obs, torch.randn(2, ACT), torch.randn(2), ~first)
    assert not torch.allclose(a, c)


def test_log_prob_and_entropy_match_torch_distributions() -> None:
    mean, log_std = torch.randn(4, ACT), torch.randn(4, ACT) * 0.3
    action = torch.randn(4, ACT)
    dist = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(
        gaussian_log_prob(action, mean, log_std), dist.log_prob(action).sum(-1)
    )
    torch.testing.assert_close(gaussian_entropy(log_std), dist.entropy().sum(-1))


def test_predict_follows_sb3_convention() -> None:
    agent = _agent("gru")
    agent.obs_norm.update(torch.randn(64, OBS) * 3 + 1)
    obs = np.random.default_rng(0).normal(size=(4, OBS)).astype(np.float32)
    action, state = agent.predict(obs, deterministic=True)
    assert action.shape == (4, ACT) and action.dtype == np.float32
    assert np.all(np.abs(action) <= 1.0)
    # Deterministic actions are the clipped mean of the normalised observation.
    with torch.no_grad():
        out, _ = agent(
            agent.obs_norm(torch.as_tensor(obs))[:, None],
            torch.zeros(4, 1, ACT),
            torch.zeros(4, 1),
            torch.ones(4, 1, dtype=torch.bool),
            agent.backbone.init_state(4),
        )
    np.testing.assert_allclose(action, out.mean[:, 0].clamp(-1, 1).numpy(), atol=1e-6)
    # The state carries memory: the same observation gives a different action mid-episode,
    # and episode_start resets it to the fresh-start action.
    again, state2 = agent.predict(obs, state, np.zeros(4, bool), deterministic=True, reward=1.0)
    assert not np.allclose(again, action)
    reset, _ = agent.predict(obs, state2, np.ones(4, bool), deterministic=True)
    np.testing.assert_allclose(reset, action, atol=1e-6)
    single, _ = agent.predict(obs[0], deterministic=True)
    np.testing.assert_allclose(single, action[0], atol=1e-6)
    with pytest.raises(ValueError, match="observations of shape"):
        agent.predict(np.zeros((2, OBS + 1), np.float32))


def test_oracle_task_id_is_required_and_changes_the_policy() -> None:
    agent = _agent("mlp", num_tasks=3, task_id=True)
    obs, r = torch.randn(2, OBS), torch.zeros(2)
    carry = agent.init_carry(2)
    first = torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="task_id"):
        agent.policy(carry, obs, r, first)
    torch.nn.init.normal_(agent.policy_mean.weight)
    a0 = agent.policy(carry, obs, r, first, deterministic=True, task=torch.tensor([0, 0]))[1]
    a1 = agent.policy(carry, obs, r, first, deterministic=True, task=torch.tensor([1, 1]))[1]
    assert not torch.allclose(a0.action, a1.action)


def test_task_index_is_ignored_without_the_oracle_task_id() -> None:
    agent = _agent("mlp", num_tasks=3)
    obs, r = torch.randn(2, OBS), torch.zeros(2)
    first = torch.ones(2, dtype=torch.bool)
    a0 = agent.policy(agent.init_carry(2), obs, r, first, deterministic=True)[1]
    a1 = agent.policy(
        agent.init_carry(2), obs, r, first, deterministic=True, task=torch.tensor([2, 1])
    )[1]
    torch.testing.assert_close(a0.action, a1.action)


def test_deterministic_policy_draws_no_noise() -> None:
    agent = _agent("mlp")
    gen = torch.Generator().manual_seed(3)
    before = gen.get_state()
    agent.policy(
        agent.init_carry(2),
        torch.randn(2, OBS),
        torch.zeros(2),
        torch.ones(2, dtype=torch.bool),
        deterministic=True,
        generator=gen,
    )
    assert torch.equal(gen.get_state(), before)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_hold_every_parameter_once(name: str) -> None:
    agent = _agent(name)
    groups = agent.param_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in agent.parameters()}
    assert all(int(g["period"]) >= 1 for g in groups)


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="obs_dim and act_dim"):
        AgentConfig(obs_dim=0, act_dim=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_graph_policy_equals_the_eager_policy_and_keeps_states_apart(name: str) -> None:
    eager = _agent(name).cuda()
    graphed = _agent(name).cuda()
    graphed.cuda_graphs = True
    b, t = 3, 9
    obs = torch.randn(b, t, OBS, device="cuda")
    is_first = torch.zeros(b, t, dtype=torch.bool, device="cuda")
    is_first[:, 0] = is_first[1, 5] = True
    reward = torch.zeros(b, device="cuda")
    with torch.no_grad():
        c_e, c_g = eager.init_carry(b), graphed.init_carry(b)
        for k in range(t):
            kept = c_g.memory.map(torch.clone)
            peek_g, _ = graphed.policy(c_g, obs[:, k], reward, is_first[:, k], deterministic=True)
            # A peek (its result unused) leaves the carry it was given as it was.
            for a, c in zip(kept.leaves(), c_g.memory.leaves(), strict=True):
                assert torch.equal(a, c)
            c_e, r_e = eager.policy(c_e, obs[:, k], reward, is_first[:, k], deterministic=True)
            c_g, r_g = graphed.policy(c_g, obs[:, k], reward, is_first[:, k], deterministic=True)
            torch.testing.assert_close(r_g.output.mean, r_e.output.mean, rtol=0, atol=0)
            torch.testing.assert_close(r_g.value, r_e.value, rtol=0, atol=0)
            assert peek_g.memory is not c_g.memory
    assert set(graphed._graphs) == {(b, obs.device)}


def test_task_heads_answer_each_task_from_its_own_head() -> None:
    agent = _agent("gru", num_tasks=3, task_id=True, task_heads=True)
    assert agent.policy_mean.out_features == 3 * ACT and agent.value_head.out_features == 3
    b, t = 2, 5
    obs, first = torch.randn(b, t, OBS), torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    prev_a, prev_r = torch.zeros(b, t, ACT), torch.zeros(b, t)
    task = torch.tensor([[0] * t, [2] * t])
    out, _ = agent(obs, prev_a, prev_r, first, agent.init_carry(b).memory, task=task)
    y = out.features
    means = agent.policy_mean(y).unflatten(-1, (3, ACT))
    torch.testing.assert_close(out.mean[0], means[0, :, 0])
    torch.testing.assert_close(out.mean[1], means[1, :, 2])
    torch.testing.assert_close(out.value[1], agent.value_head(y)[1, :, 2])
    # A gradient through task 0's answers reaches no other task's head.
    out.mean[0].sum().backward()
    grad = agent.policy_mean.weight.grad.unflatten(0, (3, ACT))
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0
    with pytest.raises(ValueError, match="task_heads needs the task id"):
        AgentConfig(obs_dim=OBS, act_dim=ACT, task_heads=True)

"""PPO: loss pieces against hand values; chunk replay from stored memory; an update that learns."""

import importlib.util
import math

import numpy as np
import pytest
import torch
from rollouts import fill_rollout

from hope_agent.agents import Agent, AgentConfig, gaussian_entropy
from hope_agent.agents.normalize import RunningMeanStd
from hope_agent.algos import PPO, PPOConfig, RolloutBuffer, clipped_policy_loss, value_loss
from hope_agent.algos.graphed import GraphedLossGrad, max_resets
from hope_agent.algos.ppo import bound_loss, masked_mean, normalize_advantages, world_model_loss
from hope_agent.build import compile_backbone
from hope_agent.models.factory import make_backbone
from hope_agent.models.titans import static_segments
from hope_agent.optim import MultiTimescaleOptimizer

OBS, ACT = 4, 2
# Tiny configs of every backbone kind, for the chunk-replay test.
SMALL = {
    "gru": {"n_layers": 1},
    "mlp": {"n_layers": 1},
    "transformer": {"n_layers": 1, "n_heads": 2, "context": 8},
    "hope": {"n_layers": 1, "n_heads": 2, "chunk_size": 4, "cms_periods": (1, 2)},
    "hope_attention": {"n_layers": 1, "n_heads": 2, "chunk_size": 4, "cms_periods": (1, 2)},
}
HAS_HOPE = importlib.util.find_spec("hope_agent.models.hope") is not None
REPLAYED = [n for n in SMALL if HAS_HOPE or not n.startswith("hope")]


def test_clipped_policy_loss_hand_values() -> None:
    # ratios 1.5 (A=2: clipped at 1.2 -> -2.4) and 0.5 (A=-1: clipped at 0.8 -> 0.8); the third
    # entry is masked out.
    log_prob = torch.tensor([math.log(1.5), math.log(0.5), 5.0])
    old = torch.zeros(3)
    adv = torch.tensor([2.0, -1.0, 100.0])
    mask = torch.tensor([True, True, False])
    loss, stats = clipped_policy_loss(log_prob, old, adv, 0.2, mask)
    assert loss.item() == pytest.approx((-2.4 + 0.8) / 2)
    assert stats["clipfrac"].item() == pytest.approx(1.0)
    kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2
    assert stats["approx_kl"].item() == pytest.approx(kl, rel=1e-5)
    # Inside the clip range the loss is -A * ratio.
    inside, _ = clipped_policy_loss(
        torch.tensor([math.log(1.1)]),
        torch.zeros(1),
        torch.tensor([3.0]),
        0.2,
        torch.tensor([True]),
    )
    assert inside.item() == pytest.approx(-3.3)


def test_value_loss_hand_values() -> None:
    mask = torch.tensor([True, True, False])
    v, ret = torch.tensor([1.0, 2.0, 50.0]), torch.tensor([0.0, 4.0, 0.0])
    assert value_loss(v, ret, mask).item() == pytest.approx(0.5 * (1 + 4) / 2)
    # Clipped: V moved 1.0 from V_old = 0 with clip 0.2 -> max((1-1)^2, (0.2-1)^2) = 0.64.
    clipped = value_loss(
        torch.tensor([1.0]),
        torch.tensor([1.0]),
        torch.tensor([True]),
        old_value=torch.tensor([0.0]),
        clip_coef=0.2,
    )
    assert clipped.item() == pytest.approx(0.32)


def test_masked_helpers_and_world_model_loss() -> None:
    mask = torch.tensor([True, False, True])
    assert masked_mean(torch.tensor([1.0, 100.0, 3.0]), mask).item() == 2.0
    adv = normalize_advantages(torch.tensor([1.0, 100.0, 3.0]), mask)
    assert adv[1] == 0 and adv[0].item() == pytest.approx(-1.0, abs=1e-6)
    wm = world_model_loss(torch.ones(3, 2), torch.zeros(3), torch.zeros(3, 2), torch.ones(3), mask)
    assert wm.item() == pytest.approx(2.0)  # mean obs error 1 + reward error 1


def test_bound_loss_and_entropy_hand_values() -> None:
    # |mu| beyond 1 by 0.5 and 1.0 (the other dims inside): (0.25 + 1.0) / 2; row 3 masked out.
    mean = torch.tensor([[1.5, -0.5], [-2.0, 0.2], [9.0, 9.0]])
    mask = torch.tensor([True, True, False])
    assert bound_loss(mean, mask).item() == pytest.approx(0.625)
    assert bound_loss(torch.tensor([[0.99, -1.0]]), torch.tensor([True])).item() == 0.0
    # Diagonal Gaussian: sum_i log sigma_i + 0.5 * (1 + log 2 pi) per dim.
    log_std = torch.tensor([math.log(2.0), 0.0])
    expected = math.log(2.0) + 2 * 0.5 * (1 + math.log(2 * math.pi))
    assert gaussian_entropy(log_std).item() == pytest.approx(expected)


def test_ppo_loss_weighs_entropy_and_bound_terms() -> None:
    agent = _agent("mlp")
    buffer = RolloutBuffer(8, 2, OBS, ACT, seq_len=4)
    _fill(agent, buffer)
    batch = next(buffer.minibatches(1, np.random.default_rng(0)))
    with torch.no_grad():
        agent.policy_mean.bias.fill_(1.5)  # every mean about 0.5 past the bound
    rng = np.random.default_rng(0)
    opt = MultiTimescaleOptimizer(agent.param_groups(), lr=1e-3)
    base, stats = PPO(agent, opt, PPOConfig(ent_coef=0.0, bound_coef=0.0), rng).loss(batch)
    # The policy's entropy does not depend on the input: ACT dims at log_std_init.
    h = ACT * (agent.config.log_std_init + 0.5 * (1 + math.log(2 * math.pi)))
    assert stats["entropy"].item() == pytest.approx(h)
    assert stats["bound"].item() == pytest.approx(ACT * 0.5**2, abs=0.05)
    weighted, _ = PPO(agent, opt, PPOConfig(ent_coef=0.3, bound_coef=2.0), rng).loss(batch)
    expected = base.item() - 0.3 * h + 2.0 * stats["bound"].item()
    assert weighted.item() == pytest.approx(expected, rel=1e-6)


def test_running_mean_std_matches_numpy() -> None:
    rms = RunningMeanStd((3,))
    data = np.random.default_rng(0).normal(2.0, 3.0, size=(500, 3))
    for chunk in np.array_split(data, 7):
        rms.update(torch.as_tensor(chunk))
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0), rtol=1e-3)


def _fill(agent: Agent, buffer: RolloutBuffer, seed: int = 0) -> None:
    """A synthetic rollout with episode ends (truncation + autoreset) like the runner's; reward
    +1 when the first action dim is positive (something PPO can learn)."""
    fill_rollout(agent, buffer, seed, lambda res, valid, _: (res.action[:, 0] > 0).float() * valid)


def _agent(name: str = "gru", **kwargs: object) -> Agent:
    torch.manual_seed(0)
    return Agent(make_backbone(name, 16, **kwargs), AgentConfig(obs_dim=OBS, act_dim=ACT))


@pytest.mark.parametrize("name", REPLAYED)
def test_chunks_replayed_from_stored_memory_reproduce_the_rollout(name: str) -> None:
    agent = _agent(name, **SMALL[name])
    buffer = RolloutBuffer(24, 3, OBS, ACT, seq_len=8)
    _fill(agent, buffer)
    assert (~buffer.valid).any() and buffer.is_first[1:].any()
    seen = 0
    with torch.no_grad():
        for batch in buffer.minibatches(4, np.random.default_rng(0)):
            out, _ = agent(
                batch.obs, batch.prev_action, batch.prev_reward, batch.is_first, batch.memory
            )
            torch.testing.assert_close(out.value, batch.value, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                out.log_prob(batch.action), batch.log_prob, atol=1e-4, rtol=1e-5
            )
            seen += batch.obs.shape[0]
    assert seen == 3 * 3  # every (chunk, env) pair exactly once


def test_ppo_update_raises_probability_of_rewarded_actions() -> None:
    agent = _agent("gru")
    opt = MultiTimescaleOptimizer(agent.param_groups(), lr=3e-3)
    ppo = PPO(agent, opt, PPOConfig(epochs=4, num_minibatches=2), np.random.default_rng(0))
    before = agent.policy_mean.bias[0].item()
    for it in range(6):
        buffer = RolloutBuffer(32, 4, OBS, ACT, seq_len=8)
        _fill(agent, buffer, seed=it)
        stats = ppo.update(buffer)
    assert np.isfinite(stats["policy"]) and stats["updates"] == 8
    probe = torch.randn(64, OBS)
    with torch.no_grad():
        out = agent.policy(
            agent.init_carry(64),
            probe,
            torch.zeros(64),
            torch.ones(64, dtype=torch.bool),
            deterministic=True,
        )[1].output
    # The policy now prefers a positive first action dim (it earns reward).
    assert out.mean[:, 0].mean().item() > 0.1
    assert agent.policy_mean.bias[0].item() > before


def test_extra_loss_hook_is_added() -> None:
    agent = _agent("mlp")
    opt = MultiTimescaleOptimizer(agent.param_groups(), lr=1e-3)
    calls = []

    def extra(a: Agent, batch, out) -> torch.Tensor:
        calls.append(batch.obs.shape)
        return 0.0 * out.value.sum() + 1.0

    ppo = PPO(agent, opt, PPOConfig(epochs=1, num_minibatches=2), np.random.default_rng(0), extra)
    buffer = RolloutBuffer(8, 2, OBS, ACT, seq_len=4)
    _fill(agent, buffer)
    stats = ppo.update(buffer)
    assert len(calls) == 2 and stats["extra"] == pytest.approx(1.0)


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="multiple of seq_len"):
        RolloutBuffer(10, 2, OBS, ACT, seq_len=4)
    with pytest.raises(ValueError, match="clip_coef > 0"):
        PPOConfig(clip_coef=0.0)
    buffer = RolloutBuffer(8, 2, OBS, ACT, seq_len=4)
    _fill(_agent("mlp"), buffer)
    with pytest.raises(ValueError, match="num_minibatches"):
        next(buffer.minibatches(5, np.random.default_rng(0)))


def test_max_resets_counts_episode_starts_after_the_first_step() -> None:
    first = torch.zeros(3, 6, dtype=torch.bool)
    first[:, 0] = True  # a start at t = 0 adds no segment
    first[1, [2, 4]] = True
    first[2, 5] = True
    assert max_resets(first) == 2
    assert max_resets(first[:, :1]) == 0
    with pytest.raises(ValueError, match=r"must be \(B, L\)"):
        max_resets(first[0])


def test_graph_update_runs_eagerly_where_it_cannot_capture() -> None:
    """On the CPU ``graph_update`` changes nothing: the update is the eager one, bit for bit
    (the graphed path refuses a CPU batch)."""
    results = []
    for graph_update in (False, True):
        agent = _agent("hope", **SMALL["hope"])
        opt = MultiTimescaleOptimizer(agent.param_groups(), lr=1e-3)
        ppo = PPO(
            agent,
            opt,
            PPOConfig(epochs=1, num_minibatches=2),
            np.random.default_rng(0),
            graph_update=graph_update,
        )
        assert not ppo.graphed
        buffer = RolloutBuffer(8, 2, OBS, ACT, seq_len=4)
        _fill(agent, buffer)
        ppo.update(buffer)
        results.append([p.detach().clone() for p in agent.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    example = next(buffer.minibatches(2, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="needs the batch on an available CUDA device"):
        GraphedLossGrad(ppo.loss, list(agent.parameters()), example, max_resets=0)


def _three_updates(
    name: str, graph_update: bool, device: str, compiled: bool = False
) -> tuple[list, list]:
    """Three PPO updates over rollouts whose episodes shorten, so that the reset bound grows;
    ``compiled``: HOPE's segments through ``torch.compile`` (``compile=true``)."""
    agent = _agent(name, **SMALL[name])
    if compiled:
        compile_backbone(agent.backbone)
    opt = MultiTimescaleOptimizer(agent.param_groups(), lr=1e-3)
    ppo = PPO(
        agent.to(device),
        opt,
        PPOConfig(epochs=2, num_minibatches=3),
        np.random.default_rng(0),
        graph_update=graph_update,
    )
    stats = []
    for it, done_prob in enumerate((0.05, 0.2, 0.4)):
        cpu_agent = _agent(name, **SMALL[name])
        cpu_agent.load_state_dict({k: v.cpu() for k, v in agent.state_dict().items()})
        buffer = RolloutBuffer(16, 5, OBS, ACT, seq_len=8)
        fill_rollout(
            cpu_agent,
            buffer,
            it,
            lambda res, valid, _: (res.action[:, 0] > 0).float() * valid,
            done_prob,
        )
        stats.append(ppo.update(_to(buffer, device)))
    if graph_update:  # the graph's gradient buffers are let go after each update
        assert all(p.grad is None for p in agent.parameters())
    return [p.detach().cpu() for p in agent.parameters()], stats


def _assert_same_updates(eager: tuple[list, list], graphed: tuple[list, list], tol: float) -> None:
    for a, b in zip(eager[0], graphed[0], strict=True):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol / 10)
    for a, b in zip(eager[1], graphed[1], strict=True):
        assert a.keys() == b.keys() and a["updates"] == b["updates"]
        for k in ("policy", "value", "entropy", "approx_kl"):
            assert b[k] == pytest.approx(a[k], rel=10 * tol, abs=1e-5)


@pytest.mark.parametrize("name", ["hope", "mlp"])
def test_graphed_update_bookkeeping_equals_the_eager_update(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PPO's graphed path on the CPU, the capture replaced by an eager call through the same
    buffers: one graph per minibatch shape, recaptured when the reset bound grows, gradients
    handed to the optimizer through ``.grad``; the weights end where the eager update's do."""
    built: list[int] = []

    def uncaptured(*args: object, **kwargs: object) -> GraphedLossGrad:
        built.append(args[3])  # type: ignore[arg-type]
        return GraphedLossGrad(*args, **kwargs, capture=False)  # type: ignore[arg-type]

    eager = _three_updates(name, False, "cpu")
    monkeypatch.setattr(PPO, "graphed", property(lambda self: self.graph_update))
    monkeypatch.setattr("hope_agent.algos.ppo.GraphedLossGrad", uncaptured)
    graphed = _three_updates(name, True, "cpu")
    _assert_same_updates(eager, graphed, 1e-5)
    # minibatches of 4, 3 and 3 sequences: two captures (shapes) per bound, the bound only grows
    bounds = sorted(set(built))
    assert len(bounds) >= 2 and built == [b for b in bounds for _ in range(2)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name", ["hope", "mlp"])
def test_graphed_update_equals_the_eager_update_on_cuda(name: str) -> None:
    """The same three updates with the minibatches replayed from CUDA graphs."""
    _assert_same_updates(
        _three_updates(name, False, "cuda"), _three_updates(name, True, "cuda"), 1e-4
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_compiled_segments_inside_the_update_graph_equal_the_eager_update_on_cuda() -> None:
    """``compile=true`` with the graphed update: the compiled segments captured in the graph."""
    _assert_same_updates(
        _three_updates("hope", False, "cuda"), _three_updates("hope", True, "cuda", True), 1e-4
    )


def _to(buffer: RolloutBuffer, device: str) -> RolloutBuffer:
    """A copy of a filled buffer on ``device``."""
    out = RolloutBuffer(buffer.num_steps, buffer.num_envs, OBS, ACT, buffer.seq_len, device=device)
    for name, value in vars(buffer).items():
        if isinstance(value, torch.Tensor):
            setattr(out, name, value.to(device))
    out.memories = [m.to(device) for m in buffer.memories if m is not None]
    return out


class _HostRead(RuntimeError):
    pass


@pytest.mark.parametrize("name", ["hope", "mlp"])
def test_a_capturable_loss_never_reads_a_tensor_on_the_host(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``graph_update`` captures (the loss and its gradients, inside ``static_segments``)
    must not copy a tensor to the host: on a GPU that is a sync, which breaks the capture. On
    the CPU every Python-level read is made to raise; HOPE's data-dependent segment loop is the
    control that the trap works."""
    agent = _agent(name, **SMALL[name])
    assert agent.backbone.capturable_forward
    opt = MultiTimescaleOptimizer(agent.param_groups(), lr=1e-3)
    ppo = PPO(agent, opt, PPOConfig(), np.random.default_rng(0))
    buffer = RolloutBuffer(16, 3, OBS, ACT, seq_len=8)
    _fill(agent, buffer)
    resets = max_resets(buffer.sequences("is_first"))
    batch = next(buffer.minibatches(1, np.random.default_rng(0)))
    params = [p for g in opt.param_groups for p in g["params"]]

    def refuse(*args: object, **kwargs: object) -> None:
        raise _HostRead("a tensor read on the host")

    for method in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    with static_segments(resets):
        loss, _ = ppo.loss(batch)
        torch.autograd.grad(loss, params, allow_unused=True)
    if name == "hope":
        assert resets > 0
        with pytest.raises(_HostRead):
            ppo.loss(batch)

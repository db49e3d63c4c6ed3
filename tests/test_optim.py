"""MultiTimescaleOptimizer (the CMS outer clock) and M3."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from hope_agent.agents import Agent, AgentConfig
from hope_agent.models.hope import Hope, HopeConfig
from hope_agent.optim import (
    M3,
    GroupSettings,
    MultiTimescaleOptimizer,
    apply_group_settings,
    newton_schulz,
    split_matrix_params,
)


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def _backward(model: nn.Module, seed: int) -> None:
    """A fresh, seed-determined loss and its gradients (so two runs see the same data)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 5, generator=gen)
    y = torch.randn(16, 3, generator=gen)
    for p in model.parameters():
        p.grad = None
    ((model(x) - y) ** 2).mean().backward()


def _groups(model: nn.Sequential, periods: tuple[int, int, int], **extra: float) -> list[dict]:
    return [
        {"params": list(model[2 * i].parameters()), "period": p, "name": f"level{i}", **extra}
        for i, p in enumerate(periods)
    ]


def test_period_one_is_bit_identical_to_the_base_optimizer() -> None:
    model = _model()
    ref = copy.deepcopy(model)
    opt = MultiTimescaleOptimizer(
        [
            {"params": list(model[0].parameters()), "lr": 3e-3},
            {"params": list(model[2:].parameters())},
        ],
        base=torch.optim.AdamW,
        lr=1e-2,
        weight_decay=0.1,
    )
    ref_opt = torch.optim.AdamW(
        [{"params": list(ref[0].parameters()), "lr": 3e-3}, {"params": list(ref[2:].parameters())}],
        lr=1e-2,
        weight_decay=0.1,
    )
    for seed in range(6):
        _backward(model, seed)
        _backward(ref, seed)
        opt.step()
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(model[0].weight, _model()[0].weight)


def test_period_group_moves_only_on_multiples_by_the_summed_gradient() -> None:
    """Against plain SGD applied once, on the gradient summed by hand over the window."""
    periods = (1, 3, 4)
    model = _model()
    opt = MultiTimescaleOptimizer(_groups(model, periods), base=torch.optim.SGD, lr=0.1)
    refs = [copy.deepcopy(model[2 * i]) for i in range(3)]
    ref_opts = [torch.optim.SGD(r.parameters(), lr=0.1) for r in refs]
    sums: list[list[torch.Tensor | None]] = [[None, None] for _ in range(3)]
    for call in range(1, 13):
        _backward(model, call)
        before = [[p.detach().clone() for p in model[2 * i].parameters()] for i in range(3)]
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        assert opt.calls == call
        # step() leaves the user-visible gradients untouched.
        for p, g in zip(model.parameters(), grads, strict=True):
            assert torch.equal(p.grad, g)
        for i, period in enumerate(periods):
            layer = model[2 * i]
            for j, p in enumerate(layer.parameters()):
                acc = sums[i][j]
                sums[i][j] = p.grad.clone() if acc is None else acc + p.grad
            if call % period == 0:
                for r, s in zip(refs[i].parameters(), sums[i], strict=True):
                    r.grad = s
                ref_opts[i].step()
                sums[i] = [None, None]
            for p, r, b in zip(layer.parameters(), refs[i].parameters(), before[i], strict=True):
                assert torch.equal(p, r), (call, i)
                assert torch.equal(p, b) == (call % period != 0), (call, i)


def test_adamw_period_group_equals_adamw_on_window_sums() -> None:
    """No weight decay and no moment drift on the calls where a group is not due."""
    period = 3
    model = nn.Linear(5, 3)
    opt = MultiTimescaleOptimizer(
        [{"params": list(model.parameters()), "period": period}], lr=1e-2, weight_decay=0.1
    )
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    window: list[list[torch.Tensor]] = []
    gen = torch.Generator().manual_seed(0)
    for call in range(1, 10):
        x, y = torch.randn(8, 5, generator=gen), torch.randn(8, 3, generator=gen)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        window.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        if call % period == 0:
            for r, *gs in zip(ref.parameters(), *window, strict=True):
                total = gs[0].clone()
                for g in gs[1:]:
                    total += g
                r.grad = total
            ref_opt.step()
            window = []
        for p, r in zip(model.parameters(), ref.parameters(), strict=True):
            assert torch.equal(p, r)


def test_state_dict_round_trip_mid_period() -> None:
    model = _model()
    opt = MultiTimescaleOptimizer(_groups(model, (1, 4, 8)), lr=1e-2, weight_decay=0.05)
    for seed in range(6):  # mid-period for both slow groups
        _backward(model, seed)
        opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)

    for seed in range(6, 17):
        _backward(model, seed)
        opt.step()

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = _model()
    resumed.load_state_dict(saved["model"])
    opt2 = MultiTimescaleOptimizer(_groups(resumed, (1, 1, 1)), lr=0.5)
    opt2.load_state_dict(saved["opt"])
    assert opt2.calls == 6
    assert [g["period"] for g in opt2.param_groups] == [1, 4, 8]
    assert opt2.param_groups is opt2.base.param_groups
    for seed in range(6, 17):
        _backward(resumed, seed)
        opt2.step()
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_deepcopy_keeps_base_and_counter() -> None:
    model = nn.Linear(3, 2)
    opt = MultiTimescaleOptimizer([{"params": list(model.parameters()), "period": 2}], lr=0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    clone = copy.deepcopy(opt)
    assert clone.calls == 1
    assert clone.param_groups is clone.base.param_groups
    saved = clone.state_dict()["multitimescale"]["grad_sum"]
    assert torch.equal(saved[0], opt.state[model.weight]["grad_sum"])


def test_zero_lr_group_never_moves() -> None:
    model = _model()
    groups = _groups(model, (1, 2, 5))
    groups[1]["lr"] = 0.0
    opt = MultiTimescaleOptimizer(groups, lr=1e-2, weight_decay=0.3)
    frozen = [p.detach().clone() for p in model[2].parameters()]
    for seed in range(10):
        _backward(model, seed)
        opt.step()
    for p, q in zip(model[2].parameters(), frozen, strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(model[0].weight, _model()[0].weight)


def test_lr_changes_reach_the_base_optimizer() -> None:
    model = nn.Linear(4, 1, bias=False)
    opt = MultiTimescaleOptimizer(model.parameters(), base=torch.optim.SGD, lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    deltas = []
    for _ in range(3):
        model.weight.grad = torch.ones_like(model.weight)
        before = model.weight.detach().clone()
        opt.step()
        scheduler.step()
        deltas.append((before - model.weight).mean().item())
    assert deltas == [1.0, 0.5, 0.25]
    for g in opt.param_groups:
        g["lr"] *= 0.5
    assert opt.base.param_groups[0]["lr"] == 0.0625


def test_closure_and_zero_grad() -> None:
    model = nn.Linear(4, 1)
    opt = MultiTimescaleOptimizer(
        [{"params": list(model.parameters()), "period": 2}], base=torch.optim.SGD, lr=0.1
    )
    x = torch.randn(8, 4)

    def closure() -> float:
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss.item()

    start = model.weight.detach().clone()
    loss = opt.step(closure)
    assert isinstance(loss, float) and torch.equal(model.weight, start)
    opt.step(closure)
    assert not torch.equal(model.weight, start)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


def test_add_param_group_uses_global_counter() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = MultiTimescaleOptimizer(a.parameters(), base=torch.optim.SGD, lr=0.1)
    opt.step()
    opt.add_param_group({"params": list(b.parameters()), "period": 2, "name": "late"})
    assert opt.base.param_groups[-1] is opt.param_groups[-1]
    assert opt.param_groups[-1]["lr"] == 0.1
    assert opt.is_due(opt.param_groups[-1])  # the next call (2) is a multiple of 2


@pytest.mark.parametrize("period", [0, -1, 1.5, True, "2"])
def test_bad_period_raises(period: object) -> None:
    layer = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"param group 0 \('slow'\) has period=.*int >= 1"):
        MultiTimescaleOptimizer(
            [{"params": list(layer.parameters()), "period": period, "name": "slow"}]
        )


def test_load_foreign_state_dict_raises() -> None:
    layer = nn.Linear(2, 2)
    opt = MultiTimescaleOptimizer(layer.parameters())
    with pytest.raises(ValueError, match="not saved by a MultiTimescaleOptimizer"):
        opt.load_state_dict(torch.optim.AdamW(layer.parameters()).state_dict())


# ----------------------------------------------------------------------------- clocks and rates


def _clock_groups(model: nn.Sequential) -> list[dict]:
    """Level 0 every 4 optimizer steps, level 1 every 100 env steps, level 2 once per task."""
    return [
        {"params": list(model[0].parameters()), "period": 4, "name": "steps"},
        {"params": list(model[2].parameters()), "period": 100, "clock": "env_steps", "name": "env"},
        {"params": list(model[4].parameters()), "period": 1, "clock": "tasks", "name": "task"},
    ]


def _train_tasks(
    model: nn.Sequential,
    opt: MultiTimescaleOptimizer,
    tasks: range,
    updates: int = 5,
    moved: list[tuple[int, int, str]] | None = None,
) -> None:
    """A trainer's loop: per task ``updates`` PPO updates of 3 optimizer steps on 40 env steps,
    the env clock advanced after each update and the task clock at each task end."""
    for task in tasks:
        for update in range(updates):
            for minibatch in range(3):
                _backward(model, 1000 * task + 10 * update + minibatch)
                before = [model[2 * i].weight.detach().clone() for i in range(3)]
                opt.step()
                if moved is not None:
                    for i, name in enumerate(("steps", "env", "task")):
                        if not torch.equal(model[2 * i].weight, before[i]):
                            moved.append((task, 3 * update + minibatch, name))
            opt.advance("env_steps", 40)
        opt.advance("tasks", 1)


def test_updates_per_level_per_task_follow_each_groups_clock() -> None:
    model = _model()
    opt = MultiTimescaleOptimizer(_clock_groups(model), base=torch.optim.SGD, lr=0.1)
    moved: list[tuple[int, int, str]] = []
    _train_tasks(model, opt, range(3), moved=moved)
    per_task = {
        (t, name): sum(1 for m in moved if m[0] == t and m[2] == name)
        for t in range(3)
        for name in ("steps", "env", "task")
    }
    # 15 steps per task (45 in all): the step clock moves at calls 4, 8, ..., 44 (3 or 4 a task).
    assert [per_task[(t, "steps")] for t in range(3)] == [3, 4, 4]
    # 200 env steps per task, crossings at 120, 200, ..., 600: the first step after each.
    assert [per_task[(t, "env")] for t in range(3)] == [1, 2, 2]
    # The task clock: nothing during task 0, then exactly one update at each next task's start.
    assert [per_task[(t, "task")] for t in range(3)] == [0, 1, 1]
    assert [m[1] for m in moved if m[2] == "task"] == [0, 0]
    assert opt.update_counts == {"steps": 11, "env": 5, "task": 2}
    clocks = [opt.clock(c) for c in ("optimizer_steps", "env_steps", "tasks")]
    assert clocks == [45, 600, 3]


def test_a_task_clock_group_applies_exactly_the_finished_tasks_gradient_sum() -> None:
    """The window holds the task's steps only: the first step of the next task opens the next."""
    model = _model()
    opt = MultiTimescaleOptimizer(_clock_groups(model), base=torch.optim.SGD, lr=0.1)
    layer = model[4]
    start = [p.detach().clone() for p in layer.parameters()]
    sums = [torch.zeros_like(p) for p in layer.parameters()]
    for update in range(5):
        for minibatch in range(3):
            _backward(model, 10 * update + minibatch)
            for s, p in zip(sums, layer.parameters(), strict=True):
                s += p.grad
            opt.step()
        opt.advance("env_steps", 40)
    opt.advance("tasks", 1)
    for p, s0 in zip(layer.parameters(), start, strict=True):
        assert torch.equal(p, s0)
    assert opt.is_due(opt.param_groups[2])
    _backward(model, 999)  # the next task's first gradient: not part of the applied sum
    opt.step()
    for p, s0, s in zip(layer.parameters(), start, sums, strict=True):
        torch.testing.assert_close(p.detach(), s0 - 0.1 * s, atol=1e-6, rtol=0)
    assert not opt.is_due(opt.param_groups[2])


def test_resume_mid_period_on_every_clock_equals_an_uninterrupted_run() -> None:
    model = _model()
    opt = MultiTimescaleOptimizer(_clock_groups(model), lr=1e-2, weight_decay=0.05)
    _train_tasks(model, opt, range(1), updates=3)  # mid-window on the env and step clocks
    _train_tasks(model, opt, range(1, 2), updates=2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    _train_tasks(model, opt, range(2, 4))

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = _model()
    resumed.load_state_dict(saved["model"])
    opt2 = MultiTimescaleOptimizer(_clock_groups(resumed), lr=0.5)
    opt2.load_state_dict(saved["opt"])
    assert (opt2.clock("env_steps"), opt2.clock("tasks"), opt2.calls) == (200, 2, 15)
    _train_tasks(resumed, opt2, range(2, 4))
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt2.update_counts == opt.update_counts


def _tiny_agent() -> Agent:
    torch.manual_seed(0)
    backbone = Hope(HopeConfig(d_model=16, n_layers=1, n_heads=2, chunk_size=4, cms_periods=(1, 2)))
    return Agent(backbone, AgentConfig(obs_dim=3, act_dim=2))


def _agent_loss(agent: Agent, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(2, 6, 3, generator=gen)
    out, _ = agent(
        obs,
        torch.randn(2, 6, 2, generator=gen),
        torch.randn(2, 6, generator=gen),
        torch.zeros(2, 6, dtype=torch.bool),
        agent.backbone.init_state(2),
    )
    return out.mean.square().mean() + out.value.square().mean()


def test_lr_scale_zero_leaves_a_cms_level_bit_identical() -> None:
    agent = _tiny_agent()
    groups = apply_group_settings(agent.param_groups(), {"cms.1": {"lr_scale": 0.0}})
    opt = MultiTimescaleOptimizer(groups, lr=1e-2, weight_decay=0.1)
    frozen = {n: p.detach().clone() for n, p in agent.named_parameters() if ".levels.1." in n}
    others = {n: p.detach().clone() for n, p in agent.named_parameters() if ".levels.0." in n}
    assert frozen and others
    for seed in range(6):
        opt.zero_grad()
        _agent_loss(agent, seed).backward()
        opt.step()
    params = dict(agent.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())
    assert all(not torch.equal(params[n], p) for n, p in others.items())
    assert opt.update_counts["cms.1"] == 3  # its clock ran: it applied zero-size steps


def test_lr_scale_multiplies_the_groups_own_or_default_learning_rate() -> None:
    model = _model()
    groups = [
        {"params": list(model[0].parameters()), "name": "a", "lr": 0.2},
        {"params": list(model[2].parameters()), "name": "b"},
        {"params": list(model[4].parameters()), "name": "c"},
    ]
    settings = {"a": GroupSettings(lr_scale=0.5), "b": {"lr_scale": 0.25, "period": 3}}
    opt = MultiTimescaleOptimizer(apply_group_settings(groups, settings), torch.optim.SGD, lr=1.0)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.25, 1.0]
    assert [g["period"] for g in opt.param_groups] == [1, 3, 1]
    assert "lr_scale" not in groups[0]  # the caller's groups are not edited
    late = nn.Linear(2, 2)
    opt.add_param_group({"params": list(late.parameters()), "lr_scale": 0.5})
    assert opt.param_groups[-1]["lr"] == 0.5
    # A checkpoint holds the scaled rate: loading does not scale it again.
    opt2 = MultiTimescaleOptimizer(apply_group_settings(groups, settings), torch.optim.SGD, lr=1.0)
    opt2.add_param_group({"params": list(late.parameters()), "lr_scale": 0.5})
    opt2.load_state_dict(opt.state_dict())
    assert [g["lr"] for g in opt2.param_groups] == [0.1, 0.25, 1.0, 0.5]


def test_group_settings_and_clocks_reject_bad_values_clearly() -> None:
    groups = _clock_groups(_model())
    with pytest.raises(ValueError, match=r"name \['cms.9'\].*\['steps', 'env', 'task'\]"):
        apply_group_settings(groups, {"cms.9": {"lr_scale": 0.5}})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['rate'\]"):
        apply_group_settings(groups, {"env": {"rate": 0.5}})
    with pytest.raises(ValueError, match=r"clock='epochs'; valid clocks: optimizer_steps"):
        apply_group_settings(groups, {"env": {"clock": "epochs"}})
    with pytest.raises(ValueError, match=r"lr_scale=-1.*>= 0"):
        apply_group_settings(groups, {"env": GroupSettings(lr_scale=-1.0)})
    opt = MultiTimescaleOptimizer(groups)
    with pytest.raises(ValueError, match="optimizer steps advance themselves"):
        opt.advance("optimizer_steps", 1)
    with pytest.raises(ValueError, match="amount must be an int >= 0"):
        opt.advance("tasks", -1)
    with pytest.raises(ValueError, match="unknown clock 'epochs'"):
        opt.clock("epochs")


def test_reset_state_makes_the_next_update_a_first_update() -> None:
    model = _model()
    opt = MultiTimescaleOptimizer(_groups(model, (1, 3, 1)), lr=1e-2)
    for seed in range(4):  # mid-window for level 1
        _backward(model, seed)
        opt.step()
    reset = [*model[2].parameters(), *model[4].parameters()]
    opt.reset_state(reset)
    assert all(p not in opt.state and p not in opt.base.state for p in reset)
    fresh = copy.deepcopy(model[4])
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    _backward(model, 99)
    for p, q in zip(model[4].parameters(), fresh.parameters(), strict=True):
        q.grad = p.grad.clone()
    opt.step()
    fresh_opt.step()
    for p, q in zip(model[4].parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)


# ----------------------------------------------------------------------------- M3


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (24, 24)])
def test_newton_schulz_singular_values_near_one(shape: tuple[int, int]) -> None:
    g = torch.randn(*shape)
    out = newton_schulz(g, steps=5)
    assert out.shape == g.shape
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.6 and s.max() < 1.2
    s_in = torch.linalg.svdvals(g)
    assert s_in.max() / s_in.min() > 2  # the input was far from orthogonal
    # NS is an odd matrix polynomial: same singular vectors, only the singular values move.
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    core = u.T @ out @ vh.T
    off_diagonal = core - torch.diag(torch.diagonal(core))
    assert off_diagonal.abs().max() < 1e-4


def test_newton_schulz_transposes_tall_matrices() -> None:
    g = torch.randn(40, 8)
    torch.testing.assert_close(newton_schulz(g), newton_schulz(g.T).T, atol=0, rtol=0)


def test_newton_schulz_orthogonalises_each_matrix_of_a_stack() -> None:
    g = torch.randn(2, 3, 6, 4)
    g[0, 1] *= 100.0  # the normalisation is per matrix, not over the stack
    out = newton_schulz(g)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(out[i, j], newton_schulz(g[i, j]), atol=1e-6, rtol=1e-5)


def test_m3_updates_a_stack_of_matrices_as_separate_matrices() -> None:
    stack = nn.Parameter(torch.randn(2, 3, 5, 4))
    parts = [nn.Parameter(stack.detach()[i, j].clone()) for i in range(2) for j in range(3)]
    opt_stack = M3([stack], lr=0.05, slow_every=2)
    opt_parts = M3(parts, lr=0.05, slow_every=2)
    for _ in range(5):
        g = torch.randn(2, 3, 5, 4)
        stack.grad = g.clone()
        for n, p in enumerate(parts):
            p.grad = g[n // 3, n % 3].clone()
        opt_stack.step()
        opt_parts.step()
    torch.testing.assert_close(
        stack.detach(), torch.stack([p.detach() for p in parts]).view(2, 3, 5, 4)
    )


def test_split_matrix_params_sends_hope_stacked_matrices_to_m3() -> None:
    model = Hope(HopeConfig(d_model=16, n_layers=1, n_heads=2, chunk_size=4, cms_periods=(1,)))
    matrices, others = split_matrix_params(model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    to_m3 = {names[id(p)].rsplit(".", 1)[-1] for p in matrices}
    assert {"proj_w_in", "proj_w_out", "mem_w_in", "mem_w_out", "w_q", "conv_weight"} <= to_m3
    assert all(p.dim() == 1 for p in others) and others
    opt = M3(matrices, lr=0.01)  # accepted as they are
    y, _ = model(torch.randn(2, 5, 16), model.init_state(2))
    y.square().mean().backward()
    before = [p.detach().clone() for p in matrices]
    opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(matrices, before, strict=True))


def test_m3_decreases_least_squares_loss() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=gen)
    y = x @ torch.randn(16, 8, generator=gen)
    w = nn.Parameter(torch.zeros(16, 8))
    opt = M3([w], lr=0.03, slow_every=5)
    losses = []
    for _ in range(200):
        loss = ((x @ w - y) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    # The literal algorithm's V is a running sum, so its steps shrink like 1/sqrt(t): progress is
    # steady but slow (measured: 17.5 -> 6.4 over 200 steps).
    assert losses[-1] < losses[100] < losses[0]
    assert losses[-1] < 0.5 * losses[0]


def test_m3_matches_a_hand_written_algorithm_1() -> None:
    """Hand-written Algorithm 1 on two parameters over 2f + 1 steps."""
    f, lr, (b1, b2, b3), alpha, eps = 2, 0.05, (0.9, 0.5, 0.7), 0.5, 1e-3
    w = nn.Parameter(torch.randn(6, 4))
    opt = M3([w], lr=lr, betas=(b1, b2, b3), alpha=alpha, slow_every=f, ns_steps=5, eps=eps)
    ref = w.detach().clone()
    m1, v, m2, o2 = (torch.zeros_like(ref) for _ in range(4))
    window: list[torch.Tensor] = []
    for t in range(1, 2 * f + 2):
        g = torch.randn(6, 4)
        w.grad = g.clone()
        opt.step()
        m1 = m1 + b1 * g
        v = v + b2 * g**2
        ref = ref - lr * (newton_schulz(m1) + alpha * o2) / (v.sqrt() + eps)
        window.append(g)
        if t % f == 0:
            m2 = m2 + b3 * torch.stack(window).sum(0)
            o2 = newton_schulz(m2)
            window = []
        torch.testing.assert_close(w.detach(), ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(opt.state[w]["m2"], m2, atol=1e-6, rtol=1e-6)


def test_m3_slow_momentum_changes_only_every_f_steps() -> None:
    f = 3
    w = nn.Parameter(torch.randn(5, 7))
    opt = M3([w], slow_every=f)
    previous = None
    for t in range(1, 11):
        w.grad = torch.randn(5, 7)
        opt.step()
        m2, o2 = opt.state[w]["m2"].clone(), opt.state[w]["o2"].clone()
        if previous is not None:
            changed = not torch.equal(m2, previous[0])
            assert changed == (t % f == 0), t
            assert (not torch.equal(o2, previous[1])) == (t % f == 0), t
        previous = (m2, o2)
    assert opt.state[w]["step"] == 10


def test_m3_state_dict_round_trip() -> None:
    w = nn.Parameter(torch.randn(6, 5))
    opt = M3([w], slow_every=4)
    grads = [torch.randn(6, 5) for _ in range(12)]
    for g in grads[:6]:
        w.grad = g.clone()
        opt.step()
    buffer = io.BytesIO()
    torch.save({"w": w.detach().clone(), "opt": opt.state_dict()}, buffer)
    for g in grads[6:]:
        w.grad = g.clone()
        opt.step()
    buffer.seek(0)
    saved = torch.load(buffer)
    w2 = nn.Parameter(saved["w"])
    opt2 = M3([w2], slow_every=4)
    opt2.load_state_dict(saved["opt"])
    for g in grads[6:]:
        w2.grad = g.clone()
        opt2.step()
    assert torch.equal(w, w2)


def test_m3_with_adamw_on_the_rest_of_a_model() -> None:
    model = _model()
    matrices, others = split_matrix_params(model.parameters())
    assert [p.dim() for p in matrices] == [2, 2, 2] and [p.dim() for p in others] == [1, 1, 1]
    opts = [M3(matrices, lr=0.01), torch.optim.AdamW(others, lr=1e-2)]
    start = [p.detach().clone() for p in model.parameters()]
    for seed in range(3):
        _backward(model, seed)
        for opt in opts:
            opt.step()
    assert all(not torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))


def test_m3_rejects_non_matrix_params_and_bad_hyperparameters() -> None:
    with pytest.raises(
        ValueError, match=r"matrix parameters \(dim >= 2\) only.*\(8,\).*split_matrix_params"
    ):
        M3(nn.Linear(4, 8).parameters())
    w = nn.Parameter(torch.zeros(2, 2))
    for kwargs, match in [
        ({"slow_every": 0}, "slow_every"),
        ({"ns_steps": 0}, "ns_steps"),
        ({"betas": (0.9, 0.9)}, "betas"),
        ({"lr": -1.0}, "lr"),
        ({"eps": 0.0}, "eps"),
        ({"alpha": -0.5}, "alpha"),
    ]:
        with pytest.raises(ValueError, match=match):
            M3([w], **kwargs)
    with pytest.raises(ValueError, match="slow_every"):
        M3([{"params": [w], "slow_every": 2.5}])


def test_m3_as_the_base_of_a_multitimescale_optimizer() -> None:
    fast, slow = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4, 3))
    opt = MultiTimescaleOptimizer(
        [{"params": [fast]}, {"params": [slow], "period": 3}], base=M3, lr=0.01, slow_every=2
    )
    for call in range(1, 7):
        fast.grad, slow.grad = torch.randn(4, 3), torch.randn(4, 3)
        before = slow.detach().clone()
        opt.step()
        assert torch.equal(slow, before) == (call % 3 != 0)
    assert opt.base.state[fast]["step"] == 6
    assert opt.base.state[slow]["step"] == 2

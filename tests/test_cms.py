"""Continuum Memory System: the chain, its variants, MLP initialisation and its periods."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hope_agent.models.cms import CMS, CMSLevel
from hope_agent.models.hope import Hope, HopeConfig
from hope_agent.optim import MultiTimescaleOptimizer


def _levels(cms: CMS) -> list[CMSLevel]:
    return [lvl for lvl in cms.levels if isinstance(lvl, CMSLevel)]


def test_sequential_is_the_chain_of_residual_mlps_minus_its_input() -> None:
    cms = CMS(8, (1, 4, 16), hidden_mult=2).double()
    z = torch.randn(3, 5, 8, dtype=torch.float64)
    chain = z
    for lvl in _levels(cms):
        chain = chain + lvl.fc2(F.gelu(lvl.fc1(chain)))
    torch.testing.assert_close(cms(z), chain - z)


def test_independent_sums_levels_on_the_same_input() -> None:
    cms = CMS(8, (1, 4), variant="independent").double()
    z = torch.randn(4, 8, dtype=torch.float64)
    lv = _levels(cms)
    torch.testing.assert_close(cms(z), lv[0](z) + lv[1](z))
    # and differs from the sequential chain with the same weights
    seq = CMS(8, (1, 4)).double()
    seq.load_state_dict(cms.state_dict())
    assert not torch.allclose(seq(z), cms(z))


@pytest.mark.parametrize("variant", ["sequential", "independent"])
@pytest.mark.parametrize("level", [0, 2])
def test_init_from_mlp_reproduces_the_mlp(variant: str, level: int) -> None:
    fc1, fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
    cms = CMS(8, (1, 4, 16), hidden_mult=4, variant=variant)
    cms.init_from_mlp(fc1, fc2, level=level)
    z = torch.randn(6, 8)
    torch.testing.assert_close(cms(z), fc2(F.gelu(fc1(z))))


def test_init_from_mlp_rejects_mismatched_shapes() -> None:
    cms = CMS(8, (1, 4), hidden_mult=4)
    with pytest.raises(ValueError, match="cms_hidden_mult"):
        cms.init_from_mlp(nn.Linear(8, 16), nn.Linear(16, 8))
    with pytest.raises(ValueError, match="level"):
        cms.init_from_mlp(nn.Linear(8, 32), nn.Linear(32, 8), level=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"periods": ()}, "period"),
        ({"periods": (1, 0)}, "period"),
        ({"variant": "nested"}, "variant"),
    ],
)
def test_bad_cms_arguments(kwargs: dict, match: str) -> None:
    args = {"d_model": 8, "periods": (1, 2), **kwargs}
    with pytest.raises(ValueError, match=match):
        CMS(**args)


def test_levels_move_only_on_their_period_by_the_summed_gradient() -> None:
    """HOPE.md section 7: level l changes only on steps = 0 (mod P_l), by the accumulated gradient;
    all learning rates 0 reproduce the initial model."""
    config = HopeConfig(d_model=8, n_layers=2, n_heads=2, chunk_size=4, cms_periods=(1, 2, 3))
    model = Hope(config).double()
    groups = model.param_groups()
    lr = 0.1
    opt = MultiTimescaleOptimizer(groups, base=torch.optim.SGD, lr=lr)
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    pending = {g["name"]: [torch.zeros_like(p) for p in g["params"]] for g in groups}
    for call in range(1, 7):
        before = {g["name"]: [p.detach().clone() for p in g["params"]] for g in groups}
        opt.zero_grad()
        y, _ = model(x * call, model.init_state(2))
        y.square().mean().backward()
        for g in groups:
            pending[g["name"]] = [
                a + p.grad for a, p in zip(pending[g["name"]], g["params"], strict=True)
            ]
        opt.step()
        for g in groups:
            due = call % g["period"] == 0
            for p, old, acc in zip(g["params"], before[g["name"]], pending[g["name"]], strict=True):
                expected = old - lr * acc if due else old
                torch.testing.assert_close(p.detach(), expected)
            if due:
                pending[g["name"]] = [torch.zeros_like(a) for a in pending[g["name"]]]

    frozen = Hope(HopeConfig(d_model=8, n_layers=1, n_heads=2, chunk_size=4, cms_periods=(1, 2)))
    init = {k: v.clone() for k, v in frozen.state_dict().items()}
    opt = MultiTimescaleOptimizer(frozen.param_groups(), base=torch.optim.SGD, lr=0.0)
    for _ in range(4):
        opt.zero_grad()
        y, _ = frozen(torch.randn(2, 5, 8), frozen.init_state(2))
        y.square().mean().backward()
        opt.step()
    for k, v in frozen.state_dict().items():
        torch.testing.assert_close(v, init[k])

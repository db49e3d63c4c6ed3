"""Baseline backbones (MLP, GRU, Transformer) and the backbone factory.

Every stateful backbone must compute one function of the stream however it is cut into calls,
treat ``is_first`` exactly like a fresh state, and be causal.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from hope_agent.models.base import Backbone
from hope_agent.models.factory import BACKBONES, make_backbone
from hope_agent.models.gru import GRUBackbone, GRUConfig, GRUState
from hope_agent.models.hope import Hope, HopeAttention
from hope_agent.models.mlp import MLPBackbone, MLPConfig, MLPState
from hope_agent.models.state import State
from hope_agent.models.transformer import (
    TransformerBackbone,
    TransformerConfig,
    TransformerState,
    alibi_slopes,
)

D, B, T = 16, 3, 23
# Small but not trivial: the transformer's window (5) is far shorter than T, GRU has 2 layers.
SPECS: dict[str, dict[str, int]] = {
    "mlp": {"n_layers": 2, "hidden_mult": 2},
    "gru": {"n_layers": 2},
    "transformer": {"n_layers": 2, "n_heads": 2, "context": 5, "hidden_mult": 2},
}
ATOL = 2e-5


def _model(name: str) -> Backbone:
    return make_backbone(name, D, **SPECS[name]).eval()


def _resets() -> torch.Tensor:
    """Resets mid-sequence in some rows, at the first step in one, none in row 0."""
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[1, 7] = True
    is_first[2, 0] = True
    is_first[2, 3] = True
    is_first[2, 15] = True
    return is_first


def _run_steps(model: Backbone, x: torch.Tensor, is_first: torch.Tensor, state: State):
    ys = []
    for t in range(x.shape[1]):
        y_t, state = model.step(x[:, t], state, is_first[:, t])
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


def _run_split(model: Backbone, x: torch.Tensor, is_first: torch.Tensor, cuts: list[int]):
    state = model.init_state(x.shape[0])
    bounds = [0, *cuts, x.shape[1]]
    ys = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        y, state = model(x[:, a:b], state, is_first[:, a:b])
        ys.append(y)
    return torch.cat(ys, dim=1), state


def _assert_states_close(s1: State, s2: State) -> None:
    for a, b in zip(s1.leaves(), s2.leaves(), strict=True):
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", list(SPECS))
def test_forward_equals_steps_equals_split_calls(name: str) -> None:
    model = _model(name)
    x = torch.randn(B, T, D)
    is_first = _resets()
    with torch.no_grad():
        y, state = model(x, model.init_state(B), is_first)
        y_steps, state_steps = _run_steps(model, x, is_first, model.init_state(B))
        # Cuts land before, on and after reset steps, and make a length-1 call.
        y_split, state_split = _run_split(model, x, is_first, [3, 4, 11, 16])
    torch.testing.assert_close(y_steps, y, atol=ATOL, rtol=0)
    torch.testing.assert_close(y_split, y, atol=ATOL, rtol=0)
    _assert_states_close(state_steps, state)
    _assert_states_close(state_split, state)
    # The outputs are not constant: otherwise the checks above would be vacuous.
    assert y[:, 1:].sub(y[:, :-1]).abs().max() > 1e-2


@pytest.mark.parametrize("name", list(SPECS))
def test_reset_equals_fresh_state_and_leaves_other_rows(name: str) -> None:
    model = _model(name)
    x = torch.randn(B, T, D)
    reset_at = 9
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[1, reset_at] = True
    with torch.no_grad():
        y, _ = model(x, model.init_state(B), is_first)
        y_plain, _ = model(x, model.init_state(B), None)
        y_fresh, _ = model(x[1:2, reset_at:], model.init_state(1), None)
    torch.testing.assert_close(y[1:2, reset_at:], y_fresh, atol=ATOL, rtol=0)
    torch.testing.assert_close(y[[0, 2]], y_plain[[0, 2]], atol=0, rtol=0)
    torch.testing.assert_close(y[1, :reset_at], y_plain[1, :reset_at], atol=0, rtol=0)
    if name != "mlp":
        # A stateful model must actually remember: without the reset the row differs.
        assert (y_plain[1, reset_at:] - y[1, reset_at:]).abs().max() > 1e-4


@pytest.mark.parametrize("name", list(SPECS))
def test_causality(name: str) -> None:
    model = _model(name)
    x = torch.randn(B, T, D)
    is_first = _resets()
    t_change = 12
    x2 = x.clone()
    x2[:, t_change] += 3.0
    with torch.no_grad():
        y, _ = model(x, model.init_state(B), is_first)
        y2, _ = model(x2, model.init_state(B), is_first)
    torch.testing.assert_close(y2[:, :t_change], y[:, :t_change], atol=0, rtol=0)
    assert (y2[:, t_change] - y[:, t_change]).abs().max() > 1e-3


def test_transformer_window_limits_what_one_layer_sees() -> None:
    context = 4
    model = TransformerBackbone(TransformerConfig(D, n_layers=1, n_heads=2, context=context))
    x = torch.randn(1, 12, D)
    x2 = x.clone()
    x2[:, 3] += 3.0
    with torch.no_grad():
        y, _ = model(x, model.init_state(1))
        y2, _ = model(x2, model.init_state(1))
    changed = (y2 - y).abs().amax(dim=-1)[0]
    # Token 3 is visible to queries 3 .. 3 + context - 1 and to nobody later.
    assert (changed[3 : 3 + context] > 1e-4).all()
    assert torch.equal(changed[3 + context :], torch.zeros(12 - 3 - context))


def _reference_transformer(
    model: TransformerBackbone, x: torch.Tensor, is_first: torch.Tensor
) -> torch.Tensor:
    """Plain full-sequence attention: ALiBi scores, (window & same-episode & causal) mask."""
    cfg = model.config
    batch, steps, _ = x.shape
    pos = torch.arange(steps)
    episode = is_first.long().cumsum(dim=1)  # (B, T)
    causal_window = (pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < cfg.context)
    mask = causal_window & (episode[:, :, None] == episode[:, None, :])  # (B, T, T)
    distance = (pos[:, None] - pos[None, :]).float()
    slopes = [2.0 ** (-8.0 * h / cfg.n_heads) for h in range(1, cfg.n_heads + 1)]
    torch.testing.assert_close(alibi_slopes(cfg.n_heads), torch.tensor(slopes))
    h = x
    for block in model.blocks:
        q, k, v = block.attn.qkv(block.norm(h)).view(batch, steps, 3, cfg.n_heads, -1).unbind(2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(model.head_dim)
        scores = scores - torch.tensor(slopes)[:, None, None] * distance
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        o = torch.einsum("bhqk,bkhd->bqhd", F.softmax(scores, dim=-1), v).reshape(batch, steps, -1)
        h = block.mlp(h + block.attn.out_proj(o))
    return model.norm_out(h)


def test_transformer_matches_full_attention_reference() -> None:
    model = _model("transformer")
    assert isinstance(model, TransformerBackbone)
    x = torch.randn(B, T, D)
    is_first = _resets()
    with torch.no_grad():
        y, _ = model(x, model.init_state(B), is_first)
        y_ref = _reference_transformer(model, x, is_first)
    torch.testing.assert_close(y, y_ref, atol=ATOL, rtol=0)


def test_transformer_context_one_attends_to_itself_only() -> None:
    model = TransformerBackbone(TransformerConfig(D, n_layers=1, n_heads=2, context=1))
    x = torch.randn(B, 7, D)
    with torch.no_grad():
        y, state = model(x, model.init_state(B))
        y_steps, _ = _run_steps(model, x, torch.zeros(B, 7, dtype=torch.bool), model.init_state(B))
    assert state.valid.shape == (B, 0)
    torch.testing.assert_close(y_steps, y, atol=ATOL, rtol=0)


def test_gru_matches_a_per_token_gru_cell_loop() -> None:
    model = GRUBackbone(GRUConfig(D, n_layers=1))
    cell = torch.nn.GRUCell(D, D)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(model.gru, f"{name}_l0"))
        x = torch.randn(B, T, D)
        is_first = _resets()
        y, _ = model(x, model.init_state(B), is_first)
        h = torch.zeros(B, D)
        ys = []
        for t in range(T):
            h = cell(x[:, t], torch.where(is_first[:, t, None], torch.zeros_like(h), h))
            ys.append(h)
    torch.testing.assert_close(y, torch.stack(ys, dim=1), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", list(SPECS))
def test_empty_sequence_is_a_no_op(name: str) -> None:
    model = _model(name)
    _, state = model(torch.randn(B, 4, D), model.init_state(B))
    y, same = model(torch.randn(B, 0, D), state, torch.zeros(B, 0, dtype=torch.bool))
    assert y.shape == (B, 0, D)
    for a, b in zip(same.leaves(), state.leaves(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(SPECS))
def test_state_detach_index_cat(name: str) -> None:
    model = _model(name)
    x = torch.randn(B, 6, D)
    _, state = model(x, model.init_state(B))
    detached = state.detach()
    assert all(not leaf.requires_grad for leaf in detached.leaves())
    rows = detached.index([2, 0])
    y_rows, state_rows = model(x[[2, 0]], rows)
    y_all, state_all = model(x, detached)
    torch.testing.assert_close(y_rows, y_all[[2, 0]], atol=ATOL, rtol=0)
    _assert_states_close(state_rows, state_all.index([2, 0]))
    rebuilt = type(state).cat([detached.index(i) for i in range(B)])
    for a, b in zip(rebuilt.leaves(), detached.leaves(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(SPECS))
def test_gradients_reach_every_parameter(name: str) -> None:
    model = make_backbone(name, D, **SPECS[name])
    y, _ = model(torch.randn(B, 9, D), model.init_state(B), _resets()[:, :9])
    y.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_state_types() -> None:
    assert isinstance(_model("mlp").init_state(B), MLPState)
    assert MLPState().leaves() == []
    gru_state = _model("gru").init_state(B)
    assert isinstance(gru_state, GRUState)
    assert gru_state.h.shape == (B, 2, D) and not gru_state.h.any()
    tr_state = _model("transformer").init_state(B)
    assert isinstance(tr_state, TransformerState)
    assert len(tr_state.k) == 2 and tr_state.k[0].shape == (B, 4, 2, D // 2)
    assert tr_state.valid.shape == (B, 4) and not tr_state.valid.any()


@pytest.mark.parametrize("name", list(SPECS))
def test_bad_inputs_raise_clear_errors(name: str) -> None:
    model = _model(name)
    with pytest.raises(ValueError, match="expects x of shape"):
        model(torch.randn(B, D), model.init_state(B))
    with pytest.raises(ValueError, match="expects x of shape"):
        model(torch.randn(B, T, D + 1), model.init_state(B))
    with pytest.raises(ValueError, match="is_first"):
        model(torch.randn(B, T, D), model.init_state(B), torch.zeros(B, T - 1, dtype=torch.bool))
    if name != "mlp":
        with pytest.raises(ValueError, match="init_state"):
            model(torch.randn(B, T, D), model.init_state(B + 1))


@pytest.mark.parametrize(
    ("config_cls", "kwargs", "match"),
    [
        (MLPConfig, {"d_model": 0}, "d_model"),
        (MLPConfig, {"d_model": 8, "hidden_mult": 1.5}, "hidden_mult"),
        (GRUConfig, {"d_model": 8, "n_layers": 0}, "n_layers"),
        (TransformerConfig, {"d_model": 12, "n_heads": 5}, "divisible by n_heads"),
        (TransformerConfig, {"d_model": 8, "context": 0}, "context"),
    ],
)
def test_bad_configs(config_cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        config_cls(**kwargs)


def test_factory_builds_baselines_with_their_configs() -> None:
    assert BACKBONES == ("hope", "hope_attention", "hope_no_cms", "mlp", "gru", "transformer")
    mlp = make_backbone("mlp", 8, n_layers=3)
    assert isinstance(mlp, MLPBackbone) and mlp.config == MLPConfig(8, n_layers=3)
    gru = make_backbone("gru", 8)
    assert isinstance(gru, GRUBackbone) and gru.config == GRUConfig(8)
    tr = make_backbone("transformer", 8, n_heads=2, context=16)
    assert isinstance(tr, TransformerBackbone)
    assert tr.config == TransformerConfig(8, n_heads=2, context=16)
    assert all(m.d_model == 8 for m in (mlp, gru, tr))


def test_factory_errors() -> None:
    with pytest.raises(ValueError, match=r"valid names: \['hope', .*'transformer'\]"):
        make_backbone("lstm", 8)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['heads'\].*n_heads"):
        make_backbone("transformer", 8, heads=2)
    with pytest.raises(ValueError, match="hidden_mult"):
        make_backbone("gru", 8, hidden_mult=2)


def test_factory_builds_hope_variants() -> None:
    assert type(make_backbone("hope", 16)) is Hope
    assert isinstance(make_backbone("hope_attention", 16), HopeAttention)
    no_cms = make_backbone("hope_no_cms", 16)
    assert type(no_cms) is Hope and tuple(no_cms.config.cms_periods) == ()
    with pytest.raises(ValueError, match="fixes cms_periods"):
        make_backbone("hope_no_cms", 16, cms_periods=(1,))
    with pytest.raises(ValueError, match="HopeConfig"):
        make_backbone("hope", 16, not_a_field=1)

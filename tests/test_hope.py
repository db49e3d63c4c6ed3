"""Hope and HopeAttention backbones: stream equivalence, causality, resets, gradients, API."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hope_agent.models.base import Backbone
from hope_agent.models.factory import make_backbone
from hope_agent.models.graphs import GraphedStep
from hope_agent.models.hope import Hope, HopeAttention, HopeConfig, HopeState
from hope_agent.models.state import State

F64 = torch.float64
D = 16


def _config(**kw: object) -> HopeConfig:
    base: dict[str, object] = {
        "d_model": D,
        "n_layers": 2,
        "n_heads": 2,
        "chunk_size": 4,
        "mem_chunk_size": 3,
        "cms_periods": (1, 4),
        "cms_hidden_mult": 2,
        "attn_window": 5,
    }
    base.update(kw)
    return HopeConfig(**base)  # type: ignore[arg-type]


MODELS = [
    pytest.param(Hope, {}, id="hope"),
    pytest.param(Hope, {"cms_periods": (), "adaptive_q": True}, id="hope_no_cms_adaptive_q"),
    pytest.param(Hope, {"cms_variant": "independent", "chunk_size": 3}, id="hope_independent"),
    pytest.param(HopeAttention, {}, id="hope_attention"),
]


def _resets(b: int, t: int) -> torch.Tensor:
    first = torch.zeros(b, t, dtype=torch.bool)
    first[0, 0] = True
    first[1, 6] = True
    first[2, 3] = True
    first[2, 13] = True
    return first


def _steps(model: Backbone, x: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
    state = model.init_state(x.shape[0])
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state, None if first is None else first[:, t])
        ys.append(y)
    return torch.stack(ys, 1)


@pytest.mark.parametrize(("cls", "kw"), MODELS)
def test_forward_equals_steps_equals_split_calls_fp32(cls: type, kw: dict) -> None:
    model = cls(_config(**kw))
    b, t = 3, 17  # T is no multiple of C = 4 or C_mem = 3
    x = torch.randn(b, t, D)
    first = _resets(b, t)
    with torch.no_grad():
        y, state = model(x, model.init_state(b), first)
        torch.testing.assert_close(_steps(model, x, first), y, rtol=0, atol=1e-5)
        parts, s = [], model.init_state(b)
        for lo, hi in [(0, 1), (1, 6), (6, 7), (7, 15), (15, 17)]:
            y_part, s = model(x[:, lo:hi], s, first[:, lo:hi])
            parts.append(y_part)
        torch.testing.assert_close(torch.cat(parts, 1), y, rtol=0, atol=1e-5)
        for a, c in zip(s.leaves(), state.leaves(), strict=True):
            torch.testing.assert_close(a, c, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("cls", "kw"), MODELS)
def test_forward_equals_steps_float64_exactly(cls: type, kw: dict) -> None:
    model = cls(_config(**kw)).double()
    x = torch.randn(3, 14, D, dtype=F64)
    first = _resets(3, 14)
    with torch.no_grad():
        y, _ = model(x, model.init_state(3), first)
        torch.testing.assert_close(_steps(model, x, first), y, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(("cls", "kw"), MODELS)
def test_causality(cls: type, kw: dict) -> None:
    model = cls(_config(**kw)).double()
    x = torch.randn(2, 15, D, dtype=F64)
    with torch.no_grad():
        y, _ = model(x, model.init_state(2))
        for t_change in (0, 5, 9, 14):
            x2 = x.clone()
            x2[:, t_change] += 1.0
            y2, _ = model(x2, model.init_state(2))
            torch.testing.assert_close(y2[:, :t_change], y[:, :t_change], rtol=0, atol=1e-12)
            assert (y2[:, t_change] - y[:, t_change]).abs().max() > 1e-6


@pytest.mark.parametrize(("cls", "kw"), MODELS)
def test_reset_equals_fresh_state_and_leaves_other_rows_alone(cls: type, kw: dict) -> None:
    model = cls(_config(**kw)).double()
    b, t, t0 = 3, 16, 7
    x = torch.randn(b, t, D, dtype=F64)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[1, t0] = True
    with torch.no_grad():
        y, _ = model(x, model.init_state(b), first)
        y_plain, _ = model(x, model.init_state(b))
        y_fresh, _ = model(x[1:2, t0:], model.init_state(1))
    torch.testing.assert_close(y[1:2, t0:], y_fresh, rtol=0, atol=1e-12)
    torch.testing.assert_close(y[1, :t0], y_plain[1, :t0], rtol=0, atol=1e-12)
    torch.testing.assert_close(y[[0, 2]], y_plain[[0, 2]], rtol=0, atol=1e-12)
    # the reset did matter for that row
    assert (y[1, t0:] - y_plain[1, t0:]).abs().max() > 1e-6


@pytest.mark.parametrize(("cls", "kw"), MODELS)
def test_reset_recovers_a_non_finite_row(cls: type, kw: dict) -> None:
    """A row whose state went NaN (weights, momenta, conv buffer or KV cache) is a fresh row
    after ``is_first``, in ``forward`` and in ``step``; the other rows do not see it."""
    model = cls(_config(**kw)).double()
    b, t = 2, 9
    x = torch.randn(b, t, D, dtype=F64)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[1, 0] = True

    def poison(leaf: torch.Tensor) -> torch.Tensor:
        leaf = leaf.clone()
        if leaf.is_floating_point():
            leaf[1] = float("nan")
        elif leaf.dtype == torch.bool:
            leaf[1] = True  # every KV-cache slot claims to be valid
        else:
            leaf[1] = 2  # chunk positions off 0
        return leaf

    with torch.no_grad():
        _, warm = model(torch.randn(b, 7, D, dtype=F64), model.init_state(b))
        bad = warm.map(poison)
        y_fresh, s_fresh = model(x[1:], model.init_state(1))
        y_warm, _ = model(x[:1], warm.index(0))
        y, state = model(x, bad, first)
        ys, s_step = [], bad
        for i in range(t):
            y_t, s_step = model.step(x[:, i], s_step, first[:, i])
            ys.append(y_t)
    for out, end in ((y, state), (torch.stack(ys, 1), s_step)):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[1:], y_fresh, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out[:1], y_warm, rtol=1e-12, atol=1e-12)
        for a, c in zip(end.index(1).leaves(), s_fresh.leaves(), strict=True):
            torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_attention_sees_exactly_its_window() -> None:
    model = HopeAttention(_config(n_layers=1, attn_window=4)).double()
    x = torch.randn(1, 12, D, dtype=F64)
    with torch.no_grad():
        y, _ = model(x, model.init_state(1))
        x2 = x.clone()
        x2[:, 3] += 1.0
        y2, _ = model(x2, model.init_state(1))
    diff = (y2 - y).abs().amax(-1)[0]
    assert torch.all(diff[3:8] > 1e-6)  # the token itself and the next attn_window tokens
    assert torch.all(diff[8:] == 0) and torch.all(diff[:3] == 0)


@pytest.mark.parametrize("adaptive_q", [False, True])
def test_gradients_reach_every_meta_parameter(adaptive_q: bool) -> None:
    model = Hope(_config(adaptive_q=adaptive_q))
    x = torch.randn(2, 11, D)
    y, state = model(x, model.init_state(2))
    loss = y.square().mean() + sum(
        t.square().mean() for t in state.leaves() if t.is_floating_point()
    )
    loss.backward()
    names = dict(model.named_parameters())
    missing = [n for n, p in names.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing
    # spot-check that the expected meta-parameters exist
    for part in ("proj_w_in", "proj_w_out", "mem_w_in", "mem_w_out", "eta_readout", "conv_weight"):
        assert any(part in n for n in names)
    assert any("w_q" in n for n in names) != adaptive_q
    assert any("cms.levels.1" in n for n in names) and any("norm" in n for n in names)


def test_gradients_flow_through_several_chunks() -> None:
    """The loss at the end depends on the meta-parameters via the writes of earlier chunks."""
    model = Hope(_config(n_layers=1)).double()
    x = torch.randn(1, 13, D, dtype=F64)
    y, _ = model(x, model.init_state(1))
    y[:, -1].sum().backward()
    mixer = model.stack.block_list()[0].mixer
    assert torch.any(mixer.eta_readout.grad != 0) and torch.any(mixer.beta_weight.grad != 0)


@pytest.mark.parametrize("cls", [Hope, HopeAttention])
def test_param_groups_partition_parameters(cls: type) -> None:
    model = cls(_config(cms_periods=(1, 16, 256)))
    groups = model.param_groups()
    assert [g["name"] for g in groups] == ["slow", "cms.0", "cms.1", "cms.2"]
    assert [g["period"] for g in groups] == [1, 1, 16, 256]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    for level, g in enumerate(groups[1:]):
        expected = {
            id(p) for blk in model.stack.block_list() for p in blk.cms.levels[level].parameters()
        }
        assert set(map(id, g["params"])) == expected
    no_cms = cls(_config(cms_periods=()))
    only = no_cms.param_groups()
    assert [g["name"] for g in only] == ["slow"]
    assert len(only[0]["params"]) == len(list(no_cms.parameters()))


@pytest.mark.parametrize("cls", [Hope, HopeAttention])
def test_empty_call_is_a_no_op(cls: type) -> None:
    model = cls(_config())
    with torch.no_grad():
        _, state = model(torch.randn(2, 3, D), model.init_state(2))
        y, same = model(torch.randn(2, 0, D), state)
    assert y.shape == (2, 0, D)
    for a, c in zip(same.leaves(), state.leaves(), strict=True):
        assert torch.equal(a, c)


def test_state_is_a_state_tree() -> None:
    model = Hope(_config())
    x = torch.randn(4, 9, D)
    with torch.no_grad():
        y, state = model(x, model.init_state(4))
        halves = [state.index([0, 1]), state.index([2, 3])]
        joined = State.cat(halves)
        assert isinstance(joined, HopeState)
        y_next, _ = model(x, joined)
        y_ref, _ = model(x, state)
    torch.testing.assert_close(y_next, y_ref)
    assert all(not t.requires_grad for t in model.init_state(2).detach().leaves())
    # a stored initial state does not alias the parameters
    fresh = model.init_state(2).detach()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    mixer = model.stack.block_list()[0].mixer
    assert not torch.allclose(fresh.layers[0].mem.w_in[0, :-1], mixer.proj_w_in)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_model": 10, "n_heads": 4}, "divisible"),
        ({"n_layers": 0}, "n_layers"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"mem_chunk_size": -2}, "mem_chunk_size"),
        ({"cms_periods": (1, 0)}, "cms_periods"),
        ({"eta_max": 0.0}, "eta_max"),
        ({"max_inner_grad_norm": -1.0}, "max_inner_grad_norm"),
        ({"alpha_init": 1.0}, "alpha_init"),
        ({"beta_init": 0.0}, "beta_init"),
        ({"cms_variant": "nested"}, "cms_variant"),
        ({"attn_window": 0}, "attn_window"),
        ({"conv_width": 0}, "conv_width"),
        ({"n_heads": 2.0}, "n_heads"),
    ],
)
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _config(**kwargs)


def test_config_accepts_list_periods() -> None:
    assert _config(cms_periods=[1, 16]).cms_periods == (1, 16)
    assert _config(mem_chunk_size=None).resolved_mem_chunk_size == 4


@pytest.mark.parametrize("cls", [Hope, HopeAttention])
def test_bad_shapes_raise(cls: type) -> None:
    model = cls(_config())
    state = model.init_state(2)
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        model(torch.randn(2, D), state)
    with pytest.raises(ValueError, match="is_first"):
        model(torch.randn(2, 3, D), state, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch size"):
        model(torch.randn(3, 3, D), state)
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        model.step(torch.randn(2, 1, D), state)
    with pytest.raises(ValueError, match="is_first"):
        model.step(torch.randn(2, D), state, torch.zeros(2, 1, dtype=torch.bool))


# state_dict keys and shapes (in order) written by `main` at 9221ef1, before the nested
# TitansConfig and the generic HopeStack; d_model 8 with the factory options shown
OLD_STATE_DICTS: dict[str, tuple[str, dict[str, Any], list[tuple[str, tuple[int, ...]]]]] = {
    "hope": (
        "hope",
        {"n_layers": 2, "n_heads": 2, "cms_periods": (1, 4)},
        [
            ("stack.blocks.0.norm_mixer.weight", (8,)),
            ("stack.blocks.0.mixer.proj_w_in", (4, 2, 4, 4)),
            ("stack.blocks.0.mixer.proj_w_out", (4, 2, 4, 4)),
            ("stack.blocks.0.mixer.mem_w_in", (1, 2, 4, 4)),
            ("stack.blocks.0.mixer.mem_w_out", (1, 2, 4, 4)),
            ("stack.blocks.0.mixer.w_q", (2, 4, 4)),
            ("stack.blocks.0.mixer.eta_readout", (2, 4)),
            ("stack.blocks.0.mixer.eta_bias", (2,)),
            ("stack.blocks.0.mixer.alpha_readout", (2, 4)),
            ("stack.blocks.0.mixer.alpha_bias", (2,)),
            ("stack.blocks.0.mixer.beta_weight", (2, 4)),
            ("stack.blocks.0.mixer.beta_bias", (2,)),
            ("stack.blocks.0.mixer.conv_weight", (3, 2, 4, 4)),
            ("stack.blocks.0.mixer.in_proj.weight", (8, 8)),
            ("stack.blocks.0.mixer.out_proj.weight", (8, 8)),
            ("stack.blocks.0.norm_cms.weight", (8,)),
            ("stack.blocks.0.cms.levels.0.fc1.weight", (32, 8)),
            ("stack.blocks.0.cms.levels.0.fc1.bias", (32,)),
            ("stack.blocks.0.cms.levels.0.fc2.weight", (8, 32)),
            ("stack.blocks.0.cms.levels.0.fc2.bias", (8,)),
            ("stack.blocks.0.cms.levels.1.fc1.weight", (32, 8)),
            ("stack.blocks.0.cms.levels.1.fc1.bias", (32,)),
            ("stack.blocks.0.cms.levels.1.fc2.weight", (8, 32)),
            ("stack.blocks.0.cms.levels.1.fc2.bias", (8,)),
            ("stack.blocks.1.norm_mixer.weight", (8,)),
            ("stack.blocks.1.mixer.proj_w_in", (4, 2, 4, 4)),
            ("stack.blocks.1.mixer.proj_w_out", (4, 2, 4, 4)),
            ("stack.blocks.1.mixer.mem_w_in", (1, 2, 4, 4)),
            ("stack.blocks.1.mixer.mem_w_out", (1, 2, 4, 4)),
            ("stack.blocks.1.mixer.w_q", (2, 4, 4)),
            ("stack.blocks.1.mixer.eta_readout", (2, 4)),
            ("stack.blocks.1.mixer.eta_bias", (2,)),
            ("stack.blocks.1.mixer.alpha_readout", (2, 4)),
            ("stack.blocks.1.mixer.alpha_bias", (2,)),
            ("stack.blocks.1.mixer.beta_weight", (2, 4)),
            ("stack.blocks.1.mixer.beta_bias", (2,)),
            ("stack.blocks.1.mixer.conv_weight", (3, 2, 4, 4)),
            ("stack.blocks.1.mixer.in_proj.weight", (8, 8)),
            ("stack.blocks.1.mixer.out_proj.weight", (8, 8)),
            ("stack.blocks.1.norm_cms.weight", (8,)),
            ("stack.blocks.1.cms.levels.0.fc1.weight", (32, 8)),
            ("stack.blocks.1.cms.levels.0.fc1.bias", (32,)),
            ("stack.blocks.1.cms.levels.0.fc2.weight", (8, 32)),
            ("stack.blocks.1.cms.levels.0.fc2.bias", (8,)),
            ("stack.blocks.1.cms.levels.1.fc1.weight", (32, 8)),
            ("stack.blocks.1.cms.levels.1.fc1.bias", (32,)),
            ("stack.blocks.1.cms.levels.1.fc2.weight", (8, 32)),
            ("stack.blocks.1.cms.levels.1.fc2.bias", (8,)),
            ("stack.norm.weight", (8,)),
        ],
    ),
    "hope_no_cms_adaptive_q": (
        "hope",
        {"n_layers": 1, "n_heads": 2, "adaptive_q": True, "cms_periods": ()},
        [
            ("stack.blocks.0.norm_mixer.weight", (8,)),
            ("stack.blocks.0.mixer.proj_w_in", (5, 2, 4, 4)),
            ("stack.blocks.0.mixer.proj_w_out", (5, 2, 4, 4)),
            ("stack.blocks.0.mixer.mem_w_in", (1, 2, 4, 4)),
            ("stack.blocks.0.mixer.mem_w_out", (1, 2, 4, 4)),
            ("stack.blocks.0.mixer.eta_readout", (2, 4)),
            ("stack.blocks.0.mixer.eta_bias", (2,)),
            ("stack.blocks.0.mixer.alpha_readout", (2, 4)),
            ("stack.blocks.0.mixer.alpha_bias", (2,)),
            ("stack.blocks.0.mixer.beta_weight", (2, 4)),
            ("stack.blocks.0.mixer.beta_bias", (2,)),
            ("stack.blocks.0.mixer.conv_weight", (3, 2, 4, 4)),
            ("stack.blocks.0.mixer.in_proj.weight", (8, 8)),
            ("stack.blocks.0.mixer.out_proj.weight", (8, 8)),
            ("stack.norm.weight", (8,)),
        ],
    ),
    "hope_attention": (
        "hope_attention",
        {"n_layers": 1, "n_heads": 2, "cms_periods": (1,)},
        [
            ("stack.blocks.0.norm_mixer.weight", (8,)),
            ("stack.blocks.0.mixer.qkv.weight", (24, 8)),
            ("stack.blocks.0.mixer.out_proj.weight", (8, 8)),
            ("stack.blocks.0.norm_cms.weight", (8,)),
            ("stack.blocks.0.cms.levels.0.fc1.weight", (32, 8)),
            ("stack.blocks.0.cms.levels.0.fc1.bias", (32,)),
            ("stack.blocks.0.cms.levels.0.fc2.weight", (8, 32)),
            ("stack.blocks.0.cms.levels.0.fc2.bias", (8,)),
            ("stack.norm.weight", (8,)),
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(OLD_STATE_DICTS))
def test_a_state_dict_of_the_old_code_layout_loads(case: str) -> None:
    """Checkpoints written before the refactor load strictly, and their values are the ones used."""
    name, kwargs, layout = OLD_STATE_DICTS[case]
    model = make_backbone(name, 8, **kwargs)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == layout
    old = {k: torch.randn(shape) for k, shape in layout}
    model.load_state_dict(old, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, old[k]), k
    with torch.no_grad():
        y, _ = model(torch.randn(2, 5, 8), model.init_state(2))
    assert torch.isfinite(y).all()


def test_nested_titans_config_is_the_flat_fields() -> None:
    config = _config(chunk_size=5, mem_chunk_size=None, eta_max=0.2, adaptive_q=True)
    titans = config.titans
    assert (titans.d_model, titans.n_heads, titans.chunk_size) == (D, 2, 5)
    assert titans.resolved_mem_chunk_size == config.resolved_mem_chunk_size == 5
    assert titans.eta_max == 0.2 and titans.adaptive_q
    mixer = Hope(config).stack.block_list()[0].mixer
    assert mixer.config == titans


def test_graphed_step_refuses_a_device_without_cuda_graphs() -> None:
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedStep(Hope(_config()), batch_size=2, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize(("cls", "kw"), MODELS)
def test_graphed_step_equals_eager_step(cls: type, kw: dict) -> None:
    model = cls(_config(**kw)).cuda()
    b, t = 3, 16
    x = torch.randn(b, t, D, device="cuda")
    first = _resets(b, t).cuda()
    graphed = GraphedStep(model, b, "cuda")
    with torch.no_grad():
        state, ref = graphed.init_state(), model.init_state(b, "cuda")
        for i in range(t):
            y, state = graphed(x[:, i], state, first[:, i])
            y_ref, ref = model.step(x[:, i], ref, first[:, i])
            torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for a, c in zip(state.leaves(), ref.leaves(), strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=0)

"""Self-modifying Titans: inner gradients, the DGD rule, chunking, step mode and resets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hope_agent.models.titans import (
    SelfModifyingTitans,
    TitansState,
    chunk_decays,
    clip_factors,
    dgd_chunk,
    dgd_token,
    inner_grad_factors,
    memory_read,
    segment_layout,
)

F64 = torch.float64


def _stream(layer: SelfModifyingTitans, u: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    state = layer.initial_state(u.shape[0])
    ys = []
    for t in range(u.shape[1]):
        y, state = layer.step(u[:, t], state, first[:, t])
        ys.append(y)
    return torch.stack(ys, 1)


def _resets(b: int, t: int) -> torch.Tensor:
    first = torch.zeros(b, t, dtype=torch.bool)
    first[1, 5] = True
    first[2, 0] = True
    first[2, 11] = True
    first[0, 16] = True
    return first


# ----------------------------------------------------------------------------- inner gradient


def test_closed_form_inner_gradient_equals_autograd() -> None:
    m, h, d, n = 2, 3, 4, 5
    w_in = torch.randn(m, h, d, dtype=F64)
    w_out = torch.randn(m, d, h, dtype=F64)
    k = F.normalize(torch.randn(m, n, d, dtype=F64), dim=-1)
    v_hat = torch.randn(m, n, d, dtype=F64)
    p_in, p_out, s = inner_grad_factors(w_in, w_out, k, v_hat)
    for i in range(m):
        for t in range(n):
            wi = w_in[i].clone().requires_grad_(True)
            wo = w_out[i].clone().requires_grad_(True)
            loss = (memory_read(wi, wo, k[i, t : t + 1]) - v_hat[i, t]).square().sum()
            g_in, g_out = torch.autograd.grad(loss, (wi, wo))
            torch.testing.assert_close(torch.outer(p_in[i, t], k[i, t]), g_in)
            torch.testing.assert_close(torch.outer(p_out[i, t], s[i, t]), g_out)


def test_clip_bounds_norm_and_keeps_direction() -> None:
    h, d, n = 3, 4, 6
    p_in = torch.randn(n, h, dtype=F64) * torch.tensor([0.01, 0.1, 1, 10, 100, 0.0])[:, None]
    p_out = torch.randn(n, d, dtype=F64)
    s = torch.randn(n, h, dtype=F64)
    k = torch.randn(n, d, dtype=F64)
    c_in, c_out = clip_factors(p_in, p_out, s, k, max_norm=2.0)

    def norm(
        a: torch.Tensor, r_a: torch.Tensor, b: torch.Tensor, r_b: torch.Tensor
    ) -> torch.Tensor:
        ga = a.unsqueeze(-1) * r_a.unsqueeze(-2)
        gb = b.unsqueeze(-1) * r_b.unsqueeze(-2)
        return (ga.square().sum((-1, -2)) + gb.square().sum((-1, -2))).sqrt()

    before, after = norm(p_in, k, p_out, s), norm(c_in, k, c_out, s)
    assert torch.all(after <= 2.0 + 1e-12)
    torch.testing.assert_close(after, before.clamp(max=2.0))
    scale = after / before
    torch.testing.assert_close(c_in, p_in * scale[:, None])
    torch.testing.assert_close(c_out, p_out * scale[:, None])


# ----------------------------------------------------------------------------- DGD rule


def _reference_linear_memory(w_run, s, w0, keys, values, eta, alpha, beta, delta):
    """Hand-written per-token DGD on a linear memory M(k) = W k, gradients at the chunk start."""
    w, s = w_run.clone(), s.clone()
    for t in range(keys.shape[0]):
        k, v = keys[t], values[t]
        grad = 2.0 * torch.outer(w0 @ k - v, k)  # d/dW ||W0 k - v||^2
        s = beta[t] * s - eta[t] * grad
        w_prev = w
        w = alpha[t] * w_prev + s
        if delta:
            w = w - eta[t] * torch.outer(w_prev @ k, k)
    return w, s


@pytest.mark.parametrize("delta", [True, False], ids=["W_in-rule", "W_out-rule"])
def test_dgd_chunk_matches_per_token_reference(delta: bool) -> None:
    d, n, pad = 4, 7, 3
    w0 = torch.randn(d, d, dtype=F64)
    w_run = w0 + 0.3 * torch.randn(d, d, dtype=F64)  # a chunk resumed mid-way
    s0 = 0.2 * torch.randn(d, d, dtype=F64)
    keys = F.normalize(torch.randn(n, d, dtype=F64), dim=-1)
    values = torch.randn(n, d, dtype=F64)
    eta = 0.1 * torch.rand(n, dtype=F64)
    alpha = 0.8 + 0.2 * torch.rand(n, dtype=F64)
    beta = torch.rand(n, dtype=F64)
    ref_w, ref_s = _reference_linear_memory(w_run, s0, w0, keys, values, eta, alpha, beta, delta)

    p = 2.0 * (keys @ w0.T - values)  # rank-1 factors of each token's gradient: p_t k_t^T
    dec = chunk_decays(alpha.log(), beta.log())
    w, s = dgd_chunk(w_run, s0, p, keys, eta, dec, key=keys if delta else None)
    torch.testing.assert_close(w, ref_w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, ref_s, rtol=1e-10, atol=1e-10)

    # padded tokens (eta 0, gates 1, not live) at the end are exact no-ops
    def padded(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.cat([x, torch.full((pad, *x.shape[1:]), value, dtype=F64)])

    live = torch.arange(n + pad) < n
    dec_p = chunk_decays(padded(alpha.log(), 0.0), padded(beta.log(), 0.0), live)
    keys_p = padded(keys, 0.5)
    w_p, s_p = dgd_chunk(
        w_run, s0, padded(p, 3.0), keys_p, padded(eta, 0.0), dec_p, key=keys_p if delta else None
    )
    torch.testing.assert_close(w_p, ref_w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_p, ref_s, rtol=1e-10, atol=1e-10)

    # the literal one-token rule, applied n times, is the same recurrence
    w_t, s_t = w_run, s0
    for t in range(n):
        w_t, s_t = dgd_token(
            w_t,
            s_t,
            p[t],
            keys[t],
            eta[t],
            alpha[t],
            beta[t],
            key=keys[t] if delta else None,
        )
    torch.testing.assert_close(w_t, ref_w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_t, ref_s, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- segments


def test_segment_layout_cuts_at_chunk_ends_and_resets() -> None:
    pos0 = torch.tensor([2, 0])
    first = torch.zeros(2, 7, dtype=torch.bool)
    first[1, 3] = True
    seg = segment_layout(pos0, first, chunk=4)
    # row 0: phases 2 3 | 0 1 2 3 | 0 ; row 1: phases 0 1 2 | 0 1 2 3 (reset at t=3)
    assert seg.n == 3
    assert seg.valid.sum(-1).tolist() == [[2, 4, 1], [3, 4, 0]]
    assert seg.src[0, 1, :4].tolist() == [2, 3, 4, 5]
    assert seg.done.tolist() == [[True, True, False], [False, True, False]]
    assert seg.reset.tolist() == [[False, False, False], [False, True, False]]
    assert seg.end_pos.tolist() == [1, 0]
    x = torch.randn(2, 7, 3)
    torch.testing.assert_close(seg.scatter(seg.gather(x)), x)
    assert torch.all(seg.gather(x)[~seg.valid] == 0)


# ----------------------------------------------------------------------------- the layer


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"adaptive_q": True, "mem_hidden_mult": 2},
        {"reset_fast_memory_on_episode": False, "conv_width": 1},
    ],
    ids=["default", "adaptive_q", "persistent_memory"],
)
def test_forward_equals_step_equals_split_float64(opts: dict) -> None:
    layer = SelfModifyingTitans(12, 3, chunk_size=4, mem_chunk_size=3, **opts).double()
    b, t = 3, 19  # T not a multiple of C or C_mem
    u = torch.randn(b, t, 12, dtype=F64)
    first = _resets(b, t)
    y, state = layer(u, layer.initial_state(b), first)
    torch.testing.assert_close(_stream(layer, u, first), y, rtol=1e-10, atol=1e-10)
    ys, s = [], layer.initial_state(b)
    for lo, hi in [(0, 2), (2, 3), (3, 10), (10, 17), (17, 19)]:
        y_part, s = layer(u[:, lo:hi], s, first[:, lo:hi])
        ys.append(y_part)
    torch.testing.assert_close(torch.cat(ys, 1), y, rtol=1e-10, atol=1e-10)
    for a, c in zip(s.leaves(), state.leaves(), strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)


def test_forward_equals_step_fp32() -> None:
    layer = SelfModifyingTitans(16, 2, chunk_size=5, mem_chunk_size=3)
    b, t = 3, 23
    u = torch.randn(b, t, 16)
    first = _resets(b, t)
    y, _ = layer(u, layer.initial_state(b), first)
    torch.testing.assert_close(_stream(layer, u, first), y, rtol=0, atol=1e-5)


def test_chunk_writes_take_effect_from_the_next_chunk() -> None:
    layer = SelfModifyingTitans(8, 2, chunk_size=4, mem_chunk_size=4)
    u = torch.randn(1, 12, 8)
    state = layer.initial_state(1)
    _, s3 = layer(u[:, :3], state)
    # mid-chunk: the chunk-start weights have not moved, the running ones have
    torch.testing.assert_close(s3.mem.w_in, state.mem.w_in)
    assert not torch.allclose(s3.mem.w_in_run, state.mem.w_in_run)
    _, s4 = layer(u[:, 3:4], s3)
    torch.testing.assert_close(s4.mem.w_in, s4.mem.w_in_run)
    assert int(s4.mem.pos) == 0 and int(s3.mem.pos) == 3


def test_persistent_memory_reset_commits_chunk_and_clears_conv_only() -> None:
    layer = SelfModifyingTitans(
        8, 2, chunk_size=4, mem_chunk_size=3, reset_fast_memory_on_episode=False
    )
    u = torch.randn(2, 6, 8)
    _, state = layer(u[:, :5], layer.initial_state(2))
    rows = torch.tensor([True, False])
    y_reset, s_reset = layer.step(u[:, 5], state, rows)

    def committed(mem):  # type: ignore[no-untyped-def]
        return dataclasses.replace(
            mem,
            w_in=torch.where(rows[:, None, None, None, None], mem.w_in_run, mem.w_in),
            w_out=torch.where(rows[:, None, None, None, None], mem.w_out_run, mem.w_out),
            pos=torch.where(rows, 0, mem.pos),
        )

    manual = TitansState(
        proj=committed(state.proj),
        mem=committed(state.mem),
        conv=torch.where(rows[:, None, None, None, None], 0.0, state.conv),
    )
    y_manual, s_manual = layer.step(u[:, 5], manual, None)
    torch.testing.assert_close(y_reset, y_manual)
    for a, c in zip(s_reset.leaves(), s_manual.leaves(), strict=True):
        torch.testing.assert_close(a, c)


def test_state_stays_fp32_under_autocast_and_bounded_on_long_streams() -> None:
    layer = SelfModifyingTitans(16, 2, chunk_size=8, mem_chunk_size=8)
    u = 20.0 * torch.randn(2, 600, 16)  # large inputs: inner gradients are always clipped
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(u, layer.initial_state(2))
    assert all(t.dtype == torch.float32 for t in state.leaves() if t.is_floating_point())
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(t).all() for t in state.leaves() if t.is_floating_point())
    # clipped gradients, eta <= eta_max and alpha < 1 keep the weights near their O(1) init
    assert state.mem.w_in_run.abs().max() < 10.0 and state.proj.w_out_run.abs().max() < 10.0

"""Self-modifying Titans: inner gradients, the DGD rule, chunking, step mode and resets."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hope_agent.models import titans
from hope_agent.models.titans import (
    SelfModifyingTitans,
    TitansConfig,
    TitansState,
    chunk_decays,
    clip_factors,
    dgd_chunk,
    dgd_token,
    max_segments,
    memory_read,
    read_and_inner_grad,
    segment_layout,
    static_segments,
)

F64 = torch.float64


def _layer(d_model: int, n_heads: int, **kw: object) -> SelfModifyingTitans:
    return SelfModifyingTitans(TitansConfig(d_model, n_heads, **kw))  # type: ignore[arg-type]


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
    """``read_and_inner_grad``: the gradient at the target ``M(v)`` (stop-gradient) and ``M(z)``."""
    m, h, d, n = 2, 3, 4, 5
    w_in = torch.randn(m, h, d, dtype=F64)
    w_out = torch.randn(m, d, h, dtype=F64)
    k = F.normalize(torch.randn(m, n, d, dtype=F64), dim=-1)
    v = torch.randn(m, n, d, dtype=F64)
    z = torch.randn(m, n, d, dtype=F64)
    p_in, p_out, s, read = read_and_inner_grad(w_in, w_out, k, v, z)
    assert read is not None
    torch.testing.assert_close(read, memory_read(w_in, w_out, z), rtol=1e-12, atol=1e-12)
    no_read = read_and_inner_grad(w_in, w_out, k, v)
    assert no_read[3] is None
    for a, b in zip(no_read[:3], (p_in, p_out, s), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for i in range(m):
        for t in range(n):
            wi = w_in[i].clone().requires_grad_(True)
            wo = w_out[i].clone().requires_grad_(True)
            v_hat = memory_read(wi, wo, v[i, t : t + 1]).detach()
            loss = (memory_read(wi, wo, k[i, t : t + 1]) - v_hat).square().sum()
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


# ----------------------------------------------------------------------------- naive reference


def _mlp(w_in: torch.Tensor, w_out: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``M(z) = z + W_out silu(W_in z)`` for one head and one token (docs/hope.md decision 2)."""
    return z + w_out @ F.silu(w_in @ z)


def _naive_titans(
    layer: SelfModifyingTitans, u: torch.Tensor, first: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[float]]:
    """HOPE.md section 2 token by token, one row, head and memory at a time, from scratch.

    Shares nothing with the layer's code but its parameters: gradients by ``torch.autograd.grad``,
    the ``W_in`` rule as the literal product ``W (alpha I - eta k k^T)``, the conv as a sum over the
    episode's history. Returns the outputs, the final state (named as ``TitansState``'s fields,
    stacked over rows) and every inner gradient norm seen (to check that clipping was exercised).
    """
    b, t_len, _ = u.shape
    n_h, d, width = layer.n_heads, layer.head_dim, layer.conv_width
    names = [*layer.memories, "mem"]
    init = {
        name: (layer.proj_w_in[i], layer.proj_w_out[i]) for i, name in enumerate(layer.memories)
    }
    init["mem"] = (layer.mem_w_in[0], layer.mem_w_out[0])
    eye = torch.eye(d, dtype=u.dtype)
    ys = torch.zeros_like(u)
    norms: list[float] = []
    finals = []

    def fresh() -> dict[str, list[dict[str, torch.Tensor]]]:
        # per memory and head: chunk-start weights w0_*, running weights w_*, momenta s_*
        return {
            name: [
                {
                    "w0_in": init[name][0][h],
                    "w0_out": init[name][1][h],
                    "w_in": init[name][0][h],
                    "w_out": init[name][1][h],
                    "s_in": torch.zeros_like(init[name][0][h]),
                    "s_out": torch.zeros_like(init[name][1][h]),
                }
                for h in range(n_h)
            ]
            for name in names
        }

    for row in range(b):
        mems, pos_proj, pos_mem = fresh(), 0, 0
        history: list[torch.Tensor] = []  # pre-conv (q, k, v) of this episode: (3, H, d) each
        for t in range(t_len):
            if first[row, t]:
                mems, pos_proj, pos_mem, history = fresh(), 0, 0, []
            x = (layer.in_proj.weight @ u[row, t]).view(n_h, d)
            reads = {
                name: torch.stack(
                    [
                        _mlp(mems[name][h]["w0_in"], mems[name][h]["w0_out"], x[h])
                        for h in range(n_h)
                    ]
                )
                for name in layer.memories
            }  # (H, d) each, at the chunk-start weights
            q_src = reads["q"] if layer.adaptive_q else torch.einsum("hed,hd->he", layer.w_q, x)
            history.append(torch.stack([q_src, reads["k"], reads["v"]]))
            # causal depthwise conv: tap width - 1 is the current token, zeros before the episode
            post = torch.zeros(3, n_h, d, dtype=u.dtype)
            for j in range(width):
                back = width - 1 - j
                if back < len(history):
                    post = post + layer.conv_weight[..., j] * history[-1 - back]
            q = post[0] / post[0].norm(dim=-1, keepdim=True)
            k = post[1] / post[1].norm(dim=-1, keepdim=True)
            v = post[2]
            eta = layer.eta_max * torch.sigmoid(
                (layer.eta_readout * reads["eta"]).sum(-1) + layer.eta_bias
            )
            alpha = torch.sigmoid((layer.alpha_readout * reads["alpha"]).sum(-1) + layer.alpha_bias)
            beta = torch.sigmoid((layer.beta_weight * x).sum(-1) + layer.beta_bias)
            # read before the write, at M_mem's chunk-start weights
            o = torch.stack(
                [_mlp(mems["mem"][h]["w0_in"], mems["mem"][h]["w0_out"], q[h]) for h in range(n_h)]
            )
            ys[row, t] = layer.out_proj.weight @ o.reshape(-1)
            for name in names:
                for h in range(n_h):
                    m = mems[name][h]
                    w_in = m["w0_in"].detach().requires_grad_(True)
                    w_out = m["w0_out"].detach().requires_grad_(True)
                    target = _mlp(w_in, w_out, v[h]).detach()  # self-generated, stop-gradient
                    loss = (_mlp(w_in, w_out, k[h]) - target).square().sum()
                    g_in, g_out = torch.autograd.grad(loss, (w_in, w_out))
                    norm = (g_in.square().sum() + g_out.square().sum()).sqrt()
                    norms.append(float(norm))
                    scale = torch.clamp(layer.max_inner_grad_norm / norm, max=1.0)
                    m["s_in"] = beta[h] * m["s_in"] - eta[h] * scale * g_in
                    m["s_out"] = beta[h] * m["s_out"] - eta[h] * scale * g_out
                    kk = torch.outer(k[h], k[h])
                    m["w_in"] = m["w_in"] @ (alpha[h] * eye - eta[h] * kk) + m["s_in"]
                    m["w_out"] = alpha[h] * m["w_out"] + m["s_out"]
            pos_proj, pos_mem = pos_proj + 1, pos_mem + 1
            # a completed chunk's writes become the chunk-start weights of the next chunk
            for group, done in (
                (layer.memories, pos_proj == layer.chunk_size),
                (["mem"], pos_mem == layer.mem_chunk_size),
            ):
                if done:
                    for name in group:
                        for m in mems[name]:
                            m["w0_in"], m["w0_out"] = m["w_in"], m["w_out"]
            pos_proj %= layer.chunk_size
            pos_mem %= layer.mem_chunk_size
        padded = [torch.zeros(3, n_h, d, dtype=u.dtype)] * (width - 1) + history
        conv = torch.stack(padded[len(padded) - (width - 1) :], dim=2)  # (3, H, K-1, d)
        final = {"proj.pos": torch.tensor(pos_proj), "mem.pos": torch.tensor(pos_mem), "conv": conv}
        for group, mem_names in (("proj", layer.memories), ("mem", ["mem"])):
            for field in ("w0_in", "w0_out", "w_in", "w_out", "s_in", "s_out"):
                final[f"{group}.{field}"] = torch.stack(
                    [torch.stack([m[field] for m in mems[name]]) for name in mem_names]
                )
        finals.append(final)
    return ys, {key: torch.stack([f[key] for f in finals]) for key in finals[0]}, norms


@pytest.mark.parametrize(
    "opts",
    [{}, {"adaptive_q": True, "mem_hidden_mult": 2}, {"mem_chunk_size": 4}],
    ids=["default", "adaptive_q", "one_pass"],
)
def test_forward_matches_a_naive_per_token_reference_float64(opts: dict) -> None:
    """The whole layer against HOPE.md section 2 written out per token (no shared code path).

    ``one_pass`` has ``C == C_mem``: the forward then runs every memory in one pass.
    """
    kw = {"chunk_size": 4, "mem_chunk_size": 3, "eta_max": 0.5, "max_inner_grad_norm": 3.0}
    layer = _layer(8, 2, **(kw | opts)).double()
    with torch.no_grad():  # move every parameter off its special init (identity conv and W_q)
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    b, t = 2, 11  # 2.75 chunks of C = 4, 3.7 of C_mem = 3
    u = torch.randn(b, t, 8, dtype=F64)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[1, 5] = True  # mid-chunk for both chunk sizes
    with torch.no_grad():
        y, state = layer(u, layer.initial_state(b), first)
    ref_y, ref, norms = _naive_titans(layer, u, first)
    assert min(norms) < 3.0 < max(norms)  # clipping both applied and not applied
    torch.testing.assert_close(y, ref_y.detach(), rtol=1e-10, atol=1e-10)
    got = {
        "conv": state.conv,
        "proj.pos": state.pos[:, 0],
        "mem.pos": state.pos[:, 1],
    }
    m = len(layer.memories)  # the state stacks the projection memories first, then M_mem
    for group, mem in (("proj", state.mem.slice(0, m)), ("mem", state.mem.slice(m))):
        got |= {
            f"{group}.w0_in": mem.w_in,
            f"{group}.w0_out": mem.w_out,
            f"{group}.w_in": mem.w_in_run,
            f"{group}.w_out": mem.w_out_run,
            f"{group}.s_in": mem.s_in,
            f"{group}.s_out": mem.s_out,
        }
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value.detach(), rtol=1e-10, atol=1e-10, msg=key)


# ----------------------------------------------------------------------------- segments


def test_segment_layout_cuts_at_chunk_ends_and_resets() -> None:
    pos0 = torch.tensor([2, 0])
    first = torch.zeros(2, 7, dtype=torch.bool)
    first[1, 3] = True
    seg = segment_layout(pos0, 7, 4, first)
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
    # without resets the same positions give the same cuts, and no reset flags
    plain = segment_layout(pos0, 7, 4)
    assert plain.n == 3 and plain.any_reset == [False] * 3
    assert plain.valid.sum(-1).tolist() == [[2, 4, 1], [4, 3, 0]]
    assert plain.end_pos.tolist() == [1, 3] and not plain.reset.any()


# ----------------------------------------------------------------------------- the layer


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"adaptive_q": True, "mem_hidden_mult": 2},
        {"reset_fast_memory_on_episode": False, "conv_width": 1},
        {"mem_chunk_size": 4},
        {"mem_chunk_size": 4, "reset_fast_memory_on_episode": False},
    ],
    ids=["default", "adaptive_q", "persistent_memory", "one_pass", "one_pass_persistent"],
)
def test_forward_equals_step_equals_split_float64(opts: dict) -> None:
    layer = _layer(12, 3, **({"chunk_size": 4, "mem_chunk_size": 3} | opts)).double()
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


@pytest.mark.parametrize("mem_chunk_size", [3, 4], ids=["two_pass", "one_pass"])
def test_static_segment_count_under_tracing_gives_the_same_result(
    mem_chunk_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torch.compile / CUDA-graph capture a call without resets runs the host-known bound
    of segment iterations (no sync); the extra, empty segments must be exact no-ops."""
    layer = _layer(8, 2, chunk_size=4, mem_chunk_size=mem_chunk_size).double()
    u = torch.randn(2, 11, 8, dtype=F64)
    with torch.no_grad():
        _, mid = layer(u[:, :3], layer.initial_state(2))  # positions off 0
        ref = [layer(u[:, 3:], s) for s in (layer.initial_state(2), mid)]
        monkeypatch.setattr(titans, "_tracing", lambda device: True)
        for (y_ref, s_ref), start in zip(ref, (layer.initial_state(2), mid), strict=True):
            y, s = layer(u[:, 3:], start)
            torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
            for a, c in zip(s.leaves(), s_ref.leaves(), strict=True):
                torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert segment_layout(torch.zeros(2, dtype=torch.long), 8, 4).n == 3  # the bound, not 2


def test_max_segments_bounds_every_layout() -> None:
    """The host-known segment count of ``static_segments`` is never below the data's."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        t_len, chunk = (
            int(torch.randint(1, 30, (1,), generator=gen)),
            int(torch.randint(1, 9, (1,), generator=gen)),
        )
        first = torch.rand(3, t_len, generator=gen) < 0.3 * torch.rand(1, generator=gen)
        pos0 = torch.randint(0, chunk, (3,), generator=gen)
        resets = int(first[:, 1:].sum(1).max())
        assert segment_layout(pos0, t_len, chunk, first).n <= max_segments(t_len, chunk, resets)
    # tight: 8 tokens, C = 4, a row entering at phase 3 that resets at t = 2 and 3 needs 5
    first = torch.zeros(1, 8, dtype=torch.bool)
    first[0, 2:4] = True
    assert segment_layout(torch.tensor([3]), 8, 4, first).n == max_segments(8, 4, 2) == 5
    assert max_segments(8, 4, 0) == 1 + (8 + 4 - 2) // 4  # the traced bound without resets


@pytest.mark.parametrize("mem_chunk_size", [3, 4], ids=["two_pass", "one_pass"])
def test_static_segments_with_resets_give_the_same_outputs_and_gradients(
    mem_chunk_size: int,
) -> None:
    """Inside ``static_segments`` a call with resets runs the bound's segments, masking resets in
    each: outputs, state and gradients equal the data-dependent layout's."""
    layer = _layer(8, 2, chunk_size=4, mem_chunk_size=mem_chunk_size).double()
    u = torch.randn(3, 20, 8, dtype=F64, requires_grad=True)
    first = _resets(3, 20)
    with torch.no_grad():
        _, start = layer(torch.randn(3, 3, 8, dtype=F64), layer.initial_state(3))
    params = [u, *layer.parameters()]
    y_ref, s_ref = layer(u, start, first)
    g_ref = torch.autograd.grad(y_ref.square().sum(), params)
    for bound in (2, 5):
        with static_segments(bound):
            y, s = layer(u, start, first)
        g = torch.autograd.grad(y.square().sum(), params)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        for a, c in zip([*s.leaves(), *g], [*s_ref.leaves(), *g_ref], strict=True):
            torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="max_resets must be an int >= 0"), static_segments(-1):
        pass


def test_forward_equals_step_fp32() -> None:
    layer = _layer(16, 2, chunk_size=5, mem_chunk_size=3)
    b, t = 3, 23
    u = torch.randn(b, t, 16)
    first = _resets(b, t)
    y, _ = layer(u, layer.initial_state(b), first)
    torch.testing.assert_close(_stream(layer, u, first), y, rtol=0, atol=1e-5)


def test_chunk_writes_take_effect_from_the_next_chunk() -> None:
    layer = _layer(8, 2, chunk_size=4, mem_chunk_size=4)
    u = torch.randn(1, 12, 8)
    state = layer.initial_state(1)
    _, s3 = layer(u[:, :3], state)
    # mid-chunk: the chunk-start weights have not moved, the running ones have
    torch.testing.assert_close(s3.mem.w_in, state.mem.w_in)
    assert not torch.allclose(s3.mem.w_in_run, state.mem.w_in_run)
    _, s4 = layer(u[:, 3:4], s3)
    torch.testing.assert_close(s4.mem.w_in, s4.mem.w_in_run)
    assert s4.pos.tolist() == [[0, 0]] and s3.pos.tolist() == [[3, 3]]


def _poison_row(state: TitansState, row: int) -> TitansState:
    """``state`` with every float leaf of ``row`` (weights, momenta, conv buffer) set to NaN and
    its chunk positions moved off 0."""

    def poison(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t[row] = float("nan") if t.is_floating_point() else 2
        return t

    return state.map(poison)


def test_reset_recovers_a_non_finite_row_in_forward_and_step() -> None:
    layer = _layer(8, 2, chunk_size=4, mem_chunk_size=3).double()
    b, t = 2, 9
    u = torch.randn(b, t, 8, dtype=F64)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[1, 0] = True
    with torch.no_grad():
        _, warm = layer(torch.randn(b, 6, 8, dtype=F64), layer.initial_state(b))
        bad = _poison_row(warm, 1)
        assert all(torch.isnan(x[1]).all() for x in bad.leaves() if x.is_floating_point())
        y_fresh, s_fresh = layer(u[1:], layer.initial_state(1))
        y_warm, _ = layer(u[:1], warm.index(0))
        y, state = layer(u, bad, first)
        ys, s_step = [], bad
        for i in range(t):
            y_t, s_step = layer.step(u[:, i], s_step, first[:, i])
            ys.append(y_t)
    for out, end in ((y, state), (torch.stack(ys, 1), s_step)):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[1:], y_fresh, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out[:1], y_warm, rtol=1e-12, atol=1e-12)  # row 0 untouched
        for a, c in zip(end.index(1).leaves(), s_fresh.leaves(), strict=True):
            torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_persistent_memory_reset_commits_chunk_and_clears_conv_only() -> None:
    layer = _layer(8, 2, chunk_size=4, mem_chunk_size=3, reset_fast_memory_on_episode=False)
    u = torch.randn(2, 6, 8)
    _, state = layer(u[:, :5], layer.initial_state(2))
    rows = torch.tensor([True, False])
    y_reset, s_reset = layer.step(u[:, 5], state, rows)

    mem = state.mem
    manual = TitansState(
        mem=dataclasses.replace(
            mem,
            w_in=torch.where(rows[:, None, None, None, None], mem.w_in_run, mem.w_in),
            w_out=torch.where(rows[:, None, None, None, None], mem.w_out_run, mem.w_out),
        ),
        pos=torch.where(rows[:, None], 0, state.pos),
        conv=torch.where(rows[:, None, None, None, None], 0.0, state.conv),
    )
    y_manual, s_manual = layer.step(u[:, 5], manual, None)
    torch.testing.assert_close(y_reset, y_manual)
    for a, c in zip(s_reset.leaves(), s_manual.leaves(), strict=True):
        torch.testing.assert_close(a, c)


def test_state_stays_fp32_under_autocast_and_bounded_on_long_streams() -> None:
    layer = _layer(16, 2, chunk_size=8, mem_chunk_size=8)
    u = 20.0 * torch.randn(2, 600, 16)  # large inputs: inner gradients are always clipped
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(u, layer.initial_state(2))
    assert all(t.dtype == torch.float32 for t in state.leaves() if t.is_floating_point())
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(t).all() for t in state.leaves() if t.is_floating_point())
    # clipped gradients, eta <= eta_max and alpha < 1 keep the weights near their O(1) init
    assert state.mem.w_in_run[:, -1].abs().max() < 10.0  # M_mem
    assert state.mem.w_out_run[:, :-1].abs().max() < 10.0  # the projection memories


def test_a_deep_copy_runs_its_own_fast_paths() -> None:
    """The evaluator deep-copies agents: a copy's segment and step paths use the copy's weights."""
    layer = _layer(8, 2, chunk_size=4)
    u = torch.randn(2, 6, 8)
    with torch.no_grad():
        y0, _ = layer(u, layer.initial_state(2))
        clone = copy.deepcopy(layer)
        clone.eta_bias.add_(3.0)  # read inside the segment iteration and the step core only
        y_clone, _ = clone(u, clone.initial_state(2))
        y_step, _ = clone.step(u[:, 0], clone.initial_state(2))
        y_after, _ = layer(u, layer.initial_state(2))
        y_step_orig, _ = layer.step(u[:, 0], layer.initial_state(2))
    torch.testing.assert_close(y_after, y0, rtol=0, atol=0)
    assert (y_clone - y0).abs().max() > 1e-4
    # the step's first read is at the initial weights: eta changes only what is written
    torch.testing.assert_close(y_step, y_step_orig)
    _, s_clone = clone.step(u[:, 0], clone.initial_state(2))
    _, s_orig = layer.step(u[:, 0], layer.initial_state(2))
    assert (s_clone.mem.w_in_run - s_orig.mem.w_in_run).abs().max() > 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("mem_chunk_size", [3, 4], ids=["two_pass", "one_pass"])
def test_compiled_fast_paths_equal_eager(mem_chunk_size: int) -> None:
    layer = _layer(8, 2, chunk_size=4, mem_chunk_size=mem_chunk_size)
    eager = copy.deepcopy(layer)
    layer.compile_fast_paths()
    u = torch.randn(3, 10, 8)
    first = torch.zeros(3, 10, dtype=torch.bool)
    first[1, 6] = True
    outs = []
    for model in (layer, eager):
        x = u.clone().requires_grad_(True)
        y, state = model(x, model.initial_state(3), first)
        y.square().sum().backward()
        steps, s = [], model.initial_state(3)
        for t in range(4):
            y_t, s = model.step(u[:, t].detach(), s, first[:, t])
            steps.append(y_t)
        grads = [p.grad for p in model.parameters()]
        with torch.no_grad():  # the segment iteration compiled for inference
            y_infer, _ = model(u, model.initial_state(3), first)
        outs.append((y, state.leaves(), x.grad, torch.stack(steps, 1), grads, y_infer))
    for got, ref in zip(outs[0], outs[1], strict=True):
        for a, c in zip(
            got if isinstance(got, list) else [got],
            ref if isinstance(ref, list) else [ref],
            strict=True,
        ):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [[False, False], [True, True], [True, False]])
def test_row_select_takes_each_rows_side_and_leaks_no_nan(rows: list[bool]) -> None:
    """The row selects take each row's side, and a non-finite row that is not taken never
    reaches the result."""
    mask = torch.tensor(rows)
    a = torch.tensor([[1.0, 2.0], [float("nan"), 4.0]])
    b = torch.tensor([[float("nan"), 6.0], [7.0, 8.0]])
    with torch.no_grad():
        got = titans._where_rows(mask, a, b)
        zeroed = titans._zero_rows(mask, b)
    want = torch.stack([a[i] if r else b[i] for i, r in enumerate(rows)])
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())
    assert torch.equal(zeroed.nan_to_num(), b.masked_fill(mask[:, None], 0.0).nan_to_num())


@pytest.mark.parametrize("done", [[False, False], [True, True], [True, False]])
def test_the_chunk_end_swap_without_autograd_equals_the_select(done: list[bool]) -> None:
    """``_advanced`` skips its selects where the host knows ``done`` is uniform (CPU, no
    autograd); the memory it returns is the one the selects give."""
    g = torch.Generator().manual_seed(0)
    mem = titans.FastMemoryState(*(torch.randn(2, 3, 4, generator=g) for _ in range(6)))
    new = [torch.randn(2, 3, 4, generator=g) for _ in range(4)]
    mask = torch.tensor(done)
    with torch.no_grad():
        fast = titans._advanced(mem, mask, *new)
    with torch.enable_grad():
        selected = titans._advanced(mem, mask, *new)
    assert all(torch.equal(a, b) for a, b in zip(fast.leaves(), selected.leaves(), strict=True))

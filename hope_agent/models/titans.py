"""Self-modifying Titans: the fast, in-context levels of HOPE.

Follows "Nested Learning" (Behrouz et al., NeurIPS 2025, arXiv 2512.24695, sections 7-8) and
"Titans" (arXiv 2501.00663, section 3), as pinned down in ``docs/hope.md``. Per head, every memory
is a residual two-layer MLP ``M(z) = z + W_out silu(W_in z)`` whose weights are per-row state,
initialised from meta-learned parameters. Each memory writes toward its own self-generated target
``v_hat = M(v)`` with Deep Gradient Descent (DGD), retention ``alpha`` and momentum ``beta``::

    S_t = beta_t S_{t-1} - eta_t clip(grad_W ||M(k_t) - v_hat_t||^2  at the chunk-start W)
    W_in_t  = alpha_t W_in_{t-1} - eta_t (W_in_{t-1} k_t) k_t^T + S_t
    W_out_t = alpha_t W_out_{t-1} + S_t

Chunking: every token of a chunk reads the chunk-start weights ``W0`` and takes its gradient there;
the running weights ``W_run`` follow the recurrence token by token and become ``W0`` when a chunk
completes. ``step`` applies that recurrence literally; ``forward`` evaluates a whole chunk's
recurrence in closed form (:func:`dgd_chunk`), so the two agree to rounding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hope_agent.models.state import State

# Projection memories, in the order of their slot in the stacked weights; "q" only when adaptive.
PROJECTION_MEMORIES = ("k", "v", "eta", "alpha")


# ----------------------------------------------------------------------------- state


@dataclasses.dataclass
class FastMemoryState(State):
    """Per-row weights of a stack of ``M`` memories per head (fp32, batch first).

    ``w_in: (B, M, H, h, d)`` and ``w_out: (B, M, H, d, h)`` are the chunk-start weights (every
    read and inner gradient uses them); ``*_run`` are the running weights; ``s_*`` the momenta;
    ``pos: (B,)`` the position of the next token inside its chunk.
    """

    w_in: Tensor
    w_out: Tensor
    w_in_run: Tensor
    w_out_run: Tensor
    s_in: Tensor
    s_out: Tensor
    pos: Tensor


@dataclasses.dataclass
class TitansState(State):
    """State of one self-modifying Titans layer.

    ``proj`` holds the projection memories (k, v, eta, alpha[, q]) chunked by ``chunk_size``,
    ``mem`` the output memory ``M_mem`` chunked by ``mem_chunk_size``, and ``conv: (B, 3, H,
    conv_width - 1, d)`` the last pre-convolution values of q, k, v.
    """

    proj: FastMemoryState
    mem: FastMemoryState
    conv: Tensor


# ----------------------------------------------------------------------------- memory maths


def memory_read(w_in: Tensor, w_out: Tensor, z: Tensor) -> Tensor:
    """``M(z) = z + W_out silu(W_in z)`` with ``w_in (..., h, d)``, ``w_out (..., d, h)``.

    ``z (..., L, d)``; leading dims broadcast, e.g. memories ``(B, M, H)`` against ``(B, 1, H)``.
    """
    return z + F.silu(z @ w_in.mT) @ w_out.mT


def read_and_inner_grad(
    w_in: Tensor, w_out: Tensor, k: Tensor, v: Tensor, z: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Closed-form gradient of ``||M(k) - v_hat||^2`` at ``v_hat = M(v)``, and the read ``M(z)``.

    For one token ``grad W_in = p_in k^T`` and ``grad W_out = p_out s^T``; returns ``(p_in (...,
    L, h), p_out (..., L, d), s (..., L, h), M(z) or None)`` for ``k, v, z (..., L, d)``. The
    self-generated target ``v_hat`` is a constant of the inner loss (stop-gradient inside the inner
    problem) but stays differentiable for the outer loss, as are the factors themselves.

    The keys, values and optional reads go through the memory as one stacked block, so each weight
    matrix is read once for all three (instead of once per read, target and gradient): fewer and
    larger matmuls.
    """
    n = k.shape[-2]
    rows = torch.cat([k, v] if z is None else [k, v, z], dim=-2)  # (..., 2L or 3L, d)
    a_all = rows @ w_in.mT
    act = F.silu(a_all)
    out = rows + act @ w_out.mT  # M(rows)
    a, s = a_all[..., :n, :], act[..., :n, :]
    sig = torch.sigmoid(a)
    err2 = 2.0 * (out[..., :n, :] - out[..., n : 2 * n, :])  # (..., L, d): dl/dM(k)
    dsilu = sig * (1.0 + a * (1.0 - sig))
    p_in = dsilu * (err2 @ w_out)  # (..., L, h): W_out^T err2, gated by silu'
    return p_in, err2, s, None if z is None else out[..., 2 * n :, :]


def clip_factors(
    p_in: Tensor, p_out: Tensor, s: Tensor, k: Tensor, max_norm: float
) -> tuple[Tensor, Tensor]:
    """Clip each token's gradient (both matrices of one memory together) to norm ``max_norm``.

    Rank-1 matrices have ``||p r^T||_F = ||p|| ||r||``, so the norm is exact without forming them.
    Returns the scaled ``(p_in, p_out)``.
    """
    sq = p_in.square().sum(-1) * k.square().sum(-1) + p_out.square().sum(-1) * s.square().sum(-1)
    # clamp (not max) keeps the backward finite at zero gradients of padded tokens
    scale = max_norm * torch.rsqrt(sq.clamp(min=max_norm * max_norm))
    return p_in * scale.unsqueeze(-1), p_out * scale.unsqueeze(-1)


@dataclasses.dataclass
class ChunkDecays:
    """Products of retentions and momenta over one chunk, shared by every memory matrix.

    With ``Da[t, j] = prod_{j<i<=t} alpha_i`` and ``Db`` likewise for beta (lower triangular,
    ones on the diagonal) and ``E = Da @ Db``: ``*_last`` are the rows of the chunk's last token,
    ``*_prev`` are the rows "before token t" (row -1 = no token yet). Leading dims ``(..., L)``.
    """

    a_last: Tensor  # (...,)        prod alpha
    b_last: Tensor  # (...,)        prod beta
    e_last: Tensor  # (...,)        sum_t Da[L-1, t] * prod_{i<=t} beta_i  (weight of S_0 in W_L)
    da_last: Tensor  # (..., L)
    db_last: Tensor  # (..., L)
    ee_last: Tensor  # (..., L)
    a_prev: Tensor  # (..., L)
    e_prev: Tensor  # (..., L)
    da_prev: Tensor  # (..., L, L)
    ee_prev: Tensor  # (..., L, L)


def _decay_matrix(log_gate: Tensor) -> Tensor:
    """``D[t, j] = exp(sum_{j<i<=t} log_gate_i)`` for ``j <= t``, else 0; ``(..., L, L)``.

    Differences of one cumulative sum stay finite (no division by tiny products).
    """
    cum = log_gate.cumsum(-1)
    diff = cum.unsqueeze(-1) - cum.unsqueeze(-2)
    n = log_gate.shape[-1]
    lower = torch.ones(n, n, dtype=torch.bool, device=log_gate.device).tril()
    return torch.where(lower, diff, torch.full_like(diff, -math.inf)).exp()


def chunk_decays(log_alpha: Tensor, log_beta: Tensor, live: Tensor | None = None) -> ChunkDecays:
    """Decay coefficients of one chunk from ``log alpha, log beta: (..., L)``.

    ``live (..., L)`` bool marks real tokens; a padded token must also have ``log alpha = log
    beta = 0`` and ``eta = 0``, and ``live`` removes its ``+ S_t`` term, so it is an exact no-op.
    """
    da = _decay_matrix(log_alpha)  # (..., L, L)
    db = _decay_matrix(log_beta)
    b_cum = log_beta.cumsum(-1).exp()  # (..., L): prod_{i<=t} beta_i
    a_cum = log_alpha.cumsum(-1).exp()
    # W_t = sum_tau Da[t, tau] (live_tau S_tau - ...): live masks the source column tau of Da
    da_live = da if live is None else da * live.unsqueeze(-2).to(da.dtype)
    ee = da_live @ db
    e = (da_live @ b_cum.unsqueeze(-1)).squeeze(-1)  # (..., L)

    def prev_vec(vec: Tensor, first: float) -> Tensor:
        return torch.cat([torch.full_like(vec[..., :1], first), vec[..., :-1]], dim=-1)

    def prev_mat(mat: Tensor) -> Tensor:
        return torch.cat([torch.zeros_like(mat[..., :1, :]), mat[..., :-1, :]], dim=-2)

    return ChunkDecays(
        a_last=a_cum[..., -1],
        b_last=b_cum[..., -1],
        e_last=e[..., -1],
        da_last=da[..., -1, :],
        db_last=db[..., -1, :],
        ee_last=ee[..., -1, :],
        a_prev=prev_vec(a_cum, 1.0),
        e_prev=prev_vec(e, 0.0),
        da_prev=prev_mat(da),
        ee_prev=prev_mat(ee),
    )


def dgd_chunk(
    w: Tensor,
    s: Tensor,
    p: Tensor,
    r: Tensor,
    eta: Tensor,
    decays: ChunkDecays,
    key: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Apply ``L`` tokens of the DGD recurrence at once, in closed form.

    Per token t (gradient ``G_t = p_t r_t^T``, already clipped):
    ``S_t = beta_t S_{t-1} - eta_t G_t`` and ``W_t = alpha_t W_{t-1} - eta_t (W_{t-1} k_t) k_t^T +
    S_t`` (the ``k`` term only when ``key`` is given, i.e. for a matrix that consumes ``k``).
    Shapes: ``w, s (..., R, Q)``, ``p (..., L, R)``, ``r (..., L, Q)``, ``key (..., L, Q)``,
    ``eta (..., L)``; ``decays`` from :func:`chunk_decays` (broadcastable leading dims). Padded
    tokens (eta = 0, alpha = beta = 1) are exact no-ops. Returns ``(W_L, S_L)``.

    Unrolling: ``S_L = b S_0 - sum_i Db[L,i] eta_i G_i`` and ``W_L = a W_0 + e S_0 - sum_i E[L,i]
    eta_i G_i - sum_j Da[L,j] eta_j y_j k_j^T`` with ``y_t = W_{t-1} k_t``; the ``y`` solve a unit
    lower-triangular system, so no per-token ``R x Q`` matrix is ever formed.
    """

    def lead(t: Tensor) -> Tensor:
        return t[..., None, None]

    eta_b = eta.unsqueeze(-1)  # (..., L, 1)
    s_new = lead(decays.b_last) * s - (p * decays.db_last.unsqueeze(-1) * eta_b).mT @ r
    w_new = (
        lead(decays.a_last) * w
        + lead(decays.e_last) * s
        - (p * decays.ee_last.unsqueeze(-1) * eta_b).mT @ r
    )
    if key is None:
        return w_new, s_new
    # y_t = W_{t-1} k_t = a_{t-1} W_0 k_t + e_{t-1} S_0 k_t
    #       - sum_{i<t} E[t-1,i] eta_i (r_i.k_t) p_i - sum_{j<t} Da[t-1,j] eta_j (k_j.k_t) y_j
    eta_row = eta.unsqueeze(-2)  # (..., 1, L): indexes the source token i / j
    rhs = (
        decays.a_prev.unsqueeze(-1) * (key @ w.mT)
        + decays.e_prev.unsqueeze(-1) * (key @ s.mT)
        - (decays.ee_prev * eta_row * (key @ r.mT)) @ p
    )  # (..., L, R)
    lower = decays.da_prev * eta_row * (key @ key.mT)  # (..., L, L), zero diagonal
    y = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
    w_new = w_new - (y * decays.da_last.unsqueeze(-1) * eta_b).mT @ key
    return w_new, s_new


def dgd_token(
    w: Tensor,
    s: Tensor,
    p: Tensor,
    r: Tensor,
    eta: Tensor,
    alpha: Tensor,
    beta: Tensor,
    key: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One token of the DGD recurrence, literally (see :func:`dgd_chunk`).

    Shapes: ``w, s (..., R, Q)``, ``p (..., R)``, ``r (..., Q)``, ``key (..., Q)``, gates ``(...)``.
    """

    # On CPU a fresh weight-sized tensor costs page faults, so each result is allocated once and
    # the rank-1 terms are added in place (autograd-safe: mul/addcmul do not save their outputs)
    eta_c = eta[..., None, None]  # (..., 1, 1)
    s_new = (beta[..., None, None] * s).addcmul_(eta_c * p.unsqueeze(-1), r.unsqueeze(-2), value=-1)
    w_new = torch.addcmul(s_new, alpha[..., None, None], w)
    if key is not None:
        wk = w @ key.unsqueeze(-1)  # (..., R, 1)
        w_new.addcmul_(eta_c * wk, key.unsqueeze(-2), value=-1)
    return w_new, s_new


# ----------------------------------------------------------------------------- segments


@dataclasses.dataclass
class Segments:
    """How the tokens of one ``forward`` call split into per-row chunk pieces ("segments").

    A segment is the run of one row's tokens that lie in one chunk, cut at chunk ends and at
    ``is_first``. Segment ``s`` of every row is processed at the same loop iteration; rows with
    fewer segments see empty (fully padded) ones. Tokens are left-aligned in a segment.
    """

    src: Tensor  # (B, n, C) long: source time index of each slot (0 where padded)
    valid: Tensor  # (B, n, C) bool
    dest: Tensor  # (B, T) long: flat slot index (s * C + offset) of each token
    reset: Tensor  # (B, n) bool: the segment starts with is_first
    done: Tensor  # (B, n) bool: the segment's last token completes a chunk
    end_pos: Tensor  # (B,) long: position inside the chunk of the next token after the call
    any_reset: list[bool]  # per segment index: does any row reset there (skips no-op masking)

    @property
    def n(self) -> int:
        """Number of segment iterations."""
        return self.src.shape[1]

    def gather(self, x: Tensor) -> Tensor:
        """``(B, T, *F) -> (B, n, C, *F)``, zeros at padded slots."""
        b, n, c = self.src.shape
        flat = x.reshape(b, x.shape[1], -1)
        idx = self.src.reshape(b, n * c, 1).expand(-1, -1, flat.shape[-1])
        out = flat.gather(1, idx).reshape(b, n, c, *x.shape[2:])
        mask = self.valid.reshape(b, n, c, *([1] * (x.dim() - 2)))
        return torch.where(mask, out, torch.zeros((), dtype=out.dtype, device=out.device))

    def scatter(self, y: Tensor) -> Tensor:
        """``(B, n, C, *F) -> (B, T, *F)``: the inverse of :meth:`gather` on valid slots."""
        b, n, c = y.shape[:3]
        flat = y.reshape(b, n * c, -1)
        idx = self.dest.unsqueeze(-1).expand(-1, -1, flat.shape[-1])
        return flat.gather(1, idx).reshape(b, self.dest.shape[1], *y.shape[3:])


def segment_layout(pos0: Tensor, is_first: Tensor, chunk: int) -> Segments:
    """Segments of a call from the carried chunk positions ``pos0 (B,)`` and ``is_first (B, T)``.

    Pure index arithmetic: a token's phase is counted from its row's last reset (or continues
    from ``pos0``); a segment starts at t = 0 and wherever the phase is 0.
    """
    b, t_len = is_first.shape
    dev = is_first.device
    t = torch.arange(t_len, device=dev).expand(b, t_len)
    last_reset = torch.where(is_first, t, torch.full_like(t, -1)).cummax(dim=1).values
    phase = torch.where(last_reset >= 0, t - last_reset, t + pos0.unsqueeze(1)) % chunk
    start = phase == 0
    start[:, 0] = True
    seg_id = start.long().cumsum(1) - 1  # (B, T)
    n = int(seg_id[:, -1].max().item()) + 1
    # non-start tokens scatter into a spare last column, dropped afterwards
    target = torch.where(start, seg_id, torch.full_like(seg_id, n))
    first_t = torch.zeros(b, n + 1, dtype=torch.long, device=dev).scatter(1, target, t)[:, :n]
    length = torch.zeros(b, n, dtype=torch.long, device=dev).scatter_add(
        1, seg_id, torch.ones_like(seg_id)
    )
    offset = t - first_t.gather(1, seg_id)
    slot = torch.arange(chunk, device=dev)
    valid = slot < length.unsqueeze(-1)  # (B, n, C)
    src = first_t.unsqueeze(-1) + slot
    src = torch.where(valid, src, torch.zeros_like(src))
    nonempty = length > 0
    reset = is_first.gather(1, first_t) & nonempty
    done = nonempty & (phase.gather(1, first_t) + length == chunk)
    return Segments(
        src=src,
        valid=valid,
        dest=seg_id * chunk + offset,
        reset=reset,
        done=done,
        end_pos=(phase[:, -1] + 1) % chunk,
        any_reset=reset.any(0).tolist(),
    )


# ----------------------------------------------------------------------------- layer


@dataclasses.dataclass
class _Write:
    """One block of tokens' write: keys, clipped gradient factors and gates (``L`` tokens)."""

    key: Tensor  # (B, 1, H, L, d)
    p_in: Tensor  # (B, M, H, L, h)
    p_out: Tensor  # (B, M, H, L, d)
    r_out: Tensor  # (B, M, H, L, h)
    eta: Tensor  # (B, 1, H, L)
    log_alpha: Tensor  # (B, 1, H, L)
    log_beta: Tensor  # (B, 1, H, L)
    live: Tensor  # (B, 1, 1, L) bool: real (not padded) tokens


@contextmanager
def _fp32(device: torch.device) -> Iterator[None]:
    # the fast state must stay fp32 under mixed precision: its recurrence compounds rounding
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """``mask (B,)`` viewed to broadcast over the trailing dims of ``like``."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _where_rows(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Row-wise select: ``a`` where ``mask (B,)``, else ``b`` (``a`` may broadcast over rows).

    A select, not arithmetic (``lerp`` or a 0/1 product): a non-finite value in the row that is
    not taken must not leak into the result, so that a reset recovers a diverged row.
    """
    return torch.where(_rows(mask, b), a, b)


def _zero_rows(mask: Tensor, b: Tensor) -> Tensor:
    """``b`` with the rows where ``mask (B,)`` set to zero (NaN rows included)."""
    return b.masked_fill(_rows(mask, b), 0.0)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class SelfModifyingTitans(nn.Module):
    """The fast mixer of a HOPE block: input projection, self-modifying memories, output projection.

    ``forward(u (B, T, D), state, is_first (B, T))`` and ``step(u_t (B, D), state, is_first (B,))``
    give identical outputs for the same stream. ``u`` is the already normalised block input.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        chunk_size: int,
        mem_chunk_size: int,
        mem_hidden_mult: int = 1,
        adaptive_q: bool = False,
        eta_max: float = 0.1,
        max_inner_grad_norm: float = 1.0,
        conv_width: int = 4,
        alpha_init: float = 0.99,
        beta_init: float = 0.5,
        reset_fast_memory_on_episode: bool = True,
    ) -> None:
        super().__init__()
        self.d_model, self.n_heads = d_model, n_heads
        self.head_dim = d = d_model // n_heads
        self.hidden = h = mem_hidden_mult * d
        self.chunk_size, self.mem_chunk_size = chunk_size, mem_chunk_size
        self.adaptive_q = adaptive_q
        self.eta_max, self.max_inner_grad_norm = eta_max, max_inner_grad_norm
        self.conv_width = conv_width
        self.reset_fast_memory_on_episode = reset_fast_memory_on_episode
        self.memories = PROJECTION_MEMORIES + (("q",) if adaptive_q else ())
        m = len(self.memories)

        self.in_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        # meta-learned initial weights of every memory, per head (fan-in init)
        self.proj_w_in = nn.Parameter(torch.randn(m, n_heads, h, d) / math.sqrt(d))
        self.proj_w_out = nn.Parameter(torch.randn(m, n_heads, d, h) / math.sqrt(h))
        self.mem_w_in = nn.Parameter(torch.randn(1, n_heads, h, d) / math.sqrt(d))
        self.mem_w_out = nn.Parameter(torch.randn(1, n_heads, d, h) / math.sqrt(h))
        if not adaptive_q:
            # identity start: q = x is aligned with k = M_k(x) ~ x, so reads hit what was written
            self.w_q = nn.Parameter(torch.eye(d).repeat(n_heads, 1, 1))
        # scalar readouts per head; small weights keep gates near their initial values but let
        # gradients reach the memories M_eta, M_alpha from the first step
        readout_std = 0.1 / math.sqrt(d)
        self.eta_readout = nn.Parameter(torch.randn(n_heads, d) * readout_std)
        self.eta_bias = nn.Parameter(torch.zeros(n_heads))
        self.alpha_readout = nn.Parameter(torch.randn(n_heads, d) * readout_std)
        self.alpha_bias = nn.Parameter(torch.full((n_heads,), _logit(alpha_init)))
        self.beta_weight = nn.Parameter(torch.randn(n_heads, d) * readout_std)
        self.beta_bias = nn.Parameter(torch.full((n_heads,), _logit(beta_init)))
        # depthwise causal conv over q, k, v; starts as the identity (all weight on the current tap)
        conv = torch.zeros(3, n_heads, d, conv_width)
        conv[..., -1] = 1.0
        self.conv_weight = nn.Parameter(conv)

    # ------------------------------------------------------------------ state

    def _memory_init(self, w_in: Tensor, w_out: Tensor, batch: int) -> FastMemoryState:
        w_in_b = w_in.unsqueeze(0).expand(batch, *w_in.shape)
        w_out_b = w_out.unsqueeze(0).expand(batch, *w_out.shape)
        return FastMemoryState(
            w_in=w_in_b,
            w_out=w_out_b,
            w_in_run=w_in_b,
            w_out_run=w_out_b,
            s_in=torch.zeros_like(w_in_b),
            s_out=torch.zeros_like(w_out_b),
            pos=torch.zeros(batch, dtype=torch.long, device=w_in.device),
        )

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> TitansState:
        """The meta-learned initial state (differentiable w.r.t. the initial weights).

        Its tensors are copies, not views of the parameters, so a stored state does not change when
        an optimizer updates the parameters in place.
        """
        dev = self.proj_w_in.device if device is None else torch.device(device)
        state = TitansState(
            proj=self._memory_init(self.proj_w_in, self.proj_w_out, batch_size),
            mem=self._memory_init(self.mem_w_in, self.mem_w_out, batch_size),
            conv=torch.zeros(
                batch_size,
                3,
                self.n_heads,
                self.conv_width - 1,
                self.head_dim,
                dtype=self.proj_w_in.dtype,
                device=self.proj_w_in.device,
            ),
        )
        return state.to(dev) if dev != self.proj_w_in.device else state.clone()

    def _reset(
        self, mem: FastMemoryState, w_in: Tensor, w_out: Tensor, rows: Tensor
    ) -> FastMemoryState:
        """Episode start for ``rows``: the initial memory, or commit the partial chunk.

        Either way the chunk phase restarts (``pos = 0``). The initial weights broadcast over the
        rows and the momenta are zeroed by a scalar: no full-size temporaries.
        """
        pos = torch.where(rows, 0, mem.pos)
        if self.reset_fast_memory_on_episode:
            w_in_0, w_out_0 = (
                w_in.unsqueeze(0),
                w_out.unsqueeze(0),
            )  # (1, M, H, h, d), (1, M, H, d, h)
            return FastMemoryState(
                w_in=_where_rows(rows, w_in_0, mem.w_in),
                w_out=_where_rows(rows, w_out_0, mem.w_out),
                w_in_run=_where_rows(rows, w_in_0, mem.w_in_run),
                w_out_run=_where_rows(rows, w_out_0, mem.w_out_run),
                s_in=_zero_rows(rows, mem.s_in),
                s_out=_zero_rows(rows, mem.s_out),
                pos=pos,
            )
        # persistent memory: keep W_run and S, start a new chunk from them
        return dataclasses.replace(
            mem,
            w_in=_where_rows(rows, mem.w_in_run, mem.w_in),
            w_out=_where_rows(rows, mem.w_out_run, mem.w_out),
            pos=pos,
        )

    # ------------------------------------------------------------------ blocks of tokens

    def _gates(self, reads: Tensor, beta_logit: Tensor, valid: Tensor) -> tuple[Tensor, ...]:
        """eta, log alpha, log beta ``(B, 1, H, L)`` from the reads of M_eta, M_alpha.

        Padded tokens get eta = 0, alpha = beta = 1, which makes their write a no-op.
        """
        i_eta, i_alpha = self.memories.index("eta"), self.memories.index("alpha")
        eta_logit = (reads[:, i_eta] * self.eta_readout.unsqueeze(-2)).sum(-1) + self.eta_bias[
            :, None
        ]
        alpha_logit = (reads[:, i_alpha] * self.alpha_readout.unsqueeze(-2)).sum(-1) + (
            self.alpha_bias[:, None]
        )
        v = valid.unsqueeze(1)  # (B, 1, L)
        zero = torch.zeros((), dtype=reads.dtype, device=reads.device)
        eta = torch.where(v, self.eta_max * torch.sigmoid(eta_logit), zero)
        log_alpha = torch.where(v, F.logsigmoid(alpha_logit), zero)
        log_beta = torch.where(v, F.logsigmoid(beta_logit), zero)
        return eta.unsqueeze(1), log_alpha.unsqueeze(1), log_beta.unsqueeze(1)

    def _conv(self, pre: Tensor, buf: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
        """Causal depthwise conv. ``pre (B, 3, H, L, d)``, ``buf (B, 3, H, K-1, d)``,
        ``length (B,)`` valid tokens; returns the conv output and the new buffer."""
        k = self.conv_width
        seq = torch.cat([buf, pre], dim=3)  # (B, 3, H, K-1+L, d)
        n = pre.shape[3]
        w = self.conv_weight.unsqueeze(0).unsqueeze(3)  # (1, 3, H, 1, d, K)
        out = seq[:, :, :, :n] * w[..., 0]
        for j in range(1, k):
            out = out + seq[:, :, :, j : j + n] * w[..., j]
        idx = length.view(-1, 1) + torch.arange(k - 1, device=pre.device)  # last K-1 valid
        idx = idx.view(pre.shape[0], 1, 1, k - 1, 1)
        new_buf = seq.gather(3, idx.expand(-1, 3, self.n_heads, -1, self.head_dim))
        return out, new_buf

    def _projection_block(
        self,
        mem: FastMemoryState,
        conv: Tensor,
        x: Tensor,
        q_pre: Tensor | None,
        beta_logit: Tensor,
        valid: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, _Write, Tensor]:
        """Reads, conv and writes of the projection memories for ``L`` tokens of one chunk.

        ``x (B, H, L, d)``, ``q_pre (B, H, L, d)`` (fixed projection) or None, ``beta_logit (B, H,
        L)``, ``valid (B, L)``. Returns ``q, k, v (B, H, L, d)``, the write, and the conv buffer.
        """
        reads = memory_read(mem.w_in, mem.w_out, x.unsqueeze(1))  # (B, M, H, L, d)
        idx = self.memories.index
        q_src = reads[:, idx("q")] if q_pre is None else q_pre
        pre = torch.stack([q_src, reads[:, idx("k")], reads[:, idx("v")]], dim=1)  # (B,3,H,L,d)
        post, conv = self._conv(pre, conv, valid.sum(-1))
        q = F.normalize(post[:, 0], dim=-1)
        k = F.normalize(post[:, 1], dim=-1)
        v = post[:, 2]
        eta, log_alpha, log_beta = self._gates(reads, beta_logit, valid)
        write, _ = self._write(mem, k.unsqueeze(1), v.unsqueeze(1), eta, log_alpha, log_beta, valid)
        return q, k, v, write, conv

    def _write(
        self,
        mem: FastMemoryState,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        log_alpha: Tensor,
        log_beta: Tensor,
        valid: Tensor,
        q: Tensor | None = None,
    ) -> tuple[_Write, Tensor | None]:
        """Self-generated targets and clipped inner gradients at the chunk-start weights, and the
        read ``M(q)`` there when ``q`` is given (all from one pass over the weights)."""
        p_in, p_out, s, read = read_and_inner_grad(mem.w_in, mem.w_out, k, v, q)
        p_in, p_out = clip_factors(p_in, p_out, s, k, self.max_inner_grad_norm)
        live = valid[:, None, None, :]  # (B, 1, 1, L)
        return _Write(k, p_in, p_out, s, eta, log_alpha, log_beta, live), read

    @staticmethod
    def _apply_chunk(mem: FastMemoryState, wr: _Write, done: Tensor) -> FastMemoryState:
        """Closed-form recurrence over a block, then ``W0 := W_run`` where a chunk completed."""
        dec = chunk_decays(wr.log_alpha, wr.log_beta, wr.live)
        w_in, s_in = dgd_chunk(mem.w_in_run, mem.s_in, wr.p_in, wr.key, wr.eta, dec, key=wr.key)
        w_out, s_out = dgd_chunk(mem.w_out_run, mem.s_out, wr.p_out, wr.r_out, wr.eta, dec)
        return FastMemoryState(
            w_in=_where_rows(done, w_in, mem.w_in),
            w_out=_where_rows(done, w_out, mem.w_out),
            w_in_run=w_in,
            w_out_run=w_out,
            s_in=s_in,
            s_out=s_out,
            pos=mem.pos,
        )

    @staticmethod
    def _apply_token(mem: FastMemoryState, wr: _Write, chunk: int) -> FastMemoryState:
        """One token's literal recurrence, then the chunk-end swap and position advance."""
        eta, alpha, beta = wr.eta[..., 0], wr.log_alpha[..., 0].exp(), wr.log_beta[..., 0].exp()
        key = wr.key[..., 0, :]
        w_in, s_in = dgd_token(
            mem.w_in_run, mem.s_in, wr.p_in[..., 0, :], key, eta, alpha, beta, key=key
        )
        w_out, s_out = dgd_token(
            mem.w_out_run, mem.s_out, wr.p_out[..., 0, :], wr.r_out[..., 0, :], eta, alpha, beta
        )
        done = mem.pos == chunk - 1
        return FastMemoryState(
            w_in=_where_rows(done, w_in, mem.w_in),
            w_out=_where_rows(done, w_out, mem.w_out),
            w_in_run=w_in,
            w_out_run=w_out,
            s_in=s_in,
            s_out=s_out,
            pos=(mem.pos + 1) % chunk,
        )

    # ------------------------------------------------------------------ public

    def _inputs(self, u: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Heads ``x (B, T, H, d)``, fixed-projection ``q`` and the momentum gate logits."""
        b, t, _ = u.shape
        x = self.in_proj(u).view(b, t, self.n_heads, self.head_dim)
        with _fp32(u.device):
            x = x.to(self.proj_w_in.dtype)
            q_pre = None if self.adaptive_q else torch.einsum("bthd,hed->bthe", x, self.w_q)
            beta_logit = torch.einsum("bthd,hd->bth", x, self.beta_weight) + self.beta_bias
        return x, q_pre, beta_logit

    def forward(
        self, u: Tensor, state: TitansState, is_first: Tensor | None = None
    ) -> tuple[Tensor, TitansState]:
        """Chunked forward over ``u (B, T, D)``; returns the mixer output ``(B, T, D)``, state."""
        b, t_len, _ = u.shape
        first = (
            torch.zeros(b, t_len, dtype=torch.bool, device=u.device)
            if is_first is None
            else is_first.to(torch.bool)
        )
        x, q_pre, beta_logit = self._inputs(u)
        with _fp32(u.device):
            # pass 1: projection memories, chunks of C; produces q, k, v and the gates
            seg = segment_layout(state.proj.pos, first, self.chunk_size)
            xs = seg.gather(x).transpose(2, 3)  # (B, n, H, C, d)
            qs = None if q_pre is None else seg.gather(q_pre).transpose(2, 3)
            bs = seg.gather(beta_logit).transpose(2, 3)  # (B, n, H, C)
            proj, conv = state.proj, state.conv
            per_seg: list[Tensor] = []
            for i in range(seg.n):
                if seg.any_reset[i]:
                    rows = seg.reset[:, i]
                    proj = self._reset(proj, self.proj_w_in, self.proj_w_out, rows)
                    conv = _zero_rows(rows, conv)
                q_i = None if qs is None else qs[:, i]
                q, k, v, wr, conv = self._projection_block(
                    proj, conv, xs[:, i], q_i, bs[:, i], seg.valid[:, i]
                )
                proj = self._apply_chunk(proj, wr, seg.done[:, i])
                gates = torch.stack([wr.eta[:, 0], wr.log_alpha[:, 0], wr.log_beta[:, 0]], -1)
                per_seg.append(torch.cat([q, k, v, gates], dim=-1))  # (B, H, C, 3d + 3)
            proj = dataclasses.replace(proj, pos=seg.end_pos)
            packed = seg.scatter(torch.stack(per_seg, 1).transpose(2, 3))  # (B, T, H, 3d + 3)

            # pass 2: the output memory M_mem, chunks of C_mem
            seg = segment_layout(state.mem.pos, first, self.mem_chunk_size)
            ps = seg.gather(packed).transpose(2, 3)  # (B, n, H, C_mem, 3d + 3)
            d = self.head_dim
            mem = state.mem
            outs: list[Tensor] = []
            for i in range(seg.n):
                if seg.any_reset[i]:
                    mem = self._reset(mem, self.mem_w_in, self.mem_w_out, seg.reset[:, i])
                p = ps[:, i]
                valid = seg.valid[:, i].unsqueeze(1)  # (B, 1, C_mem)
                zero = torch.zeros((), dtype=p.dtype, device=p.device)
                eta = torch.where(valid, p[..., 3 * d], zero).unsqueeze(1)  # (B, 1, H, C_mem)
                log_alpha = torch.where(valid, p[..., 3 * d + 1], zero).unsqueeze(1)
                log_beta = torch.where(valid, p[..., 3 * d + 2], zero).unsqueeze(1)
                q, k, v = p[..., :d], p[..., d : 2 * d], p[..., 2 * d : 3 * d]
                wr, read = self._write(
                    mem,
                    k.unsqueeze(1),
                    v.unsqueeze(1),
                    eta,
                    log_alpha,
                    log_beta,
                    seg.valid[:, i],
                    q.unsqueeze(1),
                )
                assert read is not None
                outs.append(read[:, 0])
                mem = self._apply_chunk(mem, wr, seg.done[:, i])
            mem = dataclasses.replace(mem, pos=seg.end_pos)
            o = seg.scatter(torch.stack(outs, 1).transpose(2, 3))  # (B, T, H, d)
        y = self.out_proj(o.reshape(b, t_len, self.d_model).to(u.dtype))
        return y, TitansState(proj=proj, mem=mem, conv=conv)

    def step(
        self, u_t: Tensor, state: TitansState, is_first: Tensor | None = None
    ) -> tuple[Tensor, TitansState]:
        """One token ``u_t (B, D)``: read at W0, write into W_run, swap at the chunk end."""
        b = u_t.shape[0]
        x, q_pre, beta_logit = self._inputs(u_t.unsqueeze(1))
        with _fp32(u_t.device):
            proj, mem, conv = state.proj, state.mem, state.conv
            if is_first is not None:
                rows = is_first.to(torch.bool)
                proj = self._reset(proj, self.proj_w_in, self.proj_w_out, rows)
                mem = self._reset(mem, self.mem_w_in, self.mem_w_out, rows)
                conv = _zero_rows(rows, conv)
            valid = torch.ones(b, 1, dtype=torch.bool, device=u_t.device)
            q, k, v, wr, conv = self._projection_block(
                proj,
                conv,
                x.transpose(1, 2),
                None if q_pre is None else q_pre.transpose(1, 2),
                beta_logit.transpose(1, 2),
                valid,
            )
            proj = self._apply_token(proj, wr, self.chunk_size)
            wr, read = self._write(
                mem,
                k.unsqueeze(1),
                v.unsqueeze(1),
                wr.eta,
                wr.log_alpha,
                wr.log_beta,
                valid,
                q.unsqueeze(1),
            )
            assert read is not None
            o = read[:, 0]  # (B, H, 1, d)
            mem = self._apply_token(mem, wr, self.mem_chunk_size)
        y = self.out_proj(o.reshape(b, self.d_model).to(u_t.dtype))
        return y, TitansState(proj=proj, mem=mem, conv=conv)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, chunk_size={self.chunk_size}, "
            f"mem_chunk_size={self.mem_chunk_size}, memories={self.memories}"
        )


__all__: list[str] = [
    "PROJECTION_MEMORIES",
    "ChunkDecays",
    "FastMemoryState",
    "Segments",
    "SelfModifyingTitans",
    "TitansState",
    "chunk_decays",
    "clip_factors",
    "dgd_chunk",
    "dgd_token",
    "memory_read",
    "read_and_inner_grad",
    "segment_layout",
]

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hope_agent.models.state import State

# Projection memories, in the order of their slot in the stacked weights; "q" only when adaptive.
PROJECTION_MEMORIES = ("k", "v", "eta", "alpha")


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class TitansConfig:
    """Hyper-parameters of one :class:`SelfModifyingTitans` layer (validated on creation).

    ``chunk_size`` (``C``) chunks the projection memories, ``mem_chunk_size`` (``C_mem``, None =
    ``C``) the output memory ``M_mem``; ``mem_hidden_mult`` sets the memories' hidden width
    ``h = mem_hidden_mult * d``; ``adaptive_q`` replaces the fixed ``W_q`` by a memory ``M_q``;
    ``eta_max`` bounds the inner learning rate, ``max_inner_grad_norm`` clips each token's inner
    gradient; ``alpha_init`` / ``beta_init`` are the initial retention and momentum gates;
    ``reset_fast_memory_on_episode=False`` keeps the fast memory across episodes.
    """

    d_model: int
    n_heads: int
    chunk_size: int = 16
    mem_chunk_size: int | None = None
    mem_hidden_mult: int = 1
    adaptive_q: bool = False
    eta_max: float = 0.1
    max_inner_grad_norm: float = 1.0
    conv_width: int = 4
    alpha_init: float = 0.99
    beta_init: float = 0.5
    reset_fast_memory_on_episode: bool = True

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "chunk_size", "mem_hidden_mult", "conv_width"):
            positive_int(type(self).__name__, name, getattr(self, name))
        if self.mem_chunk_size is not None:
            positive_int(type(self).__name__, "mem_chunk_size", self.mem_chunk_size)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"{type(self).__name__}: d_model={self.d_model} must be divisible by "
                f"n_heads={self.n_heads}; pick n_heads among the divisors of d_model"
            )
        for name in ("eta_max", "max_inner_grad_norm"):
            if not float(getattr(self, name)) > 0.0:
                raise ValueError(
                    f"{type(self).__name__}: {name} must be > 0, got {getattr(self, name)}"
                )
        for name in ("alpha_init", "beta_init"):
            if not 0.0 < float(getattr(self, name)) < 1.0:
                raise ValueError(
                    f"{type(self).__name__}: {name} must lie strictly in (0, 1), "
                    f"got {getattr(self, name)}"
                )

    @property
    def resolved_mem_chunk_size(self) -> int:
        """The chunk size of ``M_mem``."""
        return self.chunk_size if self.mem_chunk_size is None else self.mem_chunk_size


def positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` if it is an int >= 1 (bools excluded), else one ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
    return value


# ----------------------------------------------------------------------------- state


@dataclasses.dataclass
class FastMemoryState(State):
    """Per-row weights of a stack of ``M`` memories per head (fp32, batch first).

    ``w_in: (B, M, H, h, d)`` and ``w_out: (B, M, H, d, h)`` are the chunk-start weights (every
    read and inner gradient uses them); ``*_run`` are the running weights; ``s_*`` the momenta.
    """

    w_in: Tensor
    w_out: Tensor
    w_in_run: Tensor
    w_out_run: Tensor
    s_in: Tensor
    s_out: Tensor

    def slice(self, lo: int, hi: int | None = None) -> FastMemoryState:
        """Memories ``lo:hi`` (dim 1), as contiguous tensors (batched matmuls need them)."""
        return self.map(lambda t: t[:, lo:hi].contiguous())

    @staticmethod
    def join(parts: Sequence[FastMemoryState]) -> FastMemoryState:
        """Concatenate stacks of memories along dim 1 (the inverse of :meth:`slice`)."""
        return FastMemoryState(
            **{
                f.name: torch.cat([getattr(p, f.name) for p in parts], dim=1)
                for f in dataclasses.fields(FastMemoryState)
            }
        )


@dataclasses.dataclass
class TitansState(State):
    """State of one self-modifying Titans layer.

    ``mem`` stacks every memory along dim 1, in the order of ``SelfModifyingTitans.memories``
    (k, v, eta, alpha[, q]) then the output memory ``M_mem`` last, so that one batched op reads or
    writes all of them. ``pos: (B, 2)`` is the position of the next token inside its chunk, for
    the projection memories (chunk ``C``) and for ``M_mem`` (chunk ``C_mem``); ``conv: (B, 3, H,
    conv_width - 1, d)`` holds the last pre-convolution values of q, k, v.
    """

    mem: FastMemoryState
    pos: Tensor
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


def _decay_matrix_from_cumsum(cum: Tensor) -> Tensor:
    """``D[t, j] = exp(sum_{j<i<=t} log_gate_i)`` for ``j <= t``, else 0; ``(..., L, L)``, from
    ``cum = log_gate.cumsum(-1)``.

    Differences of one cumulative sum stay finite (no division by tiny products).
    """
    diff = cum.unsqueeze(-1) - cum.unsqueeze(-2)
    n = cum.shape[-1]
    lower = torch.ones(n, n, dtype=torch.bool, device=cum.device).tril()
    return diff.masked_fill(~lower, -math.inf).exp()


def chunk_decays(log_alpha: Tensor, log_beta: Tensor, live: Tensor | None = None) -> ChunkDecays:
    """Decay coefficients of one chunk from ``log alpha, log beta: (..., L)``.

    ``live (..., L)`` bool marks real tokens; a padded token must also have ``log alpha = log
    beta = 0`` and ``eta = 0``, and ``live`` removes its ``+ S_t`` term, so it is an exact no-op.
    """
    # both gates at once (stacked on a new dim -3): one cumsum, one decay-matrix computation
    cum = torch.stack([log_alpha, log_beta], dim=-2).cumsum(-1)  # (..., 2, L)
    da, db = _decay_matrix_from_cumsum(cum).unbind(-3)  # (..., L, L) each
    a_cum, b_cum = cum.exp().unbind(-2)  # (..., L): prod_{i<=t} alpha_i, beta_i
    # W_t = sum_tau Da[t, tau] (live_tau S_tau - ...): live masks the source column tau of Da
    da_live = da if live is None else da * live.unsqueeze(-2).to(da.dtype)
    ee_e = da_live @ torch.cat([db, b_cum.unsqueeze(-1)], dim=-1)  # (..., L, L + 1)
    ee, e = ee_e[..., :-1], ee_e[..., -1]

    def prev_vec(vec: Tensor, first: float) -> Tensor:
        return F.pad(vec[..., :-1], (1, 0), value=first)

    def prev_mat(mat: Tensor) -> Tensor:
        return F.pad(mat[..., :-1, :], (0, 0, 1, 0))

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


def _tracing(device: torch.device) -> bool:
    """True under ``torch.compile`` or while a CUDA graph is captured: no host syncs allowed."""
    if torch.compiler.is_compiling():
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


# The resets bound of :func:`static_segments`, None outside it.
_MAX_RESETS: ContextVar[int | None] = ContextVar("max_resets", default=None)


@contextmanager
def static_segments(max_resets: int) -> Iterator[None]:
    """Inside, every ``forward`` with ``is_first`` runs a number of segments known on the host:
    no device-to-host copy, so the call can be captured in a CUDA graph.

    ``max_resets`` must bound, for every row of every call inside, the number of ``is_first``
    at ``t >= 1`` (a reset at ``t = 0`` adds no segment). :func:`segment_layout` then takes
    :func:`max_segments` iterations and masks the resets in each; a row that needs fewer sees
    empty, no-op segments. The results equal the data-dependent layout's to rounding.
    """
    if isinstance(max_resets, bool) or not isinstance(max_resets, int) or max_resets < 0:
        raise ValueError(f"static_segments: max_resets must be an int >= 0, got {max_resets!r}")
    token = _MAX_RESETS.set(max_resets)
    try:
        yield
    finally:
        _MAX_RESETS.reset(token)


def max_segments(t_len: int, chunk: int, max_resets: int) -> int:
    """The most segments a row of ``t_len`` tokens can need with chunk ``chunk`` and at most
    ``max_resets`` resets at ``t >= 1``, whatever its carried position.

    ``r`` resets cut the row into ``r + 1`` runs of lengths ``L_i``; each run starts a segment.
    After its first token the first run crosses at most ``ceil((L_0 - 1) / C)`` chunk starts
    (its phase is carried), a later run, starting at phase 0, ``floor((L_i - 1) / C)``; so
    ``n <= r + 1 + ceil((T - r - 1) / C)``, never more than ``T``. (Without resets this is
    ``1 + (T + C - 2) // C``, the traced bound of :func:`segment_layout`.)
    """
    runs = max_resets + 1
    after_first = max(0, t_len - runs)
    return max(1, min(t_len, runs + (after_first + chunk - 1) // chunk))


def segment_layout(
    pos0: Tensor, t_len: int, chunk: int, is_first: Tensor | None = None
) -> Segments:
    """Segments of a call of ``t_len`` tokens from the carried chunk positions ``pos0 (B,)`` and
    ``is_first (B, T)`` (None: no resets).

    Pure index arithmetic: a token's phase is counted from its row's last reset (or continues
    from ``pos0``); a segment starts at t = 0 and wherever the phase is 0. The number of segment
    iterations depends on the data: eager calls read it with one device-to-host copy (with
    resets, together with the per-segment "any row resets" flags), which skips empty segments.
    Under ``torch.compile`` or a CUDA-graph capture, a call without resets takes the bound
    ``1 + (T + C - 2) // C`` instead, known on the host (no sync, no graph break; a row that
    needs fewer segments sees empty, no-op ones); a call with resets does the same inside
    :func:`static_segments`, which names the bound on the resets.
    """
    b = pos0.shape[0]
    dev = pos0.device
    t = torch.arange(t_len, device=dev).expand(b, t_len)
    if is_first is None:
        phase = (t + pos0.unsqueeze(1)) % chunk
    else:
        last_reset = torch.where(is_first, t, torch.full_like(t, -1)).cummax(dim=1).values
        phase = torch.where(last_reset >= 0, t - last_reset, t + pos0.unsqueeze(1)) % chunk
    start = (phase == 0) | (t == 0)
    seg_id = start.long().cumsum(1) - 1  # (B, T)
    max_resets = _MAX_RESETS.get()
    if is_first is not None and max_resets is not None:
        n = max_segments(t_len, chunk, max_resets)
        any_reset = [True] * n
    elif is_first is None and _tracing(dev):
        n = max_segments(t_len, chunk, 0)
        any_reset = [False] * n
    elif is_first is None:
        n = int(seg_id[:, -1].amax()) + 1
        any_reset = [False] * n
    else:
        flags = torch.zeros(t_len, dtype=torch.long, device=dev).scatter_reduce(
            0, seg_id.reshape(-1), is_first.reshape(-1).long(), "amax"
        )
        host = torch.cat([seg_id[:, -1].amax().view(1) + 1, flags]).tolist()
        n = int(host[0])
        any_reset = [bool(f) for f in host[1 : n + 1]]
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
    reset = (
        torch.zeros_like(nonempty) if is_first is None else is_first.gather(1, first_t) & nonempty
    )
    done = nonempty & (phase.gather(1, first_t) + length == chunk)
    return Segments(
        src=src,
        valid=valid,
        dest=seg_id * chunk + offset,
        reset=reset,
        done=done,
        end_pos=(phase[:, -1] + 1) % chunk,
        any_reset=any_reset,
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


@dataclasses.dataclass
class _Tokens:
    """A block's normalised q, k, v ``(B, 1, H, L, d)`` and gates ``(B, 1, H, L)``."""

    q: Tensor
    k: Tensor
    v: Tensor
    eta: Tensor
    log_alpha: Tensor
    log_beta: Tensor


# A segment body: (memories, conv buffer or None, packed inputs (B, H, L, F), valid (B, L)) ->
# (per-token outputs (B, H, L, F'), the block's write, conv buffer or None)
_Body = Callable[
    [FastMemoryState, Tensor | None, Tensor, Tensor], tuple[Tensor, _Write, Tensor | None]
]


@contextmanager
def _fp32(device: torch.device) -> Iterator[None]:
    # the fast state must stay fp32 under mixed precision: its recurrence compounds rounding
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """``mask (B,)`` or ``(B, M)`` viewed to broadcast over the trailing dims of ``like``."""
    return mask.view(*mask.shape, *([1] * (like.dim() - mask.dim())))


def _uniform(mask: Tensor) -> bool | None:
    """``mask``'s value where it is the same in every row and that is cheap to know on the host
    (a CPU tensor, outside ``torch.compile``, autograd off), else ``None``. On a GPU reading it
    would be a device sync (and would break a CUDA-graph capture); with autograd on, skipping a
    select would change the order in which the backward sums a tensor's gradients (float
    rounding), so training keeps its selects and stays bit-identical."""
    if (
        mask.device.type != "cpu"
        or torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or mask.numel() == 0
    ):
        return None
    if not bool(mask.any()):
        return False
    return True if bool(mask.all()) else None


def _where_rows(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Row-wise select: ``a`` where ``mask (B,)`` (or ``(B, M)``: per row and memory), else ``b``
    (``a`` may broadcast over rows).

    A select, not arithmetic (``lerp`` or a 0/1 product): a non-finite value in the row that is
    not taken must not leak into the result, so that a reset recovers a diverged row.
    """
    return torch.where(_rows(mask, b), a, b)


def _zero_rows(mask: Tensor, b: Tensor) -> Tensor:
    """``b`` with the rows where ``mask (B,)`` set to zero (NaN rows included)."""
    return b.masked_fill(_rows(mask, b), 0.0)


def _advanced(
    mem: FastMemoryState, done: Tensor, w_in: Tensor, s_in: Tensor, w_out: Tensor, s_out: Tensor
) -> FastMemoryState:
    """``mem`` with new running weights and momenta; the chunk-start weights take the running
    ones where a chunk completed (``done``). Where :func:`_uniform` knows ``done`` is the same
    in every row, the side taken is kept as it is instead of two weight-sized selects."""
    uniform = _uniform(done)
    if uniform is None:
        start_in, start_out = _where_rows(done, w_in, mem.w_in), _where_rows(done, w_out, mem.w_out)
    else:
        start_in, start_out = (w_in, w_out) if uniform else (mem.w_in, mem.w_out)
    return FastMemoryState(
        w_in=start_in, w_out=start_out, w_in_run=w_in, w_out_run=w_out, s_in=s_in, s_out=s_out
    )


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class SelfModifyingTitans(nn.Module):
    """The fast mixer of a HOPE block: input projection, self-modifying memories, output projection.

    ``forward(u (B, T, D), state, is_first (B, T))`` and ``step(u_t (B, D), state, is_first (B,))``
    give identical outputs for the same stream. ``u`` is the already normalised block input.
    ``step`` has no host synchronisation and no data-dependent control flow, so it can be
    captured in a CUDA graph; so can ``forward`` when ``is_first`` is None, or inside
    :func:`static_segments`.
    """

    chunk_sizes: Tensor
    memory_group: Tensor

    def __init__(self, config: TitansConfig) -> None:
        super().__init__()
        self.config = config
        self.d_model, self.n_heads = config.d_model, config.n_heads
        self.head_dim = d = config.d_model // config.n_heads
        self.hidden = h = config.mem_hidden_mult * d
        self.chunk_size = config.chunk_size
        self.mem_chunk_size = config.resolved_mem_chunk_size
        self.adaptive_q = config.adaptive_q
        self.eta_max, self.max_inner_grad_norm = config.eta_max, config.max_inner_grad_norm
        self.conv_width = config.conv_width
        self.reset_fast_memory_on_episode = config.reset_fast_memory_on_episode
        self.memories = PROJECTION_MEMORIES + (("q",) if config.adaptive_q else ())
        m, n_heads = len(self.memories), config.n_heads

        # creation order fixes what a seed initialises: keep it, so seeded runs stay comparable
        self.in_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        # meta-learned initial weights of every memory, per head (fan-in init)
        self.proj_w_in = nn.Parameter(torch.randn(m, n_heads, h, d) / math.sqrt(d))
        self.proj_w_out = nn.Parameter(torch.randn(m, n_heads, d, h) / math.sqrt(h))
        self.mem_w_in = nn.Parameter(torch.randn(1, n_heads, h, d) / math.sqrt(d))
        self.mem_w_out = nn.Parameter(torch.randn(1, n_heads, d, h) / math.sqrt(h))
        if not config.adaptive_q:
            # identity start: q = x is aligned with k = M_k(x) ~ x, so reads hit what was written
            self.w_q = nn.Parameter(torch.eye(d).repeat(n_heads, 1, 1))
        # scalar readouts per head; small weights keep gates near their initial values but let
        # gradients reach the memories M_eta, M_alpha from the first step
        readout_std = 0.1 / math.sqrt(d)
        self.eta_readout = nn.Parameter(torch.randn(n_heads, d) * readout_std)
        self.eta_bias = nn.Parameter(torch.zeros(n_heads))
        self.alpha_readout = nn.Parameter(torch.randn(n_heads, d) * readout_std)
        self.alpha_bias = nn.Parameter(torch.full((n_heads,), _logit(config.alpha_init)))
        self.beta_weight = nn.Parameter(torch.randn(n_heads, d) * readout_std)
        self.beta_bias = nn.Parameter(torch.full((n_heads,), _logit(config.beta_init)))
        # depthwise causal conv over q, k, v; starts as the identity (all weight on the current tap)
        conv = torch.zeros(3, n_heads, d, config.conv_width)
        conv[..., -1] = 1.0
        self.conv_weight = nn.Parameter(conv)
        # derived from the config, not learned: non-persistent, so the state_dict is unchanged.
        # chunk_sizes[g] is the chunk of position counter g; memory_group[i] the counter of memory i
        self.register_buffer(
            "chunk_sizes", torch.tensor([self.chunk_size, self.mem_chunk_size]), persistent=False
        )
        self.register_buffer("memory_group", torch.tensor([0] * m + [1]), persistent=False)
        # opt-in torch.compile'd versions of the segment iteration (with and without autograd)
        # and of the step core
        self._compiled_segment: Callable[..., tuple[Tensor, FastMemoryState, Tensor | None]]
        self._training_segment: Callable[..., tuple[Tensor, FastMemoryState, Tensor | None]]
        self._compiled_segment = self._segment
        self._training_segment = self._segment
        self._compiled_step: Callable[..., tuple[Tensor, FastMemoryState, Tensor, Tensor]]
        self._compiled_step = self._step_core

    def compile_fast_paths(self, segment_mode: str | None = None) -> None:
        """Run the segment iteration of ``forward`` and the core of ``step`` through
        ``torch.compile(..., dynamic=False)`` from now on.

        Both are fixed-shape chains of small ops (per segment: reads, conv, inner gradients,
        decays, the closed-form update; per step: the reset, reads and the update), which the
        compiler fuses into fewer kernels with fewer passes over the weight-sized state. The
        results equal the eager ones to fp32 rounding; the first call of each shape compiles.

        ``segment_mode`` is the compile mode of the segment iteration while autograd is on (the
        training path); ``"reduce-overhead"`` replays each compiled segment, forward and backward,
        from CUDA graphs (CUDA only; for benchmarks: it crashed a GPU training run, so
        ``compile=true`` uses the default mode). Without autograd the segment runs in the default
        mode, and the step core always does, so that
        :class:`~hope_agent.models.graphs.GraphedStep` can capture it.
        """
        self._compiled_segment = torch.compile(self._segment, dynamic=False)
        self._training_segment = (
            self._compiled_segment
            if segment_mode is None
            else torch.compile(self._segment, dynamic=False, mode=segment_mode)
        )
        self._compiled_step = torch.compile(self._step_core, dynamic=False)

    # ------------------------------------------------------------------ state

    def _init_weights(self) -> tuple[Tensor, Tensor]:
        """Every memory's meta-learned initial ``W_in (M + 1, H, h, d)``, ``W_out``, state order."""
        return (
            torch.cat([self.proj_w_in, self.mem_w_in]),
            torch.cat([self.proj_w_out, self.mem_w_out]),
        )

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> TitansState:
        """The meta-learned initial state (differentiable w.r.t. the initial weights).

        Its tensors are contiguous copies, not views of the parameters, so a stored state does not
        change when an optimizer updates the parameters in place, and a state can be copied into.
        """
        dev = self.proj_w_in.device if device is None else torch.device(device)
        w_in0, w_out0 = self._init_weights()

        def rows(w: Tensor) -> Tensor:
            return w.to(dev).unsqueeze(0).expand(batch_size, *w.shape).contiguous()

        def zeros(w: Tensor) -> Tensor:
            return torch.zeros(batch_size, *w.shape, dtype=w.dtype, device=dev)

        mem = FastMemoryState(
            w_in=rows(w_in0),
            w_out=rows(w_out0),
            w_in_run=rows(w_in0),
            w_out_run=rows(w_out0),
            s_in=zeros(w_in0),
            s_out=zeros(w_out0),
        )
        conv = (3, self.n_heads, self.conv_width - 1, self.head_dim)
        return TitansState(
            mem=mem,
            pos=torch.zeros(batch_size, 2, dtype=torch.long, device=dev),
            conv=torch.zeros(batch_size, *conv, dtype=w_in0.dtype, device=dev),
        )

    def _reset(
        self, mem: FastMemoryState, init: tuple[Tensor, Tensor], rows: Tensor
    ) -> FastMemoryState:
        """Episode start for ``rows``: the initial memory ``init``, or commit the partial chunk.

        The initial weights broadcast over the rows and the momenta are zeroed by a scalar: no
        full-size temporaries. The caller restarts the chunk phase.
        """
        if self.reset_fast_memory_on_episode:
            w_in_0, w_out_0 = init[0].unsqueeze(0), init[1].unsqueeze(0)
            return FastMemoryState(
                w_in=_where_rows(rows, w_in_0, mem.w_in),
                w_out=_where_rows(rows, w_out_0, mem.w_out),
                w_in_run=_where_rows(rows, w_in_0, mem.w_in_run),
                w_out_run=_where_rows(rows, w_out_0, mem.w_out_run),
                s_in=_zero_rows(rows, mem.s_in),
                s_out=_zero_rows(rows, mem.s_out),
            )
        # persistent memory: keep W_run and S, start a new chunk from them
        return dataclasses.replace(
            mem,
            w_in=_where_rows(rows, mem.w_in_run, mem.w_in),
            w_out=_where_rows(rows, mem.w_out_run, mem.w_out),
        )

    # ------------------------------------------------------------------ blocks of tokens

    def _pack(self, u: Tensor) -> Tensor:
        """Per-head inputs ``(B, T, H, F)``: ``x``, the fixed-projection ``q`` (unless adaptive)
        and the momentum gate logit, packed so that one gather moves them into segments."""
        b, t, _ = u.shape
        x = self.in_proj(u).view(b, t, self.n_heads, self.head_dim)
        with _fp32(u.device):
            x = x.to(self.proj_w_in.dtype)
            beta_logit = torch.einsum("bthd,hd->bth", x, self.beta_weight) + self.beta_bias
            parts = [x, beta_logit.unsqueeze(-1)]
            if not self.adaptive_q:
                parts.insert(1, torch.einsum("bthd,hed->bthe", x, self.w_q))
            return torch.cat(parts, dim=-1)

    def _read_block(
        self, mem: FastMemoryState, conv: Tensor, p: Tensor, valid: Tensor
    ) -> tuple[_Tokens, Tensor]:
        """Reads of the projection memories, conv, q, k, v and gates for ``L`` tokens of a chunk.

        ``p (B, H, L, F)`` packed by :meth:`_pack`, ``valid (B, L)``. ``mem`` holds the projection
        memories first; when it also holds ``M_mem`` its read at ``x`` is computed and unused (one
        matmul over every memory costs less than slicing a copy of the weights).
        Padded tokens get eta = 0, alpha = beta = 1, which makes their write a no-op.
        """
        d = self.head_dim
        x = p[..., :d]
        reads = memory_read(mem.w_in, mem.w_out, x.unsqueeze(1))  # (B, M', H, L, d)
        idx = self.memories.index
        q_src = reads[:, idx("q")] if self.adaptive_q else p[..., d : 2 * d]
        pre = torch.stack([q_src, reads[:, idx("k")], reads[:, idx("v")]], dim=1)  # (B,3,H,L,d)
        post, conv = self._conv(pre, conv, valid.sum(-1))
        eta_logit = (reads[:, idx("eta")] * self.eta_readout.unsqueeze(-2)).sum(-1)
        alpha_logit = (reads[:, idx("alpha")] * self.alpha_readout.unsqueeze(-2)).sum(-1)
        live = valid.unsqueeze(1)  # (B, 1, L)
        zero = torch.zeros((), dtype=reads.dtype, device=reads.device)
        eta = torch.where(
            live, self.eta_max * torch.sigmoid(eta_logit + self.eta_bias[:, None]), zero
        )
        log_alpha = torch.where(live, F.logsigmoid(alpha_logit + self.alpha_bias[:, None]), zero)
        log_beta = torch.where(live, F.logsigmoid(p[..., -1]), zero)
        qk = F.normalize(post[:, :2], dim=-1)
        tokens = _Tokens(
            q=qk[:, 0].unsqueeze(1),
            k=qk[:, 1].unsqueeze(1),
            v=post[:, 2].unsqueeze(1),
            eta=eta.unsqueeze(1),
            log_alpha=log_alpha.unsqueeze(1),
            log_beta=log_beta.unsqueeze(1),
        )
        return tokens, conv

    def _conv(self, pre: Tensor, buf: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
        """Causal depthwise conv. ``pre (B, 3, H, L, d)``, ``buf (B, 3, H, K-1, d)``,
        ``length (B,)`` valid tokens; returns the conv output and the new buffer."""
        k = self.conv_width
        seq = torch.cat([buf, pre], dim=3)  # (B, 3, H, K-1+L, d)
        # windows of K taps as a view (B, 3, H, L, d, K): one product and one sum for all taps
        out = (seq.unfold(3, k, 1) * self.conv_weight.unsqueeze(0).unsqueeze(3)).sum(-1)
        idx = length.view(-1, 1) + torch.arange(k - 1, device=pre.device)  # last K-1 valid
        idx = idx.view(pre.shape[0], 1, 1, k - 1, 1)
        new_buf = seq.gather(3, idx.expand(-1, 3, self.n_heads, -1, self.head_dim))
        return out, new_buf

    def _write(
        self, mem: FastMemoryState, tok: _Tokens, valid: Tensor, read_q: bool
    ) -> tuple[_Write, Tensor | None]:
        """Self-generated targets and clipped inner gradients of every memory of ``mem`` at its
        chunk-start weights, and, with ``read_q``, the read ``M(q)`` there (all in one pass over
        the weights; the caller keeps the read of ``M_mem``, the last memory)."""
        p_in, p_out, s, read = read_and_inner_grad(
            mem.w_in, mem.w_out, tok.k, tok.v, tok.q if read_q else None
        )
        p_in, p_out = clip_factors(p_in, p_out, s, tok.k, self.max_inner_grad_norm)
        live = valid[:, None, None, :]  # (B, 1, 1, L)
        wr = _Write(tok.k, p_in, p_out, s, tok.eta, tok.log_alpha, tok.log_beta, live)
        return wr, read

    @staticmethod
    def _apply_chunk(mem: FastMemoryState, wr: _Write, done: Tensor) -> FastMemoryState:
        """Closed-form recurrence over a block, then ``W0 := W_run`` where a chunk completed."""
        dec = chunk_decays(wr.log_alpha, wr.log_beta, wr.live)
        w_in, s_in = dgd_chunk(mem.w_in_run, mem.s_in, wr.p_in, wr.key, wr.eta, dec, key=wr.key)
        w_out, s_out = dgd_chunk(mem.w_out_run, mem.s_out, wr.p_out, wr.r_out, wr.eta, dec)
        return _advanced(mem, done, w_in, s_in, w_out, s_out)

    @staticmethod
    def _apply_token(mem: FastMemoryState, wr: _Write, done: Tensor) -> FastMemoryState:
        """One token's literal recurrence, then the chunk-end swap where ``done (B, M)``."""
        eta, alpha, beta = wr.eta[..., 0], wr.log_alpha[..., 0].exp(), wr.log_beta[..., 0].exp()
        key = wr.key[..., 0, :]
        w_in, s_in = dgd_token(
            mem.w_in_run, mem.s_in, wr.p_in[..., 0, :], key, eta, alpha, beta, key=key
        )
        w_out, s_out = dgd_token(
            mem.w_out_run, mem.s_out, wr.p_out[..., 0, :], wr.r_out[..., 0, :], eta, alpha, beta
        )
        return _advanced(mem, done, w_in, s_in, w_out, s_out)

    def _chunked(
        self,
        mem: FastMemoryState,
        conv: Tensor | None,
        init: tuple[Tensor, Tensor],
        pos0: Tensor,
        first: Tensor | None,
        chunk: int,
        packed: Tensor,
        body: _Body,
    ) -> tuple[Tensor, FastMemoryState, Tensor, Tensor | None]:
        """Run ``body`` over the segments of ``packed (B, T, H, F)`` with chunk ``chunk``.

        Per segment: mask-reset the rows that start an episode there, apply the body (reads and
        the write at the chunk-start weights), the block's closed-form recurrence and the swap.
        Returns the body's outputs scattered back to ``(B, T, H, F')``, the memories, the end
        positions ``(B,)`` and the conv buffer.
        """
        seg = segment_layout(pos0, packed.shape[1], chunk, first)
        # segment-major and contiguous, so that each iteration's inputs have strides that do not
        # depend on the number of segments (a compiled segment is specialised on its strides)
        ps = seg.gather(packed).permute(1, 0, 3, 2, 4).contiguous()  # (n, B, H, C, F)
        valid, done = seg.valid.transpose(0, 1).contiguous(), seg.done.transpose(0, 1).contiguous()
        outs: list[Tensor] = []
        segment = self._training_segment if torch.is_grad_enabled() else self._compiled_segment
        for i in range(seg.n):
            if seg.any_reset[i]:
                rows = seg.reset[:, i]
                mem = self._reset(mem, init, rows)
                conv = None if conv is None else _zero_rows(rows, conv)
            out, mem, conv = segment(mem, conv, ps[i], valid[i], done[i], body)
            outs.append(out)
        return seg.scatter(torch.stack(outs, 1).transpose(2, 3)), mem, seg.end_pos, conv

    def _segment(
        self,
        mem: FastMemoryState,
        conv: Tensor | None,
        p: Tensor,
        valid: Tensor,
        done: Tensor,
        body: _Body,
    ) -> tuple[Tensor, FastMemoryState, Tensor | None]:
        """One segment iteration after its resets: the body, the block's update and the swap."""
        out, wr, conv = body(mem, conv, p, valid)
        return out, self._apply_chunk(mem, wr, done), conv

    # ------------------------------------------------------------------ segment bodies

    def _fused_body(
        self, mem: FastMemoryState, conv: Tensor | None, p: Tensor, valid: Tensor
    ) -> tuple[Tensor, _Write, Tensor | None]:
        """Every memory at once (``C == C_mem``): reads, conv, the write and ``M_mem(q)``."""
        assert conv is not None
        tok, conv = self._read_block(mem, conv, p, valid)
        wr, read = self._write(mem, tok, valid, read_q=True)
        assert read is not None
        return read[:, -1], wr, conv

    def _projection_body(
        self, mem: FastMemoryState, conv: Tensor | None, p: Tensor, valid: Tensor
    ) -> tuple[Tensor, _Write, Tensor | None]:
        """Pass 1 of two (``C != C_mem``): the projection memories; emits q, k, v and the gates."""
        assert conv is not None
        tok, conv = self._read_block(mem, conv, p, valid)
        wr, _ = self._write(mem, tok, valid, read_q=False)
        gates = torch.stack([tok.eta[:, 0], tok.log_alpha[:, 0], tok.log_beta[:, 0]], -1)
        return torch.cat([tok.q[:, 0], tok.k[:, 0], tok.v[:, 0], gates], dim=-1), wr, conv

    def _output_body(
        self, mem: FastMemoryState, conv: Tensor | None, p: Tensor, valid: Tensor
    ) -> tuple[Tensor, _Write, Tensor | None]:
        """Pass 2 of two: ``M_mem`` from pass 1's packed q, k, v, gates ``(B, H, L, 3d + 3)``.

        Padded slots hold zeros (``Segments.gather``), i.e. eta = 0 and log gates 0: no-ops.
        """
        d = self.head_dim
        tok = _Tokens(
            q=p[..., :d].unsqueeze(1),
            k=p[..., d : 2 * d].unsqueeze(1),
            v=p[..., 2 * d : 3 * d].unsqueeze(1),
            eta=p[..., 3 * d].unsqueeze(1),
            log_alpha=p[..., 3 * d + 1].unsqueeze(1),
            log_beta=p[..., 3 * d + 2].unsqueeze(1),
        )
        wr, read = self._write(mem, tok, valid, read_q=True)
        assert read is not None
        return read[:, -1], wr, conv

    # ------------------------------------------------------------------ public

    def forward(
        self, u: Tensor, state: TitansState, is_first: Tensor | None = None
    ) -> tuple[Tensor, TitansState]:
        """Chunked forward over ``u (B, T, D)``; returns the mixer output ``(B, T, D)``, state.

        With ``C == C_mem`` one pass over the segments handles every memory (they share the
        segments, so their chunk positions stay equal); otherwise pass 1 runs the projection
        memories with chunk ``C``, pass 2 ``M_mem`` with chunk ``C_mem``.
        """
        b, t_len, _ = u.shape
        first = None if is_first is None else is_first.to(torch.bool)
        packed = self._pack(u)
        with _fp32(u.device):
            if self.chunk_size == self.mem_chunk_size:
                o, mem, end, conv = self._chunked(
                    state.mem,
                    state.conv,
                    self._init_weights(),
                    state.pos[:, 0],
                    first,
                    self.chunk_size,
                    packed,
                    self._fused_body,
                )
                pos = torch.stack([end, end], dim=1)
            else:
                m = len(self.memories)
                qkv, proj, end_proj, conv = self._chunked(
                    state.mem.slice(0, m),
                    state.conv,
                    (self.proj_w_in, self.proj_w_out),
                    state.pos[:, 0],
                    first,
                    self.chunk_size,
                    packed,
                    self._projection_body,
                )
                o, out_mem, end_mem, _ = self._chunked(
                    state.mem.slice(m),
                    None,
                    (self.mem_w_in, self.mem_w_out),
                    state.pos[:, 1],
                    first,
                    self.mem_chunk_size,
                    qkv,
                    self._output_body,
                )
                mem = FastMemoryState.join([proj, out_mem])
                pos = torch.stack([end_proj, end_mem], dim=1)
            assert conv is not None
        y = self.out_proj(o.reshape(b, t_len, self.d_model).to(u.dtype))
        return y, TitansState(mem=mem, pos=pos, conv=conv)

    def step(
        self, u_t: Tensor, state: TitansState, is_first: Tensor | None = None
    ) -> tuple[Tensor, TitansState]:
        """One token ``u_t (B, D)``: read at W0, write into W_run, swap at the chunk end.

        Every memory is read and written by the same batched ops, whatever ``C`` and ``C_mem``:
        only the chunk-end swap differs per memory (``done`` per row and memory).
        """
        b = u_t.shape[0]
        packed = self._pack(u_t.unsqueeze(1)).transpose(1, 2)  # (B, H, 1, F)
        rows = None if is_first is None else is_first.to(torch.bool)
        with _fp32(u_t.device):
            o, mem, pos, conv = self._compiled_step(state.mem, state.pos, state.conv, packed, rows)
        y = self.out_proj(o.reshape(b, self.d_model).to(u_t.dtype))
        return y, TitansState(mem=mem, pos=pos, conv=conv)

    def _step_core(
        self, mem: FastMemoryState, pos: Tensor, conv: Tensor, packed: Tensor, rows: Tensor | None
    ) -> tuple[Tensor, FastMemoryState, Tensor, Tensor]:
        """The fast-memory part of :meth:`step`: reset ``rows``, read, write, swap, advance.

        Returns ``M_mem(q) (B, H, 1, d)`` and the new memories, positions and conv buffer.
        """
        # No reset work in a step where the host knows no row starts an episode (:func:`_uniform`).
        if rows is not None and _uniform(rows) is not False:
            mem = self._reset(mem, self._init_weights(), rows)
            pos = pos.masked_fill(rows.unsqueeze(1), 0)
            conv = _zero_rows(rows, conv)
        valid = torch.ones(pos.shape[0], 1, dtype=torch.bool, device=pos.device)
        tok, conv = self._read_block(mem, conv, packed, valid)
        wr, read = self._write(mem, tok, valid, read_q=True)
        assert read is not None
        done = (pos == self.chunk_sizes - 1)[:, self.memory_group]  # (B, M + 1)
        mem = self._apply_token(mem, wr, done)
        return read[:, -1], mem, (pos + 1) % self.chunk_sizes, conv

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
    "TitansConfig",
    "TitansState",
    "chunk_decays",
    "clip_factors",
    "dgd_chunk",
    "dgd_token",
    "memory_read",
    "positive_int",
    "read_and_inner_grad",
    "max_segments",
    "segment_layout",
    "static_segments",
]

"""HOPE: self-modifying Titans + Continuum Memory System, and the HOPE-Attention ablation.

"Nested Learning" (Behrouz et al., NeurIPS 2025, arXiv 2512.24695, section 8). One block::

    h = x + OutProj(SelfModifyingTitans(RMSNorm(x)))   # fast, in-context (models.titans)
    y = h + CMS(RMSNorm(h))                            # multi-period MLP chain (models.cms)

``Hope`` stacks ``n_layers`` blocks over an already embedded input and applies a final RMSNorm.
``HopeAttention`` swaps the Titans mixer for causal sliding-window softmax attention. Decisions
where the paper is ambiguous are listed in ``docs/hope.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hope_agent.models.base import Backbone, ParamGroup
from hope_agent.models.cms import CMS, CMS_VARIANTS
from hope_agent.models.state import State
from hope_agent.models.titans import (
    SelfModifyingTitans,
    TitansConfig,
    TitansState,
    positive_int,
)

_NORM_EPS = 1e-6


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass
class HopeConfig:
    """Hyper-parameters of :class:`Hope` and :class:`HopeAttention` (validated on creation).

    Flat, so that configs pass every field as a keyword; the Titans fields (those of
    :class:`TitansConfig`) form the nested :attr:`titans` config of each layer's mixer.
    ``cms_periods``: one CMS level per entry, its optimizer period; ``()`` = HOPE without CMS.
    ``mem_chunk_size``: chunk of the output memory ``M_mem`` (None = ``chunk_size``).
    ``eta_max``: bound of the inner learning rate; ``alpha_init``/``beta_init``: initial
    retention and momentum gates; ``attn_window``: past tokens each HopeAttention token sees.
    """

    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    chunk_size: int = 16
    mem_chunk_size: int | None = None
    cms_periods: tuple[int, ...] = (1, 16, 256)
    cms_hidden_mult: int = 4
    mem_hidden_mult: int = 1
    adaptive_q: bool = False
    eta_max: float = 0.1
    max_inner_grad_norm: float = 1.0
    conv_width: int = 4
    reset_fast_memory_on_episode: bool = True
    cms_variant: str = "sequential"
    attn_window: int = 64
    alpha_init: float = 0.99
    beta_init: float = 0.5

    def __post_init__(self) -> None:
        # Hydra hands sequences over as ListConfig: store a plain tuple of ints
        self.cms_periods = tuple(
            positive_int("HopeConfig", "cms_periods entries", p) for p in self.cms_periods
        )
        for name in ("n_layers", "cms_hidden_mult", "attn_window"):
            positive_int("HopeConfig", name, getattr(self, name))
        if self.cms_variant not in CMS_VARIANTS:
            raise ValueError(
                f"HopeConfig: cms_variant must be one of {CMS_VARIANTS}, got {self.cms_variant!r}"
            )
        _ = self.titans  # building the nested config validates the Titans fields

    @property
    def titans(self) -> TitansConfig:
        """The nested config of each layer's :class:`SelfModifyingTitans` (validated)."""
        return TitansConfig(**{f.name: getattr(self, f.name) for f in _TITANS_FIELDS})

    @property
    def resolved_mem_chunk_size(self) -> int:
        """The chunk size of ``M_mem``."""
        return self.titans.resolved_mem_chunk_size


_TITANS_FIELDS = dataclasses.fields(TitansConfig)


# ----------------------------------------------------------------------------- attention mixer


@dataclasses.dataclass
class AttentionState(State):
    """KV cache of the last ``attn_window`` tokens: ``k, v (B, W, H, d)``, ``valid (B, W)`` bool
    (false for empty slots and tokens of an earlier episode)."""

    k: Tensor
    v: Tensor
    valid: Tensor


class SlidingWindowAttention(nn.Module):
    """Causal softmax attention over the current token and the ``window`` before it, with ALiBi.

    ALiBi (a per-head linear penalty on distance) needs no absolute positions, so the cached keys
    stay valid at any episode length. Tokens of another episode are masked out.
    """

    slopes: Tensor

    def __init__(self, d_model: int, n_heads: int, window: int) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.window = d_model, n_heads, window
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / n_heads) for i in range(n_heads)])
        self.register_buffer("slopes", slopes, persistent=False)

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> AttentionState:
        """An empty cache."""
        dev = self.qkv.weight.device if device is None else torch.device(device)
        shape = (batch_size, self.window, self.n_heads, self.head_dim)
        dtype = self.qkv.weight.dtype
        return AttentionState(
            k=torch.zeros(shape, dtype=dtype, device=dev),
            v=torch.zeros(shape, dtype=dtype, device=dev),
            valid=torch.zeros(batch_size, self.window, dtype=torch.bool, device=dev),
        )

    def forward(
        self, u: Tensor, state: AttentionState, is_first: Tensor | None = None
    ) -> tuple[Tensor, AttentionState]:
        """``u (B, T, D)`` (normalised) -> ``(B, T, D)``; exact for any split of the stream."""
        b, t_len, _ = u.shape
        w = self.window
        q, k, v = self.qkv(u).view(b, t_len, 3, self.n_heads, self.head_dim).unbind(2)
        first = (
            torch.zeros(b, t_len, dtype=torch.bool, device=u.device)
            if is_first is None
            else is_first.to(torch.bool)
        )
        # cached slots no query may use (empty, or the row starts an episode at t = 0) are zeroed,
        # not only masked: a NaN key or value survives a -inf mask (NaN - inf, 0 * NaN), and a
        # reset must recover a row whose cache diverged
        usable = (state.valid & ~first[:, :1]).view(b, w, 1, 1)
        # (B, W + T, H, d)
        keys = torch.cat([torch.where(usable, state.k.to(k.dtype), 0.0), k], dim=1)
        vals = torch.cat([torch.where(usable, state.v.to(v.dtype), 0.0), v], dim=1)
        episode = first.long().cumsum(1)  # (B, T): the cache is episode 0
        key_episode = torch.cat([torch.zeros_like(episode[:, :1]).expand(b, w), episode], 1)
        key_valid = torch.cat([usable.view(b, w), torch.ones_like(first)], 1)  # (B, W + T)
        dist = (torch.arange(t_len, device=u.device) + w).unsqueeze(1) - torch.arange(
            w + t_len, device=u.device
        )  # (T, W + T): query index minus key index
        allowed = (
            ((dist >= 0) & (dist <= w))
            & key_valid.unsqueeze(1)
            & (key_episode.unsqueeze(1) == episode.unsqueeze(2))
        )  # (B, T, W + T); every query sees itself
        bias = -self.slopes.view(-1, 1, 1) * dist.to(self.slopes.dtype)  # (H, T, W + T)
        mask = torch.where(allowed.unsqueeze(1), bias, -math.inf).to(q.dtype)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys.transpose(1, 2), vals.transpose(1, 2), attn_mask=mask
        )  # (B, H, T, d)
        y = self.out_proj(out.transpose(1, 2).reshape(b, t_len, self.d_model))
        keep = (key_valid & (key_episode == episode[:, -1:]))[:, -w:]
        # slots of another episode are dropped (zeroed), so the cache matches a fresh row's
        drop = ~keep.view(b, w, 1, 1)
        new = AttentionState(
            k=keys[:, -w:].masked_fill(drop, 0.0).to(state.k.dtype),
            v=vals[:, -w:].masked_fill(drop, 0.0).to(state.v.dtype),
            valid=keep,
        )
        return y, new

    def step(
        self, u_t: Tensor, state: AttentionState, is_first: Tensor | None = None
    ) -> tuple[Tensor, AttentionState]:
        """One token ``u_t (B, D)``."""
        first = None if is_first is None else is_first.unsqueeze(1)
        y, state = self(u_t.unsqueeze(1), state, first)
        return y.squeeze(1), state


# ----------------------------------------------------------------------------- block


Mixer = SelfModifyingTitans | SlidingWindowAttention
MixerState = TitansState | AttentionState


class HopeBlock(nn.Module):
    """``h = x + mixer(RMSNorm(x))``; ``y = h + CMS(RMSNorm(h))``; no CMS for ``cms_periods=()``."""

    mixer: Mixer
    norm_cms: nn.RMSNorm | None
    cms: CMS | None

    def __init__(
        self,
        d_model: int,
        mixer: Mixer,
        cms_periods: tuple[int, ...],
        cms_hidden_mult: int = 4,
        cms_variant: str = "sequential",
    ) -> None:
        super().__init__()
        self.norm_mixer = nn.RMSNorm(d_model, eps=_NORM_EPS)
        self.mixer = mixer
        self.norm_cms = nn.RMSNorm(d_model, eps=_NORM_EPS) if cms_periods else None
        self.cms = CMS(d_model, cms_periods, cms_hidden_mult, cms_variant) if cms_periods else None

    def _cms(self, h: Tensor) -> Tensor:
        if self.cms is None or self.norm_cms is None:
            return h
        return h + self.cms(self.norm_cms(h))

    def forward(self, x: Tensor, state: Any, is_first: Tensor | None = None) -> tuple[Tensor, Any]:
        """``x (B, T, D)`` with the mixer's state."""
        m, state = self.mixer(self.norm_mixer(x), state, is_first)
        return self._cms(x + m), state

    def step(self, x_t: Tensor, state: Any, is_first: Tensor | None = None) -> tuple[Tensor, Any]:
        """``x_t (B, D)`` with the mixer's state."""
        m, state = self.mixer.step(self.norm_mixer(x_t), state, is_first)
        return self._cms(x_t + m), state


# ----------------------------------------------------------------------------- backbones


@dataclasses.dataclass
class HopeState(State):
    """State of :class:`Hope` (one :class:`TitansState` per layer) or of :class:`HopeAttention`
    (one :class:`AttentionState` per layer)."""

    layers: tuple[MixerState, ...]


def _check_step(name: str, x_t: Tensor, d_model: int, is_first: Tensor | None) -> None:
    if x_t.dim() != 2 or x_t.shape[-1] != d_model:
        raise ValueError(
            f"{name}.step expects x_t of shape (B, {d_model}), got {tuple(x_t.shape)}; "
            "use forward() for a (B, T, d_model) sequence"
        )
    if is_first is not None and tuple(is_first.shape) != (x_t.shape[0],):
        raise ValueError(
            f"{name}.step expects is_first of shape ({x_t.shape[0]},) (B,), "
            f"got {tuple(is_first.shape)}"
        )


class _HopeStack(nn.Module):
    """Blocks + final norm (a submodule named ``stack``: its path is part of the checkpoints)."""

    def __init__(self, config: HopeConfig, mixers: list[Mixer]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            HopeBlock(
                config.d_model, m, config.cms_periods, config.cms_hidden_mult, config.cms_variant
            )
            for m in mixers
        )
        self.norm = nn.RMSNorm(config.d_model, eps=_NORM_EPS)

    def block_list(self) -> list[HopeBlock]:
        """The blocks, typed."""
        return [b for b in self.blocks if isinstance(b, HopeBlock)]


class HopeStack(Backbone[HopeState]):
    """``n_layers`` HOPE blocks and a final RMSNorm, generic in the block's mixer.

    ``mixer(config)`` builds one layer's mixer (a module with ``initial_state``, ``forward`` and
    ``step``); :class:`Hope` and :class:`HopeAttention` are this class with their mixer.
    """

    def __init__(self, config: HopeConfig, mixer: Callable[[HopeConfig], Mixer]) -> None:
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        self.stack = _HopeStack(config, [mixer(config) for _ in range(config.n_layers)])

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> HopeState:
        """Every layer's initial mixer state (differentiable for Titans: see :class:`Hope`)."""
        return HopeState(
            layers=tuple(b.mixer.initial_state(batch_size, device) for b in self.stack.block_list())
        )

    def _check_state(self, state: HopeState, batch_size: int) -> None:
        name, n_layers = type(self).__name__, self.config.n_layers
        if len(state.layers) != n_layers:
            raise ValueError(
                f"{name}: state has {len(state.layers)} layers, the model {n_layers}; "
                "build it with this model's init_state"
            )
        got = state.layers[0].batch_size
        if got != batch_size:
            raise ValueError(
                f"{name}: state batch size {got} != input batch size {batch_size}; "
                "call init_state(batch_size) with the input's batch size"
            )

    def _run(
        self, x: Tensor, state: HopeState, is_first: Tensor | None, step: bool
    ) -> tuple[Tensor, HopeState]:
        out = []
        for block, s in zip(self.stack.block_list(), state.layers, strict=True):
            x, s = block.step(x, s, is_first) if step else block(x, s, is_first)
            out.append(s)
        return self.stack.norm(x), HopeState(layers=tuple(out))

    def forward(
        self, x: Tensor, state: HopeState, is_first: Tensor | None = None
    ) -> tuple[Tensor, HopeState]:
        """``x (B, T, d_model)`` for any ``T``; ``is_first (B, T)`` resets rows at step t."""
        if self._check_forward(x, state, is_first):
            return x, state
        return self._run(x, state, is_first, step=False)

    def step(
        self, x_t: Tensor, state: HopeState, is_first: Tensor | None = None
    ) -> tuple[Tensor, HopeState]:
        """One env step ``x_t (B, d_model)``; identical to the same token inside ``forward``."""
        _check_step(type(self).__name__, x_t, self.d_model, is_first)
        self._check_state(state, x_t.shape[0])
        return self._run(x_t, state, is_first, step=True)

    def param_groups(self) -> list[ParamGroup]:
        """``slow`` (period 1: the mixers' parameters, norms) and one ``cms.{l}`` group per CMS
        level (across layers, period ``P_l``)."""
        groups: list[ParamGroup] = []
        blocks = self.stack.block_list()
        for level, period in enumerate(self.config.cms_periods):
            params = [
                p
                for block in blocks
                if block.cms is not None
                for p in block.cms.levels[level].parameters()
                if p.requires_grad
            ]
            groups.append({"params": params, "period": period, "name": f"cms.{level}"})
        in_cms = {id(p) for g in groups for p in g["params"]}
        slow = [p for p in self.parameters() if p.requires_grad and id(p) not in in_cms]
        return [{"params": slow, "period": 1, "name": "slow"}, *groups]


class Hope(HopeStack):
    """The HOPE backbone: ``n_layers`` HOPE blocks with self-modifying Titans mixers.

    ``init_state`` is differentiable w.r.t. the memories' meta-learned initial weights: detach a
    state before keeping it across optimizer steps.
    """

    # forward syncs with the host only to size its segment loop, which static_segments fixes
    capturable_forward = True

    def __init__(self, config: HopeConfig) -> None:
        super().__init__(config, lambda c: SelfModifyingTitans(c.titans))

    def compile_fast_paths(self, segment_mode: str | None = None) -> None:
        """``torch.compile`` every layer's segment iteration and step core (see
        :meth:`SelfModifyingTitans.compile_fast_paths`); the rest stays eager."""
        for block in self.stack.block_list():
            assert isinstance(block.mixer, SelfModifyingTitans)
            block.mixer.compile_fast_paths(segment_mode)


class HopeAttention(HopeStack):
    """HOPE-Attention: HOPE blocks with sliding-window softmax attention in place of Titans."""

    def __init__(self, config: HopeConfig) -> None:
        super().__init__(
            config, lambda c: SlidingWindowAttention(c.d_model, c.n_heads, c.attn_window)
        )


__all__ = [
    "AttentionState",
    "Hope",
    "HopeAttention",
    "HopeBlock",
    "HopeConfig",
    "HopeStack",
    "HopeState",
    "SlidingWindowAttention",
]

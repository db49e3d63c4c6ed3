"""Attention baseline: a pre-norm causal transformer over a sliding window of ``context`` tokens.

    h = h + OutProj(WindowAttention(RMSNorm(h)))     each query sees itself and the previous
    h = h + MLP(RMSNorm(h))                           context - 1 tokens of its own episode
    y = RMSNorm(h)

State: per layer, the keys and values of the last ``context - 1`` tokens of each row, plus a
validity mask ``valid: (B, context - 1)`` (false for slots before the row's current episode or
before the stream began). Every call attends over ``[cache ; new tokens]``, so ``forward`` with any
T, repeated ``step`` and split calls compute the same function (up to float rounding).

Positions: rotary embeddings (RoPE) indexed by the position inside that concatenation. RoPE scores
depend only on the distance between query and key, so the offset of a call does not matter, and
the indices stay below ``T + context`` however long the stream runs (no precision loss at large
absolute positions). Learned absolute positions would tie outputs to where a call starts and
break that equivalence.

Resets: ``is_first[b, t]`` hides from every query at t or later the keys of row b before t
(episode ids are a cumulative sum of ``is_first`` along time; a query sees only keys with its own
id). Queries are processed in blocks of ``W = min(T, context)``, each attending to a gathered
window of ``context - 1 + W`` keys, so the cost is O(T · context), not O(T²).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hope_agent.models.base import Backbone, check_input
from hope_agent.models.mlp import MLPBlock
from hope_agent.models.state import State


@dataclasses.dataclass
class TransformerConfig:
    """Sizes of :class:`TransformerBackbone`; ``context`` counts the query itself."""

    d_model: int
    n_layers: int = 2
    n_heads: int = 4
    context: int = 64
    hidden_mult: int = 4
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "context", "hidden_mult"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be an int >= 1, got {value!r}")
        if self.d_model % self.n_heads != 0 or (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(
                f"TransformerConfig: d_model ({self.d_model}) must be n_heads ({self.n_heads}) "
                "times an even head width (RoPE rotates pairs of channels)"
            )
        if not self.rope_base > 1.0:
            raise ValueError(f"TransformerConfig.rope_base must be > 1, got {self.rope_base!r}")


@dataclasses.dataclass
class TransformerState(State):
    """KV cache of the last ``context - 1`` tokens per row.

    ``k[l], v[l]: (B, context - 1, n_heads, head_dim)`` for layer l (keys before RoPE, oldest
    first); ``valid: (B, context - 1)`` bool.
    """

    k: tuple[Tensor, ...]
    v: tuple[Tensor, ...]
    valid: Tensor


def rope_tables(
    length: int, head_dim: int, base: float, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``cos, sin: (length, head_dim // 2)`` for positions ``0 .. length - 1``."""
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs ``(i, i + D/2)`` of ``x: (B, L, H, D)`` by each position's angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # (1, L, 1, D/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class WindowAttention(nn.Module):
    """Multi-head attention of new tokens over ``[cached keys ; new keys]`` under a given mask."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        mask: Tensor,
        key_index: Tensor,
        rope: tuple[Tensor, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Attend and return ``(y: (B, T, d), k_all, v_all: (B, P + T, H, Dh))`` (keys pre-RoPE).

        ``mask: (B, n, W, P + W)`` and ``key_index: (n, P + W)`` describe the query blocks.
        """
        batch, steps, d_model = x.shape
        n_blocks, width = mask.shape[1], mask.shape[2]
        cached = k_cache.shape[1]
        q, k, v = self.qkv(x).view(batch, steps, 3, self.n_heads, self.head_dim).unbind(2)
        k_all = torch.cat([k_cache, k], dim=1)  # (B, L, H, Dh), L = P + T
        v_all = torch.cat([v_cache, v], dim=1)
        cos, sin = rope
        q = apply_rope(q, cos[cached:], sin[cached:])
        k_rot = apply_rope(k_all, cos, sin)
        pad = n_blocks * width - steps
        q = F.pad(q, (0, 0, 0, 0, 0, pad))  # (B, n*W, H, Dh)
        k_rot = F.pad(k_rot, (0, 0, 0, 0, 0, pad))  # (B, P + n*W, H, Dh)
        v_pad = F.pad(v_all, (0, 0, 0, 0, 0, pad))
        q_b = q.view(batch, n_blocks, width, self.n_heads, self.head_dim)
        k_b = k_rot[:, key_index]  # (B, n, P + W, H, Dh)
        v_b = v_pad[:, key_index]
        # (B*n, H, W or P+W, Dh) for scaled_dot_product_attention
        q_b, k_b, v_b = (t.transpose(2, 3).flatten(0, 1) for t in (q_b, k_b, v_b))
        attn_mask = mask.flatten(0, 1).unsqueeze(1)  # (B*n, 1, W, P + W)
        o = F.scaled_dot_product_attention(q_b, k_b, v_b, attn_mask=attn_mask)
        o = o.view(batch, n_blocks, self.n_heads, width, self.head_dim).transpose(2, 3)
        o = o.reshape(batch, n_blocks * width, d_model)[:, :steps]
        return self.out_proj(o), k_all, v_all


class TransformerBlock(nn.Module):
    """Pre-norm block: window attention then a residual MLP."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(config.d_model)
        self.attn = WindowAttention(config.d_model, config.n_heads)
        self.mlp = MLPBlock(config.d_model, config.hidden_mult)

    def forward(
        self,
        x: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        mask: Tensor,
        key_index: Tensor,
        rope: tuple[Tensor, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(y, k_all, v_all)`` as :class:`WindowAttention` does."""
        a, k_all, v_all = self.attn(self.norm(x), k_cache, v_cache, mask, key_index, rope)
        return self.mlp(x + a), k_all, v_all


class TransformerBackbone(Backbone[TransformerState]):
    """Causal sliding-window transformer with a KV-cache state and episode-aware masking."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        self.head_dim = config.d_model // config.n_heads
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm_out = nn.RMSNorm(config.d_model)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> TransformerState:
        """An empty cache: every slot invalid."""
        if device is None:
            device = self.norm_out.weight.device
        cached = self.config.context - 1
        shape = (batch_size, cached, self.config.n_heads, self.head_dim)
        zeros = tuple(torch.zeros(shape, device=device) for _ in range(self.config.n_layers))
        return TransformerState(
            k=zeros,
            v=tuple(torch.zeros(shape, device=device) for _ in range(self.config.n_layers)),
            valid=torch.zeros(batch_size, cached, dtype=torch.bool, device=device),
        )

    def _check_state(self, state: TransformerState, batch_size: int) -> None:
        cached = self.config.context - 1
        shape = (batch_size, cached, self.config.n_heads, self.head_dim)
        ok = (
            len(state.k) == len(state.v) == self.config.n_layers
            and all(tuple(t.shape) == shape for t in (*state.k, *state.v))
            and tuple(state.valid.shape) == (batch_size, cached)
        )
        if not ok:
            raise ValueError(
                f"TransformerBackbone expects a state of {self.config.n_layers} layers of k, v "
                f"with shape {shape} and valid {(batch_size, cached)}; build it with "
                f"init_state({batch_size})"
            )

    def forward(
        self, x: Tensor, state: TransformerState, is_first: Tensor | None = None
    ) -> tuple[Tensor, TransformerState]:
        """Run ``x: (B, T, d_model)``; ``is_first: (B, T)`` hides earlier keys from t on."""
        check_input(x, self.d_model, is_first, type(self).__name__)
        batch, steps = x.shape[:2]
        self._check_state(state, batch)
        cached = self.config.context - 1
        total = cached + steps
        device = x.device
        if is_first is None:
            is_first = torch.zeros(batch, steps, dtype=torch.bool, device=device)
        # Over the concatenation [cache ; new]: which keys exist, and each token's episode id.
        valid = torch.cat([state.valid, torch.ones_like(is_first, dtype=torch.bool)], dim=1)
        episode = torch.cat(
            [
                torch.zeros(batch, cached, dtype=torch.long, device=device),
                is_first.long().cumsum(dim=1),
            ],
            dim=1,
        )  # (B, L)
        width = min(steps, self.config.context)
        n_blocks = math.ceil(steps / width)
        pad = n_blocks * width - steps
        # Padding after the last token is visible only to padding queries (causality), and gives
        # each of them at least one key, so no softmax row is empty.
        valid_p = F.pad(valid, (0, pad), value=True)
        episode_p = torch.cat([episode, episode[:, -1:].expand(batch, pad)], dim=1)
        offsets = torch.arange(cached + width, device=device)
        key_index = torch.arange(n_blocks, device=device)[:, None] * width + offsets  # (n, P+W)
        # Block-local distance query - key: query a sits at key offset P + a.
        distance = (cached + torch.arange(width, device=device))[:, None] - offsets  # (W, P+W)
        in_window = (distance >= 0) & (distance <= cached)
        ep_q = episode_p[:, cached:].view(batch, n_blocks, width)
        ep_k = episode_p[:, key_index]  # (B, n, P+W)
        mask = (
            in_window
            & valid_p[:, key_index][:, :, None, :]
            & (ep_q[..., None] == ep_k[:, :, None, :])
        )  # (B, n, W, P+W)
        rope = rope_tables(total, self.head_dim, self.config.rope_base, device)
        h = x
        new_k, new_v = [], []
        for block, k_cache, v_cache in zip(self.blocks, state.k, state.v, strict=True):
            h, k_all, v_all = block(h, k_cache, v_cache, mask, key_index, rope)
            new_k.append(k_all[:, total - cached :])
            new_v.append(v_all[:, total - cached :])
        still_valid = valid & (episode == episode[:, -1:])
        new_state = TransformerState(
            k=tuple(new_k), v=tuple(new_v), valid=still_valid[:, total - cached :]
        )
        return self.norm_out(h), new_state

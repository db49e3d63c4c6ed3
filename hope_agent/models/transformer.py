"""Attention baseline: a pre-norm causal transformer over a sliding window of ``context`` tokens.

    h = h + OutProj(WindowAttention(RMSNorm(h)))     each query sees itself and the previous
    h = h + MLP(RMSNorm(h))                           context - 1 tokens of its own episode
    y = RMSNorm(h)

State: per layer, the keys and values of the last ``context - 1`` tokens of each row, plus a
validity mask ``valid: (B, context - 1)`` (false for slots before the row's current episode or
before the stream began). Every call attends over ``[cache ; new tokens]``, so ``forward`` with any
T, repeated ``step`` and split calls compute the same function (up to float rounding).

Positions: ALiBi (Press et al., 2022), a per-head linear penalty ``-slope_h · (t_q - t_k)`` on the
attention scores. It depends only on the integer distance between query and key, so the bias is
bit-identical whatever the offset of a call; the cache holds plain keys (nothing to re-rotate at
every step, as RoPE on a shifting window would need) and the state needs no position counter.
Learned absolute positions would tie outputs to where a call starts and break that equivalence.

Resets: ``is_first[b, t]`` hides from every query at t or later the keys of row b before t
(episode ids are a cumulative sum of ``is_first`` along time; a query sees only keys with its own
id). Long inputs are processed in query blocks of ``W = min(T, context)``, each attending to a
gathered window of ``context - 1 + W`` keys, so the cost is O(T · context), not O(T²).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hope_agent.models.base import Backbone
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

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "context", "hidden_mult"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be an int >= 1, got {value!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"TransformerConfig: d_model ({self.d_model}) must be divisible by n_heads "
                f"({self.n_heads})"
            )


@dataclasses.dataclass
class TransformerState(State):
    """KV cache of the last ``context - 1`` tokens per row.

    ``k[l], v[l]: (B, context - 1, n_heads, head_dim)`` for layer l (oldest first);
    ``valid: (B, context - 1)`` bool.
    """

    k: tuple[Tensor, ...]
    v: tuple[Tensor, ...]
    valid: Tensor


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi's geometric slopes ``2^(-8 h / H)``, h = 1..H: head 1 looks far, head H near."""
    return torch.pow(2.0, -8.0 * torch.arange(1, n_heads + 1, dtype=torch.float32) / n_heads)


class WindowAttention(nn.Module):
    """Multi-head attention of new tokens over ``[cached keys ; new keys]`` under a given bias."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(
        self, x: Tensor, k_cache: Tensor, v_cache: Tensor, bias: Tensor, key_index: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Attend and return ``(y: (B, T, d), k_all, v_all: (B, P + T, H, Dh))``.

        ``bias: (B, n, H, W, P + W)`` is the additive score bias (-inf where masked) of ``n``
        query blocks of width W; ``key_index: (n, P + W)`` gathers each block's keys from the
        padded concatenation, or is None for a single block that sees every key.
        """
        batch, steps, d_model = x.shape
        n_blocks, width = bias.shape[1], bias.shape[3]
        q, k, v = self.qkv(x).view(batch, steps, 3, self.n_heads, self.head_dim).unbind(2)
        k_all = torch.cat([k_cache, k], dim=1)  # (B, L, H, Dh), L = P + T
        v_all = torch.cat([v_cache, v], dim=1)
        if key_index is None:
            q_b, k_b, v_b = q.unsqueeze(1), k_all.unsqueeze(1), v_all.unsqueeze(1)
        else:
            pad = n_blocks * width - steps
            q_b = F.pad(q, (0, 0, 0, 0, 0, pad)).view(batch, n_blocks, width, *q.shape[2:])
            k_b = F.pad(k_all, (0, 0, 0, 0, 0, pad))[:, key_index]  # (B, n, P + W, H, Dh)
            v_b = F.pad(v_all, (0, 0, 0, 0, 0, pad))[:, key_index]
        # (B*n, H, W or P + W, Dh) for scaled_dot_product_attention
        q_b, k_b, v_b = (t.transpose(2, 3).flatten(0, 1) for t in (q_b, k_b, v_b))
        o = F.scaled_dot_product_attention(q_b, k_b, v_b, attn_mask=bias.flatten(0, 1))
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
        self, x: Tensor, k_cache: Tensor, v_cache: Tensor, bias: Tensor, key_index: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(y, k_all, v_all)`` as :class:`WindowAttention` does."""
        a, k_all, v_all = self.attn(self.norm(x), k_cache, v_cache, bias, key_index)
        return self.mlp(x + a), k_all, v_all


class TransformerBackbone(Backbone[TransformerState]):
    """Causal sliding-window transformer with a KV-cache state and episode-aware masking."""

    slopes: Tensor  # (n_heads,) ALiBi slopes, a buffer so that it follows .to(device)

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        self.head_dim = config.d_model // config.n_heads
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm_out = nn.RMSNorm(config.d_model)
        self.register_buffer("slopes", alibi_slopes(config.n_heads), persistent=False)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> TransformerState:
        """An empty cache: every slot invalid."""
        if device is None:
            device = self.norm_out.weight.device
        shape = (batch_size, self.config.context - 1, self.config.n_heads, self.head_dim)
        layers = range(self.config.n_layers)
        return TransformerState(
            k=tuple(torch.zeros(shape, device=device) for _ in layers),
            v=tuple(torch.zeros(shape, device=device) for _ in layers),
            valid=torch.zeros(shape[:2], dtype=torch.bool, device=device),
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

    def _bias(self, valid: Tensor, episode: Tensor, steps: int) -> tuple[Tensor, Tensor | None]:
        """Score bias ``(B, n, H, W, P + W)`` and key gather index over the concatenation.

        ``valid, episode: (B, L)`` describe the keys ``[cache ; new]``; query a of block j is
        token ``P + j·W + a`` of that concatenation.
        """
        batch = valid.shape[0]
        cached = self.config.context - 1
        width = min(steps, self.config.context)
        n_blocks = math.ceil(steps / width)
        offsets = torch.arange(cached + width, device=valid.device)
        key_index: Tensor | None = None
        if n_blocks > 1:
            pad = n_blocks * width - steps
            # Padding after the last token is visible only to padding queries (causality), and
            # gives each of them at least one key, so no softmax row is empty.
            valid = F.pad(valid, (0, pad), value=True)
            episode = torch.cat([episode, episode[:, -1:].expand(batch, pad)], dim=1)
            key_index = torch.arange(n_blocks, device=valid.device)[:, None] * width + offsets
            valid, ep_k = valid[:, key_index], episode[:, key_index]  # (B, n, P + W)
        else:
            valid, ep_k = valid[:, None], episode[:, None]
        ep_q = episode[:, cached:].reshape(batch, n_blocks, width)
        # Block-local distance query - key: query a sits at key offset P + a.
        distance = (cached + torch.arange(width, device=valid.device))[:, None] - offsets
        visible = (
            ((distance >= 0) & (distance <= cached))  # (W, P + W)
            & valid[:, :, None, :]
            & (ep_q[..., None] == ep_k[:, :, None, :])
        )  # (B, n, W, P + W)
        alibi = -self.slopes[:, None, None] * distance  # (H, W, P + W)
        bias = alibi.masked_fill(~visible[:, :, None], float("-inf"))  # (B, n, H, W, P + W)
        return bias, key_index

    def forward(
        self, x: Tensor, state: TransformerState, is_first: Tensor | None = None
    ) -> tuple[Tensor, TransformerState]:
        """Run ``x: (B, T, d_model)``; ``is_first: (B, T)`` hides earlier keys from t on."""
        if self._check_forward(x, state, is_first):
            return x, state
        batch, steps = x.shape[:2]
        cached = self.config.context - 1
        if is_first is None:
            is_first = torch.zeros(batch, steps, dtype=torch.bool, device=x.device)
        # Over the concatenation [cache ; new]: which keys exist, and each token's episode id.
        valid = torch.cat([state.valid, torch.ones_like(is_first, dtype=torch.bool)], dim=1)
        episode = F.pad(is_first.long().cumsum(dim=1), (cached, 0))  # (B, L)
        bias, key_index = self._bias(valid, episode, steps)
        h = x
        new_k, new_v = [], []
        for block, k_cache, v_cache in zip(self.blocks, state.k, state.v, strict=True):
            h, k_all, v_all = block(h, k_cache, v_cache, bias, key_index)
            new_k.append(k_all[:, steps:])
            new_v.append(v_all[:, steps:])
        still_valid = (valid & (episode == episode[:, -1:]))[:, steps:]
        return self.norm_out(h), TransformerState(k=tuple(new_k), v=tuple(new_v), valid=still_valid)

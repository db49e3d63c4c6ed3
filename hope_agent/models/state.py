"""Recurrent state as a tree of tensors.

Every backbone carries its per-sequence memory in a :class:`State`: a dataclass whose fields are
tensors (batch first, dim 0 = batch row), nested ``State`` objects, or tuples of either. This
lets a trainer store states at chunk starts, select rows, concatenate them and move them between
devices without knowing what is inside.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

S = TypeVar("S", bound="State")


def _map(fn: Callable[[Tensor], Tensor], value: Any) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, State):
        return value.map(fn)
    if isinstance(value, tuple):
        return tuple(_map(fn, v) for v in value)
    raise TypeError(f"State leaves must be tensors, States or tuples, got {type(value).__name__}")


def _zip_map(fn: Callable[[Sequence[Tensor]], Tensor], values: Sequence[Any]) -> Any:
    first = values[0]
    if isinstance(first, Tensor):
        return fn(values)
    if isinstance(first, State):
        return type(first)(
            **{
                f.name: _zip_map(fn, [getattr(v, f.name) for v in values])
                for f in dataclasses.fields(first)
            }
        )
    if isinstance(first, tuple):
        return tuple(_zip_map(fn, [v[i] for v in values]) for i in range(len(first)))
    raise TypeError(f"State leaves must be tensors, States or tuples, got {type(first).__name__}")


@dataclasses.dataclass
class State:
    """Base class of every backbone state: a dataclass of batch-first tensors.

    Subclasses declare tensor fields (or nested States, or tuples of them). An empty subclass is
    the state of a stateless backbone.
    """

    def map(self: S, fn: Callable[[Tensor], Tensor]) -> S:
        """Apply ``fn`` to every tensor leaf and return a new state of the same type."""
        return type(self)(
            **{f.name: _map(fn, getattr(self, f.name)) for f in dataclasses.fields(self)}
        )

    def leaves(self) -> list[Tensor]:
        """Every tensor leaf, in field order."""
        out: list[Tensor] = []
        self.map(lambda t: out.append(t) or t)  # type: ignore[func-returns-value]
        return out

    def detach(self: S) -> S:
        """Cut the autograd history (truncated backpropagation through time)."""
        return self.map(Tensor.detach)

    def clone(self: S) -> S:
        return self.map(Tensor.clone)

    def to(self: S, device: torch.device | str) -> S:
        return self.map(lambda t: t.to(device))

    def index(self: S, rows: Tensor | slice | int | Sequence[int]) -> S:
        """Select batch rows (dim 0 of every leaf). An int keeps the batch dim."""
        if isinstance(rows, int):
            rows = slice(rows, rows + 1)
        elif not isinstance(rows, (slice, Tensor)):
            rows = torch.as_tensor(list(rows), dtype=torch.long)
        return self.map(lambda t: t[rows])

    def where(self: S, mask: Tensor, other: S) -> S:
        """Row-wise select: rows where ``mask`` (B,) is true come from ``other``."""
        return _zip_map(
            lambda ts: torch.where(mask.view(-1, *([1] * (ts[0].dim() - 1))), ts[1], ts[0]),
            [self, other],
        )

    @classmethod
    def cat(cls: type[S], states: Sequence[S]) -> S:
        """Concatenate states along the batch dimension."""
        if not states:
            raise ValueError("State.cat needs at least one state")
        return _zip_map(lambda ts: torch.cat(list(ts), dim=0), list(states))

    @classmethod
    def stack(cls: type[S], states: Sequence[S]) -> S:
        """Stack states along a new leading dim (leaves become (N, B, ...)); see ``unstack``."""
        return _zip_map(lambda ts: torch.stack(list(ts), dim=0), list(states))

    def unstack(self: S, i: int) -> S:
        """The i-th state of a stacked state."""
        return self.map(lambda t: t[i])

    @property
    def batch_size(self) -> int | None:
        leaves = self.leaves()
        return leaves[0].shape[0] if leaves else None

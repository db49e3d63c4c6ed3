"""A backbone's ``step`` replayed from one CUDA graph.

At control batch sizes one HOPE ``step`` is a few hundred small kernels: their launch overhead,
not their arithmetic, sets the latency (``docs/benchmarks.md``). Capturing the step once and
replaying the graph launches all of them with one call. Any :class:`Backbone` whose ``step`` has
no host synchronisation and no data-dependent control flow can be captured; HOPE's and the
baselines' steps qualify.

    step = GraphedStep(model, batch_size=64, device="cuda")
    state = step.init_state()
    y_t, state = step(x_t, state, is_first)    # equals model.step(x_t, state, is_first)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hope_agent.models.base import Backbone
from hope_agent.models.state import State


class GraphedStep:
    """``backbone.step`` for ``batch_size`` rows on a CUDA device, as one graph replay (no grad).

    The graph reads its inputs from buffers it owns and writes the new state back into its state
    buffers, so a call costs one replay plus the copies of ``x_t`` and ``is_first``: passing back
    the state this object returned copies nothing. Another state is copied in first. The returned
    output and state are those buffers: they stay valid until the next call (``clone`` what you
    keep, e.g. a state stored at a chunk start). The graph reads the backbone's parameters where
    they live, so in-place optimizer updates and ``load_state_dict`` take effect at the next call;
    replacing a parameter tensor (``module.weight = ...``) or moving the model needs a new
    ``GraphedStep``.
    """

    def __init__(
        self,
        backbone: Backbone[Any],
        batch_size: int,
        device: torch.device | str,
        warmup: int = 2,
    ) -> None:
        dev = torch.device(device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(
                f"GraphedStep needs an available CUDA device, got {str(dev)!r}; "
                "call backbone.step directly on other devices"
            )
        self.backbone = backbone
        dtype = next(backbone.parameters()).dtype
        with torch.no_grad():
            self._state = backbone.init_state(batch_size, dev).map(
                lambda t: t.detach().clone(memory_format=torch.contiguous_format)
            )
        self._x = torch.randn(batch_size, backbone.d_model, dtype=dtype, device=dev)
        self._first = torch.zeros(batch_size, dtype=torch.bool, device=dev)
        # capture needs the lazy initialisations (cuBLAS handles, allocator) done beforehand, on a
        # side stream; the warm-up steps do not write into the state buffers
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                backbone.step(self._x, self._state, self._first)
        torch.cuda.current_stream(dev).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self._graph):
            self._y, new = backbone.step(self._x, self._state, self._first)
            for dst, src in zip(self._state.leaves(), new.leaves(), strict=True):
                dst.copy_(src)

    def init_state(self) -> State:
        """The backbone's initial state, in this object's buffers (overwrites the current one)."""
        with torch.no_grad():
            fresh = self.backbone.init_state(self._first.shape[0], self._first.device)
        self._copy_state(fresh)
        return self._state

    def _copy_state(self, state: State) -> None:
        leaves = state.leaves()
        shapes = [tuple(t.shape) for t in leaves]
        expected = [tuple(t.shape) for t in self._state.leaves()]
        if shapes != expected:
            raise ValueError(
                f"GraphedStep: state leaves have shapes {shapes}, the captured step {expected}; "
                f"pass a state of this backbone for batch {self._first.shape[0]}"
            )
        for dst, src in zip(self._state.leaves(), leaves, strict=True):
            dst.copy_(src)

    def __call__(
        self, x_t: Tensor, state: State, is_first: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """One step ``x_t (B, d_model)``, ``is_first (B,)``: the backbone's ``step``, replayed."""
        if tuple(x_t.shape) != tuple(self._x.shape):
            raise ValueError(
                f"GraphedStep: x_t has shape {tuple(x_t.shape)}, the captured step "
                f"{tuple(self._x.shape)}; build a GraphedStep for this batch size"
            )
        self._x.copy_(x_t)
        if is_first is None:
            self._first.zero_()
        else:
            self._first.copy_(is_first)
        if state is not self._state:
            self._copy_state(state)
        self._graph.replay()
        return self._y, self._state

    def detached(
        self, x_t: Tensor, state: State, is_first: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """:meth:`__call__` whose output and state are new tensors, never this object's buffers.

        Costs two copies of the state per call and keeps the functional contract of
        ``backbone.step``: a caller may keep, compare or step from any state it was given
        (a rollout's chunk-start memory, a value peek that must not advance the carry).
        """
        y, new = self(x_t, state, is_first)
        return y.clone(), new.map(torch.clone)


__all__ = ["GraphedStep"]

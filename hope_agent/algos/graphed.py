"""A PPO minibatch's loss and gradients replayed from one CUDA graph.

A HOPE forward and backward at PPO's minibatch shape is about 1,800 small kernels: the GPU was
busy 6.6 ms of a 113 ms call on the H100 (``results/h100_2026-12-07_compile/README.md``), the
rest is the host launching them. PPO's minibatches have fixed shapes, so the whole chain (the
agent's sequence pass, the PPO loss, ``torch.autograd.grad``) can be captured once and replayed
with one launch. The optimizer step, the gradient clip and the finiteness checks stay eager:
they are a few fused kernels, and the optimizer keeps its host-side clocks.

    graphed = GraphedLossGrad(ppo.loss, params, example_batch, max_resets=2)
    loss, stats = graphed(batch)     # p.grad of every param now holds this batch's gradient

The backbone's forward must run without host synchronisation (``Backbone.capturable_forward``);
HOPE does so inside :func:`~hope_agent.models.titans.static_segments`, which needs a bound on
the episode starts per sequence (:func:`max_resets`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hope_agent.algos.buffer import SequenceBatch
from hope_agent.models.titans import static_segments

LossFn = Callable[[SequenceBatch], tuple[Tensor, dict[str, Tensor]]]


def max_resets(is_first: Tensor) -> int:
    """The most episode starts after the first step of any sequence of ``is_first (B, L)``
    (one device-to-host copy): the bound :func:`~hope_agent.models.titans.static_segments`
    needs."""
    if is_first.dim() != 2:
        raise ValueError(f"max_resets: is_first must be (B, L), got shape {tuple(is_first.shape)}")
    if is_first.shape[1] < 2 or is_first.shape[0] == 0:
        return 0
    return int(is_first[:, 1:].sum(1).amax())


# every field of SequenceBatch but the last, ``memory`` (a State)
assert dataclasses.fields(SequenceBatch)[-1].name == "memory"


def _batch_leaves(batch: SequenceBatch) -> list[Tensor]:
    tensors = [getattr(batch, f.name) for f in dataclasses.fields(batch)[:-1]]
    return [*tensors, *batch.memory.leaves()]


def _batch_map(batch: SequenceBatch, fn: Callable[[Tensor], Tensor]) -> SequenceBatch:
    tensors = {f.name: fn(getattr(batch, f.name)) for f in dataclasses.fields(batch)[:-1]}
    return SequenceBatch(memory=batch.memory.map(fn), **tensors)


class GraphedLossGrad:
    """``loss_fn(batch)`` and the gradients of its loss for one minibatch shape, as one replay.

    Args:
        loss_fn: ``batch -> (loss, stats)``, a scalar loss and detached diagnostics; it must run
            without host synchronisation (it is captured).
        params: the parameters to differentiate (the optimizer's).
        example: a minibatch of the shape to capture; its values are only used to warm up.
        max_resets: the bound on episode starts per sequence after its first step, for every
            batch this object will be called with (see :func:`max_resets`).
        warmup: eager calls on a side stream before the capture (lazy initialisation, and the
            first-call compilation of a ``torch.compile``'d backbone).
        capture: False runs ``loss_fn`` eagerly at every call, through the same buffers, on any
            device: the object's bookkeeping without CUDA (for tests and debugging).

    A call copies the batch into the graph's input buffers, replays, and points each
    parameter's ``.grad`` at the graph's gradient buffer (None for a parameter the loss does not
    reach, as after an eager backward). The returned loss, stats and gradients are those buffers:
    they hold until the next call. The graph reads the parameters where they live, so in-place
    optimizer steps and ``load_state_dict`` take effect at the next call.
    """

    def __init__(
        self,
        loss_fn: LossFn,
        params: Sequence[Tensor],
        example: SequenceBatch,
        max_resets: int,
        warmup: int = 2,
        capture: bool = True,
    ) -> None:
        dev = example.obs.device
        if capture and (dev.type != "cuda" or not torch.cuda.is_available()):
            raise ValueError(
                f"GraphedLossGrad needs the batch on an available CUDA device, got {str(dev)!r}"
            )
        self.params = list(params)
        self.max_resets = max_resets
        self._batch = _batch_map(example, lambda t: t.detach().clone())
        self._shapes = [tuple(t.shape) for t in _batch_leaves(self._batch)]
        self._grads = [torch.zeros_like(p) for p in self.params]
        if not capture:
            self._loss, self._stats, self._used = self._run(loss_fn)
            self._replay = lambda: self._rerun(loss_fn)
            return
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._run(loss_fn)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._loss, self._stats, self._used = self._run(loss_fn)
        self._replay = graph.replay

    def _rerun(self, loss_fn: LossFn) -> None:
        self._loss, self._stats, _ = self._run(loss_fn)

    def _run(self, loss_fn: LossFn) -> tuple[Tensor, dict[str, Tensor], list[bool]]:
        with static_segments(self.max_resets):
            loss, stats = loss_fn(self._batch)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        for buf, grad in zip(self._grads, grads, strict=True):
            if grad is not None:
                buf.copy_(grad)
        return loss.detach(), stats, [g is not None for g in grads]

    def __call__(self, batch: SequenceBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and stats of ``batch``, its gradients in the parameters' ``.grad``."""
        leaves = _batch_leaves(batch)
        shapes = [tuple(t.shape) for t in leaves]
        if shapes != self._shapes:
            raise ValueError(
                f"GraphedLossGrad: batch leaves have shapes {shapes}, the captured graph "
                f"{self._shapes}; capture one per minibatch shape"
            )
        for dst, src in zip(_batch_leaves(self._batch), leaves, strict=True):
            dst.copy_(src)
        self._replay()
        for p, buf, used in zip(self.params, self._grads, self._used, strict=True):
            p.grad = buf if used else None
        return self._loss, dict(self._stats)

    def release_grads(self) -> None:
        """Unlink the parameters' ``.grad`` from the graph's buffers (after the last step)."""
        for p in self.params:
            p.grad = None


__all__ = ["GraphedLossGrad", "max_resets"]

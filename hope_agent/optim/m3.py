"""M3, Multi-scale Momentum Muon (Nested Learning, Algorithm 1; HOPE.md section 3b).

The optimizer read as a memory of past gradients, with two timescales. For each matrix parameter:

    every step t:   g = ∇L;  M1 += β1·g;  V += β2·g²;  O1 = NS_T(M1)
                    θ ← θ − lr · (O1 + α·O2) / (sqrt(V) + ε)
    every f steps:  M2 += β3 · (sum of the last f gradients);  O2 = NS_T(M2)

implemented literally: the momenta and V are running sums (no exponential decay), O2 is 0 until
the first slow refresh, and a refresh at step t (t ≡ 0 mod f) is used from step t + 1 on, as in the
paper's loop where the slow memory is refreshed at the start of each window of f steps. Because
NS_T normalises its input, β1 and β3 only rescale matrices whose scale NS discards; β2 scales the
step like ``lr``.

NS_T is the quintic Newton-Schulz iteration of Muon (Jordan et al. 2024), coefficients
(3.4445, -4.7750, 2.0315), on the Frobenius-normalised matrix, transposing tall matrices so that
the Gram matrix is the small one.

A parameter with more than two dims is a stack of matrices over its last two dims: HOPE's per-head
memory weights ``(M, H, h, d)`` and ``W_q (H, d, d)``; its depthwise conv ``(3, H, d, K)`` becomes
one channels x taps matrix per q/k/v and head, the shape Muon gives a flattened depthwise filter.
Each matrix is orthogonalised on its own and the rest of the update is elementwise, so a stack is
updated as its matrices would be one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(matrix: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalise ``matrix`` (..., m, n): push its singular values towards 1.

    Leading dims are a batch: every ``m x n`` matrix is normalised and iterated on its own.
    Returns a tensor of the same shape and dtype. The iteration runs in fp32. The quintic
    coefficients trade exactness for speed: after 5 steps the singular values lie roughly in
    [0.7, 1.2] rather than exactly at 1, which is what Muon relies on.
    """
    if matrix.dim() < 2:
        raise ValueError(
            f"newton_schulz expects a matrix (..., m, n), got shape {tuple(matrix.shape)}"
        )
    if steps < 0:
        raise ValueError(f"newton_schulz: steps must be >= 0, got {steps}")
    a, b, c = _NS_COEFFS
    x = matrix.float()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    # Spectral norm <= Frobenius norm, so after this every singular value is in [0, 1].
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT  # (.., m, m) with m <= n
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.mT
    return x.to(matrix.dtype)


def split_matrix_params(params: Iterable[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Split parameters into (matrices and stacks of matrices, dim >= 2, for M3; vectors and
    scalars for e.g. AdamW)."""
    matrices: list[Tensor] = []
    others: list[Tensor] = []
    for p in params:
        (matrices if p.dim() >= 2 else others).append(p)
    return matrices, others


def _check_hyper(
    lr: float,
    betas: tuple[float, float, float],
    alpha: float,
    slow_every: int,
    ns_steps: int,
    eps: float,
) -> None:
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"M3: lr must be a finite float >= 0, got {lr!r}")
    if len(betas) != 3 or not all(0.0 <= float(b) <= 1.0 for b in betas):
        raise ValueError(f"M3: betas must be three floats (b1, b2, b3) in [0, 1], got {betas!r}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"M3: alpha (weight of the slow momentum) must be >= 0, got {alpha!r}")
    if isinstance(slow_every, bool) or not isinstance(slow_every, int) or slow_every < 1:
        raise ValueError(f"M3: slow_every (f) must be an int >= 1, got {slow_every!r}")
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1:
        raise ValueError(f"M3: ns_steps (T) must be an int >= 1, got {ns_steps!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"M3: eps must be a float > 0, got {eps!r}")


class M3(Optimizer):
    """Multi-scale Momentum Muon for matrix parameters (dim >= 2: leading dims stack matrices).

    Args:
        params: matrix parameters, or param-group dicts of them (use :func:`split_matrix_params`
            and give the rest to AdamW).
        lr: step size.
        betas: (β1, β2, β3): weights of the fast momentum, the second moment and the slow momentum.
        alpha: weight of the slow momentum's orthogonalised direction O2.
        slow_every: f, the slow momentum's refresh period in steps.
        ns_steps: T, Newton-Schulz iterations.
        eps: added to sqrt(V) in the denominator.

    Per-parameter state: ``step`` (updates taken by that parameter; a parameter with no gradient
    at a call does not advance), ``m1``, ``v``, ``m2``, ``o2`` and ``grad_window`` (the sum of the
    gradients since the last slow refresh).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
        alpha: float = 1.0,
        slow_every: int = 10,
        ns_steps: int = 5,
        eps: float = 1e-8,
    ) -> None:
        _check_hyper(lr, betas, alpha, slow_every, ns_steps, eps)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "alpha": alpha,
            "slow_every": slow_every,
            "ns_steps": ns_steps,
            "eps": eps,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of matrix parameters (dim >= 2); vectors and scalars raise ``ValueError``."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_hyper(
                group["lr"],
                group["betas"],
                group["alpha"],
                group["slow_every"],
                group["ns_steps"],
                group["eps"],
            )
            for p in group["params"]:
                if p.dim() < 2:
                    raise ValueError(
                        f"M3 optimises matrix parameters (dim >= 2) only; param group "
                        f"{len(self.param_groups) - 1} holds a parameter of shape "
                        f"{tuple(p.shape)}. Use split_matrix_params(params) and give the "
                        "non-matrix parameters to AdamW"
                    )
        except ValueError:
            self.param_groups.pop()
            raise

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One M3 update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2, b3 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    for key in ("m1", "v", "m2", "o2", "grad_window"):
                        state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                state["m1"].add_(g, alpha=b1)
                state["v"].addcmul_(g, g, value=b2)
                state["grad_window"].add_(g)
                direction = newton_schulz(state["m1"], group["ns_steps"])
                if group["alpha"] != 0:
                    direction = direction + group["alpha"] * state["o2"]
                denom = state["v"].sqrt().add_(group["eps"])
                p.addcdiv_(direction, denom, value=-group["lr"])
                if state["step"] % group["slow_every"] == 0:
                    state["m2"].add_(state["grad_window"], alpha=b3)
                    state["grad_window"].zero_()
                    state["o2"].copy_(newton_schulz(state["m2"], group["ns_steps"]))
        return loss

"""Multi-timescale optimizer: the outer clock of the Continuum Memory System (HOPE.md section 3).

Each parameter group has an update period ``P``. A group's gradients are summed over ``P`` calls of
:meth:`MultiTimescaleOptimizer.step` and the base optimizer (AdamW by default) applies that sum on
every ``P``-th call, as the Nested Learning paper's CMS rule writes it:

    θ_ℓ ← base_step(θ_ℓ, Σ_{t in the last P_ℓ calls} ∇θ_ℓ L_t)    when calls ≡ 0 (mod P_ℓ)
    θ_ℓ unchanged (no weight decay, no momentum drift)          otherwise

Call counter semantics: ``calls`` counts ``step()`` calls since construction (or the count saved in
the checkpoint that was loaded); the first call is number 1, so a group with period P first moves
on call P. The counter is global: a group added later with ``add_param_group`` moves on the next
multiple of its period, so its first window may be shorter than P. ``state_dict()`` saves the
counter and the partial gradient sums, so resuming mid-period continues exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

_KEY = "multitimescale"


def _group_label(group: dict[str, Any], index: int) -> str:
    name = group.get("name")
    return f"param group {index}" + (f" ({name!r})" if name is not None else "")


def _check_period(group: dict[str, Any], index: int) -> None:
    period = group.get("period", 1)
    # bool is an int subclass: period=True is almost certainly a config mistake.
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(
            f"MultiTimescaleOptimizer: {_group_label(group, index)} has period={period!r}; "
            "period must be an int >= 1 (1 = update at every step)"
        )


class MultiTimescaleOptimizer(Optimizer):
    """Wrap a torch optimizer so that each param group updates every ``period`` steps.

    Args:
        param_groups: an iterable of tensors (one group, period 1) or of dicts with ``"params"``,
            optional ``"period"`` (int >= 1, default 1), optional ``"name"`` and any option of the
            base optimizer (e.g. ``"lr"``), as ``Backbone.param_groups()`` returns them.
        base: the optimizer class that performs the actual updates.
        **base_kwargs: default options for ``base`` (e.g. ``lr=3e-4, weight_decay=0.01``).

    ``param_groups`` is shared with the base optimizer (the same dicts), so LR schedulers and
    manual changes such as ``for g in opt.param_groups: g["lr"] *= 0.5`` reach it. A period-1 group
    behaves bit-identically to the base optimizer alone. The base optimizer must skip parameters
    whose ``.grad`` is None (every torch.optim optimizer except LBFGS does), since that is how the
    groups that are not due are held still.
    """

    def __init__(
        self,
        param_groups: Iterable[Tensor] | Iterable[dict[str, Any]],
        base: Callable[..., Optimizer] = torch.optim.AdamW,
        **base_kwargs: Any,
    ) -> None:
        self._base: Optimizer | None = None
        super().__init__(param_groups, {"period": 1})
        built = base(self.param_groups, **base_kwargs)
        if not isinstance(built, Optimizer):
            raise TypeError(
                f"MultiTimescaleOptimizer: base must build a torch.optim.Optimizer, "
                f"got {type(built).__name__}"
            )
        self._base = built
        # One list of the very same group dicts: a change made through either is seen by both.
        self.param_groups = built.param_groups
        self.defaults = {**built.defaults, "period": 1}
        self._calls = 0

    @property
    def base(self) -> Optimizer:
        """The wrapped optimizer that applies the (accumulated) gradients."""
        assert self._base is not None, "base optimizer is built in __init__"
        return self._base

    @property
    def calls(self) -> int:
        """How many times ``step()`` has been called (saved in ``state_dict()``)."""
        return self._calls

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (validated ``period``); it shares the global call counter."""
        _check_period(param_group, len(self.param_groups))
        if self._base is None:
            super().add_param_group(param_group)
        else:
            param_group.setdefault("period", 1)
            self._base.add_param_group(param_group)

    def is_due(self, group: dict[str, Any], call: int | None = None) -> bool:
        """Whether ``group`` applies its gradient sum on call ``call`` (default: the next call)."""
        call = self._calls + 1 if call is None else call
        return call % group["period"] == 0

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Accumulate every group's gradients and let the base optimizer update the due groups.

        ``.grad`` of every parameter is left as it was before the call.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._calls += 1
        saved: list[tuple[Tensor, Tensor | None]] = []
        for group in self.param_groups:
            if group["period"] == 1:
                continue
            due = self.is_due(group, self._calls)
            for p in group["params"]:
                state = self.state[p]
                grad_sum = state.pop("grad_sum", None)
                if p.grad is not None:
                    if grad_sum is None:
                        grad_sum = p.grad.detach().clone()
                    else:
                        grad_sum.add_(p.grad)
                saved.append((p, p.grad))
                if due:
                    # The base optimizer sees the window's sum as this step's gradient.
                    p.grad = grad_sum
                else:
                    if grad_sum is not None:
                        state["grad_sum"] = grad_sum
                    # A None grad makes the base optimizer skip the parameter entirely.
                    p.grad = None
        try:
            self.base.step()
        finally:
            for p, grad in saved:
                p.grad = grad
        return loss

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer.__getstate__ keeps only defaults/state/param_groups; copies need the rest.
        return {**super().__getstate__(), "_base": self._base, "_calls": self._calls}

    def _params(self) -> list[Tensor]:
        return list(chain.from_iterable(g["params"] for g in self.param_groups))

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus the call counter and the partial gradient sums.

        Like torch optimizers, tensors are returned by reference: serialise (``torch.save``) or
        deep-copy the result before stepping again if you keep it in memory.
        """
        base_sd = self.base.state_dict()
        index = {id(p): i for i, p in enumerate(self._params())}
        grad_sums = {index[id(p)]: s["grad_sum"] for p, s in self.state.items() if "grad_sum" in s}
        return {
            "state": base_sd["state"],
            "param_groups": base_sd["param_groups"],
            _KEY: {"calls": self._calls, "grad_sum": grad_sums},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (groups must match in number and sizes)."""
        if _KEY not in state_dict:
            raise ValueError(
                "MultiTimescaleOptimizer.load_state_dict: no 'multitimescale' entry; this state "
                "dict was not saved by a MultiTimescaleOptimizer (load it into the base optimizer "
                "instead, or save with MultiTimescaleOptimizer.state_dict())"
            )
        extra = state_dict[_KEY]
        self.base.load_state_dict(
            {"state": state_dict["state"], "param_groups": state_dict["param_groups"]}
        )
        # Loading replaces the base optimizer's group dicts: share the new ones again.
        self.param_groups = self.base.param_groups
        for i, group in enumerate(self.param_groups):
            _check_period(group, i)
        params = self._params()
        self.state = defaultdict(dict)
        for i, grad_sum in extra["grad_sum"].items():
            p = params[int(i)]
            self.state[p]["grad_sum"] = grad_sum.to(device=p.device, dtype=p.dtype).clone()
        self._calls = int(extra["calls"])

"""Multi-timescale optimizer: the outer clock of the Continuum Memory System (HOPE.md 3 and 3c).

Each parameter group has an update period ``P`` counted on a *clock* the group names, and the
base optimizer (AdamW by default) applies the group's summed gradients once per period, as the
Nested Learning paper's CMS rule writes it:

    θ_ℓ ← base_step(θ_ℓ, Σ_{optimizer steps t in the window} ∇θ_ℓ L_t)   once per window of P_ℓ
    θ_ℓ unchanged (no weight decay, no momentum drift)                     otherwise

Clocks (the group key ``"clock"``):

- ``"optimizer_steps"`` (default): the window is ``P`` calls of :meth:`step`. Calls are counted
  from 1 (since construction, or from the count of the loaded checkpoint), so a group of period P
  first moves on call P, and the sum it applies includes that call's gradient. The counter is
  global: a group added later with ``add_param_group`` moves on the next multiple of its period.
- ``"env_steps"`` and ``"tasks"``: counters the trainer advances with
  :meth:`MultiTimescaleOptimizer.advance` (environment steps trained on, task boundaries). When
  the counter crosses a multiple of ``P``, the group's sum is applied at the *first optimizer step
  after the crossing*, and it holds the gradients of the steps taken *before* the crossing; that
  step's own gradient opens the next window. So with ``clock="tasks", period=1`` and one
  ``advance("tasks", 1)`` per task end, a level moves once per task, by exactly that task's
  gradients. Several multiples crossed before one step give one update. A window is never cut
  short by anything else: the gradients of the last task stay in the state until a step follows.

A learning rate per group: a group's ``"lr"`` works as with any torch optimizer; a group's
``"lr_scale"`` multiplies its learning rate (its own ``"lr"`` or the base default) once, when the
group is added. :func:`apply_group_settings` sets clock, period and ``lr_scale`` of named groups
from config values. ``state_dict()`` saves the call counter, the clocks, every group's window
mark and update count, and the partial gradient sums, so resuming mid-period continues exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

_KEY = "multitimescale"
OPTIMIZER_STEPS = "optimizer_steps"
# Clocks the trainer advances; optimizer steps advance themselves in step().
EXTERNAL_CLOCKS = ("env_steps", "tasks")
CLOCKS = (OPTIMIZER_STEPS, *EXTERNAL_CLOCKS)


def _group_label(group: Mapping[str, Any], index: int) -> str:
    name = group.get("name")
    return f"param group {index}" + (f" ({name!r})" if name is not None else "")


def _check_group(group: Mapping[str, Any], index: int) -> None:
    label = _group_label(group, index)
    period = group.get("period", 1)
    # bool is an int subclass: period=True is almost certainly a config mistake.
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(
            f"MultiTimescaleOptimizer: {label} has period={period!r}; "
            "period must be an int >= 1 (1 = update at every tick of its clock)"
        )
    clock = group.get("clock", OPTIMIZER_STEPS)
    if clock not in CLOCKS:
        raise ValueError(
            f"MultiTimescaleOptimizer: {label} has clock={clock!r}; "
            f"valid clocks: {', '.join(CLOCKS)}"
        )
    scale = group.get("lr_scale", 1.0)
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not (math.isfinite(scale) and scale >= 0)
    ):
        raise ValueError(
            f"MultiTimescaleOptimizer: {label} has lr_scale={scale!r}; lr_scale must be a finite "
            "number >= 0 (0 freezes the group)"
        )


@dataclass(frozen=True)
class GroupSettings:
    """Clock, period and learning-rate scale of one named parameter group.

    Attributes:
        clock: one of :data:`CLOCKS`.
        period: ticks of ``clock`` per update; ``None`` keeps the group's own period (a CMS
            level's ``cms_periods`` entry).
        lr_scale: factor on the group's learning rate (0 freezes the group bit for bit).
    """

    clock: str = OPTIMIZER_STEPS
    period: int | None = None
    lr_scale: float = 1.0


def apply_group_settings(
    groups: Sequence[Mapping[str, Any]],
    settings: Mapping[str, GroupSettings | Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Copies of ``groups`` with the clock, period and ``lr_scale`` of the groups named in
    ``settings`` set (what a builder calls on ``Agent.param_groups()`` before building the
    optimizer).

    ``settings`` maps a group name (``"cms.2"``, ``"slow"``...) to a :class:`GroupSettings` or a
    mapping of its fields, as a config gives it: ``{"cms.2": {"clock": "tasks", "period": 1}}``.
    Groups not named keep their values. Raises ``ValueError`` on a name no group has (listing
    the names), an unknown field or a bad value.
    """
    names = [g.get("name") for g in groups]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ValueError(
            f"group settings name {unknown}, but the parameter groups are "
            f"{[n for n in names if n is not None]}"
        )
    fields = {"clock", "period", "lr_scale"}
    out: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        new = dict(group)
        setting = settings.get(new.get("name"))  # type: ignore[arg-type]
        if setting is not None:
            if isinstance(setting, GroupSettings):
                values = {k: getattr(setting, k) for k in fields}
            else:
                bad = sorted(set(setting) - fields)
                if bad:
                    raise ValueError(
                        f"group settings of {new['name']!r}: unknown field(s) {bad}; valid "
                        f"fields: {sorted(fields)}"
                    )
                values = dict(setting)
            if values.get("period") is None:
                values.pop("period", None)
            new.update(values)
        _check_group(new, i)
        out.append(new)
    return out


class MultiTimescaleOptimizer(Optimizer):
    """Wrap a torch optimizer so that each param group updates once per period of its clock.

    Args:
        param_groups: an iterable of tensors (one group, period 1) or of dicts with ``"params"``,
            optional ``"period"`` (int >= 1, default 1), ``"clock"`` (one of :data:`CLOCKS`,
            default ``"optimizer_steps"``), ``"lr_scale"`` (default 1), ``"name"`` and any
            option of the base optimizer (e.g. ``"lr"``), as ``Backbone.param_groups()`` returns
            them (and :func:`apply_group_settings` completes them).
        base: the optimizer class that performs the actual updates.
        **base_kwargs: default options for ``base`` (e.g. ``lr=3e-4, weight_decay=0.01``).

    ``param_groups`` is shared with the base optimizer (the same dicts), so LR schedulers and
    manual changes such as ``for g in opt.param_groups: g["lr"] *= 0.5`` reach it. A period-1
    group on the optimizer-step clock behaves bit-identically to the base optimizer alone. The
    base optimizer must skip parameters whose ``.grad`` is None (every torch.optim optimizer
    except LBFGS does), since that is how the groups that are not due are held still.
    """

    def __init__(
        self,
        param_groups: Iterable[Tensor] | Iterable[dict[str, Any]],
        base: Callable[..., Optimizer] = torch.optim.AdamW,
        **base_kwargs: Any,
    ) -> None:
        self._base: Optimizer | None = None
        self._calls = 0
        self._clocks = dict.fromkeys(EXTERNAL_CLOCKS, 0)
        # Per group (in param_groups order): the window index of its clock at its last update,
        # and how many updates the base optimizer applied to it.
        self._marks: list[int] = []
        self._updates: list[int] = []
        super().__init__(param_groups, {"period": 1, "clock": OPTIMIZER_STEPS})
        built = base(self.param_groups, **base_kwargs)
        if not isinstance(built, Optimizer):
            raise TypeError(
                f"MultiTimescaleOptimizer: base must build a torch.optim.Optimizer, "
                f"got {type(built).__name__}"
            )
        self._base = built
        # One list of the very same group dicts: a change made through either is seen by both.
        self.param_groups = built.param_groups
        self.defaults = {**built.defaults, "period": 1, "clock": OPTIMIZER_STEPS}
        for group in self.param_groups:
            # Only now does every group hold its lr (the base optimizer's default filled it in).
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)

    @property
    def base(self) -> Optimizer:
        """The wrapped optimizer that applies the (accumulated) gradients."""
        assert self._base is not None, "base optimizer is built in __init__"
        return self._base

    @property
    def calls(self) -> int:
        """How many times ``step()`` has been called (saved in ``state_dict()``)."""
        return self._calls

    def clock(self, name: str) -> int:
        """The current count of clock ``name`` (``optimizer_steps`` is :attr:`calls`)."""
        if name == OPTIMIZER_STEPS:
            return self._calls
        if name not in self._clocks:
            raise ValueError(f"unknown clock {name!r}; valid clocks: {', '.join(CLOCKS)}")
        return self._clocks[name]

    @property
    def update_counts(self) -> dict[str, int]:
        """How many updates each group received, by group name (``"group {i}"`` when unnamed)."""
        return {
            str(g.get("name", f"group {i}")): n
            for i, (g, n) in enumerate(zip(self.param_groups, self._updates, strict=True))
        }

    def advance(self, clock: str, amount: int = 1) -> None:
        """Advance the trainer-driven clock ``clock`` (``"env_steps"`` or ``"tasks"``) by
        ``amount`` ticks; due groups update at the next :meth:`step`."""
        if clock not in self._clocks:
            hint = (
                "optimizer steps advance themselves with step()"
                if clock == OPTIMIZER_STEPS
                else f"valid clocks: {', '.join(EXTERNAL_CLOCKS)}"
            )
            raise ValueError(f"advance: cannot advance clock {clock!r}; {hint}")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise ValueError(f"advance: amount must be an int >= 0, got {amount!r}")
        self._clocks[clock] += amount

    def reset_state(self, params: Iterable[Tensor]) -> None:
        """Forget what the optimizer holds for ``params``: the base optimizer's state (moments,
        step counts) and the partial gradient sums. Their next update starts afresh, as for a
        new parameter (what a method that resets weights, e.g. ``distill``, needs: stale
        moments would push reset weights back where they were)."""
        for p in params:
            self.base.state.pop(p, None)
            self.state.pop(p, None)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (validated ``period``, ``clock`` and ``lr_scale``); it shares the clocks.

        A group on an external clock starts its first window at the clock's current value.
        """
        _check_group(param_group, len(self.param_groups))
        if self._base is None:
            super().add_param_group(param_group)
        else:
            param_group.setdefault("period", 1)
            param_group.setdefault("clock", OPTIMIZER_STEPS)
            self._base.add_param_group(param_group)
            group = self._base.param_groups[-1]
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        group = self.param_groups[-1]
        self._marks.append(self._window(group))
        self._updates.append(0)

    def _window(self, group: Mapping[str, Any]) -> int:
        """Index of the current window of ``group``'s clock (optimizer steps: of the last call)."""
        return self.clock(group["clock"]) // group["period"]

    def is_due(self, group: dict[str, Any]) -> bool:
        """Whether ``group`` (one of :attr:`param_groups`) updates on the next ``step()`` call."""
        index = next(i for i, g in enumerate(self.param_groups) if g is group)
        return self._due(index)

    def _due(self, index: int) -> bool:
        group = self.param_groups[index]
        if group["clock"] == OPTIMIZER_STEPS:
            return (self._calls + 1) % group["period"] == 0
        return self._window(group) > self._marks[index]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Accumulate every group's gradients and let the base optimizer update the due groups.

        ``.grad`` of every parameter is left as it was before the call.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        due = [self._due(i) for i in range(len(self.param_groups))]
        self._calls += 1
        saved: list[tuple[Tensor, Tensor | None]] = []
        for i, group in enumerate(self.param_groups):
            on_steps = group["clock"] == OPTIMIZER_STEPS
            if on_steps and group["period"] == 1:
                self._updates[i] += any(p.grad is not None for p in group["params"])
                continue
            applied = False
            for p in group["params"]:
                state = self.state[p]
                window = state.pop("grad_sum", None)
                grad = None if p.grad is None else p.grad.detach()
                saved.append((p, p.grad))
                if on_steps:
                    # The due call's gradient belongs to the window it closes.
                    window = _summed(window, grad)
                    apply, keep = (window, None) if due[i] else (None, window)
                else:
                    # The crossing came before this call: its gradient opens the next window.
                    apply = window if due[i] else None
                    keep = _summed(None, grad) if due[i] else _summed(window, grad)
                if keep is not None:
                    state["grad_sum"] = keep
                # A None grad makes the base optimizer skip the parameter entirely.
                p.grad = apply
                applied |= apply is not None
            if due[i]:
                self._marks[i] = self._window(group)
            self._updates[i] += applied
        try:
            self.base.step()
        finally:
            for p, grad in saved:
                p.grad = grad
        return loss

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer.__getstate__ keeps only defaults/state/param_groups; copies need the rest.
        return {
            **super().__getstate__(),
            "_base": self._base,
            "_calls": self._calls,
            "_clocks": self._clocks,
            "_marks": self._marks,
            "_updates": self._updates,
        }

    def _params(self) -> list[Tensor]:
        return list(chain.from_iterable(g["params"] for g in self.param_groups))

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus the clocks, the groups' window marks and update
        counts, and the partial gradient sums.

        Like torch optimizers, tensors are returned by reference: serialise (``torch.save``) or
        deep-copy the result before stepping again if you keep it in memory.
        """
        base_sd = self.base.state_dict()
        index = {id(p): i for i, p in enumerate(self._params())}
        grad_sums = {index[id(p)]: s["grad_sum"] for p, s in self.state.items() if "grad_sum" in s}
        return {
            "state": base_sd["state"],
            "param_groups": base_sd["param_groups"],
            _KEY: {
                "calls": self._calls,
                "clocks": dict(self._clocks),
                "marks": list(self._marks),
                "updates": list(self._updates),
                "grad_sum": grad_sums,
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (groups must match in number and sizes).

        The saved groups' ``lr`` (already scaled), ``period`` and ``clock`` replace the current
        ones, as torch optimizers restore their hyper-parameters.
        """
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
            # Checkpoints written before clocks existed count optimizer steps only.
            group.setdefault("clock", OPTIMIZER_STEPS)
            _check_group(group, i)
        params = self._params()
        self.state = defaultdict(dict)
        for i, grad_sum in extra["grad_sum"].items():
            p = params[int(i)]
            self.state[p]["grad_sum"] = grad_sum.to(device=p.device, dtype=p.dtype).clone()
        self._calls = int(extra["calls"])
        self._clocks = {c: int(extra.get("clocks", {}).get(c, 0)) for c in EXTERNAL_CLOCKS}
        n = len(self.param_groups)
        marks = extra.get("marks", [self._window(g) for g in self.param_groups])
        updates = extra.get("updates", [0] * n)
        if len(marks) != n or len(updates) != n:
            raise ValueError(
                f"MultiTimescaleOptimizer.load_state_dict: the state holds marks of {len(marks)} "
                f"groups, the optimizer has {n}; resume with the run's own model and settings"
            )
        self._marks = [int(m) for m in marks]
        self._updates = [int(u) for u in updates]


def _summed(total: Tensor | None, grad: Tensor | None) -> Tensor | None:
    """``total + grad`` in place in ``total`` (a fresh copy when ``total`` is None)."""
    if grad is None:
        return total
    if total is None:
        return grad.clone()
    return total.add_(grad)

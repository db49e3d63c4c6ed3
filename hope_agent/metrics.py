"""Continual-learning metrics as pure functions of numpy arrays.

Definitions follow Continual World (Wołczyk et al., NeurIPS 2021); see ``docs/CONTINUAL_RL.md``.
``perf[i, j]`` is the performance on task j after training task i, an ``(N, N)`` matrix usually in
[0, 1] (success rate or normalised return). ``A``, ``F`` and ``BWT`` only difference and average
its entries, so they also apply to other retention matrices (e.g. world-model prediction error).

- average performance  ``A   = mean_j perf[N-1, j]``
- forgetting           ``F   = mean_j (perf[j, j] - perf[N-1, j])``   (over all N; the last adds 0)
- backward transfer    ``BWT = mean_{j<N-1} (perf[N-1, j] - perf[j, j])``
- forward transfer     ``FT_j = (AUC_j - AUC_j^ref) / (1 - AUC_j^ref)``, ``FT = mean_j FT_j``

A return becomes a performance with :func:`normalized_score` (stored reference returns) or, for a
task with neither a success criterion nor stored references, :func:`run_normalized_score` (the
run's own random-policy return and best evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

# A reference AUC this close to 1 leaves no room to improve; see forward_transfer_per_task.
_FULL_REFERENCE_TOL = 1e-9


def _finite(values: ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; pass finite performances")
    return arr


def _perf_matrix(perf: ArrayLike) -> FloatArray:
    arr = _finite(perf, "perf")
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(
            "perf must be a non-empty square (N, N) matrix with perf[i, j] = performance on "
            f"task j after training task i, got shape {arr.shape}"
        )
    return arr


def _vector(values: ArrayLike, name: str) -> FloatArray:
    arr = _finite(values, name)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    return arr


def _same_length(a: FloatArray, b: FloatArray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same length (one entry per task), "
            f"got {a.shape[0]} and {b.shape[0]}"
        )


def _unit_interval(arr: FloatArray, name: str) -> None:
    if np.any(arr < 0.0) or np.any(arr > 1.0):
        raise ValueError(f"{name} must lie in [0, 1] (AUC of performances in [0, 1]), got {arr}")


def average_performance(perf: ArrayLike) -> float:
    """Mean performance over all tasks after the last task: ``mean_j perf[N-1, j]``."""
    p = _perf_matrix(perf)
    return float(p[-1].mean())


def forgetting(perf: ArrayLike) -> float:
    """Mean drop from just-trained to final performance, over all N tasks (the last adds 0)."""
    p = _perf_matrix(perf)
    return float((np.diag(p) - p[-1]).mean())


def backward_transfer(perf: ArrayLike) -> float:
    """Mean final-minus-just-trained performance over the first N-1 tasks; 0.0 when N == 1.

    Unlike :func:`forgetting` it averages over N-1 tasks and has the opposite sign: positive when
    later training improved earlier tasks.
    """
    p = _perf_matrix(perf)
    n = p.shape[0]
    if n == 1:
        return 0.0
    return float((p[-1, : n - 1] - np.diag(p)[: n - 1]).mean())


def forward_transfer_per_task(auc: ArrayLike, ref_auc: ArrayLike) -> FloatArray:
    """``FT_j = (AUC_j - AUC_j^ref) / (1 - AUC_j^ref)`` per task, both AUCs in [0, 1].

    When the reference already reaches ``AUC_j^ref == 1`` there is no room to improve and the
    normalisation is undefined; we then use the raw difference ``AUC_j - 1`` (denominator 1): 0 when
    the method also learns the task perfectly from the start, negative by its shortfall otherwise.
    So a full reference gives ``FT_j`` in [-1, 0]; otherwise ``FT_j <= 1`` and, as in Continual
    World, unbounded below for a method much worse than a strong reference.
    """
    a = _vector(auc, "auc")
    r = _vector(ref_auc, "ref_auc")
    _same_length(a, r, "auc", "ref_auc")
    _unit_interval(a, "auc")
    _unit_interval(r, "ref_auc")
    room = 1.0 - r
    full = room <= _FULL_REFERENCE_TOL
    return (a - r) / np.where(full, 1.0, room)


def forward_transfer(auc: ArrayLike, ref_auc: ArrayLike) -> float:
    """Mean of :func:`forward_transfer_per_task` over tasks."""
    return float(forward_transfer_per_task(auc, ref_auc).mean())


def normalized_score(
    returns: ArrayLike, r_random: ArrayLike, r_reference: ArrayLike
) -> FloatArray | float:
    """``clip((R - R_random) / (R_reference - R_random), 0, 1)``, broadcast over arrays.

    Returns a float when every argument is a scalar, else an array of the broadcast shape. Raises
    when a reference return does not exceed its random return: the score would be undefined (equal)
    or rank better returns lower (reference below random).
    """
    ret = _finite(returns, "returns")
    lo = _finite(r_random, "r_random")
    hi = _finite(r_reference, "r_reference")
    if np.any(hi <= lo):
        raise ValueError(
            f"r_reference must exceed r_random to normalise returns, got r_reference={hi} and "
            f"r_random={lo}; re-measure the reference (a trained single-task run) or the random "
            "policy's return for that task"
        )
    score = np.clip((ret - lo) / (hi - lo), 0.0, 1.0)
    if score.ndim == 0:
        return float(score)
    return score


def run_normalized_score(returns: ArrayLike, r_random: float, r_best: float) -> FloatArray | float:
    """Score of a task normalised with what a run measured itself: :func:`normalized_score` with
    the random-policy return ``r_random`` and the run's best evaluation ``r_best`` as reference.

    When the run never beat random actions (``r_best <= r_random``) it learnt no skill to keep or
    forget: every score is 0 (of the shape of ``returns``).
    """
    ret = _finite(returns, "returns")
    lo, hi = float(_finite(r_random, "r_random")), float(_finite(r_best, "r_best"))
    if hi <= lo:
        zeros = np.zeros_like(ret)
        return float(zeros) if zeros.ndim == 0 else zeros
    return normalized_score(ret, lo, hi)


def task_auc(curve: ArrayLike) -> float:
    """Area under a task's curve: mean performance over the evaluations of its training window."""
    return float(_vector(curve, "curve").mean())


def smooth_last(values: ArrayLike, k: int = 5) -> float:
    """Mean of the last ``k`` values (all of them when fewer): Continual World's smoothing."""
    if k < 1:
        raise ValueError(f"k must be >= 1 (number of final evaluations to average), got {k}")
    return float(_vector(values, "values")[-k:].mean())


def _curves_and_windows(
    curves: ArrayLike, task_windows: Sequence[tuple[int, int]]
) -> tuple[FloatArray, list[tuple[int, int]]]:
    c = _finite(curves, "curves")
    if c.ndim != 2 or c.shape[0] == 0:
        raise ValueError(
            f"curves must be a (T, N) array with curves[t, j] = performance on task j at "
            f"evaluation t, got shape {c.shape}"
        )
    n_evals, n_tasks = c.shape
    windows = [(int(s), int(e)) for s, e in task_windows]
    if len(windows) != n_tasks:
        raise ValueError(
            f"task_windows needs one (start, stop) evaluation range per task: curves has "
            f"{n_tasks} tasks, got {len(windows)} windows"
        )
    for j, (start, stop) in enumerate(windows):
        if not 0 <= start < stop <= n_evals:
            raise ValueError(
                f"task_windows[{j}] = ({start}, {stop}) must satisfy 0 <= start < stop <= "
                f"{n_evals} (a non-empty half-open range of evaluation rows)"
            )
    return c, windows


def perf_matrix_from_curves(
    curves: ArrayLike,
    task_windows: Sequence[tuple[int, int]],
    smooth_last: int | None = None,
) -> FloatArray:
    """Build ``perf`` from evaluation curves over the whole run.

    Args:
        curves: ``(T, N)``; ``curves[t, j]`` = performance on task j at the t-th evaluation.
        task_windows: per task i, the half-open range ``(start, stop)`` of evaluation rows taken
            while training task i; row ``stop - 1`` is the evaluation at the end of task i.
        smooth_last: ``None`` takes that last row; ``k`` averages the window's last k rows
            (Continual World uses 5).

    Returns:
        ``perf: (N, N)`` with ``perf[i, j]`` = performance on task j after training task i.
    """
    c, windows = _curves_and_windows(curves, task_windows)
    if smooth_last is not None and smooth_last < 1:
        raise ValueError(f"smooth_last must be None or >= 1, got {smooth_last}")
    k = 1 if smooth_last is None else smooth_last
    rows = [c[max(start, stop - k) : stop].mean(axis=0) for start, stop in windows]
    return np.stack(rows)


def aucs_from_curves(curves: ArrayLike, task_windows: Sequence[tuple[int, int]]) -> FloatArray:
    """Per-task AUC: mean of ``curves[start_j:stop_j, j]`` over task j's own training window."""
    c, windows = _curves_and_windows(curves, task_windows)
    return np.array([c[start:stop, j].mean() for j, (start, stop) in enumerate(windows)])


def in_context_gain(perf_with_memory: ArrayLike, perf_reset_every_step: ArrayLike) -> float:
    """Mean gain from fast memory: perf with memory minus perf with memory reset at every step."""
    with_mem = _finite(perf_with_memory, "perf_with_memory")
    reset = _finite(perf_reset_every_step, "perf_reset_every_step")
    if with_mem.shape != reset.shape or with_mem.size == 0:
        raise ValueError(
            "perf_with_memory and perf_reset_every_step must be non-empty arrays of the same "
            f"shape (the same tasks evaluated both ways), got {with_mem.shape} and {reset.shape}"
        )
    return float((with_mem - reset).mean())


def bootstrap_ci(
    values: ArrayLike, confidence: float = 0.9, n_resamples: int = 4000, seed: int = 0
) -> tuple[float, float, float]:
    """Percentile-bootstrap confidence interval of the mean over seeds: ``(mean, low, high)``.

    Continual World reports a 90% interval from 4000 resamples. A single value gives
    ``(v, v, v)``: with one seed there is no spread to estimate.
    """
    v = _vector(values, "values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.9, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_resamples, v.size))  # (R, n) seeds drawn with replacement
    means = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(v.mean()), float(low), float(high)


def summarize(
    perf: ArrayLike, auc: ArrayLike | None = None, ref_auc: ArrayLike | None = None
) -> dict[str, float]:
    """The named metrics at once: ``average_performance``, ``forgetting``, ``backward_transfer``,
    and ``forward_transfer`` when both per-task ``auc`` and ``ref_auc`` are given."""
    p = _perf_matrix(perf)
    out = {
        "average_performance": average_performance(p),
        "forgetting": forgetting(p),
        "backward_transfer": backward_transfer(p),
    }
    if (auc is None) != (ref_auc is None):
        raise ValueError("forward transfer needs both auc and ref_auc; pass both or neither")
    if auc is not None and ref_auc is not None:
        a = _vector(auc, "auc")
        if a.shape[0] != p.shape[0]:
            raise ValueError(
                f"auc needs one entry per task of perf ({p.shape[0]}), got {a.shape[0]}"
            )
        out["forward_transfer"] = forward_transfer(a, ref_auc)
    return out

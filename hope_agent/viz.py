"""Plots of continual-learning runs: the retention heatmap and per-task curves.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through pyplot, so plotting
needs no display, changes no global backend and leaks no open figures. Files are written through
:func:`hope_agent.io.atomic_path`; the format follows the suffix of ``path`` (png, pdf, svg).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from hope_agent.io import PathLike, atomic_path

_DPI = 120


def _save(fig: Figure, path: PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=_DPI)
    return Path(path)


def _no_inf(arr: np.ndarray, name: str) -> None:
    # NaN marks "not evaluated yet" and is drawn as a gap; infinities are a bug upstream.
    if np.any(np.isinf(arr)):
        raise ValueError(f"{name} contains infinite values; pass finite values (NaN for missing)")


def plot_perf_matrix(
    perf: ArrayLike,
    task_names: Sequence[str],
    path: PathLike,
    title: str = "Performance after each task",
) -> Path:
    """Retention heatmap of ``perf: (N, N)``, each cell annotated with its value.

    Row i is the evaluation after training task i, column j the task evaluated. NaN cells (rows
    not trained yet) stay blank. Returns the written path.
    """
    p = np.asarray(perf, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] == 0:
        raise ValueError(f"perf must be a non-empty square (N, N) matrix, got shape {p.shape}")
    _no_inf(p, "perf")
    n = p.shape[0]
    if len(task_names) != n:
        raise ValueError(f"task_names needs one name per task of perf ({n}), got {len(task_names)}")
    # Keep the usual [0, 1] scale so that figures of different runs compare at a glance; widen it
    # only for matrices outside that range (e.g. prediction errors).
    lo = min(0.0, float(np.nanmin(p))) if np.any(np.isfinite(p)) else 0.0
    hi = max(1.0, float(np.nanmax(p))) if np.any(np.isfinite(p)) else 1.0
    side = max(4.0, 0.55 * n + 2.5)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(p, cmap="viridis", vmin=lo, vmax=hi)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fontsize = 9 if n <= 10 else 6
    for i in range(n):
        for j in range(n):
            if np.isfinite(p[i, j]):
                # Dark text on the bright (high) end of viridis, light text on the dark end.
                dark = (p[i, j] - lo) / (hi - lo) > 0.6
                ax.text(
                    j,
                    i,
                    f"{p[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="black" if dark else "white",
                )
    labels = [f"{k + 1}. {name}" for k, name in enumerate(task_names)]
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(n), labels, fontsize=fontsize)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_title(title)
    return _save(fig, path)


def plot_curves(
    steps: ArrayLike,
    curves: ArrayLike,
    task_names: Sequence[str],
    boundaries: Sequence[float],
    path: PathLike,
    ylabel: str = "performance",
    title: str | None = None,
    stage_names: Sequence[str] | None = None,
) -> Path:
    """Per-task curves over total env steps, with a dashed line and a label at each stage start.

    Args:
        steps: ``(T,)`` total env steps of each evaluation, increasing.
        curves: ``(T, N)``; ``curves[t, j]`` = value on task j at evaluation t (NaN: a gap).
        task_names: N names, one per column of ``curves``.
        boundaries: the env step at which each training stage starts, non-decreasing.
        path: output file; the suffix picks the format.
        ylabel: y-axis label.
        title: figure title, if any.
        stage_names: one label per stage; defaults to ``task_names`` (stage i trains task i).

    Returns:
        The written path.
    """
    x = np.asarray(steps, dtype=np.float64)
    c = np.asarray(curves, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or c.ndim != 2 or c.shape[0] != x.size:
        raise ValueError(
            f"steps must be (T,) and curves (T, N) with curves[t, j] the value on task j at "
            f"evaluation t, got {x.shape} and {c.shape}"
        )
    _no_inf(c, "curves")
    n = c.shape[1]
    if len(task_names) != n:
        raise ValueError(
            f"task_names needs one name per column of curves ({n}), got {len(task_names)}"
        )
    stages = list(task_names if stage_names is None else stage_names)
    b = np.asarray(boundaries, dtype=np.float64)
    if b.ndim != 1 or b.size != len(stages) or np.any(np.diff(b) < 0):
        raise ValueError(
            f"boundaries must hold the start step of each of the {len(stages)} stages in "
            f"non-decreasing order, got {list(b)}"
        )
    fig = Figure(figsize=(10.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    colors = [f"C{k % 10}" for k in range(n)]
    # Past ten tasks the colours repeat; a second line style keeps the tasks apart.
    styles = ["-" if k < 10 else "--" for k in range(n)]
    for j in range(n):
        ax.plot(x, c[:, j], color=colors[j], linestyle=styles[j], marker=".", label=task_names[j])
    lo, hi = (float(np.nanmin(c)), float(np.nanmax(c))) if np.any(np.isfinite(c)) else (0.0, 1.0)
    lo = min(0.0, lo)
    # Head room above the curves for the stage labels.
    ax.set_ylim(lo, hi + 0.3 * max(hi - lo, 1e-6))
    for start, name in zip(b, stages, strict=True):
        ax.axvline(start, color="0.5", linestyle=":", linewidth=1.0)
        ax.text(
            start,
            1.0,
            f" {name}",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            va="top",
            ha="left",
            fontsize=7,
            color="0.3",
        )
    ax.set_xlabel("total env steps")
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    fig.legend(loc="outside right upper", fontsize=8)
    return _save(fig, path)

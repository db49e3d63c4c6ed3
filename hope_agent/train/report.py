"""Results of a curriculum run: the evaluation table, the matrices, the metrics and their files.

:class:`RunRecord` keeps one :class:`EvalEvent` (every task evaluated) per evaluation. Stage i's
*window* is the events taken while training task i, the last its task-end evaluation;
``perf[i, j]`` is task j's performance there, or with ``smooth_last=k`` the mean of the window's
last k evaluations (Continual World's smoothing).

Each task is normalised one way for the whole run (``metrics.json`` key ``normalisation``):
``success``, ``reference`` (stored reference returns) or ``run``: the record fills such a task's
performance from its raw returns with ``R_random`` measured at the run start
(:attr:`RunRecord.random_returns`) and the task's best evaluation in the run as the reference.
The best is only known at the end, so everything is recomputed from the raw returns whenever it
is written. Files (atomic): the ``*matrix*.csv`` files, ``curves.csv``, ``metrics.json`` and
the plots under ``plots/`` (:func:`write_results`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hope_agent import metrics as M
from hope_agent.html_report import write_run_report
from hope_agent.io import atomic_write_text
from hope_agent.train.evaluator import TaskEvaluation
from hope_agent.train.logger import rows_to_csv
from hope_agent.viz import plot_curves, plot_perf_matrix

# The continual-learning metrics of a run, as metrics.json names them.
METRICS = ("average_performance", "forgetting", "backward_transfer", "forward_transfer")


@dataclass
class EvalEvent:
    """Every task's evaluation at one point of training."""

    global_step: int
    stage: int
    task_end: bool
    results: list[TaskEvaluation]
    reset_every_step: list[TaskEvaluation] | None = None


@dataclass
class RunRecord:
    """Everything evaluated during a run (or re-evaluated from its checkpoints)."""

    task_names: list[str]
    stage_starts: list[int] = field(default_factory=list)  # global step at each stage start
    events: list[EvalEvent] = field(default_factory=list)
    # Per task, R_random measured at the run start for the tasks of normalisation "run" (None for
    # the others); None when the run measured none.
    random_returns: list[float | None] | None = None

    @property
    def n_tasks(self) -> int:
        """Number of tasks in the curriculum."""
        return len(self.task_names)

    def normalisation(self) -> dict[str, str]:
        """Each task's normalisation, ``success`` | ``reference`` | ``run`` (empty before the
        first evaluation), read from what the evaluator reported: a success rate, a finite
        performance from stored references, or neither."""
        if not self.events:
            return {}
        return {
            name: "success"
            if r.success_rate is not None
            else "reference"
            if math.isfinite(r.perf)
            else "run"
            for name, r in zip(self.task_names, self.events[0].results, strict=True)
        }

    def run_normalisers(self) -> list[tuple[float, float] | None]:
        """Per task of normalisation ``run`` with a measured random return: ``(R_random,
        R_best)``, R_best its best mean evaluation return so far in the run; else ``None``."""
        kinds = list(self.normalisation().values())
        out: list[tuple[float, float] | None] = []
        for j, kind in enumerate(kinds):
            random = None if self.random_returns is None else self.random_returns[j]
            if kind != "run" or random is None:
                out.append(None)
                continue
            best = max(e.results[j].mean_return for e in self.events)
            out.append((float(random), float(best)))
        return out

    def normalised_events(self) -> list[EvalEvent]:
        """The events with the performance of every ``run`` task filled from its raw returns
        (:meth:`run_normalisers`); the events themselves when no task needs it."""
        norms = self.run_normalisers()
        if all(n is None for n in norms):
            return self.events
        return [
            replace(
                e,
                results=_normalised(e.results, norms),
                reset_every_step=None
                if e.reset_every_step is None
                else _normalised(e.reset_every_step, norms),
            )
            for e in self.events
        ]

    def stage_ends(self) -> list[EvalEvent]:
        """The task-end evaluation of each completed stage, in stage order."""
        return [e for e in self.events if e.task_end]

    def matrix(
        self, attr: str, reset_every_step: bool = False, smooth_last: int | None = None
    ) -> np.ndarray:
        """``(N, N)`` matrix of ``TaskEvaluation.<attr>`` at each stage end (NaN rows: not done).

        ``smooth_last=k`` makes row i the mean over the last k evaluations of stage i's window
        (all of them when fewer). The reset-every-step control is only measured at task ends, so
        it is never smoothed.
        """
        if smooth_last is not None and smooth_last < 1:
            raise ValueError(f"smooth_last must be None or >= 1, got {smooth_last}")
        out = np.full((self.n_tasks, self.n_tasks), np.nan)
        events = self.normalised_events()
        for event in (e for e in events if e.task_end):
            if smooth_last is not None and not reset_every_step:
                window = [e for e in events if e.stage == event.stage][-smooth_last:]
                out[event.stage] = np.mean(
                    [[_num(getattr(r, attr)) for r in e.results] for e in window], axis=0
                )
                continue
            results = event.reset_every_step if reset_every_step else event.results
            if results is not None:
                out[event.stage] = [_num(getattr(r, attr)) for r in results]
        return out

    def curves_rows(self) -> list[dict[str, Any]]:
        """One flat row per (evaluation event, task), for ``curves.csv``."""
        rows = []
        for event in self.normalised_events():
            for j, r in enumerate(event.results):
                rows.append(
                    {
                        "global_step": event.global_step,
                        "stage": event.stage,
                        "task_end": int(event.task_end),
                        "task_index": j,
                        **_curve_cells(r),
                    }
                )
        return rows


def _curve_cells(r: TaskEvaluation) -> dict[str, Any]:
    """``r`` as ``curves.csv`` cells: trial columns only for tasks with trials, lists joined
    by ``;``."""
    cells = asdict(r)
    for key in ("sub_episode_success", "trial_gain"):
        value = cells.pop(key)
        if value is not None:
            cells[key] = ";".join(f"{v:.6g}" for v in value)
    return cells


def _normalised(
    results: list[TaskEvaluation], norms: list[tuple[float, float] | None]
) -> list[TaskEvaluation]:
    out = []
    for r, norm in zip(results, norms, strict=True):
        if norm is not None:
            r = replace(
                r,
                perf=float(M.run_normalized_score(r.mean_return, *norm)),
                perf_deterministic=float(M.run_normalized_score(r.return_deterministic, *norm)),
            )
        out.append(r)
    return out


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def compute_metrics(
    record: RunRecord,
    smooth_last: int | None = None,
    reference_auc: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The run's metrics over its completed stages (a k x k leading block while running).

    Keys: ``stages_completed``, ``average_performance``, ``forgetting``, ``backward_transfer``,
    ``forward_transfer`` (``None`` without a reference AUC), ``auc`` per task (``None`` when some
    completed stage's window holds a single evaluation: that is its task-end value, not an area
    under a curve), ``world_model_error`` (mean final error), ``world_model_forgetting`` (mean
    over tasks of final minus just-trained error; positive = the world model forgot),
    ``in_context_gain``, ``perf_matrix`` (the task-end matrix, ``None`` for NaN), with
    ``smooth_last`` also ``perf_matrix_smoothed`` (the matrix the performance metrics used),
    ``normalisation`` (task -> ``success`` | ``reference`` | ``run``), ``run_normalisation``
    (task -> ``{random_return, best_return}`` for the ``run`` tasks) and ``notes`` explaining
    every metric left out.
    """
    ends = record.stage_ends()
    k = len(ends)
    out: dict[str, Any] = {"stages_completed": k, "tasks": record.task_names, "notes": []}
    out["normalisation"] = record.normalisation()
    norms = record.run_normalisers()
    out["run_normalisation"] = {
        name: {"random_return": n[0], "best_return": n[1]}
        for name, n in zip(record.task_names, norms, strict=False)
        if n is not None
    }
    out.update(dict.fromkeys(METRICS))
    out.update(world_model_error=None, world_model_forgetting=None, in_context_gain=None, auc=None)
    out["perf_matrix"] = _json_matrix(record.matrix("perf"))
    if smooth_last is not None:
        # The files show every task's column; the metrics below use the same rows' k x k block.
        out["perf_matrix_smoothed"] = _json_matrix(record.matrix("perf", smooth_last=smooth_last))
    if k == 0:
        return out
    notes: list[str] = out["notes"]
    if [e.stage for e in ends] != list(range(k)):
        notes.append(
            f"metrics need the task-end evaluations of stages 0..{k - 1}; "
            f"got stages {[e.stage for e in ends]}"
        )
        return out
    unmeasured = [
        name
        for (name, kind), norm in zip(out["normalisation"].items(), norms, strict=True)
        if kind == "run" and norm is None
    ]
    unlearnt = [
        name for name, n in zip(record.task_names, norms, strict=False) if n and n[1] <= n[0]
    ]
    if unlearnt:
        notes.append(
            f"tasks {unlearnt} never beat the random policy's return in this run: their "
            "performance is 0 throughout (no skill learnt, none to forget)"
        )
    # Curves restricted to the completed block: events of stages < k, tasks < k.
    events = [e for e in record.normalised_events() if e.stage < k]
    curves = np.array([[r.perf for r in e.results[:k]] for e in events])
    windows = []
    for i in range(k):
        rows = [t for t, e in enumerate(events) if e.stage == i]
        windows.append((rows[0], rows[-1] + 1))
    if not np.all(np.isfinite(curves)):
        notes.append(
            f"performance unavailable: tasks {unmeasured} define no success, store no reference "
            "returns and the run measured no random-policy return for them: see raw returns "
            "in return_matrix.csv"
        )
    else:
        perf = M.perf_matrix_from_curves(curves, windows, smooth_last)
        out.update(M.summarize(perf))
        single = [i for i, (start, stop) in enumerate(windows) if stop - start == 1]
        if single:
            notes.append(
                f"auc and forward transfer left out: the windows of stages {single} hold only "
                "their task-end evaluation (evaluations during training, eval.every > 0, fill "
                "them; hope-evaluate fills them from periodic checkpoints, checkpoint.every > 0)"
            )
        else:
            auc = M.aucs_from_curves(curves, windows)
            out["auc"] = auc.tolist()
            if reference_auc is None:
                notes.append(
                    "forward transfer skipped: no single-task reference AUC (set "
                    "eval.reference_auc to the per-task AUCs of single-task runs)"
                )
            else:
                if len(reference_auc) != record.n_tasks:
                    raise ValueError(
                        f"eval.reference_auc needs one value per task ({record.n_tasks}), "
                        f"got {len(reference_auc)}"
                    )
                out["forward_transfer"] = M.forward_transfer(auc, list(reference_auc)[:k])
    wm = record.matrix("wm_error")[:k, :k]
    if np.all(np.isfinite(wm)):
        out["world_model_error"] = float(wm[-1].mean())
        out["world_model_forgetting"] = -M.forgetting(wm)
    else:
        notes.append("world-model error undefined for some task (no change to predict)")
    reset = record.matrix("perf", reset_every_step=True)[:k, :k]
    if np.all(np.isfinite(reset)) and out["average_performance"] is not None:
        final = record.matrix("perf")[k - 1, :k]
        out["in_context_gain"] = M.in_context_gain(final, reset[-1])
    elif not np.any(np.isfinite(reset)):
        notes.append("in-context gain not measured (set eval.in_context_gain=true)")
    trials = [r for r in ends[-1].results[:k] if r.trial_gain is not None]
    if trials:
        # Trials of K sub-episodes: how much later attempts gain on the first, at the end.
        gains = [r.trial_gain[0] for r in trials if r.trial_gain is not None]
        out["trial_gain"] = float(np.mean(gains))
        out["trial_gain_per_task"] = {r.task: r.trial_gain for r in trials}
        out["sub_episode_success"] = {r.task: r.sub_episode_success for r in trials}
    return out


def _json_matrix(matrix: np.ndarray) -> list[list[float | None]]:
    return [[float(v) if math.isfinite(v) else None for v in row] for row in matrix]


def matrix_csv(matrix: np.ndarray, task_names: Sequence[str]) -> str:
    """CSV of an ``(N, N)`` matrix: a header of task names, one row per stage (empty = NaN)."""
    rows = [
        {"after": name, **{t: float(v) for t, v in zip(task_names, row, strict=True)}}
        for name, row in zip(task_names, matrix, strict=True)
    ]
    return rows_to_csv(rows, ["after", *task_names])


def read_matrix_csv(path: Path) -> np.ndarray:
    """Read a matrix written by :func:`matrix_csv` (empty cells are NaN)."""
    lines = list(csv.reader(io.StringIO(Path(path).read_text())))[1:]
    return np.array([[float(c) if c else np.nan for c in line[1:]] for line in lines if line])


def write_results(
    out_dir: Path,
    record: RunRecord,
    smooth_last: int | None = None,
    reference_auc: Sequence[float] | None = None,
    extra: dict[str, Any] | None = None,
    plots: bool = True,
    notes: Sequence[str] = (),
    page: bool = False,
) -> dict[str, Any]:
    """Write every result file of ``record`` into ``out_dir``; return the metrics.

    ``extra`` entries are added to the metrics, ``notes`` to their ``notes``; ``page`` also
    writes ``report.html`` (:func:`hope_agent.html_report.write_run_report`), with the videos
    already in ``out_dir``.
    """
    out_dir = Path(out_dir)
    names = record.task_names
    metrics = compute_metrics(record, smooth_last, reference_auc)
    if extra:
        metrics.update(extra)
    metrics["notes"] = [*metrics["notes"], *notes]
    matrices = {
        "perf_matrix.csv": record.matrix("perf"),
        "perf_matrix_deterministic.csv": record.matrix("perf_deterministic"),
        "wm_error_matrix.csv": record.matrix("wm_error"),
        "return_matrix.csv": record.matrix("mean_return"),
    }
    if smooth_last is not None:
        matrices["perf_matrix_smoothed.csv"] = record.matrix("perf", smooth_last=smooth_last)
    reset = record.matrix("perf", reset_every_step=True)
    if np.any(np.isfinite(reset)):
        matrices["in_context_perf_matrix.csv"] = reset
    for filename, matrix in matrices.items():
        atomic_write_text(out_dir / filename, matrix_csv(matrix, names))
    atomic_write_text(out_dir / "curves.csv", rows_to_csv(record.curves_rows()))
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if plots and record.events:
        _plots(out_dir / "plots", record, smooth_last)
    if page:
        write_run_report(out_dir)
    return metrics


def _plots(plot_dir: Path, record: RunRecord, smooth_last: int | None) -> None:
    names = record.task_names
    plot_perf_matrix(record.matrix("perf"), names, plot_dir / "perf_matrix.png")
    if smooth_last is not None:
        plot_perf_matrix(
            record.matrix("perf", smooth_last=smooth_last),
            names,
            plot_dir / "perf_matrix_smoothed.png",
            title=f"Performance after each task (mean of its last {smooth_last} evaluations)",
        )
    plot_perf_matrix(
        record.matrix("wm_error"),
        names,
        plot_dir / "wm_error_matrix.png",
        title="World-model error after each task (lower is better)",
    )
    events = record.normalised_events()
    steps = np.array([e.global_step for e in events], dtype=np.float64)
    stage_starts = record.stage_starts[: max(e.stage for e in record.events) + 1]
    stage_names = [names[i] for i in range(len(stage_starts))]
    for attr, filename, label in (
        ("perf", "curves.png", "performance"),
        ("wm_error", "wm_error_curves.png", "world-model error"),
    ):
        curves = np.array([[_num(getattr(r, attr)) for r in e.results] for e in events])
        plot_curves(
            steps,
            curves,
            names,
            stage_starts,
            plot_dir / filename,
            ylabel=label,
            stage_names=stage_names,
        )

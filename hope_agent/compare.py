"""Compare runs: one table and one plot of every method over seeds, on one curriculum.

Each run directory (of ``scripts/train_curriculum.py`` or ``scripts/train_sb3.py``) holds its
resolved config (``config.yaml``, else Hydra's ``.hydra/config.yaml``), ``metrics.json`` and
``perf_matrix.csv``. Runs are grouped by their label ``<method>+<model>``, read from the config:
``method`` (with its ``method_options`` when any, e.g. ``ewc[coef=10]``), ``model.name``, and
``+task_id`` for the oracle (``agent.task_id``). For each group and each metric (average
performance, forgetting, backward and forward transfer) the table gives the mean over seeds and
a percentile-bootstrap confidence interval (:func:`hope_agent.metrics.bootstrap_ci`; 90%, 4000
resamples, as Continual World reports). A metric a run could not compute (forward transfer
without a reference AUC) is left out of that run's group; a group where no run has it shows an
empty cell.

The runs of one label must differ only in their seed (and in what changes where or how a run
runs, :data:`IGNORED_KEYS`): a config that differs in anything else, or another number of env
steps, is refused, since the interval would mix settings. Forward transfer can also be computed
here from single-task reference runs (:func:`load_references`, ``--reference`` of
``scripts/compare.py``): ``AUC_ref`` of each task is the mean AUC of its reference runs.

Outputs: ``comparison.csv``, ``comparison.md`` and ``comparison.png`` (:func:`write_comparison`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from hope_agent import metrics as M
from hope_agent.io import PathLike, atomic_path, atomic_write_text
from hope_agent.train.config import RESUMABLE_CHANGES, flatten_config
from hope_agent.train.logger import rows_to_csv

METRICS: tuple[str, ...] = (
    "average_performance",
    "forgetting",
    "backward_transfer",
    "forward_transfer",
)
# Short column titles, with the better direction.
METRIC_TITLES: dict[str, str] = {
    "average_performance": "avg perf ↑",
    "forgetting": "forgetting ↓",
    "backward_transfer": "bwd transfer ↑",
    "forward_transfer": "fwd transfer ↑",
}
CONFIG_FILES = ("config.yaml", ".hydra/config.yaml")
# Config keys (top-level sections) the runs of one row may differ in: the seed, and what changes
# where or how a run runs (as for resuming) or what it records, not what it learns.
IGNORED_KEYS: tuple[str, ...] = ("seed", *RESUMABLE_CHANGES, "video")


@dataclass
class RunResult:
    """What the comparison reads from one run directory."""

    run_dir: Path
    method: str
    model: str
    task_id: bool
    seed: int
    curriculum: str
    tasks: list[str]
    perf: np.ndarray  # (N, N)
    metrics: dict[str, float | None]
    settings: dict[str, Any] = field(default_factory=dict)  # flat config less IGNORED_KEYS
    env_steps: int | None = None  # from metrics.json
    task_steps: list[int] = field(default_factory=list)  # each task's step budget
    auc: list[float] | None = None  # per-task AUC (metrics.json)

    @property
    def label(self) -> str:
        """``<method>+<model>``, with ``+task_id`` for the oracle."""
        return f"{self.method}+{self.model}" + ("+task_id" if self.task_id else "")


@dataclass
class MetricStats:
    """Mean and confidence interval of one metric over a group's runs (``n`` of them)."""

    mean: float
    low: float
    high: float
    n: int


@dataclass
class ComparisonRow:
    """One table row: a method+model label over its seeds."""

    label: str
    method: str
    model: str
    seeds: list[int]
    stats: dict[str, MetricStats | None] = field(default_factory=dict)


def _read_config(run_dir: Path) -> DictConfig:
    for name in CONFIG_FILES:
        path = run_dir / name
        if path.is_file():
            cfg = OmegaConf.load(path)
            if not isinstance(cfg, DictConfig):
                raise ValueError(f"{path} is not a mapping; is {run_dir} a run directory?")
            return cfg
    raise FileNotFoundError(
        f"no config.yaml or .hydra/config.yaml in {run_dir}; is it a run directory?"
    )


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a run's ``metrics.json`` and its config."""
    return (path / "metrics.json").is_file() and any((path / n).is_file() for n in CONFIG_FILES)


def find_runs(paths: Iterable[PathLike]) -> list[Path]:
    """Run directories among ``paths``: each path is a run or a folder searched for runs (e.g. a
    Hydra multirun folder). Sorted, without duplicates; an empty result is an error."""
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if is_run_dir(path):
            found.add(path.resolve())
            continue
        found.update(p.parent.resolve() for p in path.rglob("metrics.json") if is_run_dir(p.parent))
    if not found:
        raise FileNotFoundError(
            f"no run directory (metrics.json + config.yaml) under {[str(p) for p in paths]}"
        )
    return sorted(found)


def _task_steps(cfg: DictConfig) -> list[int]:
    """Each curriculum task's step budget: its own ``steps``, else the run's ``steps_per_task``."""
    default = OmegaConf.select(cfg, "steps_per_task", default=None)
    tasks = OmegaConf.select(cfg, "curriculum.tasks", default=None) or []
    steps = [OmegaConf.select(t, "steps", default=None) for t in tasks]
    return [int(v) for v in (default if v is None else v for v in steps) if v is not None]


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def read_perf_csv(path: Path) -> np.ndarray:
    """The matrix of a ``perf_matrix.csv`` (header of task names, one row per stage; an empty
    cell is NaN). Task names may hold commas: the file is parsed as quoted CSV."""
    lines = list(csv.reader(io.StringIO(Path(path).read_text())))[1:]
    return np.array([[float(c) if c else np.nan for c in line[1:]] for line in lines if line])


def load_run(run_dir: PathLike) -> RunResult:
    """Read one finished run (config, metrics, performance matrix).

    Metrics and the matrix come from ``metrics.json`` (the matrix from ``perf_matrix.csv`` when
    the json lacks it); a metric the json leaves ``null`` but the matrix defines (every one
    except forward transfer) is computed from the matrix. A run that did not
    finish every stage is an error: its numbers are not comparable.
    """
    path = Path(run_dir)
    cfg = _read_config(path)
    metrics = json.loads((path / "metrics.json").read_text())
    if metrics.get("perf_matrix") is not None:
        perf = np.array(
            [[np.nan if v is None else v for v in row] for row in metrics["perf_matrix"]],
            dtype=np.float64,
        )
    elif (path / "perf_matrix.csv").is_file():
        perf = read_perf_csv(path / "perf_matrix.csv")
    else:
        raise FileNotFoundError(f"{path} has neither metrics['perf_matrix'] nor perf_matrix.csv")
    tasks = [str(t) for t in metrics.get("tasks", [])]
    n = perf.shape[0]
    done = int(metrics.get("stages_completed", n))
    if done < n or not np.all(np.isfinite(perf)):
        raise ValueError(
            f"run {path} completed {done} of {n} stages (or lacks performances): its metrics are "
            "not comparable; finish it or leave it out"
        )
    values = {k: _finite(metrics.get(k)) for k in METRICS}
    computed = M.summarize(perf)
    for key, value in computed.items():
        if values.get(key) is None:
            values[key] = value
    raw_config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw_config, dict)
    settings = {
        k: v for k, v in flatten_config(raw_config).items() if k.split(".")[0] not in IGNORED_KEYS
    }
    auc = metrics.get("auc")
    model = OmegaConf.select(cfg, "model.name", default=None)
    if model is None:
        raise ValueError(f"{path}: the run's config has no model.name; cannot label it")
    method = str(OmegaConf.select(cfg, "method", default="finetune"))
    options = OmegaConf.select(cfg, "method_options", default=None)
    if options:
        # Runs of one method with other options are other rows: ewc[coef=10].
        method += "[" + ",".join(f"{k}={options[k]}" for k in sorted(options)) + "]"
    return RunResult(
        run_dir=path,
        method=method,
        model=str(model),
        task_id=bool(OmegaConf.select(cfg, "agent.task_id", default=False)),
        seed=int(OmegaConf.select(cfg, "seed", default=0)),
        curriculum=str(OmegaConf.select(cfg, "curriculum.name", default="?")),
        tasks=tasks,
        perf=perf,
        metrics=values,
        settings=settings,
        env_steps=None if metrics.get("env_steps") is None else int(metrics["env_steps"]),
        task_steps=_task_steps(cfg),
        auc=None if auc is None else [float(a) for a in auc],
    )


def _check_same_setup(label: str, members: Sequence[RunResult]) -> None:
    """Raise ``ValueError`` naming two runs of ``label`` and the keys where they differ, unless
    every run has the first one's settings and env steps."""
    first = members[0]
    for other in members[1:]:
        a, b = first.settings, other.settings
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        diff = [f"{k} ({a.get(k)!r} vs {b.get(k)!r})" for k in keys[:3]]
        if len(keys) > 3:
            diff.append(f"{len(keys) - 3} more")
        if not keys and first.env_steps != other.env_steps:
            diff = [f"env_steps ({first.env_steps} vs {other.env_steps})"]
        if diff:
            raise ValueError(
                f"{label}: runs {first.run_dir} and {other.run_dir} differ at {', '.join(diff)}; "
                "the runs of one row may differ only in their seed: leave out the runs of the "
                "other setting"
            )


@dataclass
class References:
    """Single-task reference runs for forward transfer (:func:`load_references`)."""

    label: str  # the references' method+model label
    auc: dict[str, float]  # task name -> AUC_ref, the mean AUC of its reference runs
    steps: dict[str, int]  # task name -> its reference runs' step budget
    eval_every: dict[str, Any]  # task name -> their eval.every (the AUC's sampling)
    runs: dict[str, list[Path]]


def load_references(paths: Iterable[PathLike]) -> References:
    """Read single-task reference runs (run directories or folders of them), by task name.

    Each must train exactly one task and hold its AUC; all must share one label (one method and
    model), so that ``AUC_ref`` means one thing; the runs of one task (several seeds) must differ
    only in their seed. ``ValueError`` otherwise.
    """
    refs = [load_run(p) for p in find_runs(paths)]
    for ref in refs:
        if len(ref.tasks) != 1 or not ref.auc:
            raise ValueError(
                f"reference run {ref.run_dir} trains {len(ref.tasks)} tasks (with AUC "
                f"{ref.auc}); a reference is a single-task run: curriculum.tasks=[ONE TASK] with "
                "the task's name and budget"
            )
    labels = sorted({r.label for r in refs})
    if len(labels) > 1:
        raise ValueError(
            f"reference runs of several methods/models ({', '.join(labels)}); give the "
            "single-task runs of one of them"
        )
    groups: dict[str, list[RunResult]] = {}
    for ref in refs:
        groups.setdefault(ref.tasks[0], []).append(ref)
    out = References(labels[0], {}, {}, {}, {})
    for task, group in sorted(groups.items()):
        _check_same_setup(f"reference runs of {task}", group)
        assert all(r.auc is not None for r in group)
        out.auc[task] = float(np.mean([r.auc[0] for r in group if r.auc is not None]))
        if group[0].task_steps:
            out.steps[task] = group[0].task_steps[0]
        out.eval_every[task] = group[0].settings.get("eval.every")
        out.runs[task] = [r.run_dir for r in group]
    return out


def with_forward_transfer(runs: Sequence[RunResult], refs: References) -> list[RunResult]:
    """``runs`` with ``forward_transfer`` recomputed against ``refs``
    (:func:`hope_agent.metrics.forward_transfer` of each run's per-task AUCs).

    Raises ``ValueError`` when a run's task has no reference, or its budget or evaluation
    interval (what the AUC averages over) differs from its references', or it lacks AUCs.
    """
    out = []
    for run in runs:
        missing = [t for t in run.tasks if t not in refs.auc]
        if missing:
            raise ValueError(
                f"no reference run for task(s) {missing} of {run.run_dir}; the references cover "
                f"{sorted(refs.auc)} (a reference run's task needs the same name)"
            )
        for j, task in enumerate(run.tasks):
            budget = run.task_steps[j] if j < len(run.task_steps) else None
            ref_budget = refs.steps.get(task)
            every = run.settings.get("eval.every")
            if (budget, every) != (ref_budget, refs.eval_every[task]):
                raise ValueError(
                    f"{run.run_dir} trains {task} for {budget} steps with eval.every={every}, "
                    f"its reference runs {[str(p) for p in refs.runs[task]]} for {ref_budget} "
                    f"with eval.every={refs.eval_every[task]}; forward transfer needs the same "
                    "budget and evaluation interval"
                )
        if run.auc is None or len(run.auc) != len(run.tasks):
            raise ValueError(f"{run.run_dir} has no per-task AUC in metrics.json")
        ft = M.forward_transfer(run.auc, [refs.auc[t] for t in run.tasks])
        out.append(dataclasses.replace(run, metrics={**run.metrics, "forward_transfer": ft}))
    return out


def compare_runs(
    runs: Sequence[RunResult],
    confidence: float = 0.9,
    n_resamples: int = 4000,
    seed: int = 0,
) -> list[ComparisonRow]:
    """Group ``runs`` by label and summarise every metric over seeds; rows sorted by label.

    Raises ``ValueError`` when the runs come from different curricula, when one label holds
    the same seed twice (a duplicate would shrink the interval), or runs whose configs differ in
    more than :data:`IGNORED_KEYS` or whose env steps differ (the interval would mix settings).
    """
    if not runs:
        raise ValueError("compare_runs needs at least one run")
    curricula = {(r.curriculum, tuple(r.tasks)) for r in runs}
    if len(curricula) > 1:
        raise ValueError(
            "runs of different curricula cannot share one table: "
            + "; ".join(f"{name} {list(tasks)}" for name, tasks in sorted(curricula))
        )
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    rows = []
    for label in sorted(groups):
        members = sorted(groups[label], key=lambda r: r.seed)
        seeds = [r.seed for r in members]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1})
            dirs = [str(r.run_dir) for r in members if r.seed in dup]
            raise ValueError(f"{label}: seed(s) {dup} appear more than once ({dirs}); keep one")
        _check_same_setup(label, members)
        row = ComparisonRow(label, members[0].method, members[0].model, seeds)
        for key in METRICS:
            values = [v for r in members if (v := r.metrics.get(key)) is not None]
            if values:
                mean, low, high = M.bootstrap_ci(values, confidence, n_resamples, seed)
                row.stats[key] = MetricStats(mean, low, high, len(values))
            else:
                row.stats[key] = None
        rows.append(row)
    return rows


def table_csv(rows: Sequence[ComparisonRow]) -> str:
    """CSV: ``label, method, model, seeds, n_seeds`` and per metric ``<m>, <m>_low, <m>_high,
    <m>_n`` (empty where no run has the metric)."""
    columns = ["label", "method", "model", "seeds", "n_seeds"]
    for key in METRICS:
        columns += [key, f"{key}_low", f"{key}_high", f"{key}_n"]
    out = []
    for row in rows:
        flat: dict[str, object] = {
            "label": row.label,
            "method": row.method,
            "model": row.model,
            "seeds": " ".join(str(s) for s in row.seeds),
            "n_seeds": len(row.seeds),
        }
        for key in METRICS:
            st = row.stats.get(key)
            if st is not None:
                flat.update(
                    {key: st.mean, f"{key}_low": st.low, f"{key}_high": st.high, f"{key}_n": st.n}
                )
        out.append(flat)
    return rows_to_csv(out, columns)


def table_markdown(
    rows: Sequence[ComparisonRow],
    curriculum: str = "",
    confidence: float = 0.9,
    reference: str | None = None,
) -> str:
    """A Markdown table: one row per label, ``mean [low, high]`` per metric; ``reference`` names
    the label of the single-task reference runs when forward transfer was computed from them."""
    head = ["method", "model", "task id", "seeds", *(METRIC_TITLES[k] for k in METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    partial = False
    for row in rows:
        cells = [
            row.method,
            row.model,
            "given" if row.label.endswith("+task_id") else "–",
            str(len(row.seeds)),
        ]
        for key in METRICS:
            st = row.stats.get(key)
            if st is None:
                cells.append("–")
                continue
            mark = ""
            if st.n < len(row.seeds):
                mark, partial = f" (n={st.n})", True
            cells.append(f"{st.mean:.2f} [{st.low:.2f}, {st.high:.2f}]{mark}")
        lines.append("| " + " | ".join(cells) + " |")
    where = f" on the `{curriculum}` curriculum" if curriculum else ""
    ft = (
        f"Forward transfer against single-task reference runs of `{reference}`"
        if reference is not None
        else "Forward transfer needs single-task reference AUCs (`--reference` runs or "
        "`eval.reference_auc`)"
    )
    notes = [
        "",
        f"Mean over seeds{where} with a {round(100 * confidence)}% percentile-bootstrap "
        f"confidence interval. {ft}; – marks a metric no run of the row could compute.",
    ]
    if partial:
        notes.append("(n=k): only k of the row's runs could compute that metric.")
    return "\n".join(lines + notes) + "\n"


def plot_comparison(
    rows: Sequence[ComparisonRow], path: PathLike, title: str | None = None
) -> Path:
    """One panel per metric: a bar per label at its mean, with its confidence interval.

    Drawn on a :class:`~matplotlib.figure.Figure` (no pyplot), written atomically; the suffix of
    ``path`` picks the format. Returns the written path.
    """
    if not rows:
        raise ValueError("plot_comparison needs at least one row")
    y = np.arange(len(rows))
    height = max(3.0, 0.35 * len(rows) + 1.6)
    fig = Figure(figsize=(3.2 * len(METRICS) + 2.0, height), layout="constrained")
    axes = fig.subplots(1, len(METRICS), sharey=True)
    colors = [f"C{k % 10}" for k in range(len(rows))]
    for ax, key in zip(axes, METRICS, strict=True):
        stats = [r.stats.get(key) for r in rows]
        means = np.array([np.nan if s is None else s.mean for s in stats])
        err = np.array(
            [[0.0, 0.0] if s is None else [s.mean - s.low, s.high - s.mean] for s in stats]
        ).T
        ax.barh(y, np.nan_to_num(means), xerr=err, color=colors, capsize=3, alpha=0.85)
        for k, s in enumerate(stats):
            if s is None:
                ax.text(0.0, k, " n/a", va="center", fontsize=8, color="0.4")
        ax.axvline(0.0, color="0.3", linewidth=0.8)
        ax.set_title(METRIC_TITLES[key], fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [f"{r.label} (n={len(r.seeds)})" for r in rows], fontsize=8)
    axes[0].invert_yaxis()
    if title is not None:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return Path(path)


def write_comparison(
    paths: Iterable[PathLike],
    out_dir: PathLike,
    confidence: float = 0.9,
    n_resamples: int = 4000,
    references: Iterable[PathLike] | None = None,
) -> list[ComparisonRow]:
    """Find the runs under ``paths``, compare them, write ``comparison.{csv,md,png}`` into
    ``out_dir``; returns the rows. With ``references`` (single-task run directories or folders
    of them, :func:`load_references`) forward transfer is computed against them."""
    runs = [load_run(p) for p in find_runs(paths)]
    refs = None if references is None else load_references(references)
    if refs is not None:
        runs = with_forward_transfer(runs, refs)
    rows = compare_runs(runs, confidence, n_resamples)
    out = Path(out_dir)
    curriculum = runs[0].curriculum
    label = None if refs is None else refs.label
    atomic_write_text(out / "comparison.csv", table_csv(rows))
    atomic_write_text(out / "comparison.md", table_markdown(rows, curriculum, confidence, label))
    plot_comparison(
        rows,
        out / "comparison.png",
        title=f"{curriculum}: {len(runs)} runs, {round(100 * confidence)}% bootstrap CI",
    )
    return rows

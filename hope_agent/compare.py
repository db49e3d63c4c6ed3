"""Compare runs: one table and one plot of every method over seeds, on one curriculum.

Each run directory holds its resolved config (``config.yaml``, else Hydra's
``.hydra/config.yaml``), ``metrics.json`` and ``perf_matrix.csv``. Runs are grouped into rows by
their whole config less the seed (and less :data:`IGNORED_KEYS`) and by their env steps; each row
is labelled by the keys in which its setting differs from the other rows' (:func:`row_labels`).
Runs of different curricula or task lists are refused. Per row and metric the table gives the
mean over seeds and a percentile-bootstrap interval (:func:`hope_agent.metrics.bootstrap_ci`; 90%,
4000 resamples, as Continual World reports); forward transfer may come from single-task
reference runs (:func:`load_references`). Outputs: ``comparison.{csv,md,png}``
(:func:`write_comparison`) and ``comparison.html`` (:func:`write_comparison_report`); see
``docs/report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from hope_agent import metrics as M
from hope_agent.html_report import (
    curve_values,
    escape,
    html_page,
    markdown_code,
    read_curves,
    stage_starts,
    svg_figure,
)
from hope_agent.io import PathLike, atomic_path, atomic_write_text
from hope_agent.train.config import RESUMABLE_CHANGES, TrainConfig, flatten_config
from hope_agent.train.logger import rows_to_csv
from hope_agent.train.report import METRICS
from hope_agent.train.report import read_matrix_csv as read_perf_csv

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
    """One table row: the runs of one setting, over their seeds.

    ``label`` names the row by the keys in which its setting differs from the other rows'
    (:func:`row_labels`), ``setting`` holds the row's value of every key that varies between
    rows (:data:`UNSET` where its runs lack the key), ``name`` is the runs' short
    ``<method>+<model>`` name.
    """

    label: str
    method: str
    model: str
    seeds: list[int]
    stats: dict[str, MetricStats | None] = field(default_factory=dict)
    name: str = ""
    setting: dict[str, Any] = field(default_factory=dict)
    run_dirs: list[Path] = field(default_factory=list)


# A key that some rows' configs hold and this row's does not.
UNSET = "(unset)"
# The pseudo-key of a row's env steps: runs of one config normally agree on them, and rows that
# do not are told apart by it.
ENV_STEPS_KEY = "env_steps"


def _read_config(run_dir: Path) -> DictConfig:
    """A run's saved config; a trainer run's with the schema's defaults under it, so that a key
    added to the schema after the run (its default then the run's behaviour) does not split rows
    of runs that differ only in their code's age."""
    for name in CONFIG_FILES:
        path = run_dir / name
        if path.is_file():
            cfg = OmegaConf.load(path)
            if not isinstance(cfg, DictConfig):
                raise ValueError(f"{path} is not a mapping; is {run_dir} a run directory?")
            if "algo" in cfg:  # an SB3 baseline's run (scripts/train_sb3.py)
                return cfg
            defaults = OmegaConf.to_container(
                OmegaConf.structured(TrainConfig), enum_to_str=True, throw_on_missing=False
            )
            merged = OmegaConf.merge(OmegaConf.create(defaults), cfg)
            assert isinstance(merged, DictConfig)
            return merged
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
                "the reference runs of one task may differ only in their seed: leave out the "
                "runs of the other setting"
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


def _setting(run: RunResult) -> dict[str, Any]:
    """What a run's row is keyed by: its config less :data:`IGNORED_KEYS`, and its env steps."""
    return {**run.settings, ENV_STEPS_KEY: run.env_steps}


def _format_value(value: Any) -> str:
    """A config value as it appears in a row label: lists and mappings as compact JSON."""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def varying_keys(settings: Sequence[dict[str, Any]]) -> list[str]:
    """The keys whose value is not the same in every one of ``settings`` (a missing key counts
    as a value of its own), sorted."""
    keys = set().union(*settings) if settings else set()
    return sorted(k for k in keys if len({_format_value(s.get(k, UNSET)) for s in settings}) > 1)


def row_labels(settings: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """A label per setting: ``key=value`` for each key in which it differs from the others.

    Where a section's ``name`` varies (``model.name=gru`` vs ``hope``), the other keys of that
    section follow from the name and are left out of the label, and so are keys a setting lacks;
    settings whose short label would then coincide are labelled by every varying key. A single
    setting (nothing varies) is labelled by its ``names`` entry, the runs' ``<method>+<model>``.
    """
    keys = varying_keys(settings)
    if not keys:
        return list(names)
    sections = {k.rsplit(".", 1)[0] for k in keys if k.endswith(".name") and "." in k}

    def implied(key: str) -> bool:
        return not key.endswith(".name") and any(key.startswith(f"{s}.") for s in sections)

    def full(setting: dict[str, Any]) -> str:
        return ", ".join(f"{k}={_format_value(setting.get(k, UNSET))}" for k in keys)

    short = [
        ", ".join(f"{k}={_format_value(s[k])}" for k in keys if k in s and not implied(k))
        for s in settings
    ]
    return [
        full(s) if not label or short.count(label) > 1 else label
        for s, label in zip(settings, short, strict=True)
    ]


def compare_runs(
    runs: Sequence[RunResult],
    confidence: float = 0.9,
    n_resamples: int = 4000,
    seed: int = 0,
) -> list[ComparisonRow]:
    """Group ``runs`` into rows by setting (config less seed, and env steps) and summarise every
    metric over each row's seeds; rows sorted by label.

    Raises ``ValueError`` when the runs come from different curricula or task lists (their
    metrics are not of one thing), or when one setting holds the same seed twice (a duplicate
    would shrink the interval).
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
        key = json.dumps(_setting(run), sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    members_of = [sorted(g, key=lambda r: (r.seed, str(r.run_dir))) for g in groups.values()]
    settings = [_setting(m[0]) for m in members_of]
    keys = varying_keys(settings)
    labels = row_labels(settings, [m[0].label for m in members_of])
    rows = []
    for label, members, setting in zip(labels, members_of, settings, strict=True):
        seeds = [r.seed for r in members]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1})
            dirs = [str(r.run_dir) for r in members if r.seed in dup]
            raise ValueError(
                f"{label}: seed(s) {dup} appear more than once ({dirs}) in one setting; keep one"
            )
        row = ComparisonRow(
            label,
            members[0].method,
            members[0].model,
            seeds,
            name=members[0].label,
            setting={k: setting.get(k, UNSET) for k in keys},
            run_dirs=[r.run_dir for r in members],
        )
        for key in METRICS:
            values = [v for r in members if (v := r.metrics.get(key)) is not None]
            if values:
                mean, low, high = M.bootstrap_ci(values, confidence, n_resamples, seed)
                row.stats[key] = MetricStats(mean, low, high, len(values))
            else:
                row.stats[key] = None
        rows.append(row)
    return sorted(rows, key=lambda r: r.label)


def row_keys(rows: Sequence[ComparisonRow]) -> list[str]:
    """The config keys that vary between ``rows`` (those of their ``setting``), sorted."""
    return sorted(set().union(*(r.setting for r in rows))) if rows else []


def table_csv(rows: Sequence[ComparisonRow]) -> str:
    """CSV: ``label, name, method, model, seeds, n_seeds``, a column ``setting.<key>`` per config
    key that varies between rows (:func:`row_keys`), and per metric ``<m>, <m>_low, <m>_high,
    <m>_n`` (empty where no run has the metric)."""
    keys = row_keys(rows)
    columns = ["label", "name", "method", "model", "seeds", "n_seeds"]
    columns += [f"setting.{k}" for k in keys]
    for key in METRICS:
        columns += [key, f"{key}_low", f"{key}_high", f"{key}_n"]
    out = []
    for row in rows:
        flat: dict[str, object] = {
            "label": row.label,
            "name": row.name,
            "method": row.method,
            "model": row.model,
            "seeds": " ".join(str(s) for s in row.seeds),
            "n_seeds": len(row.seeds),
            **{f"setting.{k}": _format_value(row.setting[k]) for k in keys},
        }
        for key in METRICS:
            st = row.stats.get(key)
            if st is not None:
                flat.update(
                    {key: st.mean, f"{key}_low": st.low, f"{key}_high": st.high, f"{key}_n": st.n}
                )
        out.append(flat)
    return rows_to_csv(out, columns)


def format_stat(st: MetricStats | None, n_seeds: int) -> str:
    """``mean [low, high]`` (``(n=k)`` when only k of the row's ``n_seeds`` runs have it), or
    ``–`` for a metric no run of the row could compute."""
    if st is None:
        return "–"
    mark = f" (n={st.n})" if st.n < n_seeds else ""
    return f"{st.mean:.2f} [{st.low:.2f}, {st.high:.2f}]{mark}"


def table_notes(
    rows: Sequence[ComparisonRow],
    curriculum: str = "",
    confidence: float = 0.9,
    reference: str | None = None,
) -> list[str]:
    """The sentences under a comparison table: which keys vary between its rows, how the
    intervals were computed, where forward transfer comes from."""
    keys = row_keys(rows)
    varies = (
        "The rows differ in " + ", ".join(f"`{k}`" for k in keys) + "; the runs of a row only "
        "in their seed."
        if keys
        else "All runs share one setting; they differ only in their seed."
    )
    where = f" on the `{curriculum}` curriculum" if curriculum else ""
    ft = (
        f"Forward transfer against single-task reference runs of `{reference}`"
        if reference is not None
        else "Forward transfer needs single-task reference AUCs (`--reference` runs or "
        "`eval.reference_auc`)"
    )
    notes = [
        varies,
        f"Mean over seeds{where} with a {round(100 * confidence)}% percentile-bootstrap "
        f"confidence interval. {ft}; – marks a metric no run of the row could compute.",
    ]
    if any(st is not None and st.n < len(r.seeds) for r in rows for st in r.stats.values()):
        notes.append("(n=k): only k of the row's runs could compute that metric.")
    return notes


def table_markdown(
    rows: Sequence[ComparisonRow],
    curriculum: str = "",
    confidence: float = 0.9,
    reference: str | None = None,
) -> str:
    """A Markdown table: one row per setting, ``mean [low, high]`` per metric, and the notes of
    :func:`table_notes`; ``reference`` names the single-task reference runs' ``<method>+<model>``
    when forward transfer was computed from them."""
    head = ["setting", "method", "model", "task id", "seeds", *(METRIC_TITLES[k] for k in METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            f"`{row.label}`" if row.setting else row.label,
            row.method,
            row.model,
            "given" if row.name.endswith("+task_id") else "–",
            str(len(row.seeds)),
            *(format_stat(row.stats.get(key), len(row.seeds)) for key in METRICS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = table_notes(rows, curriculum, confidence, reference)
    return "\n".join([*lines, "", *notes]) + "\n"


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


def _overlaid_curves(
    rows: Sequence[ComparisonRow], tasks: Sequence[str], path: Path, column: str = "perf"
) -> None:
    """One panel for the mean over tasks and one per task: a line per row, the mean over the
    row's runs (their ``curves.csv``) at each evaluation step, and dotted lines at the stage
    starts (grey where every row's stages start at the same steps, else in each row's colour)."""
    panels = ["mean over tasks", *tasks]
    cols = min(4, len(panels))
    n_rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.6 * cols + 1.0, 2.6 * n_rows + 1.0), layout="constrained")
    axes = fig.subplots(n_rows, cols, sharex=True, squeeze=False).ravel()
    boundaries: dict[int, list[float]] = {}
    for k, row in enumerate(rows):
        by_step: dict[int, list[np.ndarray]] = {}
        for run_dir in row.run_dirs:
            if not (run_dir / "curves.csv").is_file():
                continue
            curves = read_curves(run_dir / "curves.csv")
            if curves:
                boundaries.setdefault(k, stage_starts(curves))
            for step, values in zip(*curve_values(curves, len(tasks), column), strict=True):
                by_step.setdefault(step, []).append(values)
        if not by_step:
            continue
        steps = sorted(by_step)
        with warnings.catch_warnings():
            # A task without a finite value at some step is a gap in its line, not an error.
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.array([np.nanmean(np.array(by_step[s]), axis=0) for s in steps])
            overall = np.nanmean(mean, axis=1)
        color = f"C{k % 10}"
        axes[0].plot(steps, overall, color=color, marker=".", label=row.label)
        for j in range(len(tasks)):
            axes[j + 1].plot(steps, mean[:, j], color=color, marker=".")
    shared = len({tuple(b) for b in boundaries.values()}) == 1
    for k, starts in boundaries.items():
        for ax in axes[: len(panels)]:
            for start in starts[1:]:
                ax.axvline(start, color="0.3" if shared else f"C{k % 10}", ls=":", lw=1.0)
        if shared:
            break
    for ax, name in zip(axes, panels, strict=False):
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[len(panels) - cols : len(panels)]:
        ax.set_xlabel("total env steps", fontsize=8)
    fig.legend(loc="outside lower center", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


def write_comparison_report(
    rows: Sequence[ComparisonRow],
    path: PathLike,
    tasks: Sequence[str],
    notes: Sequence[str] = (),
    title: str = "Comparison",
) -> Path:
    """Write one self-contained HTML page (as :func:`hope_agent.html_report.write_run_report`)
    to ``path``: the settings x metrics table with confidence intervals, the keys that vary and
    ``notes`` (:func:`table_notes`), a bar plot of the intervals, and every row's performance
    curves (the mean over its runs' ``curves.csv``) overlaid, over ``tasks`` and their mean.
    Returns the written path."""
    keys = row_keys(rows)
    head = ["setting", "name", "seeds", *(METRIC_TITLES[m] for m in METRICS)]
    lines = []
    for row in rows:
        seeds = " ".join(str(s) for s in row.seeds)
        cells = [
            f"<td><code>{escape(row.label)}</code></td>",
            f"<td>{escape(row.name)}</td>",
            f"<td class='num' title='seeds {escape(seeds)}'>{len(row.seeds)}</td>",
            *(
                f"<td class='num'>{escape(format_stat(row.stats.get(m), len(row.seeds)))}</td>"
                for m in METRICS
            ),
        ]
        lines.append(f"<tr>{''.join(cells)}</tr>")
    varying = (
        "Varying keys: " + ", ".join(f"<code>{escape(k)}</code>" for k in keys)
        if keys
        else "All runs share one setting."
    )
    runs = "".join(
        f"<li><code>{escape(row.label)}</code>: "
        + ", ".join(f"<code>{escape(d)}</code>" for d in row.run_dirs)
        + "</li>"
        for row in rows
    )
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p class='meta' id='varying'>{varying}</p>",
        "<table id='comparison'><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr>"
        + "".join(lines)
        + "</table>",
        "<ul class='note'>" + "".join(f"<li>{markdown_code(n)}</li>" for n in notes) + "</ul>",
        "<h2>Metrics with their intervals</h2>",
        svg_figure(lambda p: plot_comparison(rows, p), "each metric's mean and interval", "bars"),
        "<h2>Performance over training, overlaid</h2>",
        svg_figure(
            lambda p: _overlaid_curves(rows, tasks, p),
            "each setting's mean performance curve, per task and over tasks",
            "curves",
        )
        if any((d / "curves.csv").is_file() for row in rows for d in row.run_dirs)
        else "<p class='note' id='curves'>No run holds a curves.csv.</p>",
        f"<h2>Runs</h2><ul>{runs}</ul>",
    ]
    out = Path(path)
    atomic_write_text(out, html_page(title, body))
    return out


def write_comparison(
    paths: Iterable[PathLike],
    out_dir: PathLike,
    confidence: float = 0.9,
    n_resamples: int = 4000,
    references: Iterable[PathLike] | None = None,
) -> list[ComparisonRow]:
    """Find the runs under ``paths``, compare them, write ``comparison.{csv,md,png,html}`` into
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
    title = f"{curriculum}: {len(runs)} runs, {round(100 * confidence)}% bootstrap CI"
    plot_comparison(rows, out / "comparison.png", title=title)
    notes = table_notes(rows, curriculum, confidence, label)
    write_comparison_report(rows, out / "comparison.html", runs[0].tasks, notes, title)
    return rows

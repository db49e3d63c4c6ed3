"""One self-contained HTML page per run (``report.html``) and per comparison (``comparison.html``).

A page needs no network and no server: no script, inline style, SVG figures and rollout videos
embedded as ``data:`` URIs, heatmaps as HTML tables whose numbers can be read and searched. Past
``max_video_bytes`` of video in all, the page links the videos by relative path instead, and
says so. Entry points: :func:`write_run_report` (also ``python -m hope_agent.html_report
RUN_DIR``) and :func:`hope_agent.compare.write_comparison_report`; see ``docs/report.md``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import matplotlib
import numpy as np
from omegaconf import DictConfig, OmegaConf

from hope_agent.io import PathLike, atomic_write_text
from hope_agent.viz import plot_curves

REPORT_NAME = "report.html"
# Above this many bytes of video in all, a run report links its videos instead of embedding them.
MAX_VIDEO_BYTES = 64 * 1024 * 1024
VIDEO_TYPES = {".mp4": "video/mp4", ".gif": "image/gif"}

# The metrics of metrics.json shown in the run report, with what each one means.
METRIC_ROWS: tuple[tuple[str, str], ...] = (
    ("average_performance", "mean over tasks of the final performance (higher is better)"),
    ("forgetting", "mean over earlier tasks of best-before minus final performance (lower)"),
    ("backward_transfer", "mean over earlier tasks of final minus just-trained performance"),
    ("forward_transfer", "normalised AUC gain over single-task reference runs"),
    ("in_context_gain", "final performance with fast memory minus with it reset every step"),
)
WORLD_MODEL_ROWS: tuple[tuple[str, str], ...] = (
    ("world_model_error", "mean over tasks of the final world-model prediction error (lower)"),
    ("world_model_forgetting", "mean over tasks of final minus just-trained error (lower)"),
)

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.heatmap td { text-align: center; min-width: 4.5em; font-variant-numeric: tabular-nums; }
.meta { color: #555; } .note { color: #555; font-size: 0.92em; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; }
.videos { display: flex; flex-wrap: wrap; gap: 0.8em; }
.videos figure { margin: 0; } .videos figcaption { font-size: 0.85em; color: #444; }
video, .videos img { display: block; background: #000; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def escape(value: Any) -> str:
    """``value`` as text safe in HTML content and quoted attributes."""
    return html.escape(str(value), quote=True)


def markdown_code(text: str) -> str:
    """``text`` escaped for HTML, with its Markdown `code` spans as ``<code>`` elements."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def html_page(title: str, body: Sequence[str]) -> str:
    """A whole page: ``body`` (HTML fragments) under ``title``, with the inline style."""
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def data_uri(data: bytes, mime: str) -> str:
    """``data`` as a base64 ``data:`` URI of type ``mime``."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def svg_figure(draw: Callable[[Path], object], alt: str, element_id: str) -> str:
    """An ``<img>`` of the SVG that ``draw(path)`` writes, embedded as a data URI.

    matplotlib names the SVG's clip paths from a hash salt and stamps the time: fixing the one
    and dropping the other makes one run's page the same bytes every time it is written.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.svg"
        with matplotlib.rc_context({"svg.hashsalt": "hope_agent", "svg.fonttype": "none"}):
            draw(path)
        # The metadata block holds the time of drawing: without it the same figure is the same
        # bytes.
        data = re.sub(rb"<metadata>.*?</metadata>\s*", b"", path.read_bytes(), flags=re.DOTALL)
    return (
        f"<figure id='{escape(element_id)}'><img alt='{escape(alt)}' "
        f"src='{data_uri(data, 'image/svg+xml')}'></figure>"
    )


def to_float(value: Any) -> float:
    """A CSV or JSON cell as a float; empty or ``None`` is NaN."""
    if value is None or value == "":
        return math.nan
    return float(value)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        v = float(value)
        return "–" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(value)


def read_matrix(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """A matrix CSV of the trainer (``after,<task>...``; empty cell = NaN): ``(row names, column
    names, matrix)``."""
    with open(path, newline="") as f:
        lines = [line for line in csv.reader(f) if line]
    if not lines or len(lines[0]) < 2:
        raise ValueError(f"{path} is not a matrix CSV (header 'after,<task>,...')")
    columns = lines[0][1:]
    rows = [line[0] for line in lines[1:]]
    values = np.array([[to_float(c) for c in line[1:]] for line in lines[1:]], dtype=np.float64)
    return rows, columns, values.reshape(len(rows), len(columns))


def read_curves(path: Path) -> list[dict[str, str]]:
    """The rows of a ``curves.csv`` (one per evaluation event and task)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _heatmap(
    element_id: str,
    rows: Sequence[str],
    columns: Sequence[str],
    matrix: np.ndarray,
    caption: str,
    column_notes: Mapping[str, str] | None = None,
) -> str:
    """An HTML table coloured like :func:`hope_agent.viz.plot_perf_matrix` (viridis, the [0, 1]
    scale widened only for values outside it); a NaN cell (stage not trained) is blank."""
    finite = matrix[np.isfinite(matrix)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(1.0, float(finite.max())) if finite.size else 1.0
    cmap = matplotlib.colormaps["viridis"]
    notes = column_notes or {}
    head = "".join(
        f"<th>{k + 1}. {escape(c)}"
        + (f"<br><span class='note'>{escape(notes[c])}</span>" if c in notes else "")
        + "</th>"
        for k, c in enumerate(columns)
    )
    body = []
    for i, name in enumerate(rows):
        cells = []
        for v in matrix[i]:
            if not math.isfinite(v):
                cells.append("<td class='empty'></td>")
                continue
            t = (v - lo) / (hi - lo)
            r, g, b, _ = cmap(t)
            color = "#000" if t > 0.6 else "#fff"
            bg = f"#{round(255 * r):02x}{round(255 * g):02x}{round(255 * b):02x}"
            cells.append(f"<td style='background:{bg};color:{color}'>{v:.2f}</td>")
        body.append(f"<tr><th>{i + 1}. {escape(name)}</th>{''.join(cells)}</tr>")
    return (
        f"<table class='heatmap' id='{escape(element_id)}'><caption class='note'>{escape(caption)}"
        f"</caption><tr><th>after training ↓ / evaluated on →</th>{head}</tr>"
        + "".join(body)
        + "</table>"
    )


def _normalisation(metrics: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, str]:
    """Each task's normalisation as metrics.json states it (``normalisation``: a mapping task ->
    kind or -> {kind, details...}, or a list in task order); empty when it states none."""
    raw = metrics.get("normalisation")
    if isinstance(raw, list) and len(raw) == len(tasks):
        raw = dict(zip(tasks, raw, strict=True))
    if not isinstance(raw, dict):
        return {}
    out = {}
    for task, how in raw.items():
        if isinstance(how, dict):
            kind = how.get("kind", how.get("method", ""))
            rest = ", ".join(
                f"{k}={_fmt(v)}" for k, v in how.items() if k not in ("kind", "method")
            )
            out[str(task)] = f"{kind} ({rest})" if kind and rest else str(kind or rest)
        else:
            out[str(task)] = str(how)
    return out


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    rows = []
    for group, entries in (("continual learning", METRIC_ROWS), ("world model", WORLD_MODEL_ROWS)):
        for key, what in entries:
            rows.append(
                f"<tr class='{'wm' if group == 'world model' else 'cl'}'><td><code>{escape(key)}"
                f"</code></td><td class='num'>{escape(_fmt(metrics.get(key)))}</td>"
                f"<td>{escape(what)}</td></tr>"
            )
    return (
        "<table id='metrics'><tr><th>metric</th><th>value</th><th>what it is</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def stage_starts(curves: Sequence[Mapping[str, str]]) -> list[float]:
    """The env step at which each stage of a ``curves.csv`` starts: stage i at the step of stage
    i-1's task-end evaluation (where training moved on; the last evaluation when that stage's
    task end is missing), stage 0 at 0."""
    ends = {int(r["stage"]): int(r["global_step"]) for r in curves if r.get("task_end") == "1"}
    last = max(int(r["global_step"]) for r in curves)
    n_stages = max(int(r["stage"]) for r in curves) + 1
    return [0.0] + [float(ends.get(i, last)) for i in range(n_stages - 1)]


def curve_values(
    curves: Sequence[Mapping[str, str]], n_tasks: int, column: str
) -> tuple[list[int], np.ndarray]:
    """The sorted evaluation steps of a ``curves.csv`` and the ``(steps, n_tasks)`` values of its
    ``column`` (NaN where missing)."""
    steps = sorted({int(r["global_step"]) for r in curves})
    index = {s: t for t, s in enumerate(steps)}
    values = np.full((len(steps), n_tasks), np.nan)
    for r in curves:
        t, j = index[int(r["global_step"])], int(r["task_index"])
        if j < n_tasks:
            values[t, j] = to_float(r.get(column))
    return steps, values


def _curves_figure(
    curves: Sequence[Mapping[str, str]], tasks: Sequence[str], column: str, ylabel: str, key: str
) -> str:
    """Per-task curves of ``column`` over env steps with the stage boundaries
    (:func:`stage_starts`)."""
    steps, values = curve_values(curves, len(tasks), column)
    starts = stage_starts(curves)
    n_stages = len(starts)
    if not np.any(np.isfinite(values)):
        return f"<p class='note' id='{escape(key)}'>no task has a finite {escape(ylabel)}.</p>"
    return svg_figure(
        lambda path: plot_curves(
            np.array(steps, dtype=np.float64),
            values,
            list(tasks),
            starts,
            path,
            ylabel=ylabel,
            stage_names=list(tasks[:n_stages]),
        ),
        f"{ylabel} of every task over training, with the task boundaries",
        key,
    )


def _videos(run_dir: Path, tasks: Sequence[str], max_video_bytes: int) -> list[str]:
    stage_dirs = sorted(p for p in (run_dir / "videos").glob("stage_*") if p.is_dir())
    files = {
        d: [p for p in d.iterdir() if p.suffix in VIDEO_TYPES and p.is_file()] for d in stage_dirs
    }
    if not any(files.values()):
        return ["<p class='note'>This run recorded no rollout videos.</p>"]
    total = sum(p.stat().st_size for ps in files.values() for p in ps)
    embed = total <= max_video_bytes
    order = {t: k for k, t in enumerate(tasks)}
    out = [
        "<p class='note'>"
        + (
            f"Embedded in this page ({total / 1e6:.1f} MB)."
            if embed
            else f"Linked from <code>videos/</code> ({total / 1e6:.0f} MB, more than the "
            f"{max_video_bytes / 1e6:.0f} MB embedded at most): keep this page in its run "
            "directory."
        )
        + "</p>"
    ]
    for d in stage_dirs:
        if not files[d]:
            continue
        ps = sorted(files[d], key=lambda p: (p.stem != "all_tasks", order.get(p.stem, 1 << 30)))
        items = []
        for p in ps:
            mime = VIDEO_TYPES[p.suffix]
            link = quote(p.relative_to(run_dir).as_posix())
            src = data_uri(p.read_bytes(), mime) if embed else link
            element = (
                f"<video controls muted loop playsinline preload='metadata' src='{escape(src)}' "
                f"title='{escape(p.stem)}'></video>"
                if p.suffix == ".mp4"
                else f"<img alt='{escape(p.stem)}' src='{escape(src)}'>"
            )
            items.append(f"<figure>{element}<figcaption>{escape(p.stem)}</figcaption></figure>")
        stage = d.name.removeprefix("stage_")
        title = f"after stage {stage}"
        if stage.isdigit() and int(stage) < len(tasks):
            title += f" ({escape(tasks[int(stage)])})"
        out.append(
            f"<h3>{title}</h3><div class='videos' id='{escape(d.name)}'>{''.join(items)}</div>"
        )
    return out


def _load_config(run_dir: Path) -> DictConfig | None:
    for name in ("config.yaml", ".hydra/config.yaml"):
        if (run_dir / name).is_file():
            cfg = OmegaConf.load(run_dir / name)
            return cfg if isinstance(cfg, DictConfig) else None
    return None


def write_run_report(run_dir: PathLike, max_video_bytes: int = MAX_VIDEO_BYTES) -> Path:
    """Write ``report.html`` into ``run_dir`` (atomically) and return its path.

    The page shows the run's setting (``config.yaml``), its metrics (``metrics.json``) with each
    task's normalisation when metrics.json states it (``normalisation``), the retention heatmap
    (``perf_matrix.csv``, and ``perf_matrix_smoothed.csv`` when the metrics used it), the
    per-task curves with the task boundaries (``curves.csv``: performance, raw return,
    world-model error), the world-model error matrix (``wm_error_matrix.csv``) and the rollout
    videos of each stage (``videos/stage_XX/*.mp4|gif``). A partial run (killed, or still
    running) gets a page of what it has. ``FileNotFoundError`` when ``run_dir`` holds no
    ``metrics.json``: that is not a run directory, or its run has not evaluated yet.
    """
    run = Path(run_dir)
    if not (run / "metrics.json").is_file():
        raise FileNotFoundError(
            f"{run} holds no metrics.json: give a run directory of hope-train (a run writes it "
            "at its first evaluation)"
        )
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = _load_config(run)
    tasks = [str(t) for t in metrics.get("tasks", [])]

    def sel(key: str) -> Any:
        return None if cfg is None else OmegaConf.select(cfg, key, default=None)

    normalisation = _normalisation(metrics, tasks)
    title = f"{sel('curriculum.name') or 'run'}: {sel('model.name') or '?'}, seed {sel('seed')}"
    n_done = int(metrics.get("stages_completed", 0))
    facts = [
        ("run directory", run.resolve().name),
        ("curriculum", f"{sel('curriculum.name')} ({len(tasks)} tasks)"),
        ("model", sel("model.name")),
        ("method", sel("method")),
        ("task id given", sel("agent.task_id")),
        ("seed", sel("seed")),
        ("steps per task", sel("steps_per_task")),
        ("env steps", metrics.get("env_steps")),
        ("evaluation", f"every {sel('eval.every')} steps, {sel('eval.episodes')} episodes"),
        ("stages completed", f"{n_done} of {len(tasks)}"),
    ]
    body = [
        f"<h1>{escape(title)}</h1>",
        "<table id='run'>"
        + "".join(f"<tr><th>{escape(k)}</th><td>{escape(_fmt(v))}</td></tr>" for k, v in facts)
        + "</table>",
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
    ]
    if normalisation:
        body += [
            "<h3>How each task's performance was normalised</h3>",
            "<table id='normalisation'><tr><th>task</th><th>normalisation</th></tr>"
            + "".join(
                f"<tr><td>{escape(t)}</td><td>{escape(normalisation.get(t, '–'))}</td></tr>"
                for t in tasks
            )
            + "</table>",
        ]
    else:
        body.append(
            "<p class='note' id='normalisation'>metrics.json states no per-task normalisation "
            "(performance is the success rate where the task defines success).</p>"
        )
    notes = metrics.get("notes") or []
    if notes:
        body.append(
            "<ul class='note'>" + "".join(f"<li>{markdown_code(n)}</li>" for n in notes) + "</ul>"
        )
    body.append("<h2>Retention: performance after each task</h2>")
    for name, element_id, caption in (
        ("perf_matrix.csv", "perf-matrix", "row i: evaluated after training task i"),
        (
            "perf_matrix_smoothed.csv",
            "perf-matrix-smoothed",
            f"mean of each stage's last {sel('eval.smooth_last')} evaluations: the matrix the "
            "metrics used",
        ),
    ):
        if (run / name).is_file():
            rows, columns, matrix = read_matrix(run / name)
            body.append(_heatmap(element_id, rows, columns, matrix, caption, normalisation))
    curves = read_curves(run / "curves.csv") if (run / "curves.csv").is_file() else []
    if curves:
        body.append("<h2>Curves</h2>")
        body.append(_curves_figure(curves, tasks, "perf", "performance", "curves-perf"))
        body.append(_curves_figure(curves, tasks, "mean_return", "return", "curves-return"))
    body.append("<h2>World model</h2>")
    body.append(
        "<table id='world-model'><tr><th>metric</th><th>value</th></tr>"
        + "".join(
            f"<tr><td><code>{escape(k)}</code></td>"
            f"<td class='num'>{escape(_fmt(metrics.get(k)))}</td></tr>"
            for k, _ in WORLD_MODEL_ROWS
        )
        + "</table>"
    )
    if (run / "wm_error_matrix.csv").is_file():
        rows, columns, matrix = read_matrix(run / "wm_error_matrix.csv")
        body.append(
            _heatmap(
                "wm-error-matrix",
                rows,
                columns,
                matrix,
                "world-model prediction error after each task (lower is better)",
            )
        )
    if curves:
        body.append(
            _curves_figure(curves, tasks, "wm_error", "world-model error", "curves-wm-error")
        )
    body.append("<h2>Rollouts after each stage</h2>")
    body += _videos(run, tasks, max_video_bytes)
    out = run / REPORT_NAME
    atomic_write_text(out, html_page(title, body))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m hope_agent.html_report RUN_DIR...``: write each run's ``report.html``."""
    parser = argparse.ArgumentParser(description="Write report.html into run directories.")
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        try:
            print(write_run_report(run_dir))
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

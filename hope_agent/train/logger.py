"""Run logging: TensorBoard events, a CSV of training scalars, a rich progress bar and a summary.

Metric keys are namespaced the cleanrl way (``charts/episodic_return``, ``losses/policy``,
``eval/<task>/perf``, ``faults/nonfinite_updates``). The CSV is kept in memory and rewritten
atomically at each :meth:`Logger.flush` (and at least every ``flush_every_s`` of logging), so a
crash never leaves a half-written row. A resumed run (:meth:`Logger.restore`) cuts the CSV back
to its checkpoint's rows and has TensorBoard drop the later events, so no step appears twice.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from hope_agent.io import atomic_write_text

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def rows_to_csv(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """CSV text of ``rows`` (missing cells empty); columns default to first-seen key order."""
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buf.getvalue()


def _parse_row(row: Mapping[str, str]) -> dict[str, object]:
    # The inverse of rows_to_csv for Logger rows: global_step is an int, every other cell a float
    # written with repr (exact round trip); an empty cell was a missing value or a NaN.
    out: dict[str, object] = {}
    for key, cell in row.items():
        if cell:
            out[key] = int(cell) if key == "global_step" else float(cell)
    return out


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return "" if value is None else value


class Logger:
    """Logging sinks of one run.

    Args:
        run_dir: the run directory; writes ``train.csv`` and ``tb/`` there.
        total_steps: env steps of the whole curriculum (progress bar total).
        tensorboard: write TensorBoard events.
        progress: show a progress bar (task, steps/s, ETA) on the console.
        console: where the bar and the summary go (default: stderr-aware rich console).
        flush_every_s: :meth:`log` also flushes when this long has passed since the last flush.
    """

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        tensorboard: bool = True,
        progress: bool = True,
        console: Console | None = None,
        flush_every_s: float = 30.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.flush_every_s = flush_every_s
        self._flushed_at = time.monotonic()
        self.console = console or Console()
        self.rows: list[dict[str, object]] = []
        self.columns: list[str] = []  # first-seen order of every key, the CSV's header
        self._column_set: set[str] = set()
        self.tensorboard = tensorboard
        self._writer: SummaryWriter | None = None
        self._purge_step: int | None = None
        self._progress: Progress | None = None
        self._bar: TaskID | None = None
        self._sps_window: list[tuple[float, int]] = []
        if progress:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[sps]:>7} steps/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._bar = self._progress.add_task("starting", total=total_steps, sps="-")
        self._started = False

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def set_stage(self, description: str) -> None:
        """Show which stage (task) is training (the progress bar appears at the first call)."""
        if self._progress is not None and self._bar is not None:
            if not self._started:
                # Not at construction: a run that fails its checks never draws a bar.
                self._progress.start()
                self._started = True
            self._progress.update(self._bar, description=description)

    def advance(self, global_step: int) -> None:
        """Move the bar to ``global_step`` and refresh the steps/s over the last ~10 s."""
        now = time.perf_counter()
        self._sps_window.append((now, global_step))
        while len(self._sps_window) > 2 and now - self._sps_window[0][0] > 10.0:
            self._sps_window.pop(0)
        t0, s0 = self._sps_window[0]
        sps = f"{(global_step - s0) / (now - t0):.0f}" if now > t0 else "-"
        if self._progress is not None and self._bar is not None:
            self._progress.update(self._bar, completed=global_step, sps=sps)

    def _tb(self) -> SummaryWriter | None:
        # Opened on first use, so building a run writes nothing and a restore can set the purge.
        if self.tensorboard and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when enabled

            self._writer = SummaryWriter(
                log_dir=str(self.run_dir / "tb"), purge_step=self._purge_step
            )
        return self._writer

    def log(self, global_step: int, values: Mapping[str, float]) -> None:
        """Record scalars at ``global_step`` (TensorBoard and the CSV rows)."""
        row: dict[str, object] = {"global_step": global_step}
        writer = self._tb()
        for key, value in values.items():
            v = float(value)
            row[key] = v
            if writer is not None and np.isfinite(v):
                writer.add_scalar(key, v, global_step)
        for key in row:
            if key not in self._column_set:
                self._column_set.add(key)
                self.columns.append(key)
        self.rows.append(row)
        if time.monotonic() - self._flushed_at >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Rewrite ``train.csv`` atomically and flush TensorBoard."""
        self._flushed_at = time.monotonic()
        if self.rows:
            atomic_write_text(self.run_dir / "train.csv", rows_to_csv(self.rows, self.columns))
        if self._writer is not None:
            self._writer.flush()

    def restore(self, rows: int, columns: Sequence[str], purge_step: int) -> None:
        """Continue a run from a checkpoint: keep the first ``rows`` rows of ``train.csv`` (and
        the checkpoint's ``columns``), and hide TensorBoard events at steps >= ``purge_step``.

        Raises ``ValueError`` when ``train.csv`` holds fewer rows than the checkpoint wrote.
        """
        path = self.run_dir / "train.csv"
        kept: list[dict[str, object]] = []
        if rows > 0:
            text = path.read_text(encoding="utf-8") if path.is_file() else ""
            kept = [_parse_row(r) for r in csv.DictReader(io.StringIO(text))][:rows]
            if len(kept) < rows:
                raise ValueError(
                    f"{path} holds {len(kept)} rows but the checkpoint was saved after {rows}; "
                    "the run directory was modified, resume from a copy of the whole run"
                )
        self.rows = kept
        self.columns = list(columns)
        self._column_set = set(self.columns)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._purge_step = purge_step
        if kept:
            self.flush()
        else:
            path.unlink(missing_ok=True)

    def print_summary(
        self,
        task_names: Sequence[str],
        perf: np.ndarray,
        metrics: Mapping[str, float | None],
        normalisation: Mapping[str, str] | None = None,
    ) -> None:
        """Print the performance matrix (with a last row saying how each task's performance was
        normalised, when given) and the headline metrics as tables."""
        self._stop_progress()
        table = Table(title="performance after each stage (rows) on each task (columns)")
        table.add_column("after")
        for name in task_names:
            table.add_column(name, justify="right")
        for i, row in enumerate(perf):
            table.add_row(task_names[i], *["-" if np.isnan(v) else f"{v:.2f}" for v in row])
        if normalisation:
            table.add_row("normalised by", *[normalisation.get(n, "-") for n in task_names])
        self.console.print(table)
        summary = Table(title="metrics")
        summary.add_column("metric")
        summary.add_column("value", justify="right")
        for key, value in metrics.items():
            summary.add_row(key, "n/a" if value is None else f"{value:.3f}")
        self.console.print(summary)

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        """Flush everything and stop the progress bar."""
        self.flush()
        self._stop_progress()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

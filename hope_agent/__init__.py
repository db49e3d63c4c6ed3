"""hope_agent: lifelong-learning robot agents on a HOPE (Nested Learning) backbone.

Python entry points for notebooks and sweeps, the same runs as the command line:
:func:`train_curriculum` (``scripts/train_curriculum.py`` / ``hope-train``) and
:func:`evaluate_forgetting` (``scripts/evaluate_forgetting.py`` / ``hope-evaluate``). They take
the command line's Hydra overrides as a list of strings. (They are not called ``train`` and
``evaluate``: ``hope_agent.train`` is the training package, whose import would replace a
function of that name.) Importing ``hope_agent`` stays light: torch, Hydra and the envs load
when a function is first called.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hope_agent.version import __version__

if TYPE_CHECKING:
    from hope_agent.train.runner import RunSummary

__all__ = ["__version__", "evaluate_forgetting", "train_curriculum"]


def train_curriculum(
    overrides: Sequence[str] = (), run_dir: str | Path | None = None
) -> RunSummary:
    """Train as ``scripts/train_curriculum.py <overrides>`` would, in this process.

    Args:
        overrides: Hydra overrides of the shipped config ``configs/config.yaml``, e.g.
            ``["model=gru", "steps_per_task=20000", "curriculum.tasks=[{id:Swimmer-v5}]"]``.
        run_dir: where every output goes; default ``runs/<curriculum>__<model>__<seed>__<time>``
            under the working directory, the command line's default. With ``resume=true`` give
            the run's directory.

    Returns:
        The run's :class:`~hope_agent.train.runner.RunSummary`: ``run_dir``, ``perf`` (the task-end
        performance matrix), ``metrics`` (as in ``metrics.json``), ``wall_time_s``, ``env_steps``.

    Raises:
        hope_agent.build.ConfigError: one line naming a bad override or value (also unknown task
            ids, and ``resume=true`` in a directory that holds no run).
    """
    from hope_agent.cli import check_resume_dir, train

    cfg = _compose("config", overrides)
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{cfg.curriculum.name}__{cfg.model.name}__{cfg.seed}__{stamp}"
        # A fresh timestamped directory holds no run to resume: say so instead of starting over.
        template = "runs/<curriculum>__<model>__<seed>__${now:%Y%m%d-%H%M%S}"
        check_resume_dir(bool(cfg.resume), Path(run_dir), "run_dir", template)
    return train(cfg, Path(run_dir))


def evaluate_forgetting(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Re-evaluate a run's checkpoints as ``scripts/evaluate_forgetting.py <overrides>`` would.

    Args:
        overrides: Hydra overrides of ``configs/eval.yaml``: ``run_dir=PATH`` (optionally
            ``stage=K``) or ``checkpoint=PATH``, and ``episodes=N``, ``out_dir=PATH``, ...

    Returns:
        The metrics, also written to ``<out_dir>/metrics.json`` (default
        ``<run_dir>/evaluation``) beside the matrices, curves and plots.

    Raises:
        hope_agent.build.ConfigError: one line naming a bad override or value;
            ``FileNotFoundError`` / :class:`~hope_agent.io.CheckpointError` for a missing or
            defective run.
    """
    from hope_agent.cli import evaluate

    return evaluate(_compose("eval", overrides))


def _compose(config_name: str, overrides: Sequence[str]) -> Any:
    """``config_name`` composed with ``overrides`` (bad ones: one-line ``ConfigError``)."""
    from hydra import compose, initialize_config_module

    from hope_agent.cli import check_overrides
    from hope_agent.train.config import register_configs

    register_configs()
    check_overrides(config_name, list(overrides))
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        return compose(config_name, overrides=list(overrides))

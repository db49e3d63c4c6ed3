"""Hydra entry points: ``hope-train``, ``hope-evaluate``, ``hope-record`` (and the scripts/ files).

Each ``*_main`` first composes the config with the command-line overrides
(:func:`check_overrides`, so that an unknown key, a wrong type or an unknown option gives one
line instead of Hydra's multi-line report), then runs a thin Hydra wrapper around a plain
function (:func:`train`, :func:`evaluate`, :func:`record`) that tests and notebooks call
directly with a composed config. User errors (bad config values, unknown task ids or models,
missing, mismatched, defective or planted checkpoints) and runs stopped by the fault handling
end the program with one line on stderr and exit status 1, before any work starts where
possible.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import hydra
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
)

from hope_agent.build import (
    ConfigError,
    build_evaluator,
    build_runner,
    load_trained_agent,
    omegaconf_problem,
    resolve_device,
    resume_point,
)
from hope_agent.io import CheckpointError, atomic_write_text
from hope_agent.rollout.guard import EnvRestartError
from hope_agent.train.config import register_configs
from hope_agent.train.distributed import init_world, sweep_placement
from hope_agent.train.evaluator import VideoSettings, write_task_videos
from hope_agent.train.faults import TrainingDiverged
from hope_agent.train.report import EvalEvent, RunRecord, write_results
from hope_agent.train.runner import RunSummary
from hope_envs.curriculum import CurriculumError

register_configs()

T = TypeVar("T")
USER_ERRORS = (ConfigError, CurriculumError, CheckpointError, FileNotFoundError)


def _set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def train(cfg: DictConfig, run_dir: Path) -> RunSummary:
    """Train over ``cfg``'s curriculum, writing every output into ``run_dir``.

    With ``resume=true`` the run continues from the newest valid checkpoint in ``run_dir``
    (see :func:`hope_agent.build.resume_point`). Launched by ``torchrun``, the processes train
    one run data-parallel in rank 0's ``run_dir`` (:mod:`hope_agent.train.distributed`).
    """
    _set_threads(int(cfg.torch_threads))
    world = init_world(resolve_device(cfg.device))
    try:
        # Each rank's Hydra may have stamped a different time into its directory name.
        run_dir = Path(world.all_gather(str(run_dir))[0])
        runner = build_runner(cfg, run_dir, world)
        start = resume_point(cfg, run_dir)
        if world.is_main:
            atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        return runner.run(resume_from=start)
    finally:
        world.close()


def check_resume_dir(resume: bool, run_dir: Path, dir_key: str, dir_template: str) -> None:
    """Refuse ``resume=true`` in a run directory named by a timestamp (the default
    ``hydra.run.dir``, template ``dir_template`` of config key ``dir_key``) that holds no
    checkpoints: the run to continue lies elsewhere, and training would quietly start afresh.

    Raises :class:`~hope_agent.build.ConfigError` naming the fix.
    """
    if not resume or "${now:" not in dir_template:
        return
    folder = run_dir / "checkpoints"
    if folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()):
        return
    raise ConfigError(
        f"resume=true, but {dir_key} is the timestamped default ({dir_template}), a new "
        f"directory without checkpoints ({run_dir}): give {dir_key}=<the run's directory>"
    )


def _stage_checkpoints(run_dir: Path, stage: int | None) -> list[Path]:
    folder = run_dir / "checkpoints"
    if stage is not None:
        path = folder / f"stage_{stage:02d}"
        if not path.exists():
            raise FileNotFoundError(
                f"no checkpoint for stage={stage} at {path}; existing: "
                f"{sorted(p.name for p in folder.glob('stage_*')) or 'none'}"
            )
        return [path]
    found = sorted(folder.glob("stage_*"))
    if not found:
        raise FileNotFoundError(
            f"no stage checkpoints under {folder}; is {run_dir} a run directory?"
        )
    return found


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate saved checkpoints on every task without training; write matrix, metrics, plots.

    ``run_dir`` alone evaluates every checkpoint of the run in global-step order: the stage
    checkpoints give the matrix rows, the periodic ``step_*`` ones fill each stage's window (its
    curve and AUC). ``stage=K`` or ``checkpoint=PATH`` evaluates one checkpoint, whose
    evaluation is the row of its stage even when it was taken before the stage's end.
    Returns the metrics (also written to ``<out_dir>/metrics.json``).
    """
    _set_threads(int(cfg.torch_threads))
    if (cfg.run_dir is None) == (cfg.checkpoint is None):
        raise ConfigError(
            "give exactly one of run_dir=PATH (optionally with stage=K) or checkpoint=PATH"
        )
    bad = [
        f"{key} must be >= 0 (got {value})"
        for key, value in (
            ("episodes", cfg.episodes),
            ("stage", cfg.stage),
            ("torch_threads", cfg.torch_threads),
        )
        if value is not None and value < 0
    ]
    if bad:
        raise ConfigError("; ".join(bad))
    device = resolve_device(cfg.device)
    run_cfg: DictConfig | None = None
    if cfg.run_dir is not None:
        run_dir = Path(cfg.run_dir)
        config_file = run_dir / "config.yaml"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found; is {run_dir} a run directory?")
        run_cfg = OmegaConf.load(config_file)  # type: ignore[assignment]
        checkpoints = _stage_checkpoints(run_dir, cfg.stage)
        if cfg.stage is None:
            checkpoints += sorted((run_dir / "checkpoints").glob("step_*"))
        out_dir = Path(cfg.out_dir) if cfg.out_dir else run_dir / "evaluation"
    else:
        checkpoints = [Path(cfg.checkpoint)]
        out_dir = (
            Path(cfg.out_dir)
            if cfg.out_dir
            else Path(cfg.checkpoint).parent.parent / (f"evaluation_{Path(cfg.checkpoint).name}")
        )
    single = cfg.run_dir is None or cfg.stage is not None
    record: RunRecord | None = None
    evaluator = None
    run_settings: DictConfig | None = None
    seen: set[tuple[int, bool]] = set()
    evaluated: list[tuple[EvalEvent, Path]] = []
    notes: list[str] = []
    for path in checkpoints:
        trained = load_trained_agent(path, run_cfg, device)
        progress = trained.tree["progress"]
        step, stage, done = (
            int(progress["global_step"]),
            int(progress["stage"]),
            bool(progress["stage_done"]),
        )
        # A periodic checkpoint written at a stage end holds that stage checkpoint's state, and
        # one at a stage's start (step 0) precedes any training of it: neither is a new point of
        # a window.
        if not single and ((step, done) in seen or (not done and int(progress["task_step"]) == 0)):
            continue
        seen.add((step, done))
        loaded = trained.cfg
        reset_too = (
            loaded.eval.in_context_gain if cfg.in_context_gain is None else cfg.in_context_gain
        )
        if record is None:
            run_settings = loaded
            evaluator = build_evaluator(
                loaded,
                trained.curriculum,
                trained.actor,
                episodes=cfg.episodes,
                online_cms=cfg.online_cms,
            )
            # The run's own R_random where its checkpoints hold it (measured the same way).
            stored = trained.tree.get("random_returns")
            record = RunRecord(
                task_names=trained.curriculum.names,
                random_returns=evaluator.random_returns() if stored is None else stored,
            )
        assert evaluator is not None
        starts = [int(s) for s in progress["stage_starts"]]
        if len(starts) > len(record.stage_starts):
            record.stage_starts = starts
        if single and not done:
            notes.append(
                f"{path} was saved at env step {step}, before the end of stage {stage}: row "
                f"{stage} holds its evaluation, not the stage's task-end one"
            )
        task_end = done or single
        results = evaluator.evaluate(trained.actor)
        # The in-context control is measured at task ends only, as in training.
        reset = (
            evaluator.evaluate(trained.actor, reset_every_step=True)
            if reset_too and task_end
            else None
        )
        evaluated.append((EvalEvent(step, stage, task_end, results, reset), path))
    assert record is not None and evaluator is not None and run_settings is not None
    evaluator.close()
    evaluated.sort(key=lambda item: (item[0].global_step, item[0].task_end))
    record.events = [event for event, _ in evaluated]
    ref = run_settings.eval.reference_auc
    return write_results(
        out_dir,
        record,
        smooth_last=run_settings.eval.smooth_last,
        reference_auc=None if ref is None else list(ref),
        extra={"checkpoints": [str(path) for _, path in evaluated]},
        notes=notes,
        page=True,
    )


def record(cfg: DictConfig) -> list[Path]:
    """Record an mp4 (or gif) per task and one grid video of all tasks from a checkpoint."""
    if cfg.torch_threads < 0:
        raise ConfigError(f"torch_threads must be >= 0 (got {cfg.torch_threads})")
    _set_threads(int(cfg.torch_threads))
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("give checkpoint=PATH (a folder under <run_dir>/checkpoints/)")
    device = resolve_device(cfg.device)
    checkpoint = Path(cfg.checkpoint)
    trained = load_trained_agent(checkpoint, None, device)
    if cfg.episodes < 1 or cfg.frame_skip < 1 or cfg.fps < 1 or min(cfg.height, cfg.width) < 16:
        raise ConfigError(
            "record: episodes, frame_skip and fps must be >= 1 and height/width >= 16, got "
            f"{cfg.episodes}, {cfg.frame_skip}, {cfg.fps}, {cfg.height}x{cfg.width}"
        )
    out_dir = (
        Path(cfg.out_dir) if cfg.out_dir else checkpoint.parent.parent / "videos" / checkpoint.name
    )
    video = VideoSettings(
        episodes=int(cfg.episodes),
        size=(int(cfg.height), int(cfg.width)),
        fps=int(cfg.fps),
        frame_skip=int(cfg.frame_skip),
        gif=bool(cfg.gif),
        deterministic=bool(cfg.deterministic),
    )
    return write_task_videos(
        trained.actor, trained.curriculum, out_dir, video, int(trained.cfg.eval.seed)
    )


def one_line(error: BaseException) -> str:
    """The message of ``error`` on a single line (Hydra and OmegaConf messages span several)."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _report_user_errors(fn: Callable[[], T]) -> T:
    try:
        return fn()
    # One line, no traceback: input mistakes are not bugs, and a run stopped by the fault
    # handling has logged warnings saying what led there.
    except (*USER_ERRORS, TrainingDiverged, EnvRestartError) as e:
        raise SystemExit(f"error: {one_line(e)}") from None


def check_overrides(config_name: str, overrides: Sequence[str]) -> None:
    """Compose ``config_name`` with command-line ``overrides`` as Hydra will; raise one-line
    :class:`ConfigError` naming a bad override (unknown key, wrong type, unknown group option).
    """
    try:
        with initialize_config_module(config_module="hope_configs", version_base="1.3"):
            compose(config_name, overrides=list(overrides))
    except MissingConfigException as e:
        options = f"; available: {', '.join(e.options)}" if e.options else ""
        raise ConfigError(f"{str(e).strip().splitlines()[0]}{options}") from None
    except (HydraException, OmegaConfBaseException) as e:
        cause = e.__cause__
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            # Hydra's own advice (append with +key=...) would only move the error to later.
            raise ConfigError(omegaconf_problem(cause)) from None
        head = one_line(e)
        if isinstance(cause, OmegaConfBaseException):
            head = f"{head} ({omegaconf_problem(cause)})"
        raise ConfigError(head) from None


def precheck(config_name: str) -> None:
    """Check the command line's overrides against ``config_name`` before Hydra runs: a bad one
    ends the program with one line on stderr and exit status 1."""
    args = sys.argv[1:]
    # Flags (--multirun, --cfg, --help, ...) change what Hydra does with the overrides: leave
    # those command lines to Hydra itself.
    if any(a.startswith("-") for a in args):
        return
    _report_user_errors(lambda: check_overrides(config_name, args))


def _place_sweep_job(cfg: DictConfig, hydra_cfg: Any) -> None:
    """Share the machine among a sweep's parallel jobs (docs/scaling.md): unless
    ``torch_threads`` is given, each job takes ``cores // n_jobs`` threads; with several GPUs,
    job ``k`` takes GPU ``k % gpus``."""
    n_jobs = int(OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=1) or 1)
    threads, gpu = sweep_placement(
        int(hydra_cfg.job.num), n_jobs, int(cfg.torch_threads), torch.cuda.device_count()
    )
    torch.set_num_threads(threads)
    if gpu is not None and resolve_device(cfg.device).type == "cuda":
        torch.cuda.set_device(gpu)


@hydra.main(config_path="pkg://hope_configs", config_name="config", version_base="1.3")
def _train_hydra(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    node = hydra_cfg.sweep if multirun else hydra_cfg.run
    # Unresolved, so that a timestamp in the directory name shows as ${now:...}.
    raw = OmegaConf.to_container(node, resolve=False)
    assert isinstance(raw, dict)
    template = str(raw["dir"])
    _report_user_errors(lambda: check_resume_dir(bool(cfg.resume), run_dir, key, template))
    if multirun:
        _place_sweep_job(cfg, hydra_cfg)
    summary = _report_user_errors(lambda: train(cfg, run_dir))
    print(f"run directory: {summary.run_dir}")


@hydra.main(config_path="pkg://hope_configs", config_name="eval", version_base="1.3")
def _evaluate_hydra(cfg: DictConfig) -> None:
    metrics = _report_user_errors(lambda: evaluate(cfg))
    keys = ("average_performance", "forgetting", "backward_transfer", "world_model_error")
    print(", ".join(f"{k}={metrics[k]}" for k in keys), file=sys.stdout)


@hydra.main(config_path="pkg://hope_configs", config_name="record", version_base="1.3")
def _record_hydra(cfg: DictConfig) -> None:
    for path in _report_user_errors(lambda: record(cfg)):
        print(path)


def train_main() -> None:
    """``hope-train`` / ``scripts/train_curriculum.py``."""
    precheck("config")
    _train_hydra()


def evaluate_main() -> None:
    """``hope-evaluate`` / ``scripts/evaluate_forgetting.py``."""
    precheck("eval")
    _evaluate_hydra()


def record_main() -> None:
    """``hope-record`` / ``scripts/record_rollouts.py``."""
    precheck("record")
    _record_hydra()

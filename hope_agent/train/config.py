"""Structured-config schemas of the three entry points, registered in Hydra's ConfigStore.

The yaml files under ``configs/`` (installed as the package ``hope_configs``) extend these schemas,
so a misspelt key or a value of the wrong type fails at composition with one line naming it.
Only builders (:mod:`hope_agent.build`, :mod:`hope_agent.cli`) read these objects; leaf
modules take typed arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from hope_agent.agents.agent import AgentOptions
from hope_agent.algos.ppo import PPOConfig
from hope_agent.train.evaluator import VideoSettings
from hope_agent.train.faults import FaultSettings


class Device(Enum):
    """Where the model runs; ``auto`` picks CUDA when available."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class OptimizerName(Enum):
    """Outer optimizer: AdamW, or M3 on matrix parameters (AdamW on the rest)."""

    adamw = "adamw"
    m3 = "m3"


@dataclass
class TaskEntry:
    """One curriculum task: a registered Gymnasium id, its keyword arguments, its step budget
    (``null`` = the run's ``steps_per_task``) and an optional display name.

    Always a mapping, also on the command line: ``curriculum.tasks=[{id:Hopper-v5}]``. A plain
    id string is refused at composition: the schema's type check is what names a misspelt key.
    """

    id: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    name: str | None = None


@dataclass
class CurriculumSection:
    """A named, ordered list of tasks (the files of ``configs/curriculum/``)."""

    name: str = MISSING
    tasks: list[TaskEntry] = MISSING


@dataclass
class ModelSection:
    """The backbone: a name of ``hope_agent.models.factory.BACKBONES``, its width, and the
    keyword arguments of its config dataclass."""

    name: str = MISSING
    d_model: int = 64
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class AgentSection(AgentOptions):
    """Agent options (see :class:`hope_agent.agents.AgentOptions`) and how the trainer
    carries the agent's memory."""

    # Keep the backbone memory of the envs across a task switch (the agent is never told of the
    # switch; an episode start still resets what the backbone resets at episode starts).
    carry_state_across_tasks: bool = True


@dataclass
class M3Section:
    """Options of M3 (HOPE.md 3b) when ``ppo.optimizer=m3``."""

    lr: float = 0.02
    betas: tuple[float, float, float] = (0.9, 0.999, 0.9)
    alpha: float = 0.5
    slow_every: int = 16
    ns_steps: int = 5
    eps: float = 1e-8


@dataclass
class PPOSection(PPOConfig):
    """PPO update options plus rollout sizes and the optimizer."""

    num_envs: int = 8
    rollout_len: int = 128
    seq_len: int = 32
    # One worker process per env (gymnasium AsyncVectorEnv) instead of stepping them in this
    # process. Never switched on by itself, so that a config runs the same way on every
    # machine: choose it where there are spare cores and the physics is slow.
    async_envs: bool = False
    # The point-mass tasks (PointReach, PointAdapt) stepped as one batch in this process
    # (hope_agent.rollout.batched): the same transitions as the per-env envs, bit for bit, at
    # several times their rate. null (default): wherever every task has them and async_envs is
    # off; true: required (refused otherwise); false: never.
    batched_envs: bool | None = None
    # The info key that labels each step for the belief loss (belief_coef > 0; PointAdapt
    # reports goal_index).
    belief_key: str = "goal_index"
    optimizer: OptimizerName = OptimizerName.adamw
    lr: float = 3e-4
    # Linear decay of every group's learning rate within each task, from its value at the task's
    # first update to near 0 at its last (CleanRL's anneal_lr, restarted at every task).
    anneal_lr: bool = False
    weight_decay: float = 0.0
    m3: M3Section = field(default_factory=M3Section)
    # Clock, period and learning-rate scale per parameter group, by name (docs/consolidation.md):
    # {cms.2: {clock: tasks, period: 1, lr_scale: 10}}; clocks: optimizer_steps (default),
    # env_steps, tasks.
    groups: dict[str, Any] = field(default_factory=dict)


@dataclass
class OnlineCMSSection:
    """Deployment clock of HOPE.md section 3: chosen CMS levels keep learning at evaluation, on a
    copy of the model, from the world model's prediction error, each every P_l env steps."""

    enabled: bool = False
    levels: list[str] = field(default_factory=list)  # group names; empty = every "cms.*" group
    lr: float = 1e-3


@dataclass
class EvalSection:
    """Evaluation of every task during and after training (CONTINUAL_RL.md protocol)."""

    every: int = 0  # env steps between evaluations during training; 0 = at task ends only
    episodes: int = 10  # stochastic episodes per task (+1 deterministic)
    seed: int = 100_000  # episode e of task j starts from seed + 1000 * j + e
    in_context_gain: bool = False
    smooth_last: int | None = None
    reference_auc: list[float] | None = None  # per-task single-task AUC, for forward transfer
    # A folder of reference files of your own (scripts/make_reference.py ... eval.reference_dir=
    # DIR writes them), searched before the shipped envs/reference.
    reference_dir: str | None = None
    online_cms: OnlineCMSSection = field(default_factory=OnlineCMSSection)


@dataclass
class CheckpointSection:
    """Checkpoints at every task end, and every ``every`` env steps when positive.

    A periodic checkpoint is a *sync point*: every training env is reset there (seeds derived
    from the run seed, the stage and the step), in interrupted and uninterrupted runs alike, so
    that ``resume=true`` continues exactly (docs/reliability.md).
    """

    every: int = 0


@dataclass
class FaultsSection(FaultSettings):
    """Reactions to non-finite numbers and failing environments (docs/reliability.md)."""


@dataclass
class VideoSection:
    """Rollout videos of every task after each stage."""

    enabled: bool = True
    episodes: int = 1
    height: int = 96
    width: int = 128
    fps: int = 30
    frame_skip: int = 2  # keep every k-th frame: rendering is the expensive part on CPU
    gif: bool = False


@dataclass
class LoggerSection:
    """Logging sinks (CSV files and metrics are always written)."""

    tensorboard: bool = True
    progress: bool = True
    # The time/<phase> columns (hope_agent.train.timing); on CUDA they cost one device
    # synchronisation per phase boundary, so false leaves only charts/SPS and charts/wall_time.
    timing: bool = True


@dataclass
class TrainConfig:
    """Schema of ``configs/config.yaml`` (``hope-train`` / ``scripts/train_curriculum.py``)."""

    curriculum: CurriculumSection = MISSING
    model: ModelSection = MISSING
    agent: AgentSection = field(default_factory=AgentSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    video: VideoSection = field(default_factory=VideoSection)
    logger: LoggerSection = field(default_factory=LoggerSection)
    faults: FaultsSection = field(default_factory=FaultsSection)
    method: str = "finetune"
    # Options of the method's config (hope_agent.methods.METHOD_CONFIGS), e.g. {coef: 1000}.
    method_options: dict[str, Any] = field(default_factory=dict)
    steps_per_task: int = 30_000
    seed: int = 0
    device: Device = Device.auto
    torch_threads: int = 1  # 0 = torch's default; small models run fastest on one thread
    # On CUDA, act (rollouts, evaluation, video) by replaying the backbone's step from a CUDA
    # graph: the same kernels, one launch (hope_agent.models.graphs); ignored on the CPU.
    cuda_graphs: bool = True
    # On CUDA, replay each PPO minibatch's forward, loss and backward from one CUDA graph per
    # minibatch shape (hope_agent.algos.graphed): same results to fp32 rounding. Backbones with a
    # capturable forward (HOPE, MLP), one process, methods without an extra loss; elsewhere, and
    # on the CPU, the update runs eagerly; with compile=true too, until that pair has run on a
    # GPU. HOPE's whole loop ran 1.65x faster with it on an H100
    # (results/h100_2026-12-07_graph/README.md).
    graph_update: bool = True
    # torch.compile HOPE's segment iteration and step core (fused kernels, default mode): same
    # results to fp32 rounding, a minute or more of compiling per shape on first use, so it pays
    # on long runs. HOPE backbones only.
    compile: bool = False
    # Continue the run in the run directory from its newest valid checkpoint (a fresh start when
    # it has none); without it, a run directory that already holds checkpoints is refused.
    resume: bool = False


@dataclass
class EvaluateConfig:
    """Schema of ``configs/eval.yaml`` (``hope-evaluate`` / ``scripts/evaluate_forgetting.py``).

    Give ``run_dir`` (every stage checkpoint of a run, or only ``stage``) or ``checkpoint``.
    ``null`` options keep the run's own settings.
    """

    run_dir: str | None = None
    checkpoint: str | None = None
    stage: int | None = None
    out_dir: str | None = None  # default: <run_dir>/evaluation (or beside the checkpoint)
    episodes: int | None = None
    in_context_gain: bool | None = None
    online_cms: bool | None = None
    device: Device = Device.auto
    torch_threads: int = 1


@dataclass
class RecordConfig:
    """Schema of ``configs/record.yaml`` (``hope-record`` / ``scripts/record_rollouts.py``)."""

    checkpoint: str = MISSING
    out_dir: str | None = None  # default: <checkpoint>/../../videos/<checkpoint name>
    episodes: int = 1
    deterministic: bool = True
    height: int = 240
    width: int = 320
    fps: int = 30
    frame_skip: int = 1
    gif: bool = False
    device: Device = Device.auto
    torch_threads: int = 1


# Keys a resumed run may change: they alter where and how it runs, not what it computes.
RESUMABLE_CHANGES = (
    "resume",
    "device",
    "torch_threads",
    "cuda_graphs",
    "graph_update",
    "compile",
    "logger",
    "faults",
)


def flatten_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config container as ``{"a.b.c": leaf}`` (lists are leaves)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def shared_problems(cfg: Any) -> list[str]:
    """What is wrong with the keys every entry point's config shares (budget, seeds, threads,
    ``eval`` and ``video``), each as ``"<key> <rule> (got <value>)"``: the checks of
    :func:`hope_agent.build.validate_train_config` and of the SB3 baselines' config alike."""
    e, v = cfg.eval, cfg.video
    rules = [
        ("steps_per_task", cfg.steps_per_task >= 1, "must be >= 1"),
        ("seed", cfg.seed >= 0, "must be >= 0 (env seeds are derived from it)"),
        ("torch_threads", cfg.torch_threads >= 0, "must be >= 0 (0 = torch's default)"),
        ("eval.seed", e.seed >= 0, "must be >= 0"),
        ("eval.every", e.every >= 0, "must be >= 0 (0 = at task ends only)"),
        ("eval.episodes", e.episodes >= 0, "must be >= 0"),
        ("eval.smooth_last", e.smooth_last is None or e.smooth_last >= 1, "must be null or >= 1"),
        ("video.episodes", v.episodes >= 1, "must be >= 1"),
        ("video.frame_skip", v.frame_skip >= 1, "must be >= 1"),
        ("video.fps", v.fps >= 1, "must be >= 1"),
        ("video.height", v.height >= 16, "must be >= 16"),
        ("video.width", v.width >= 16, "must be >= 16"),
    ]
    return [
        f"{key} {rule} (got {OmegaConf.select(cfg, key)!r})" for key, ok, rule in rules if not ok
    ]


def video_settings(video: Any) -> VideoSettings | None:
    """A ``video`` section (:class:`VideoSection`) as :class:`VideoSettings` (``None``: off)."""
    if not video.enabled:
        return None
    return VideoSettings(
        episodes=int(video.episodes),
        size=(int(video.height), int(video.width)),
        fps=int(video.fps),
        frame_skip=int(video.frame_skip),
        gif=bool(video.gif),
    )


def register_configs() -> None:
    """Register the schemas ``train_schema``, ``eval_schema`` and ``record_schema`` in Hydra's
    ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvaluateConfig)
    cs.store(name="record_schema", node=RecordConfig)

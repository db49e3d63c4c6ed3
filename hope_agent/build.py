"""The composition root: the only code that reads the training config and builds its parts.

It stands above :mod:`hope_agent.train`, :mod:`hope_agent.methods` and
:mod:`hope_agent.baselines` and injects one into the other. Every check of user input happens
here, before any work starts, and fails with one :class:`ConfigError` naming the problem and
the fix. Trained agents load through one map from checkpoint format to loader
(:data:`LOADERS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException
from torch import Tensor

from hope_agent.agents.actor import Actor
from hope_agent.agents.agent import Agent, AgentConfig, AgentOptions
from hope_agent.algos.ppo import PPO, PPOConfig
from hope_agent.baselines import sb3
from hope_agent.io import CheckpointError, load_checkpoint
from hope_agent.methods import METHODS, make_method
from hope_agent.models.base import Backbone
from hope_agent.models.factory import BACKBONES, make_backbone
from hope_agent.models.hope import Hope
from hope_agent.optim import M3, MultiTimescaleOptimizer, apply_group_settings, split_matrix_params
from hope_agent.rollout.batched import use_batched_envs
from hope_agent.rollout.vec import VecEnvFactory, make_vector_env
from hope_agent.train.config import (
    RESUMABLE_CHANGES,
    Device,
    OptimizerName,
    TaskEntry,
    TrainConfig,
    flatten_config,
    shared_problems,
    video_settings,
)
from hope_agent.train.distributed import LOCAL, RankLogger, World, share_normalizers
from hope_agent.train.evaluator import Evaluator, OnlineCMS
from hope_agent.train.faults import FaultSettings
from hope_agent.train.logger import Logger
from hope_agent.train.runner import (
    CHECKPOINT_FORMAT,
    CurriculumRunner,
    RunnerSettings,
    TrainingParts,
    latest_checkpoint,
)
from hope_agent.train.timing import LoopTimer
from hope_envs.curriculum import (
    Curriculum,
    CurriculumError,
    TaskSpec,
    reference_dirs,
    resolve_tasks,
)


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the fix."""


class OptimizerChain:
    """Several optimizers stepped as one (M3 on matrices + AdamW on the rest)."""

    def __init__(self, optimizers: Sequence[MultiTimescaleOptimizer]) -> None:
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Every group of every optimizer."""
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every gradient."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """Step every optimizer."""
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        """``{"chain": [state_dict of each optimizer]}``."""
        return {"chain": [opt.state_dict() for opt in self.optimizers]}

    def advance(self, clock: str, amount: int = 1) -> None:
        """Advance ``clock`` of every optimizer."""
        for opt in self.optimizers:
            opt.advance(clock, amount)

    def reset_state(self, params: Iterable[Tensor]) -> None:
        """Forget ``params``' state in every optimizer."""
        held = list(params)
        for opt in self.optimizers:
            opt.reset_state(held)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        chain = state["chain"]
        if len(chain) != len(self.optimizers):
            raise ValueError(
                f"optimizer state holds {len(chain)} optimizers, expected {len(self.optimizers)}"
            )
        for opt, sd in zip(self.optimizers, chain, strict=True):
            opt.load_state_dict(sd)


# ----------------------------------------------------------------------------- config checks
def resolve_device(device: Device | str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without CUDA is an error."""
    name = device.value if isinstance(device, Device) else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda but CUDA is not available here; use device=cpu or device=auto"
        )
    return torch.device(name)


def validate_train_config(cfg: DictConfig) -> None:
    """Check every value the schema's types cannot; raise one :class:`ConfigError` listing all
    problems."""
    try:
        # Keys added with a `+key=value` override escape Hydra's struct check, and a typed
        # config merged into the schema keeps them: only plain data meets the schema's check.
        plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        OmegaConf.merge(OmegaConf.structured(TrainConfig), plain)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config: {omegaconf_problem(e)}") from None
    problems = shared_problems(cfg)

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            problems.append(f"{key} {rule} (got {OmegaConf.select(cfg, key)!r})")

    ppo = cfg.ppo
    need(cfg.model.name in BACKBONES, "model.name", f"must be one of {', '.join(BACKBONES)}")
    need(cfg.model.d_model >= 1, "model.d_model", "must be >= 1")
    need(cfg.method in METHODS, "method", f"must be one of {', '.join(sorted(METHODS))}")
    need(ppo.num_envs >= 1, "ppo.num_envs", "must be >= 1")
    need(ppo.seq_len >= 1, "ppo.seq_len", "must be >= 1")
    need(
        ppo.rollout_len >= 1 and ppo.seq_len >= 1 and ppo.rollout_len % ppo.seq_len == 0,
        "ppo.rollout_len",
        f"must be a positive multiple of ppo.seq_len ({ppo.seq_len})",
    )
    n_chunks = (ppo.rollout_len // max(ppo.seq_len, 1)) * ppo.num_envs
    need(
        n_chunks < 1 or 1 <= ppo.num_minibatches <= n_chunks,
        "ppo.num_minibatches",
        f"must lie in [1, {n_chunks}] (rollout_len / seq_len x num_envs chunks)",
    )
    need(ppo.lr > 0, "ppo.lr", "must be > 0")
    need(ppo.weight_decay >= 0, "ppo.weight_decay", "must be >= 0")
    m3 = ppo.m3
    need(m3.lr > 0, "ppo.m3.lr", "must be > 0")
    need(
        len(m3.betas) == 3 and all(0 <= b < 1 for b in m3.betas),
        "ppo.m3.betas",
        "must be three numbers in [0, 1)",
    )
    need(m3.slow_every >= 1, "ppo.m3.slow_every", "must be >= 1")
    need(m3.ns_steps >= 1, "ppo.m3.ns_steps", "must be >= 1")
    need(
        ppo.belief_coef <= 0 or cfg.agent.belief_classes > 0,
        "ppo.belief_coef",
        "> 0 needs a belief head: set agent.belief_classes (e.g. 2 for PointAdapt with two goals)",
    )
    need(cfg.agent.obs_clip > 0, "agent.obs_clip", "must be > 0")
    need(cfg.agent.reward_clip > 0, "agent.reward_clip", "must be > 0")
    need(cfg.checkpoint.every >= 0, "checkpoint.every", "must be >= 0 (0 = at task ends only)")
    need(cfg.eval.online_cms.lr > 0, "eval.online_cms.lr", "must be > 0")
    ref, n_tasks = cfg.eval.reference_auc, len(cfg.curriculum.tasks)
    need(
        ref is None or (len(ref) == n_tasks and all(math.isfinite(v) and 0 <= v <= 1 for v in ref)),
        "eval.reference_auc",
        f"must be null or {n_tasks} numbers in [0, 1], one single-task AUC per task",
    )
    try:
        PPOConfig(**{f.name: ppo[f.name] for f in fields(PPOConfig)})
    except ValueError as e:
        problems.append(str(e))
    try:
        fault_settings(cfg)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def omegaconf_problem(error: OmegaConfBaseException) -> str:
    """One line naming the key and the problem of an OmegaConf error (its message spans lines)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    key = getattr(error, "full_key", None)
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
        schema = getattr(error, "object_type", None)
        where = (
            f"{schema.__name__} in {schema.__module__}"
            if isinstance(schema, type) and is_dataclass(schema)
            else "the schemas in hope_agent/train/config.py"
        )
        return f"unknown key {key or ''} ({first}); check its spelling against {where}"
    if f"is not a subclass of {TaskEntry.__name__}" in first:
        # A plain id where a task mapping belongs (curriculum.tasks=[Hopper-v5]).
        return (
            f"{key}: a curriculum task is a mapping, write {{id:NAME}} "
            f"(e.g. curriculum.tasks=[{{id:Hopper-v5}}]); {first}"
        )
    return f"{key}: {first}" if key else first


def fault_settings(cfg: DictConfig) -> FaultSettings:
    """The ``faults`` section as :class:`FaultSettings` (``ValueError`` for a bad value)."""
    return FaultSettings(**{f.name: cfg.faults[f.name] for f in fields(FaultSettings)})


def as_train_config(raw: DictConfig | dict[str, Any] | str) -> DictConfig:
    """A saved config (yaml text, dict or DictConfig) validated against :class:`TrainConfig`."""
    loaded = OmegaConf.create(raw) if isinstance(raw, str) else raw
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), loaded)
    assert isinstance(merged, DictConfig)
    return merged


# ----------------------------------------------------------------------------- parts
def build_curriculum(cfg: DictConfig) -> Curriculum:
    """Resolve the curriculum's tasks and their common spaces."""
    tasks = OmegaConf.to_container(cfg.curriculum.tasks, resolve=True)
    assert isinstance(tasks, list)
    return Curriculum.of(resolve_tasks(tasks, int(cfg.steps_per_task)))


def build_agent(cfg: DictConfig, curriculum: Curriculum) -> Agent:
    """The backbone of ``cfg.model`` with the agent heads of ``cfg.agent``."""
    raw = OmegaConf.to_container(cfg.model.kwargs, resolve=True)
    assert isinstance(raw, dict)
    # Config dataclasses take tuples for sequences (e.g. cms_periods); yaml gives lists.
    kwargs = {str(k): tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    try:
        backbone = make_backbone(str(cfg.model.name), int(cfg.model.d_model), **kwargs)
        agent = Agent(
            backbone,
            AgentConfig(
                obs_dim=curriculum.obs_dim,
                act_dim=curriculum.act_dim,
                num_tasks=len(curriculum),
                **{f.name: cfg.agent[f.name] for f in fields(AgentOptions)},
            ),
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model={cfg.model.name}: {e}") from e
    agent.cuda_graphs = bool(cfg.get("cuda_graphs", True))
    return agent


def compile_backbone(backbone: Backbone[Any]) -> None:
    """``compile=true``: HOPE's fast paths through ``torch.compile`` in the default mode, on every
    device; one :class:`ConfigError` for a backbone without them.

    Not ``"reduce-overhead"`` for the training segments on CUDA: a training run with it (H100,
    2026-12-07) died of ``CUDA error: unspecified launch failure`` in a rollout, and in isolation
    it beat the default mode by 1.04-1.37x only (results/h100_2026-12-07_compile/README.md).
    """
    if not isinstance(backbone, Hope):
        raise ConfigError(
            f"compile=true applies to the HOPE backbones (model=hope, hope_no_cms); "
            f"{type(backbone).__name__} has no compiled path: drop compile=true"
        )
    backbone.compile_fast_paths()


def build_optimizer(agent: Agent, cfg: DictConfig) -> MultiTimescaleOptimizer | OptimizerChain:
    """The outer optimizer over the agent's groups; each group updates on its own period."""
    ppo = cfg.ppo
    settings = OmegaConf.to_container(ppo.groups, resolve=True)
    assert isinstance(settings, dict)
    groups = apply_group_settings(agent.param_groups(), {str(k): v for k, v in settings.items()})
    adamw = {"lr": float(ppo.lr), "weight_decay": float(ppo.weight_decay), "eps": 1e-5}
    if ppo.optimizer == OptimizerName.adamw:
        return MultiTimescaleOptimizer(groups, base=torch.optim.AdamW, **adamw)
    matrix_groups, other_groups = [], []
    for g in groups:
        matrices, others = split_matrix_params(g["params"])
        if matrices:
            matrix_groups.append({**g, "params": matrices})
        if others:
            other_groups.append({**g, "params": others})
    m3 = ppo.m3
    chain = [
        MultiTimescaleOptimizer(
            matrix_groups,
            base=M3,
            lr=float(m3.lr),
            betas=tuple(float(b) for b in m3.betas),
            alpha=float(m3.alpha),
            slow_every=int(m3.slow_every),
            ns_steps=int(m3.ns_steps),
            eps=float(m3.eps),
        )
    ]
    if other_groups:
        chain.append(MultiTimescaleOptimizer(other_groups, base=torch.optim.AdamW, **adamw))
    return OptimizerChain(chain)


def build_evaluator(
    cfg: DictConfig,
    curriculum: Curriculum,
    actor: Actor,
    *,
    episodes: int | None = None,
    online_cms: bool | None = None,
) -> Evaluator:
    """The evaluator of ``cfg.eval``; ``episodes`` and ``online_cms`` (``None``: the config's)
    override it, and the online-CMS levels are checked against ``actor``."""
    e = cfg.eval
    online = None
    if e.online_cms.enabled if online_cms is None else online_cms:
        online = OnlineCMS(list(e.online_cms.levels), float(e.online_cms.lr))
        if not isinstance(actor, Agent):
            raise ConfigError("online_cms=true needs a HOPE agent's checkpoint, not a baseline's")
        try:
            online.chosen(actor)
        except ValueError as err:
            raise ConfigError(str(err)) from err
    try:
        refs = reference_dirs(e.reference_dir)
    except CurriculumError as err:
        raise ConfigError(str(err)) from err
    return Evaluator(
        curriculum,
        int(e.episodes if episodes is None else episodes),
        int(e.seed),
        online_cms=online,
        obs_limit=float(cfg.faults.obs_limit),
        reference_dirs=refs,
    )


def batched_envs(cfg: DictConfig, specs: Sequence[TaskSpec], own_envs: bool) -> bool:
    """Whether the training envs step as one batch (:func:`use_batched_envs`): unset, only
    where also ``ppo.async_envs`` is off and the method takes its envs from
    :func:`make_vector_env`; ``true`` with either is refused with the fix."""
    asked = cfg.ppo.get("batched_envs", None)
    if asked is None and (own_envs or cfg.ppo.async_envs):
        return False
    if asked and own_envs:
        raise ConfigError(
            f"ppo.batched_envs=true: method={cfg.method} builds its own training envs; "
            "drop ppo.batched_envs."
        )
    if asked and cfg.ppo.async_envs:
        raise ConfigError(
            "ppo.batched_envs=true steps the envs in this process, ppo.async_envs=true in worker "
            "processes: choose one."
        )
    try:
        return use_batched_envs(asked, specs, "ppo.batched_envs")
    except ValueError as e:
        raise ConfigError(str(e)) from e


def build_runner(cfg: DictConfig, run_dir: Path, world: World = LOCAL) -> CurriculumRunner:
    """Every part of a training run, checked and wired; nothing has run yet.

    ``world``: the data-parallel ranks this process is one of
    (:func:`hope_agent.train.distributed.init_world`); every rank builds the same agent.
    """
    validate_train_config(cfg)
    device = resolve_device(cfg.device)
    try:
        curriculum = build_curriculum(cfg)
    except CurriculumError as e:
        raise ConfigError(str(e)) from e
    torch.manual_seed(int(cfg.seed))
    agent = build_agent(cfg, curriculum).to(device)
    if cfg.get("compile", False):
        compile_backbone(agent.backbone)
    options = OmegaConf.to_container(cfg.method_options, resolve=True)
    assert isinstance(options, dict)
    try:
        method = make_method(str(cfg.method), {str(k): v for k, v in options.items()})
    except ValueError as e:
        raise ConfigError(f"method={cfg.method}: {e}") from e
    faults = fault_settings(cfg)
    own_envs = method.env_factory(curriculum.specs, faults.obs_limit)
    batched = batched_envs(cfg, curriculum.specs, own_envs is not None)
    make_envs: VecEnvFactory = own_envs or partial(
        make_vector_env, obs_limit=faults.obs_limit, batched=batched
    )
    ppo_cfg = PPOConfig(**{f.name: cfg.ppo[f.name] for f in fields(PPOConfig)})
    try:
        optimizer = build_optimizer(agent, cfg)
    except ValueError as e:
        raise ConfigError(f"ppo.optimizer={cfg.ppo.optimizer.name}, ppo.groups: {e}") from e
    ppo = PPO(
        agent,
        optimizer,
        ppo_cfg,
        np.random.default_rng(int(cfg.seed)),
        extra_loss=method.loss_hook(),
        sync=world if world.size > 1 else None,
        graph_update=bool(cfg.get("graph_update", True)),
    )
    share_normalizers(agent, world)
    settings = RunnerSettings(
        num_envs=int(cfg.ppo.num_envs),
        rollout_len=int(cfg.ppo.rollout_len),
        seq_len=int(cfg.ppo.seq_len),
        seed=int(cfg.seed),
        async_envs=bool(cfg.ppo.async_envs),
        eval_every=int(cfg.eval.every),
        checkpoint_every=int(cfg.checkpoint.every),
        belief_key=str(cfg.ppo.belief_key) if ppo_cfg.belief_coef > 0 else None,
        anneal_lr=bool(cfg.ppo.anneal_lr),
        carry_state_across_tasks=bool(cfg.agent.carry_state_across_tasks),
        in_context_gain=bool(cfg.eval.in_context_gain),
        smooth_last=cfg.eval.smooth_last,
        reference_auc=None if cfg.eval.reference_auc is None else list(cfg.eval.reference_auc),
        eval_seed=int(cfg.eval.seed),
        video=video_settings(cfg.video),
        faults=faults,
    )
    per_rollout = settings.rollout_len * settings.num_envs * world.size
    total = sum(-(-s.steps // per_rollout) * per_rollout for s in curriculum.specs)
    logger = (
        Logger(
            run_dir,
            total,
            tensorboard=bool(cfg.logger.tensorboard),
            progress=bool(cfg.logger.progress),
        )
        if world.is_main
        else RankLogger(total)
    )
    parts = TrainingParts(
        agent=agent,
        ppo=ppo,
        evaluator=build_evaluator(cfg, curriculum, agent),
        logger=logger,
        method=method,
        make_envs=make_envs,
        timer=LoopTimer(breakdown=bool(cfg.logger.timing), device=device),
    )
    return CurriculumRunner(
        curriculum,
        parts,
        settings,
        run_dir,
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        world=world,
    )


# ----------------------------------------------------------------------------- checkpoints
def resume_point(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint a run in ``run_dir`` continues from, or ``None`` for a fresh start.

    Without ``resume=true`` a run directory that already holds checkpoints is refused (its
    files would be mixed with the new run's). With it, the most advanced valid checkpoint is
    chosen (defective ones are skipped with a warning); none at all means a fresh start, but
    checkpoints that are all defective, or a config that differs from the checkpoint's in
    anything but :data:`RESUMABLE_CHANGES`, raise :class:`ConfigError` /
    :class:`~hope_agent.io.CheckpointError`.
    """
    validate_train_config(cfg)
    folder = Path(run_dir) / "checkpoints"
    existing = (
        sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        if folder.is_dir()
        else []
    )
    if not cfg.resume:
        if existing:
            raise ConfigError(
                f"{run_dir} already holds checkpoints ({', '.join(existing[:3])}...); pass "
                "resume=true to continue that run, or choose a new hydra.run.dir"
            )
        return None
    found = latest_checkpoint(folder)
    if found is None:
        if existing:
            raise CheckpointError(
                f"resume=true but no checkpoint under {folder} is valid ({', '.join(existing)}; "
                "see the warnings above); remove the defective ones or start a new run directory"
            )
        return None
    saved = load_checkpoint(found).get("config")
    if not isinstance(saved, str):
        raise CheckpointError(f"{found} holds no run config; it cannot be resumed")
    diff = config_differences(saved, cfg)
    if diff:
        raise ConfigError(
            f"cannot resume {run_dir}: the config differs from its checkpoint's at "
            f"{'; '.join(diff)}; resume with the run's own overrides"
        )
    return found


def config_differences(saved_yaml: str, cfg: DictConfig) -> list[str]:
    """``key (checkpoint X, now Y)`` for every value that differs between a checkpoint's config
    and ``cfg``, ignoring :data:`RESUMABLE_CHANGES`."""
    before = flatten_config(OmegaConf.to_container(as_train_config(saved_yaml), resolve=True))
    after = flatten_config(OmegaConf.to_container(as_train_config(cfg), resolve=True))
    keys = sorted(set(before) | set(after))
    return [
        f"{k} (checkpoint {before.get(k)!r}, now {after.get(k)!r})"
        for k in keys
        if before.get(k) != after.get(k) and k.split(".")[0] not in RESUMABLE_CHANGES
    ]


@dataclass
class TrainedActor:
    """A checkpoint's actor with the run config, curriculum and checkpoint tree it came from."""

    actor: Actor
    cfg: DictConfig
    curriculum: Curriculum
    tree: dict[str, Any]


def _load_agent(
    checkpoint: Path, tree: dict[str, Any], saved: Any, device: torch.device
) -> TrainedActor:
    if not isinstance(tree.get("agent"), dict):
        raise CheckpointError(
            f"{checkpoint} holds no 'agent' entry; pass a folder under <run_dir>/checkpoints/"
        )
    cfg = as_train_config(saved)
    validate_train_config(cfg)
    curriculum = _matching_curriculum(checkpoint, cfg, tree["meta"])
    agent = build_agent(cfg, curriculum).to(device)
    try:
        agent.load_state_dict(tree["agent"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {checkpoint} does not match model={cfg.model.name} of the config "
            f"({' '.join(first[:3])}); evaluate it with the run's own config (run_dir=...)"
        ) from e
    return TrainedActor(agent, cfg, curriculum, tree)


def _load_sb3(
    checkpoint: Path, tree: dict[str, Any], saved: Any, device: torch.device
) -> TrainedActor:
    try:
        cfg = sb3.eval_config(saved)
    except ValueError as e:
        raise CheckpointError(f"{checkpoint} is an SB3 checkpoint but {e}") from None
    curriculum = _matching_curriculum(checkpoint, cfg, tree["meta"])
    return TrainedActor(sb3.actor_from_tree(tree, device), cfg, curriculum, tree)


def _matching_curriculum(checkpoint: Path, cfg: DictConfig, meta: dict[str, Any]) -> Curriculum:
    curriculum = build_curriculum(cfg)
    expected = {
        "obs_dim": curriculum.obs_dim,
        "act_dim": curriculum.act_dim,
        "tasks": curriculum.names,
    }
    found = {k: meta.get(k) for k in expected}
    if found != expected:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not match the config: it was saved for {found}, the "
            f"config gives {expected}; evaluate it with the run's own config (run_dir=...)"
        )
    return curriculum


# Checkpoint format family (the part of ``meta.format`` before the version) -> loader.
LOADERS: dict[str, Callable[[Path, dict[str, Any], Any, torch.device], TrainedActor]] = {
    CHECKPOINT_FORMAT.split("/")[0]: _load_agent,
    sb3.CHECKPOINT_FORMAT.split("/")[0]: _load_sb3,
}


def load_trained_agent(
    checkpoint: Path, cfg: DictConfig | None, device: torch.device
) -> TrainedActor:
    """Rebuild the actor of a checkpoint of any known format (:data:`LOADERS`: our agents, every
    version, and the SB3 baselines) with its weights and normalisers.

    ``cfg`` (a run's saved config) defaults to the config stored in the checkpoint. A
    checkpoint that does not match the config, or of an unknown format, raises
    :class:`~hope_agent.io.CheckpointError` saying why.
    """
    tree = load_checkpoint(checkpoint, map_location=device)
    meta = tree.get("meta")
    found = meta.get("format") if isinstance(meta, dict) else None
    loader = LOADERS.get(str(found).split("/")[0]) if found is not None else None
    if loader is None:
        raise CheckpointError(
            f"{checkpoint} is not a checkpoint of hope_agent (format {found!r}; known: "
            f"{', '.join(sorted(LOADERS))}); pass a folder under <run_dir>/checkpoints/"
        )
    return loader(checkpoint, tree, tree["config"] if cfg is None else cfg, device)

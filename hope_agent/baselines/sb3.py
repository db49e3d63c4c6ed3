"""Stable-Baselines3 baselines on our curricula: PPO and SAC with MLP policies, fine-tuned task
after task (SB3's own training, nothing reimplemented), evaluated by our evaluator into the same
matrices, metrics, plots and videos (``docs/baselines.md``).

``VecNormalize`` (on by default) keeps its statistics across tasks, as our agent's normalisers
do; SAC empties its replay buffer at each task switch by default (Continual World's setting).
:class:`SB3Actor` implements the acting contract :class:`~hope_agent.agents.actor.Actor` for an
SB3 policy, so evaluation and videos drive it through the same episode driver as our agent (no
memory, and a NaN world-model error). :func:`run_sb3_curriculum` writes what
:class:`~hope_agent.train.runner.CurriculumRunner` writes, with pickle-free checkpoints that
:func:`load_actor` (and ``hope-evaluate``, ``hope-record``) reload.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from gymnasium.spaces import Box
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)
from stable_baselines3.sac.policies import SACPolicy
from torch import Tensor

from hope_agent.agents.actor import Actor, AgentOutput, AgentState, StepInputs, gaussian_log_prob
from hope_agent.io import atomic_write_text, load_checkpoint, save_checkpoint
from hope_agent.models.state import State
from hope_agent.options import config_value
from hope_agent.rollout.batched import PointBatchEnv, use_batched_envs
from hope_agent.train.config import (
    CurriculumSection,
    TrainConfig,
    VideoSection,
    shared_problems,
    video_settings,
)
from hope_agent.train.evaluator import Evaluator, RenderError, VideoSettings, write_task_videos
from hope_agent.train.report import EvalEvent, RunRecord, write_results
from hope_agent.train.runner import RunSummary
from hope_envs.curriculum import Curriculum, TaskSpec, resolve_tasks

log = logging.getLogger(__name__)
ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC}
POLICIES: dict[str, type[BasePolicy]] = {"ppo": ActorCriticPolicy, "sac": SACPolicy}
# Arguments of PPO(...) / SAC(...) that the adapter passes itself.
ADAPTER_SETS = ("policy", "env", "seed", "device")
# Arguments of the policy's constructor that PPO / SAC pass themselves.
ALGO_SETS_IN_POLICY = ("observation_space", "action_space", "lr_schedule", "use_sde")
CHECKPOINT_FORMAT = "hope_agent.sb3/1"


@dataclass
class NoMemory(State):
    """The (empty) memory of a memoryless SB3 policy."""


class FrozenObsNormalizer:
    """SB3 ``VecNormalize``'s observation transform with frozen statistics (identity without).

    ``clip((obs - mean) / sqrt(var + eps), -clip, clip)`` on torch tensors.
    """

    def __init__(
        self, rms: RunningMeanStd | None, clip: float = 10.0, epsilon: float = 1e-8
    ) -> None:
        self.rms, self.clip, self.epsilon = rms, clip, epsilon

    def __call__(self, obs: Tensor) -> Tensor:
        """Normalise raw observations ``(..., obs_dim)``."""
        if self.rms is None:
            return obs
        mean = torch.as_tensor(self.rms.mean, dtype=obs.dtype, device=obs.device)
        var = torch.as_tensor(self.rms.var, dtype=obs.dtype, device=obs.device)
        return ((obs - mean) / torch.sqrt(var + self.epsilon)).clamp(-self.clip, self.clip)


class SB3Actor(Actor):
    """An SB3 PPO or SAC policy behind the acting contract (:class:`hope_agent.agents.Actor`).

    Actions follow the policy's own distribution, with the noise drawn from the caller's
    generator (so evaluations are reproducible): PPO samples ``mean + std * noise`` and the env
    receives it clipped to [-1, 1], as SB3's ``predict`` does; SAC samples
    ``tanh(mean + std * noise)``. Deterministic actions are the clipped mean (PPO) and
    ``tanh(mean)`` (SAC), equal to ``model.predict(..., deterministic=True)``. Rewards are not
    scaled: there is no reward-conditioned memory to feed.

    Args:
        policy: an ``ActorCriticPolicy`` (PPO) or ``SACPolicy`` (SAC) over ``Box(obs_dim,)``
            observations and ``Box(-1, 1, (act_dim,))`` actions, without gSDE.
        obs_rms: ``VecNormalize``'s observation statistics, or ``None`` (raw observations).
        clip_obs: ``VecNormalize``'s observation clip.
    """

    def __init__(
        self,
        policy: BasePolicy,
        obs_rms: RunningMeanStd | None = None,
        clip_obs: float = 10.0,
    ) -> None:
        if not isinstance(policy, (ActorCriticPolicy, SACPolicy)):
            raise TypeError(
                f"SB3Actor supports PPO (ActorCriticPolicy) and SAC (SACPolicy) policies, got "
                f"{type(policy).__name__}"
            )
        if policy.use_sde if isinstance(policy, ActorCriticPolicy) else policy.actor.use_sde:
            raise ValueError("SB3Actor does not support gSDE policies; train with use_sde=False")
        obs_shape = policy.observation_space.shape
        act_shape = policy.action_space.shape
        if obs_shape is None or act_shape is None or len(obs_shape) != 1 or len(act_shape) != 1:
            raise ValueError(
                "SB3Actor needs flat Box observation and action spaces (the curriculum's common "
                f"spaces), got {policy.observation_space} and {policy.action_space}"
            )
        self.sb3_policy = policy
        self.obs_dim, self.act_dim = int(obs_shape[0]), int(act_shape[0])
        self.obs_norm = FrozenObsNormalizer(obs_rms, clip_obs)

    def normalize_obs(self, obs: Tensor) -> Tensor:
        """Raw ``(B, obs_dim)`` observations through ``VecNormalize``'s frozen statistics."""
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(
                f"SB3Actor expects observations of shape (B, {self.obs_dim}), "
                f"got {tuple(obs.shape)}"
            )
        return self.obs_norm(obs.to(self.device))

    @property
    def device(self) -> torch.device:
        """Where the policy runs."""
        return self.sb3_policy.device

    def init_carry(self, batch_size: int) -> AgentState:
        """A fresh (memoryless) carry for ``batch_size`` rows."""
        return AgentState(
            memory=NoMemory(), prev_action=torch.zeros(batch_size, self.act_dim, device=self.device)
        )

    def scale_reward(self, reward: Tensor) -> Tensor:
        """Rewards as they are."""
        return reward

    def distribution(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean, log_std, value)`` of the policy's Gaussian (pre-tanh for SAC) at normalised
        ``obs``; ``value`` is PPO's state value, NaN for SAC (no state-value head)."""
        policy = self.sb3_policy
        policy.set_training_mode(False)
        if isinstance(policy, ActorCriticPolicy):
            normal = policy.get_distribution(obs).distribution
            assert isinstance(normal, torch.distributions.Normal)  # Box actions, no gSDE
            mean, log_std = normal.mean, normal.stddev.log()
            value = policy.predict_values(obs).squeeze(-1)
        else:
            assert isinstance(policy, SACPolicy)
            mean, log_std, _ = policy.actor.get_action_dist_params(obs)
            value = torch.full(mean.shape[:-1], float("nan"), device=mean.device)
        return mean, log_std, value

    @torch.no_grad()
    def step_heads(self, carry: AgentState, step: StepInputs) -> tuple[AgentOutput, State]:
        """The policy's Gaussian at the normalised observation; no memory, reward or task (and no
        gradient: SB3 trains its policy itself)."""
        mean, log_std, value = self.distribution(step.obs)
        return AgentOutput(mean=mean, log_std=log_std, value=value, features=mean), carry.memory

    def squash(self, sample: Tensor, out: AgentOutput) -> tuple[Tensor, Tensor]:
        """SAC squashes with tanh (with the change of variables, as SB3's
        ``SquashedDiagGaussian``); PPO's sample is the action."""
        log_prob = gaussian_log_prob(sample, out.mean, out.log_std)
        if not isinstance(self.sb3_policy, SACPolicy):
            return sample, log_prob
        action = torch.tanh(sample)
        return action, log_prob - torch.log(1.0 - action.square() + 1e-6).sum(-1)

    def predict_world(self, features: Tensor, env_action: Tensor) -> tuple[Tensor, Tensor]:
        """No world model: NaN predictions, so the world-model error is reported unavailable."""
        nan = float("nan")
        lead = features.shape[:-1]
        return (
            torch.full((*lead, self.obs_dim), nan, device=features.device),
            torch.full(lead, nan, device=features.device),
        )


@dataclass
class SB3Settings:
    """Options of :func:`run_sb3_curriculum` besides the curriculum, algorithm and seed.

    Attributes:
        n_envs: parallel envs of the SB3 ``VecEnv`` (SB3 counts steps over all of them).
        normalize: wrap the envs in ``VecNormalize`` (observations and rewards).
        reset_buffer_on_task_change: SAC: empty the replay buffer at each task switch.
        algo_kwargs: keyword arguments of ``PPO(...)`` / ``SAC(...)`` (e.g. ``n_steps``,
            ``batch_size``, ``learning_rate``, ``policy_kwargs``).
        eval_every: env steps between evaluations during training (0: at task ends only).
        eval_episodes: stochastic evaluation episodes per task (+1 deterministic).
        eval_seed: base seed of the evaluation episodes.
        smooth_last: Continual World smoothing of the performance matrix (``None``: off).
        reference_auc: per-task single-task AUCs, for forward transfer.
        video: rollout videos after each stage (``None``: none).
        device: where SB3 trains (``cpu`` is fastest for MLP policies).
        config_yaml: the resolved config, stored in every checkpoint.
        batched_envs: step the envs as one :class:`BatchedVecEnv` (every task must have
            batched envs) instead of ``DummyVecEnv``: the same transitions, faster.
    """

    n_envs: int = 8
    normalize: bool = True
    reset_buffer_on_task_change: bool = True
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 0
    eval_episodes: int = 10
    eval_seed: int = 100_000
    smooth_last: int | None = None
    reference_auc: list[float] | None = None
    video: VideoSettings | None = None
    device: str = "cpu"
    config_yaml: str = ""
    batched_envs: bool = False


class _PeriodicEvaluation(BaseCallback):
    """Evaluates every task each time SB3's step counter crosses a multiple of ``every``."""

    def __init__(self, run: _SB3Run, stage: int, stage_end: int) -> None:
        super().__init__()
        self.run, self.stage, self.stage_end = run, stage, stage_end
        self.previous = 0

    def _on_training_start(self) -> None:
        self.previous = self.num_timesteps

    def _on_step(self) -> bool:
        every = self.run.settings.eval_every
        current = self.num_timesteps
        # The task-end evaluation after learn() covers the stage's last step.
        if current < self.stage_end and current // every > self.previous // every:
            self.run.evaluate(self.stage, current, task_end=False)
        self.previous = current
        return True


class BatchedVecEnv(VecEnv):
    """SB3's ``VecEnv`` over a :class:`~hope_agent.rollout.batched.PointBatchEnv` of
    ``num_envs`` copies of ``spec`` with the curriculum's widths: what
    ``DummyVecEnv`` over the same tasks returns (same-step autoreset, the final observation in
    ``info["terminal_observation"]``, float32 rewards), with the batch's stepping."""

    def __init__(self, spec: TaskSpec, obs_dim: int, act_dim: int, num_envs: int) -> None:
        batch = PointBatchEnv(spec, obs_dim, act_dim, num_envs)
        super().__init__(num_envs, batch.single_observation_space, batch.single_action_space)
        self.batch = batch
        self._actions: np.ndarray | None = None

    def reset(self) -> VecEnvObs:
        """Reset every env with the seeds given to :meth:`seed` (once)."""
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        obs, infos = self.batch.reset(seed=seeds)
        self.reset_infos = _rows(infos, self.num_envs)
        self._reset_seeds()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        assert self._actions is not None
        obs, reward, terminated, truncated, info = self.batch.step(self._actions)
        dones = terminated | truncated
        infos = _rows(info, self.num_envs)
        for i, row in enumerate(infos):
            row["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        for done in np.flatnonzero(dones).tolist():
            infos[done]["terminal_observation"] = obs[done].copy()
            obs[done], self.reset_infos[done] = self.batch.reset_one(done)
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self.batch.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.batch.envs[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self.batch.envs[i], attr_name, value)

    def env_method(
        self, method_name: str, *args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        return [
            getattr(self.batch.envs[i], method_name)(*args, **kwargs)
            for i in self._get_indices(indices)
        ]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False for _ in self._get_indices(indices)]


def _rows(infos: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """A vector env's ``{key: values, "_key": present}`` infos as one dict per env."""
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, values in infos.items():
        if key.startswith("_"):
            continue
        for i in np.flatnonzero(infos[f"_{key}"]):
            rows[i][key] = values[i].item()
    return rows


class _SB3Run:
    """The state of one :func:`run_sb3_curriculum` call."""

    def __init__(
        self, curriculum: Curriculum, algo: str, seed: int, run_dir: Path, s: SB3Settings
    ) -> None:
        self.curriculum, self.specs = curriculum, curriculum.specs
        self.algo, self.seed, self.run_dir, self.settings = algo, seed, run_dir, s
        self.device = get_device(s.device)
        self.record = RunRecord(task_names=curriculum.names)
        self.evaluator = Evaluator(curriculum, s.eval_episodes, s.eval_seed)
        # R_random of the tasks the report normalises by the run itself, before any training.
        self.record.random_returns = self.evaluator.random_returns()
        self.model: BaseAlgorithm | None = None
        self.venv: VecEnv | None = None

    def make_venv(self, stage: int) -> VecEnv:
        s = self.settings
        c = self.curriculum
        inner: VecEnv = (
            BatchedVecEnv(self.specs[stage], c.obs_dim, c.act_dim, s.n_envs)
            if s.batched_envs
            else DummyVecEnv([partial(c.make_env, stage) for _ in range(s.n_envs)])
        )
        venv: VecEnv = VecMonitor(inner)
        if s.normalize:
            normalized = VecNormalize(venv, gamma=float(s.algo_kwargs.get("gamma", 0.99)))
            if isinstance(self.venv, VecNormalize):
                # The statistics carry across the switch, as our agent's normalisers do.
                normalized.obs_rms = self.venv.obs_rms
                normalized.ret_rms = self.venv.ret_rms
            venv = normalized
        venv.seed(self.seed * 1_000_003 + 10_000 * stage)
        return venv

    def actor(self) -> SB3Actor:
        assert self.model is not None
        rms = _obs_rms(self.venv)
        clip = self.venv.clip_obs if isinstance(self.venv, VecNormalize) else 10.0
        return SB3Actor(self.model.policy, None if rms is None else rms.copy(), clip)

    def evaluate(self, stage: int, global_step: int, task_end: bool) -> None:
        results = self.evaluator.evaluate(self.actor())
        self.record.events.append(EvalEvent(global_step, stage, task_end, results))

    def train_stage(self, stage: int) -> None:
        spec, s = self.specs[stage], self.settings
        old_venv = self.venv
        self.venv = self.make_venv(stage)
        if self.model is None:
            try:
                self.model = ALGOS[self.algo](
                    "MlpPolicy",
                    self.venv,
                    seed=self.seed,
                    device=self.device,
                    # SB3 writes into policy_kwargs: give it a copy of ours.
                    **copy.deepcopy(s.algo_kwargs),
                )
            except TypeError as e:
                # Names and annotated types were checked (algo_kwargs_problems); left are values
                # SB3 rejects deeper down, e.g. policy_kwargs.net_arch=5.
                raise ValueError(f"{self.algo}_kwargs: {e}") from e
            self.model.set_logger(configure(str(self.run_dir / "sb3"), ["csv", "tensorboard"]))
        else:
            self.model.set_env(self.venv, force_reset=True)
            replay = getattr(self.model, "replay_buffer", None)
            if replay is not None and s.reset_buffer_on_task_change:
                replay.reset()
        if old_venv is not None:
            old_venv.close()
        model = self.model
        start = model.num_timesteps
        self.record.stage_starts.append(start)
        callback = (
            _PeriodicEvaluation(self, stage, start + spec.steps) if s.eval_every > 0 else None
        )
        model.learn(
            total_timesteps=spec.steps,
            callback=callback,
            reset_num_timesteps=False,
            progress_bar=False,
        )
        self.evaluate(stage, model.num_timesteps, task_end=True)
        self.save(stage)
        if s.video is not None:
            try:
                self.videos(stage, s.video)
            except RenderError as e:
                # Videos are a view of the run, not part of it: train on without them.
                log.warning("no rollout videos for this run: %s", e)
                self.settings = s = dataclasses.replace(s, video=None)
        write_results(self.run_dir, self.record, s.smooth_last, s.reference_auc)

    def save(self, stage: int) -> None:
        assert self.model is not None
        rms = _obs_rms(self.venv)
        tree = {
            "policy": self.model.policy.state_dict(),
            "obs_rms": None
            if rms is None
            else {
                "mean": np.asarray(rms.mean, dtype=np.float64),
                "var": np.asarray(rms.var, dtype=np.float64),
                "count": float(rms.count),
                "clip": float(cast(VecNormalize, self.venv).clip_obs),
            },
            "progress": {
                "stage": stage,
                "global_step": int(self.model.num_timesteps),
                "stage_done": True,
                "stage_starts": list(self.record.stage_starts),
            },
            "random_returns": self.record.random_returns,
            "meta": {
                "format": CHECKPOINT_FORMAT,
                "algo": self.algo,
                "policy_kwargs": _plain_policy_kwargs(self.model.policy_kwargs),
                "obs_dim": self.curriculum.obs_dim,
                "act_dim": self.curriculum.act_dim,
                "tasks": self.curriculum.names,
                "task_ids": [spec.id for spec in self.specs],
            },
            "config": self.settings.config_yaml,
        }
        save_checkpoint(self.run_dir / "checkpoints" / f"stage_{stage:02d}", tree)

    def videos(self, stage: int, v: VideoSettings) -> None:
        folder = self.run_dir / "videos" / f"stage_{stage:02d}"
        write_task_videos(self.actor(), self.curriculum, folder, v, self.settings.eval_seed)


def _obs_rms(venv: VecEnv | None) -> RunningMeanStd | None:
    """``VecNormalize``'s observation statistics (``None`` without normalisation)."""
    if not isinstance(venv, VecNormalize):
        return None
    rms = venv.obs_rms
    assert isinstance(rms, RunningMeanStd)  # flat Box observations: one statistics object
    return rms


def _plain_policy_kwargs(policy_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``policy_kwargs`` that a checkpoint can store to rebuild the policy (plain values only)."""
    kwargs = dict(policy_kwargs or {})
    plain = {k: v for k, v in kwargs.items() if isinstance(v, (int, float, bool, str, list, dict))}
    dropped = sorted(set(kwargs) - set(plain))
    if dropped:
        raise ValueError(
            f"policy_kwargs {dropped} cannot be stored in a checkpoint (not plain values); "
            "use net_arch, log_std_init and other plain options"
        )
    return plain


def run_sb3_curriculum(
    specs: Sequence[TaskSpec],
    algo: str,
    steps_per_task: int | None,
    seed: int,
    run_dir: Path | str,
    settings: SB3Settings | None = None,
) -> RunSummary:
    """Fine-tune one SB3 ``algo`` model over the curriculum and evaluate it as our runner does.

    Args:
        specs: the curriculum's tasks (from :func:`hope_envs.curriculum.resolve_tasks`).
        algo: ``"ppo"`` or ``"sac"`` (``MlpPolicy``).
        steps_per_task: env steps per task; ``None`` keeps each spec's own ``steps``. PPO runs
            whole rollouts (``n_steps * n_envs``), so a stage may run a little longer.
        seed: seed of SB3 (weights, sampling) and of the training envs.
        run_dir: where every output goes (see the module docstring).
        settings: everything else (:class:`SB3Settings`).

    Returns:
        The final performance matrix and metrics, as :meth:`CurriculumRunner.run` returns them.
    """
    s = settings or SB3Settings()
    if algo not in ALGOS:
        raise ValueError(f"unknown SB3 algorithm {algo!r}; valid: {', '.join(ALGOS)}")
    if not specs:
        raise ValueError("run_sb3_curriculum needs at least one task")
    problems = [
        f"need {rule}"
        for rule, ok in (
            ("n_envs >= 1", s.n_envs >= 1),
            ("eval_every >= 0", s.eval_every >= 0),
            ("eval_episodes >= 0", s.eval_episodes >= 0),
            ("steps_per_task >= 1", steps_per_task is None or steps_per_task >= 1),
        )
        if not ok
    ]
    problems += algo_kwargs_problems(algo, s.algo_kwargs)
    if problems:
        raise ValueError(f"run_sb3_curriculum: {'; '.join(problems)}")
    if steps_per_task is not None:
        specs = [dataclasses.replace(spec, steps=int(steps_per_task)) for spec in specs]
    run_dir = Path(run_dir)
    torch.manual_seed(seed)
    start = time.perf_counter()
    run = _SB3Run(Curriculum.of(specs), algo, seed, run_dir, s)
    try:
        for stage in range(len(specs)):
            run.train_stage(stage)
    finally:
        run.evaluator.close()
        if run.venv is not None:
            run.venv.close()
    wall = time.perf_counter() - start
    assert run.model is not None
    steps = int(run.model.num_timesteps)
    metrics = write_results(
        run_dir,
        run.record,
        s.smooth_last,
        s.reference_auc,
        extra={"wall_time_s": wall, "env_steps": steps, "sb3_algo": algo},
        page=True,
    )
    return RunSummary(run_dir, run.record.matrix("perf"), metrics, wall, steps)


def load_actor(checkpoint: Path | str, device: str = "cpu") -> tuple[SB3Actor, dict[str, Any]]:
    """Rebuild the :class:`SB3Actor` of a checkpoint written by :func:`run_sb3_curriculum`.

    Returns ``(actor, tree)``; a directory that is not such a checkpoint raises
    :class:`~hope_agent.io.CheckpointError` (from loading) or ``ValueError``.
    """
    tree = load_checkpoint(checkpoint, map_location=device)
    meta = tree.get("meta", {})
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{checkpoint} is not an SB3 checkpoint of run_sb3_curriculum (format "
            f"{meta.get('format')!r}); our agent's checkpoints load with hope-evaluate"
        )
    return actor_from_tree(tree, device), tree


def actor_from_tree(tree: dict[str, Any], device: torch.device | str = "cpu") -> SB3Actor:
    """The :class:`SB3Actor` of a loaded SB3 checkpoint tree (format :data:`CHECKPOINT_FORMAT`)."""
    meta = tree["meta"]
    obs_space = Box(-np.inf, np.inf, (int(meta["obs_dim"]),), np.float32)
    act_space = Box(-1.0, 1.0, (int(meta["act_dim"]),), np.float32)
    policy_cls = cast(Any, POLICIES[str(meta["algo"])])
    policy = policy_cls(obs_space, act_space, lambda _: 0.0, **meta["policy_kwargs"])
    policy.load_state_dict(tree["policy"])
    policy.to(device)
    rms, clip = None, 10.0
    if tree["obs_rms"] is not None:
        stats = tree["obs_rms"]
        rms = RunningMeanStd(shape=(int(meta["obs_dim"]),))
        rms.mean = np.asarray(stats["mean"], dtype=np.float64)
        rms.var = np.asarray(stats["var"], dtype=np.float64)
        rms.count = float(stats["count"])
        clip = float(stats["clip"])
    return SB3Actor(policy, rms, clip)


def eval_config(saved: DictConfig | str) -> DictConfig:
    """An SB3 run's saved config (:class:`SB3TrainConfig`, yaml text or loaded) as a
    :class:`~hope_agent.train.config.TrainConfig` for ``hope-evaluate`` and ``hope-record``.

    It carries what evaluating and recording read: the curriculum, budget, seed, evaluation and
    video settings, device and threads, and the run's labels (``method``, ``model.name``);
    everything else keeps the schema's defaults (no online CMS, no in-context gain: an MLP
    policy has no memory). Raises ``ValueError`` naming a key the saved config lacks.
    """
    raw = OmegaConf.create(saved) if isinstance(saved, str) else saved
    try:
        picked = {
            "curriculum": raw.curriculum,
            "steps_per_task": raw.steps_per_task,
            "seed": raw.seed,
            "eval": {
                k: raw.eval[k]
                for k in ("every", "episodes", "seed", "smooth_last", "reference_auc")
            },
            "video": raw.video,
            "device": raw.device,
            "torch_threads": raw.torch_threads,
            "method": raw.method,
            "model": {"name": raw.model.name},
        }
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), picked)
    except OmegaConfBaseException as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"its config lacks what scripts/train_sb3.py saves ({first})") from None
    assert isinstance(merged, DictConfig)
    return merged


# ----------------------------------------------------------------------------- Hydra entry point
@dataclass
class SB3EvalSection:
    """Evaluation options (the meaning of :class:`hope_agent.train.config.EvalSection`); the
    interval is the trainer's (``configs/config.yaml``), so that AUCs sample alike."""

    every: int = 10_000
    episodes: int = 10
    seed: int = 100_000
    smooth_last: int | None = None
    reference_auc: list[float] | None = None


@dataclass
class SB3ModelSection:
    """The run's model label (read by the comparison tool): SB3's MLP policy of ``algo``."""

    name: str = "sb3_${algo}"


@dataclass
class SB3TrainConfig:
    """Schema of ``scripts/train_sb3.py``: the trainer's curriculum group with SB3's options.

    ``ppo_kwargs`` or ``sac_kwargs`` (whichever ``algo`` picks) go to ``PPO(...)`` / ``SAC(...)``;
    ``n_envs`` null means 8 for PPO and 1 for SAC. ``method`` and ``model`` only label the run
    (sequential fine-tuning of SB3's MLP policy) for :mod:`hope_agent.compare`.
    """

    defaults: list[Any] = field(default_factory=lambda: [{"curriculum": "fast"}, "_self_"])
    curriculum: CurriculumSection = MISSING
    algo: str = "ppo"
    steps_per_task: int = 40_000  # the trainer's (configs/config.yaml): same budget
    seed: int = 0
    n_envs: int | None = None
    normalize: bool = True
    reset_buffer_on_task_change: bool = True
    # The point-mass tasks stepped as one batch (BatchedVecEnv; the same transitions as
    # DummyVecEnv). null: wherever every task has batched envs; false: DummyVecEnv.
    batched_envs: bool | None = None
    ppo_kwargs: dict[str, Any] = field(
        default_factory=lambda: {
            "n_steps": 256,
            "batch_size": 256,
            "n_epochs": 10,
            "learning_rate": 3e-4,
            "policy_kwargs": {"net_arch": [64, 64]},
        }
    )
    sac_kwargs: dict[str, Any] = field(
        default_factory=lambda: {
            "learning_starts": 1000,
            "batch_size": 256,
            "policy_kwargs": {"net_arch": [256, 256]},
        }
    )
    eval: SB3EvalSection = field(default_factory=SB3EvalSection)
    video: VideoSection = field(default_factory=VideoSection)
    device: str = "cpu"
    torch_threads: int = 1
    method: str = "finetune"
    model: SB3ModelSection = field(default_factory=SB3ModelSection)
    # Hydra's own settings: where runs go (the trainer's naming scheme).
    hydra: Any = field(
        default_factory=lambda: {
            "run": {"dir": "runs/${curriculum.name}__${model.name}__${seed}__${now:%Y%m%d-%H%M%S}"},
            "sweep": {
                "dir": "multirun/${curriculum.name}__${model.name}__${now:%Y%m%d-%H%M%S}",
                "subdir": "${hydra.job.num}",
            },
            "job": {"name": "train_sb3"},
        }
    )


def register_sb3_config() -> None:
    """Register :class:`SB3TrainConfig` as ``sb3_config`` in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="sb3_config", node=SB3TrainConfig)


def algo_kwargs_problems(algo: str, kwargs: dict[str, Any]) -> list[str]:
    """What is wrong with ``kwargs`` for ``PPO(...)`` / ``SAC(...)`` of ``algo``, checked against
    the signatures of the algorithm's and its policy's constructors: keys they lack or that the
    adapter sets itself, values a config cannot give for the annotated types (a bool is no
    number), gSDE (the adapter cannot act with it) and ``policy_kwargs`` a checkpoint cannot
    store. Empty when fine; finer checks of the values are SB3's."""
    problems = []
    checked = (
        (f"{algo}_kwargs", kwargs, ALGOS[algo], ADAPTER_SETS),
        (
            f"{algo}_kwargs.policy_kwargs",
            kwargs.get("policy_kwargs") or {},
            POLICIES[algo],
            ALGO_SETS_IN_POLICY,
        ),
    )
    for where, given, cls, set_elsewhere in checked:
        params = inspect.signature(cls).parameters
        valid = [k for k in params if k not in set_elsewhere and not k.startswith("_")]
        unknown = sorted(set(given) - set(valid))
        if unknown:
            problems.append(
                f"{where} {unknown}: not options of stable_baselines3 {cls.__name__} (the adapter "
                f"and SB3 set {', '.join(set_elsewhere)}); valid: {', '.join(valid)}"
            )
        for key in sorted(set(given) & set(valid)):
            try:
                config_value(f"{where}.{key}", params[key].annotation, given[key])
            except ValueError as e:
                problems.append(str(e))
    if kwargs.get("use_sde"):
        problems.append(f"{algo}_kwargs.use_sde must be false (the adapter does not act with gSDE)")
    try:
        _plain_policy_kwargs(kwargs.get("policy_kwargs"))
    except ValueError as e:
        problems.append(f"{algo}_kwargs.{e}")
    return problems


def _config_problems(cfg: DictConfig) -> list[str]:
    """Every bad value of a composed :class:`SB3TrainConfig` the schema's types cannot catch."""
    try:
        # Keys added with `+key=value` escape Hydra's struct check: only plain data meets the
        # schema's.
        OmegaConf.merge(
            OmegaConf.structured(SB3TrainConfig), OmegaConf.to_container(cfg, resolve=True)
        )
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        first = str(e).strip().splitlines()[0]
        return [f"{key}: {first} (see SB3TrainConfig in hope_agent/baselines/sb3.py)"]
    algo = str(cfg.algo)
    rules = [
        ("algo", algo in ALGOS, f"must be one of {', '.join(ALGOS)}"),
        ("n_envs", cfg.n_envs is None or cfg.n_envs >= 1, "must be null or >= 1"),
        ("device", cfg.device in ("cpu", "cuda", "auto"), "must be cpu, cuda or auto"),
    ]
    problems = [
        f"{key} {rule} (got {OmegaConf.select(cfg, key)!r})" for key, ok, rule in rules if not ok
    ]
    problems += shared_problems(cfg)
    if algo in ALGOS:
        kwargs = OmegaConf.to_container(cfg[f"{algo}_kwargs"], resolve=True)
        assert isinstance(kwargs, dict)
        problems += algo_kwargs_problems(algo, {str(k): v for k, v in kwargs.items()})
    return problems


def train_sb3(cfg: DictConfig, run_dir: Path | str) -> RunSummary:
    """Run :func:`run_sb3_curriculum` from a composed :class:`SB3TrainConfig`.

    Checks every value first (one ``ValueError`` listing the problems: unknown keys, values out
    of range, options ``PPO(...)`` / ``SAC(...)`` do not take, a reference AUC per task), then
    writes the resolved config to ``run_dir/config.yaml`` and trains.
    """
    run_dir = Path(run_dir)
    problems = _config_problems(cfg)
    if problems:
        raise ValueError("invalid config: " + "; ".join(problems))
    algo = str(cfg.algo)
    tasks = OmegaConf.to_container(cfg.curriculum.tasks, resolve=True)
    assert isinstance(tasks, list)
    specs = resolve_tasks(tasks, int(cfg.steps_per_task))
    ref = cfg.eval.reference_auc
    if ref is not None and len(ref) != len(specs):
        raise ValueError(
            f"invalid config: eval.reference_auc needs one AUC per task ({len(specs)}), "
            f"got {len(ref)}"
        )
    try:
        batched = use_batched_envs(cfg.get("batched_envs"), specs, "batched_envs")
    except ValueError as e:
        raise ValueError(f"invalid config: {e}") from e
    if cfg.torch_threads > 0:
        torch.set_num_threads(int(cfg.torch_threads))
    kwargs = OmegaConf.to_container(cfg[f"{algo}_kwargs"], resolve=True)
    assert isinstance(kwargs, dict)
    yaml_text = OmegaConf.to_yaml(cfg, resolve=True)
    settings = SB3Settings(
        n_envs=int(cfg.n_envs if cfg.n_envs is not None else (8 if algo == "ppo" else 1)),
        normalize=bool(cfg.normalize),
        reset_buffer_on_task_change=bool(cfg.reset_buffer_on_task_change),
        algo_kwargs={str(k): val for k, val in kwargs.items()},
        eval_every=int(cfg.eval.every),
        eval_episodes=int(cfg.eval.episodes),
        eval_seed=int(cfg.eval.seed),
        smooth_last=cfg.eval.smooth_last,
        reference_auc=None if cfg.eval.reference_auc is None else list(cfg.eval.reference_auc),
        video=video_settings(cfg.video),
        device=str(cfg.device),
        config_yaml=yaml_text,
        batched_envs=batched,
    )
    atomic_write_text(run_dir / "config.yaml", yaml_text)
    return run_sb3_curriculum(specs, algo, None, int(cfg.seed), run_dir, settings)

"""Evaluation of an agent on every curriculum task, without any training step.

The protocol (CONTINUAL_RL.md): per task, ``episodes`` stochastic episodes plus one deterministic
one, every task's episodes side by side as one batch, fresh memory at each episode start and
frozen normalisers. Episode e of task j starts from seed ``seed + 1000 * j + e`` and task j's
action noise comes from a generator seeded ``seed + 1000 * j``, so an evaluation is a
deterministic function of the checkpoint. Only ``online_cms`` changes weights, on a copy.

Performance of a task: its success rate where it defines success; else the mean stochastic return
normalised with stored ``(R_random, R_reference)`` and clipped to [0, 1]; else NaN here, filled
by the run's report (:mod:`hope_agent.train.report`). World-model error: the squared error of the
predicted next-observation delta and reward over the episodes' steps, divided by that of the
"nothing changes" prediction (0 is perfect, 1 no better than that baseline).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import mujoco
import numpy as np
import torch

from hope_agent.agents.actor import Actor
from hope_agent.agents.agent import Agent
from hope_agent.io import safe_name
from hope_agent.metrics import bootstrap_ci, normalized_score
from hope_agent.optim import MultiTimescaleOptimizer
from hope_agent.rollout.driver import EpisodeDriver
from hope_agent.rollout.guard import EnvFaultGuard
from hope_agent.video import tile_videos, write_video
from hope_envs.curriculum import (
    REFERENCE_DIR,
    Curriculum,
    ReferenceDirs,
    TaskSpec,
    defines_success,
    reference_returns,
)

Normalisation = Literal["success", "reference", "run"]


@dataclass
class TaskEvaluation:
    """The outcome of evaluating one task.

    ``perf`` is the protocol's performance in [0, 1] (NaN when the task has neither success nor
    reference returns: the run's record fills it from ``mean_return``,
    :meth:`hope_agent.train.report.RunRecord.normalised_events`); ``*_deterministic`` refer to
    the deterministic episode. For a task whose episodes are trials of K sub-episodes
    (``info["trial_episode"]``, the ``adapt`` family), ``sub_episode_success[k]`` is the success
    rate of sub-episode k over the stochastic episodes and ``trial_gain`` is ``(mean, low,
    high)`` of sub-episode K-1's success minus sub-episode 0's, with a 90% bootstrap interval
    over the episodes.
    """

    task: str
    perf: float
    perf_deterministic: float
    success_rate: float | None
    mean_return: float
    return_deterministic: float
    wm_error: float
    episode_length: float
    sub_episode_success: list[float] | None = None
    trial_gain: list[float] | None = None


def cms_group_names(agent: Agent) -> list[str]:
    """Names of the backbone's CMS level groups (``cms.*``), in order."""
    return [
        str(g["name"])
        for g in agent.backbone.param_groups()
        if str(g.get("name", "")).startswith("cms.")
    ]


class OnlineCMS:
    """Deployment clock (HOPE.md section 3): chosen CMS levels learn while the agent acts.

    Each level takes a plain gradient step, ``θ_l ← θ_l − lr · Σ ∇θ_l L_obs``, every ``P_l`` env
    steps (its own period), where ``L_obs`` is the world model's squared error on the
    next-observation delta, averaged over observation dims and live episodes. Neither the reward
    prediction nor a trainer takes part (the reward only enters as the token's input, as in
    training). It always works on a copy, so the trained agent is never modified.

    Args:
        levels: CMS group names (``cms.0``, ...); empty = every CMS level of the backbone.
        lr: inner learning rate.
    """

    def __init__(self, levels: Sequence[str], lr: float) -> None:
        if lr <= 0:
            raise ValueError(f"eval.online_cms.lr must be > 0, got {lr}")
        self.levels, self.lr = list(levels), lr

    def chosen(self, agent: Agent) -> list[str]:
        """The level names this adapter trains on ``agent`` (clear error if there are none)."""
        available = cms_group_names(agent)
        levels = self.levels or available
        unknown = [name for name in levels if name not in available]
        if not levels or unknown:
            raise ValueError(
                f"eval.online_cms needs CMS levels of the backbone; asked for "
                f"{self.levels or 'every level'}, the backbone has {available or 'none'} "
                "(use a hope or hope_attention model, or name existing levels)"
            )
        return levels

    def adapt(self, actor: Actor) -> tuple[Agent, MultiTimescaleOptimizer]:
        """A copy of ``actor`` (an :class:`Agent`) whose only trainable parameters are the chosen
        levels, and their optimizer (SGD on each level's period)."""
        if not isinstance(actor, Agent):
            raise ValueError(
                f"eval.online_cms adapts a HOPE agent's CMS levels; {type(actor).__name__} has none"
            )
        agent = actor
        levels = set(self.chosen(agent))
        clone = copy.deepcopy(agent)
        # Groups first: backbones list only trainable parameters in their groups.
        groups = [
            {"params": list(g["params"]), "period": int(g["period"]), "name": g["name"]}
            for g in clone.backbone.param_groups()
            if g.get("name") in levels
        ]
        for p in clone.parameters():
            p.requires_grad_(False)
        for g in groups:
            for p in g["params"]:
                p.requires_grad_(True)
        return clone, MultiTimescaleOptimizer(groups, base=torch.optim.SGD, lr=self.lr)


class _TrialRecord:
    """Success of each sub-episode of each row, from the ``adapt`` family's info keys
    (``trial_episode``, ``sub_episode_end``, ``success``; see ``hope_envs.point_adapt``)."""

    def __init__(self, rows: int) -> None:
        self.success: dict[tuple[int, int], bool] = {}
        self.rows = rows

    def add(self, infos: dict, valid: np.ndarray) -> None:
        if "sub_episode_end" not in infos:
            return
        ends = np.asarray(infos["_sub_episode_end"], dtype=bool) & valid
        for i in np.flatnonzero(ends):
            if bool(infos["sub_episode_end"][i]):
                k = int(infos["trial_episode"][i])
                self.success[(int(i), k)] = bool(infos.get("success", [False] * self.rows)[i])

    def summary(self, rows: slice) -> dict[str, list[float] | None]:
        """Per-sub-episode success and the trial gain of ``rows``; empty when none of them
        played trials (a task of another family evaluated in the same batch)."""
        wanted = set(range(self.rows)[rows])
        found = {key: ok for key, ok in self.success.items() if key[0] in wanted}
        if not found:
            return {}
        k_count = 1 + max(k for _, k in found)
        table = np.zeros((self.rows, k_count))
        for (i, k), ok in found.items():
            table[i, k] = float(ok)
        table = table[rows]
        gain = table[:, -1] - table[:, 0]
        return {
            "sub_episode_success": table.mean(axis=0).tolist(),
            "trial_gain": list(bootstrap_ci(gain)),
        }


def normalisation_kind(spec: TaskSpec, directory: ReferenceDirs = REFERENCE_DIR) -> Normalisation:
    """How the task's performance is measured: ``success`` (its success rate), ``reference``
    (stored reference returns in ``directory``) or ``run`` (neither: the report normalises with
    the run's own random-policy return and best evaluation)."""
    if defines_success(spec):
        return "success"
    return "reference" if reference_returns(spec, directory=directory) is not None else "run"


def task_performance(
    spec: TaskSpec,
    successes: np.ndarray,
    returns: np.ndarray,
    directory: ReferenceDirs = REFERENCE_DIR,
) -> float:
    """Performance in [0, 1] of episodes with any-step ``successes`` and ``returns`` (NaN when the
    task has neither a success criterion nor reference returns stored in ``directory``)."""
    if successes.size == 0:
        return float("nan")
    if defines_success(spec):
        return float(np.mean(successes))
    ref = reference_returns(spec, directory=directory)
    if ref is None:
        return float("nan")
    return float(normalized_score(float(np.mean(returns)), ref[0], ref[1]))


class Evaluator:
    """Evaluates an actor on every task of a curriculum (see the module docstring).

    Args:
        curriculum: the tasks and their common spaces.
        episodes: stochastic episodes per task (one deterministic episode is added).
        seed: base seed of the per-(task, episode) seeds.
        online_cms: optional deployment-clock adaptation.
        obs_limit: largest plausible absolute observation value; each env is wrapped in an
            :class:`~hope_agent.rollout.guard.EnvFaultGuard`, so a simulator blow-up ends that
            episode (with a logged warning) instead of stopping the run.
        reference_dirs: the folders of reference files (``hope_envs.curriculum.reference_dirs``).
    """

    def __init__(
        self,
        curriculum: Curriculum,
        episodes: int = 10,
        seed: int = 100_000,
        *,
        online_cms: OnlineCMS | None = None,
        obs_limit: float = 1e6,
        reference_dirs: ReferenceDirs = REFERENCE_DIR,
    ) -> None:
        if episodes < 0:
            raise ValueError(f"eval.episodes must be >= 0, got {episodes}")
        self.curriculum, self.specs = curriculum, curriculum.specs
        self.episodes, self.seed = episodes, seed
        self.online_cms = online_cms
        self.obs_limit = obs_limit
        self.reference_dirs = reference_dirs
        self._envs: dict[int, list[gym.Env]] = {}

    def _task_envs(self, j: int) -> list[gym.Env]:
        if j not in self._envs:
            self._envs[j] = [
                EnvFaultGuard(self.curriculum.make_env(j), self.obs_limit)
                for _ in range(self.episodes + 1)
            ]
        return self._envs[j]

    def normalisation(self) -> list[Normalisation]:
        """Each task's :func:`normalisation_kind`, in task order."""
        return [normalisation_kind(spec, self.reference_dirs) for spec in self.specs]

    def random_returns(self) -> list[float | None]:
        """R_random of every task normalised by the run (kind ``run``), else ``None``.

        The mean return of uniform random actions over the same episode starts as the stochastic
        evaluation episodes (at least one): episode e of task j resets with seed
        ``seed + 1000 * j + e`` and samples its actions from the action space seeded the same,
        so the figure is a deterministic function of the evaluation settings.
        """
        out: list[float | None] = []
        for j, kind in enumerate(self.normalisation()):
            if kind != "run":
                out.append(None)
                continue
            returns = []
            for e, env in enumerate(self._task_envs(j)[: max(self.episodes, 1)]):
                seed = self.seed + 1000 * j + e
                env.reset(seed=seed)
                env.action_space.seed(seed)
                total, done = 0.0, False
                while not done:
                    _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                    total += float(reward)
                    done = terminated or truncated
                returns.append(total)
            out.append(float(np.mean(returns)))
        return out

    def evaluate(self, actor: Actor, reset_every_step: bool = False) -> list[TaskEvaluation]:
        """Evaluate every task, all as one batch (each task with its own seeds and noise
        generator, so the figures are those of :meth:`evaluate_task`); with ``online_cms``, task
        by task, each on its own adapted copy."""
        tasks = list(range(len(self.specs)))
        if self.online_cms is not None:
            return [self.evaluate_task(actor, j, reset_every_step) for j in tasks]
        return self._run(actor, tasks, reset_every_step)

    def evaluate_task(self, actor: Actor, j: int, reset_every_step: bool = False) -> TaskEvaluation:
        """Run task ``j``'s evaluation episodes.

        ``reset_every_step`` restarts the actor's memory at every step (the in-context-gain
        control; the token's is_first feature still marks only the true episode start).
        """
        return self._run(actor, [j], reset_every_step)[0]

    def _run(self, actor: Actor, tasks: list[int], reset_every_step: bool) -> list[TaskEvaluation]:
        """The episodes of ``tasks`` side by side: rows ``[i * b, (i + 1) * b)`` are task
        ``tasks[i]``'s ``b = episodes + 1`` episodes, its last row the deterministic one."""
        envs = [env for j in tasks for env in self._task_envs(j)]
        b = self.episodes + 1
        optimizer: MultiTimescaleOptimizer | None = None
        if self.online_cms is not None:
            assert len(tasks) == 1, "online CMS adapts one copy per task"
            actor, optimizer = self.online_cms.adapt(actor)
        deterministic = np.zeros(len(envs), dtype=bool)
        deterministic[b - 1 :: b] = True
        driver = EpisodeDriver(
            actor,
            envs,
            generator=[torch.Generator().manual_seed(self.seed + 1000 * j) for j in tasks],
            task=np.repeat(tasks, b),
            deterministic=deterministic,
            reset_every_step=reset_every_step,
            grad=optimizer is not None,
        )
        driver.reset([self.seed + 1000 * j + e for j in tasks for e in range(b)])
        dev = actor.device
        # Per-row sums, kept where the actor computes: one host copy at the end, not per step.
        err_sum = torch.zeros(len(envs), dtype=torch.float64, device=dev)
        base_sum = torch.zeros(len(envs), dtype=torch.float64, device=dev)
        trials = _TrialRecord(len(envs))
        while driver.running:
            step = driver.step()
            trials.add(step.infos, step.valid)
            with torch.set_grad_enabled(optimizer is not None):
                reward = actor.scale_reward(
                    torch.as_tensor(step.reward, dtype=torch.float32, device=dev)
                )
                obs = step.act.obs.detach()
                target_delta = actor.normalize_obs(torch.as_tensor(step.next_raw, device=dev)) - obs
                features, env_action = step.act.output.features, step.act.env_action
                pred_delta, pred_reward = actor.predict_world(features, env_action)
                obs_err = (pred_delta - target_delta).square()
                err = obs_err.sum(-1) + (pred_reward - reward).square()
                live = torch.as_tensor(step.valid, device=dev)
                if optimizer is not None:
                    # Self-supervised (HOPE.md section 3): only the next-observation prediction
                    # error, averaged over dims as the training loss averages it; the reward
                    # prediction stays out of the adaptation.
                    optimizer.zero_grad(set_to_none=True)
                    (obs_err.mean(-1) * live).sum().div(live.sum().clamp_min(1)).backward()
                    optimizer.step()
            base = target_delta.square().sum(-1) + reward.square()
            err_sum += (err.detach() * live).double()
            base_sum += (base.detach() * live).double()
        episodes = sorted(driver.finished, key=lambda e: e.row)
        success = np.array([e.success for e in episodes])
        returns = np.array([e.ret for e in episodes])
        lengths = np.array([e.length for e in episodes])
        err_rows, base_rows = err_sum.cpu(), base_sum.cpu()
        return [
            self._summary(i * b, j, success, returns, lengths, err_rows, base_rows, trials)
            for i, j in enumerate(tasks)
        ]

    def _summary(
        self,
        first: int,
        j: int,
        success: np.ndarray,
        returns: np.ndarray,
        lengths: np.ndarray,
        err_sum: torch.Tensor,
        base_sum: torch.Tensor,
        trials: _TrialRecord,
    ) -> TaskEvaluation:
        """Task ``j``'s :class:`TaskEvaluation` from its rows ``[first, first + episodes + 1)``."""
        spec, last = self.specs[j], first + self.episodes
        stochastic = slice(first, last) if self.episodes > 0 else slice(last, last + 1)
        rows, refs = slice(first, last + 1), self.reference_dirs
        err, base = float(err_sum[rows].sum()), float(base_sum[rows].sum())
        return TaskEvaluation(
            task=spec.name,
            perf=task_performance(spec, success[stochastic], returns[stochastic], refs),
            perf_deterministic=task_performance(
                spec, success[last : last + 1], returns[last : last + 1], refs
            ),
            success_rate=float(success[stochastic].mean()) if defines_success(spec) else None,
            mean_return=float(returns[stochastic].mean()),
            return_deterministic=float(returns[last]),
            wm_error=err / base if base > 0 else float("nan"),
            episode_length=float(lengths[rows].mean()),
            **trials.summary(stochastic),
        )

    def close(self) -> None:
        """Close every cached env."""
        for envs in self._envs.values():
            for env in envs:
                env.close()
        self._envs.clear()


class RenderError(RuntimeError):
    """Rendering is not possible here (no OpenGL backend); the message names the fixes."""


@torch.no_grad()
def record_episodes(
    actor: Actor,
    curriculum: Curriculum,
    task_index: int,
    *,
    seed: int,
    episodes: int = 1,
    deterministic: bool = True,
    size: tuple[int, int] = (96, 128),
    frame_skip: int = 1,
) -> list[np.ndarray]:
    """Frames ``(H, W, 3) uint8`` of ``episodes`` consecutive episodes of task ``task_index``.

    Episode e starts from seed ``seed + e`` with a fresh carry; ``frame_skip`` keeps every k-th
    frame (the last frame of each episode is always kept).
    """
    if frame_skip < 1 or episodes < 1:
        raise ValueError(
            f"video: episodes and frame_skip must be >= 1, got {episodes}, {frame_skip}"
        )
    # Headless offscreen rendering unless the user chose a backend; MuJoCo envs read the
    # variable when their first renderer is made, so nothing that only trains needs a GL library.
    os.environ.setdefault("MUJOCO_GL", "egl")
    env = EnvFaultGuard(curriculum.make_env(task_index, render_mode="rgb_array", render_size=size))
    frames: list[np.ndarray] = []
    generator = torch.Generator().manual_seed(seed)
    try:
        try:
            env.reset(seed=seed)
            env.render()
        except (ImportError, OSError, RuntimeError, AttributeError, mujoco.FatalError) as err:
            raise RenderError(
                f"cannot render {curriculum.names[task_index]!r} with MUJOCO_GL="
                f"{os.environ.get('MUJOCO_GL')} ({type(err).__name__}: "
                f"{str(err).splitlines()[0]}); install the EGL libraries (libegl1), set "
                "MUJOCO_GL=osmesa, or video.enabled=false"
            ) from err
        for e in range(episodes):
            driver = EpisodeDriver(
                actor, [env], generator=generator, task=task_index, deterministic=deterministic
            )
            driver.reset([seed + e])
            t = 0
            while driver.running:
                if t % frame_skip == 0:
                    frames.append(np.asarray(env.render()))
                driver.step()
                t += 1
            frames.append(np.asarray(env.render()))
    finally:
        env.close()
    return frames


@dataclass
class VideoSettings:
    """Rollout videos of every task (config section ``video``)."""

    episodes: int = 1
    size: tuple[int, int] = (96, 128)  # (height, width)
    fps: int = 30
    frame_skip: int = 2
    gif: bool = False
    deterministic: bool = True


def write_task_videos(
    actor: Actor, curriculum: Curriculum, folder: Path, video: VideoSettings, seed: int
) -> list[Path]:
    """An mp4 (or gif) per task and, written last, a grid of all tasks (``all_tasks``) into
    ``folder``; task j's episodes start from seed ``seed + 1000 * j``. Returns the paths."""
    suffix = ".gif" if video.gif else ".mp4"
    written, clips = [], []
    for j, spec in enumerate(curriculum.specs):
        frames = record_episodes(
            actor,
            curriculum,
            j,
            seed=seed + 1000 * j,
            episodes=video.episodes,
            deterministic=video.deterministic,
            size=video.size,
            frame_skip=video.frame_skip,
        )
        written.append(
            write_video(folder / f"{safe_name(spec.name)}{suffix}", frames, fps=video.fps)
        )
        clips.append(frames)
    grid = tile_videos(clips, labels=curriculum.names)
    written.append(write_video(folder / f"all_tasks{suffix}", grid, fps=video.fps))
    return written

"""The curriculum runner: trains task by task with recurrent PPO, evaluates every task, saves.

The agent is never told of a task switch: each stage gets fresh vector envs of the next task and
training simply continues (the backbone memory carries across the switch unless configured
otherwise). Every part is injected (envs factory, agent, optimizer, PPO, evaluator, logger,
method), so tests and later methods swap them freely; only :mod:`hope_agent.build` reads
the config.

Per stage: rollouts of ``rollout_len`` steps x ``num_envs`` envs until the task's step budget is
reached (so a stage runs a whole number of rollouts), a PPO update after each; an evaluation of
every task each ``eval_every`` env steps and at the task end; a checkpoint each
``checkpoint_every`` env steps and at the task end; rollout videos of every task at the task end.

Reliability (``docs/reliability.md``):

- A checkpoint holds everything the run needs to continue: weights, normalisers, optimizer
  (multi-timescale accumulators included), the method's state, every RNG, the rollout carry,
  the evaluation record, the fault counters and the logger offsets. A periodic checkpoint is a
  *sync point*: right after it every training env is reset with a seed derived from
  ``(seed, stage, step)``, in interrupted and uninterrupted runs alike, so what follows depends
  only on what the checkpoint holds and :meth:`CurriculumRunner.run` with ``resume_from``
  continues bit for bit (deterministic CPU mode).
- An update whose rollout holds non-finite numbers (backbone memory, values) is skipped, and so
  is each minibatch with a non-finite loss or gradient; after ``max_nonfinite_in_a_row`` such
  updates, or as soon as the agent's own weights or the method's state are non-finite, the run
  rolls back to its last checkpoint saved outside such a streak, with a lowered learning rate. A
  stage whose last update was non-finite skips the method's task-end hook (its rollout is
  poisoned).
- Simulator blow-ups end the faulty env's episode; a failing vector env is rebuilt
  (:mod:`hope_agent.train.faults`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from hope_agent.agents.actor import AgentState
from hope_agent.agents.agent import Agent
from hope_agent.algos.buffer import RolloutBuffer
from hope_agent.algos.ppo import PPO
from hope_agent.io import (
    CheckpointError,
    atomic_remove,
    latest_valid_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from hope_agent.rollout.driver import EpisodeDriver
from hope_agent.rollout.guard import RestartingVectorEnv, count_flag
from hope_agent.rollout.vec import VecEnvFactory, make_vector_env
from hope_agent.train.distributed import LOCAL, World, rank_seed
from hope_agent.train.evaluator import (
    Evaluator,
    RenderError,
    TaskEvaluation,
    VideoSettings,
    write_task_videos,
)
from hope_agent.train.faults import (
    FaultCounters,
    FaultSettings,
    TrainingDiverged,
    first_nonfinite,
    named_tensors,
    nonfinite_rows,
)
from hope_agent.train.logger import Logger
from hope_agent.train.report import EvalEvent, RunRecord, compute_metrics, write_results
from hope_agent.train.timing import LoopTimer
from hope_envs.curriculum import Curriculum, CurriculumError, TaskSpec

log = logging.getLogger(__name__)

# The tree layout of a training checkpoint; version 1 (before resume support) cannot resume,
# version 2 lacks progress.bad_in_a_row, version 3 carries the previous reward in the rollout
# carry (the actor now takes it with the observation).
CHECKPOINT_FORMAT = "hope_agent.train/4"


class TrainingMethod(Protocol):
    """What the runner calls of a continual-learning method (the contract and its defaults:
    :class:`hope_agent.methods.base.Method`; its loss term goes to PPO when it is built)."""

    name: str

    def on_task_start(self, stage: int, spec: TaskSpec, agent: Agent) -> None:
        """Before the first rollout of ``stage``."""
        ...

    def after_update(self, agent: Agent, buffer: RolloutBuffer) -> None:
        """After every PPO update, with the rollout's buffer."""
        ...

    def on_task_end(
        self, stage: int, spec: TaskSpec, agent: Agent, buffer: RolloutBuffer | None
    ) -> None:
        """After the last update of ``stage``, with the last rollout's buffer."""
        ...

    def evaluation_agent(self, agent: Agent) -> Agent:
        """The agent that evaluations and videos measure (``agent`` itself by default)."""
        ...

    def rewritten_parameters(self, agent: Agent) -> list[Tensor]:
        """Parameters the task-end hook rewrote, whose optimizer state is then forgotten."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The method's state for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


@dataclass
class TrainingParts:
    """The injected parts of a run: the agent and its updater, the evaluator, the logger, the
    method, the env factory and the loop's clock (:mod:`hope_agent.train.timing`)."""

    agent: Agent
    ppo: PPO
    evaluator: Evaluator
    logger: Logger
    method: TrainingMethod
    make_envs: VecEnvFactory = make_vector_env
    timer: LoopTimer = field(default_factory=LoopTimer)


@dataclass
class RunnerSettings:
    """The runner's own options (sizes and schedules)."""

    num_envs: int
    rollout_len: int
    seq_len: int
    seed: int
    async_envs: bool = False
    eval_every: int = 0
    checkpoint_every: int = 0
    anneal_lr: bool = False
    carry_state_across_tasks: bool = True
    in_context_gain: bool = False
    smooth_last: int | None = None
    reference_auc: list[float] | None = None
    eval_seed: int = 100_000
    # The info key whose values label each step for the belief loss (``ppo.belief_coef``); None:
    # no labels are kept.
    belief_key: str | None = None
    video: VideoSettings | None = None
    faults: FaultSettings = field(default_factory=FaultSettings)


@dataclass
class RunSummary:
    """What :meth:`CurriculumRunner.run` returns."""

    run_dir: Path
    perf: np.ndarray
    metrics: dict[str, Any]
    wall_time_s: float
    env_steps: int


def step_checkpoint_name(global_step: int) -> str:
    """Folder name of the periodic checkpoint at ``global_step`` (``step_0000012345``)."""
    return f"step_{global_step:010d}"


def latest_checkpoint(folder: Path, clean: bool = False) -> Path | None:
    """The most advanced checkpoint of a run that loads and verifies, or ``None``.

    Stage checkpoints (``stage_XX``) and periodic ones (``step_XXXXXXXXXX``) are ranked together
    by their global step, a finished stage ranking after an unfinished one at the same step.
    Defective checkpoints are skipped with a warning naming them
    (:func:`hope_agent.io.latest_valid_checkpoint`). With ``clean``, only checkpoints saved
    outside a streak of non-finite updates count (the rollback targets): one saved mid-streak
    would replay the rollout that started it.
    """
    best: tuple[tuple[int, bool], Path] | None = None
    accept = _saved_clean if clean else None
    for pattern in ("stage_*", "step_*"):
        path = latest_valid_checkpoint(folder, pattern, accept)
        if path is None:
            continue
        progress = load_checkpoint(path).get("progress")
        if not isinstance(progress, dict):
            continue
        key = (int(progress["global_step"]), bool(progress["stage_done"]))
        if best is None or key > best[0]:
            best = (key, path)
    return None if best is None else best[1]


def _saved_clean(tree: dict[str, Any]) -> bool:
    progress = tree.get("progress")
    return isinstance(progress, dict) and progress.get("bad_in_a_row") == 0


class _Rollback(Exception):
    """Raised inside a stage to return to the last good checkpoint."""


class CurriculumRunner:
    """Trains an agent over a curriculum (see the module docstring).

    Args:
        curriculum: the tasks, in order, and their common spaces.
        parts: the agent, PPO, evaluator, logger, method and env factory.
        settings: sizes, schedules and fault handling.
        run_dir: where every output goes.
        config_yaml: the resolved config, stored in every checkpoint.
        world: the data-parallel ranks (:mod:`hope_agent.train.distributed`); a run of ``N``
            ranks is a run of ``N x num_envs`` envs, its step counts are over all ranks.
    """

    def __init__(
        self,
        curriculum: Curriculum,
        parts: TrainingParts,
        settings: RunnerSettings,
        run_dir: Path,
        config_yaml: str = "",
        world: World = LOCAL,
    ) -> None:
        self.world = world
        self.curriculum, self.specs = curriculum, list(curriculum.specs)
        self.agent, self.ppo, self.evaluator = parts.agent, parts.ppo, parts.evaluator
        self.logger, self.method, self.make_envs = parts.logger, parts.method, parts.make_envs
        self.timer = parts.timer
        self.settings, self.run_dir, self.config_yaml = settings, Path(run_dir), config_yaml
        self.device = self.agent.device
        self.record = RunRecord(task_names=curriculum.names)
        self.generator = torch.Generator().manual_seed(rank_seed(settings.seed, world.rank))
        self.buffer = RolloutBuffer(
            settings.rollout_len,
            settings.num_envs,
            curriculum.obs_dim,
            curriculum.act_dim,
            settings.seq_len,
            self.device,
        )
        self.faults = FaultCounters()
        # Each group's learning rate as configured (with its lr_scale), the base of the anneal.
        self._base_lrs = [float(g["lr"]) for g in self.ppo.optimizer.param_groups]
        # Position in the curriculum: the stage, env steps into it, whether its end-of-stage
        # work (task-end evaluation, method hook, stage checkpoint) is done.
        self.global_step = 0
        self.stage = 0
        self.task_step = 0
        self.stage_done = False
        self.state: AgentState | None = None  # the agent's rollout carry
        self._bad_in_a_row = 0
        self._episode_stats: list[tuple[float, float, float]] = []
        self._ret_acc = np.zeros(settings.num_envs)

    # ----------------------------------------------------------------- main loop
    def run(self, resume_from: Path | None = None) -> RunSummary:
        """Train every stage (continuing from checkpoint ``resume_from`` if given); return the
        final performance matrix and metrics."""
        start = time.perf_counter()
        self.timer.start()
        try:
            if resume_from is not None:
                self._restore(Path(resume_from), rollback=False)
            if self.record.random_returns is None:
                # R_random of the tasks the report normalises by the run itself: measured once,
                # before any training (or for a checkpoint written before it was kept: the same
                # seeds give the same figure), and kept in every checkpoint.
                self.record.random_returns = self.evaluator.random_returns()
            if resume_from is None:
                # The rollback target until the first periodic checkpoint exists.
                self._save(step_checkpoint_name(0))
            while True:
                try:
                    self._run_stages()
                    break
                except _Rollback as r:
                    self._rollback(str(r))
        except BaseException:
            # Stop the progress bar and keep the rows logged so far (a resume cuts them back).
            self.logger.close()
            raise
        finally:
            self.evaluator.close()
        wall = time.perf_counter() - start
        # The run's time per phase, the last video and checkpoint included.
        timing = {k: v for k, v in self.timer.as_log().items() if k.startswith("time/")}
        metrics = self._write_results(
            extra={"wall_time_s": wall, "env_steps": self.global_step, **timing}, page=True
        )
        self.logger.print_summary(
            self.record.task_names,
            # the matrix the metrics below were computed from (smoothed when smooth_last is set)
            self.record.matrix("perf", smooth_last=self.settings.smooth_last),
            normalisation=metrics["normalisation"],
            metrics={
                k: metrics[k]
                for k in (
                    "average_performance",
                    "forgetting",
                    "backward_transfer",
                    "forward_transfer",
                    "world_model_error",
                    "world_model_forgetting",
                    "in_context_gain",
                )
            },
        )
        self.logger.close()
        return RunSummary(self.run_dir, self.record.matrix("perf"), metrics, wall, self.global_step)

    def _run_stages(self) -> None:
        while self.stage < len(self.specs):
            if not self.stage_done:
                self._train_stage(self.specs[self.stage])
            self._finish_stage()
            self.stage, self.task_step, self.stage_done = self.stage + 1, 0, False
            if not self.settings.carry_state_across_tasks:
                self.state = None

    def _train_stage(self, spec: TaskSpec) -> None:
        s, stage = self.settings, self.stage
        n = s.num_envs
        self.logger.set_stage(f"{stage + 1}/{len(self.specs)} {spec.name}")
        if self.task_step == 0:
            self.record.stage_starts.append(self.global_step)
            self.method.on_task_start(stage, spec, self.agent)
            # Env i of stage k starts from seed * 1_000_003 + 10_000 * k + i (vector envs add i;
            # rank r's envs come after the r * num_envs envs of the ranks before it).
            seed = s.seed * 1_000_003 + 10_000 * stage + self.world.rank * n
        else:
            seed = self._sync_seed()
        envs = RestartingVectorEnv(
            partial(
                self.make_envs,
                spec,
                self.curriculum.obs_dim,
                self.curriculum.act_dim,
                n,
                s.async_envs,
            ),
            s.faults.max_env_restarts,
        )
        timed = self.timer.wrap_envs(envs)
        checkpoint_due = False
        try:
            driver = self._start_segment(timed, seed)
            while self.task_step < spec.steps:
                self.timer.start_iteration()
                with self.timer.phase("rollout_inference"):
                    self._rollout(driver)
                steps = s.rollout_len * n * self.world.size
                if s.anneal_lr:
                    self._anneal_lr(self.task_step / spec.steps)
                self.task_step += steps
                previous = self.global_step
                self.global_step += steps
                self._update(stage)
                self.ppo.optimizer.advance("env_steps", steps)
                with self.timer.phase("logging"):
                    self.logger.advance(self.global_step)
                last = self.task_step >= spec.steps
                if (
                    s.eval_every > 0
                    and not last
                    and _crossed(previous, self.global_step, s.eval_every)
                ):
                    self._evaluate(stage, task_end=False)
                checkpoint_due = s.checkpoint_every > 0 and _crossed(
                    previous, self.global_step, s.checkpoint_every
                )
                if checkpoint_due and not last:
                    self._save(step_checkpoint_name(self.global_step))
                    driver = self._start_segment(timed, self._sync_seed())
        finally:
            envs.close()
        self.ppo.optimizer.advance("tasks", 1)
        self._evaluate(stage, task_end=True)
        self._task_end_hook(stage, spec)
        self.stage_done = True
        self._save(f"stage_{stage:02d}")
        if checkpoint_due:
            # Written after the task-end work, so resuming from it resumes the finished stage.
            self._save(step_checkpoint_name(self.global_step))

    def _task_end_hook(self, stage: int, spec: TaskSpec) -> None:
        """The method's task-end hook, fed only a finite rollout; its state must stay finite."""
        if self._bad_in_a_row:
            # The buffer holds the rollout of a skipped update (non-finite memory, values or
            # loss): a Fisher matrix or replay targets drawn from it would stay non-finite.
            self.faults.skipped_task_ends += 1
            log.warning(
                "stage %d ended with a non-finite update: %s's task-end hook is skipped, its "
                "rollout is poisoned",
                stage,
                self.method.name,
            )
            return
        self.method.on_task_end(stage, spec, self.agent, self.buffer)
        # Weights the hook rewrote (e.g. distill's reset of the fast level) start afresh in the
        # optimizer: stale moments would push them back.
        rewritten = self.method.rewritten_parameters(self.agent)
        if rewritten:
            self.ppo.optimizer.reset_state(rewritten)
        # Only the hook writes the method's state (anchors, Fisher matrices, replay targets), so
        # it is checked here rather than after every update.
        broken = first_nonfinite(named_tensors(self.method.state_dict()))
        if broken is not None:
            raise _Rollback(f"the {self.method.name} method's {broken} is not finite")

    def _finish_stage(self) -> None:
        if self.settings.video is not None and self.world.is_main:
            with self.timer.phase("video"):
                self._videos(self.stage)
        with self.timer.phase("logging"):
            self._write_results()

    def _sync_seed(self) -> int:
        """Env seed of the sync point at the current position (vector envs add the env index)."""
        entropy = [self.settings.seed, self.stage, self.task_step]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        return seed + self.world.rank * self.settings.num_envs

    def _start_segment(self, envs: gym.vector.VectorEnv, seed: int) -> EpisodeDriver:
        """Reset every env with ``seed``: the start of a stage or a sync point."""
        driver = EpisodeDriver(
            self.agent, envs, generator=self.generator, task=self.stage, carry=self.state
        )
        driver.reset(seed)
        self.state = driver.carry
        self._ret_acc = np.zeros(self.settings.num_envs)
        # Episodes cut by the reset never finished: they leave the episode charts.
        self._episode_stats.clear()
        return driver

    @torch.no_grad()
    def _rollout(self, driver: EpisodeDriver) -> None:
        agent, buf, s, dev = self.agent, self.buffer, self.settings, self.device
        driver.carry = self.state  # a poisoned row may have been reset since the last rollout
        gamma = self.ppo.config.gamma
        for t in range(s.rollout_len):
            agent.obs_norm.update(torch.as_tensor(driver.raw, device=dev))
            step = driver.step()
            valid, done = step.valid, step.done
            # Reward scale: running std of the discounted return, reset at episode ends.
            self._ret_acc = np.where(valid, self._ret_acc * gamma + step.reward, self._ret_acc)
            # Every rank joins the normalisers' merge, with or without a valid step.
            if valid.any() or self.world.size > 1:
                agent.reward_scale.update(torch.as_tensor(self._ret_acc[valid], device=dev))
            self._ret_acc[done] = 0.0
            scaled = agent.reward_scale(
                torch.as_tensor(step.reward, dtype=torch.float32, device=dev)
            )
            self.faults.env_resets += count_flag(step.infos, "env_fault")
            self.faults.env_restarts += int("env_restart" in step.infos)
            act = step.act
            labels = {} if s.belief_key is None else {"label": self._labels(step.infos, valid)}
            buf.add(
                t,
                memory=step.carry.memory,
                obs=act.obs,
                next_obs=agent.obs_norm(torch.as_tensor(step.next_raw, device=dev)),
                prev_action=step.carry.prev_action,
                prev_reward=act.prev_reward,
                is_first=step.is_first,
                task=step.task,
                action=act.action,
                env_action=act.env_action,
                log_prob=act.log_prob,
                value=act.value,
                reward=scaled,
                terminated=torch.as_tensor(step.terminated),
                truncated=torch.as_tensor(step.truncated),
                valid=torch.as_tensor(valid),
                **labels,
            )
        # Bootstrap value of the next observation from the carried state (V(final obs) when the
        # last step ended an episode by truncation), without advancing the carry.
        buf.compute_advantages(driver.peek().value, gamma, self.ppo.config.gae_lambda)
        self.state = driver.carry
        # An episode cut short by a fault is no sample of the policy's return.
        self._episode_stats += [
            (e.ret, float(e.length), float(e.success)) for e in driver.finished if not e.faulty
        ]
        driver.finished.clear()

    def _labels(self, infos: dict[str, Any], valid: np.ndarray) -> Tensor:
        """The belief labels of a step: ``infos[belief_key]`` where an env reports it, else -1;
        refused (one error naming the key) when no env reports one, or one is out of range."""
        key, classes = self.settings.belief_key, self.agent.config.belief_classes
        n = self.settings.num_envs
        if key in infos:
            reported = np.asarray(infos.get(f"_{key}", np.ones(n, bool)), dtype=bool)
            labels = np.where(reported, np.asarray(infos[key]).astype(np.int64), -1)
        else:
            reported, labels = np.zeros(n, bool), np.full(n, -1, np.int64)
        spec = self.specs[self.stage]
        if valid.any() and not reported.any():
            raise CurriculumError(
                f"ppo.belief_coef > 0 needs a label info[{key!r}] at every step, and task "
                f"{spec.name} ({spec.id}) reports none: use envs that report it (PointAdapt "
                "reports goal_index), name its key in ppo.belief_key, or set ppo.belief_coef=0"
            )
        bad = labels[(labels < -1) | (labels >= classes)]
        if bad.size:
            raise CurriculumError(
                f"task {spec.name} reported info[{key!r}] = {bad[0]}, outside the belief "
                f"head's {classes} classes: set agent.belief_classes to the number of values "
                "(e.g. the task's number of goals)"
            )
        return torch.as_tensor(labels, device=self.device)

    def _anneal_lr(self, done: float) -> None:
        """Set every group's learning rate to its base x the rollback scale x ``1 - done``
        (``done``: the fraction of the task's steps taken before this update)."""
        scale = self.faults.lr_scale * max(0.0, 1.0 - done)
        for group, base in zip(self.ppo.optimizer.param_groups, self._base_lrs, strict=True):
            group["lr"] = base * scale

    def _update(self, stage: int) -> None:
        f = self.settings.faults
        problem = self._nonfinite_rollout()
        # Every rank skips together: one waiting alone in PPO's all-reduces would hang the run.
        if self.world.any(problem is not None) and problem is None:
            problem = "another rank's rollout holds non-finite numbers"
        stats: dict[str, float] = {}
        if problem is None:
            with self.timer.phase("ppo_update"):
                stats = self.ppo.update(self.buffer)
            skipped = int(stats.pop("nonfinite_steps"))
            self.faults.skipped_steps += skipped
            if skipped:
                problem = f"{skipped} minibatches with a non-finite loss or gradient were skipped"
        if problem is None:
            self._bad_in_a_row = 0
            with self.timer.phase("ppo_update"):
                self.method.after_update(self.agent, self.buffer)
        else:
            self.faults.nonfinite_updates += 1
            self._bad_in_a_row += 1
            log.warning("non-finite update at step %d: %s", self.global_step, problem)
        values = {f"losses/{k}": v for k, v in stats.items()}
        if self._episode_stats:
            ep = np.array(self._episode_stats)
            values.update(
                {
                    "charts/episodic_return": float(ep[:, 0].mean()),
                    "charts/episodic_length": float(ep[:, 1].mean()),
                    "charts/success_rate": float(ep[:, 2].mean()),
                }
            )
            self._episode_stats.clear()
        values["charts/stage"] = float(stage)
        values.update(self.faults.as_log())
        values["charts/SPS"] = self.timer.sps(self.settings.rollout_len * self.settings.num_envs)
        with self.timer.phase("logging"):
            values.update(self.timer.as_log())
            self.logger.log(self.global_step, values)
        broken = first_nonfinite(
            itertools.chain(self.agent.named_parameters(), self.agent.named_buffers())
        )
        if broken is not None:
            raise _Rollback(f"the agent's {broken} is not finite")
        if self._bad_in_a_row >= f.max_nonfinite_in_a_row:
            raise _Rollback(f"{self._bad_in_a_row} non-finite updates in a row (last: {problem})")

    def _nonfinite_rollout(self) -> str | None:
        """Check the rollout's memories, values and log-probs; reset poisoned memory rows."""
        n, buf, state = self.settings.num_envs, self.buffer, self.state
        assert state is not None
        leaves = [leaf for m in buf.memories if m is not None for leaf in m.leaves()]
        bad = nonfinite_rows([*leaves, *state.leaves()], n)
        bad |= ~torch.isfinite(buf.value).all(0).cpu() | ~torch.isfinite(buf.log_prob).all(0).cpu()
        if not bool(bad.any()):
            return None
        # Poisoned memory would poison every later step of those envs: start them afresh.
        self.state = state.where(bad.to(self.device), self.agent.init_carry(n))
        rows = np.flatnonzero(bad.numpy()).tolist()
        return f"non-finite backbone memory or outputs in the rollout of envs {rows}"

    # ----------------------------------------------------------------- evaluation & outputs
    def _evaluate(self, stage: int, task_end: bool) -> None:
        agent = self.method.evaluation_agent(self.agent)
        with self.timer.phase("evaluation"):
            results = self._evaluate_tasks(agent, reset_every_step=False)
            reset = None
            if task_end and self.settings.in_context_gain:
                reset = self._evaluate_tasks(agent, reset_every_step=True)
        self.record.events.append(EvalEvent(self.global_step, stage, task_end, results, reset))
        values: dict[str, float] = {}
        for r in results:
            values[f"eval/{r.task}/perf"] = r.perf
            values[f"eval/{r.task}/return"] = r.mean_return
            values[f"eval/{r.task}/wm_error"] = r.wm_error
        finite = [r.perf for r in results if np.isfinite(r.perf)]
        if finite:
            values["eval/mean_perf"] = float(np.mean(finite))
        with self.timer.phase("logging"):
            values.update(self.timer.as_log())
            self.logger.log(self.global_step, values)
            self.logger.flush()

    def _evaluate_tasks(self, agent: Agent, reset_every_step: bool) -> list[TaskEvaluation]:
        """Every task's evaluation; over several ranks, rank r evaluates tasks r, r + N, ...
        (each task's episodes are seeded by the task alone: the same results either way)."""
        w = self.world
        if w.size == 1:
            return self.evaluator.evaluate(agent, reset_every_step=reset_every_step)
        mine = {
            j: self.evaluator.evaluate_task(agent, j, reset_every_step)
            for j in range(w.rank, len(self.specs), w.size)
        }
        merged: dict[int, TaskEvaluation] = {}
        for part in w.all_gather(mine):
            merged.update(part)
        return [merged[j] for j in range(len(self.specs))]

    def _videos(self, stage: int) -> None:
        v = self.settings.video
        assert v is not None
        folder = self.run_dir / "videos" / f"stage_{stage:02d}"
        if (folder / f"all_tasks{'.gif' if v.gif else '.mp4'}").is_file():
            # Written last, atomically: a resumed run already made this stage's videos.
            return
        agent = self.method.evaluation_agent(self.agent)
        try:
            write_task_videos(agent, self.curriculum, folder, v, self.settings.eval_seed)
        except RenderError as e:
            # Videos are a view of the run, not part of it: train on without them.
            log.warning("no rollout videos for this run: %s", e)
            self.settings = dataclasses.replace(self.settings, video=None)

    def _write_results(
        self, extra: dict[str, Any] | None = None, page: bool = False
    ) -> dict[str, Any]:
        faults = {f"faults/{k}": v for k, v in dataclasses.asdict(self.faults).items()}
        if not self.world.is_main:
            # Rank 0 writes the results; every rank returns the same metrics.
            metrics = compute_metrics(
                self.record, self.settings.smooth_last, self.settings.reference_auc
            )
            return {**metrics, **faults, **(extra or {})}
        return write_results(
            self.run_dir,
            self.record,
            self.settings.smooth_last,
            self.settings.reference_auc,
            extra={**faults, **(extra or {})},
            page=page,
        )

    # ----------------------------------------------------------------- checkpoints
    def _save(self, name: str) -> None:
        with self.timer.phase("checkpoint"):
            self._write_checkpoint(name)

    def _write_checkpoint(self, name: str) -> None:
        # Each rank's own carry and RNGs; rank 0 writes them all into its checkpoint.
        ranks = self.world.all_gather(self._rank_state()) if self.world.size > 1 else None
        if not self.world.is_main:
            self.world.barrier()  # the checkpoint exists for every rank after this
            return
        # The CSV on disk must hold every row the checkpoint counts, for a resume to cut back to.
        self.logger.flush()
        ppo = self.ppo
        tree = {
            "agent": self.agent.state_dict(),
            "optimizer": ppo.optimizer.state_dict(),
            "method": {"name": self.method.name, "state": self.method.state_dict()},
            "rng": {
                "action_noise": self.generator.get_state(),
                # PCG64's state holds 128-bit ints: stored as strings to stay JSON-safe.
                "minibatch": _stringify(ppo.rng.bit_generator.state),
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(legacy=False),  # noqa: NPY002  (the global one)
            },
            "progress": {
                "stage": self.stage,
                "task_step": self.task_step,
                "global_step": self.global_step,
                "stage_done": self.stage_done,
                # A rollback target must have 0: a checkpoint saved mid-streak holds the state
                # that led into the streak.
                "bad_in_a_row": self._bad_in_a_row,
                "stage_starts": list(self.record.stage_starts),
                "logger_rows": len(self.logger.rows),
                "logger_columns": list(self.logger.columns),
                # Read with a default: checkpoints of this format saved before it lack it.
                "timing": self.timer.state_dict(),
            },
            # A data-parallel checkpoint keeps each rank's carry under "ranks" only.
            "carry": None if self.state is None or ranks is not None else self.state.leaves(),
            "record": [_encode_event(e) for e in self.record.events],
            "random_returns": self.record.random_returns,
            "faults": dataclasses.asdict(self.faults),
            "meta": {
                "format": CHECKPOINT_FORMAT,
                "obs_dim": self.curriculum.obs_dim,
                "act_dim": self.curriculum.act_dim,
                "num_envs": self.settings.num_envs,
                "tasks": self.curriculum.names,
                "task_ids": [s.id for s in self.specs],
            },
            "config": self.config_yaml,
        }
        if ranks is not None:
            tree["ranks"] = ranks
        save_checkpoint(self.run_dir / "checkpoints" / name, tree)
        self.world.barrier()

    def _rank_state(self) -> dict[str, Any]:
        """What differs between data-parallel ranks: the rollout carry and the RNG states."""
        return {
            "carry": None if self.state is None else [t.cpu() for t in self.state.leaves()],
            "action_noise": self.generator.get_state(),
            "minibatch": _stringify(self.ppo.rng.bit_generator.state),
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(legacy=False),  # noqa: NPY002  (the global one)
        }

    def _restore_rank_state(self, path: Path, tree: dict[str, Any]) -> None:
        """Take this rank's own carry and RNG states from a data-parallel checkpoint."""
        ranks = tree.get("ranks")
        saved = len(ranks) if isinstance(ranks, list) else 1
        if saved != self.world.size:
            raise CheckpointError(
                f"{path} was saved by a run of {saved} process(es), this run has "
                f"{self.world.size}: resume with torchrun --nproc_per_node {saved}"
            )
        if ranks is None:
            return
        mine = ranks[self.world.rank]
        self.generator.set_state(mine["action_noise"].cpu())
        self.ppo.rng.bit_generator.state = _unstringify(mine["minibatch"])
        torch.set_rng_state(mine["torch"].cpu())
        np.random.set_state(mine["numpy"])  # noqa: NPY002  (the global one)
        carry = mine["carry"]
        self.state = None if carry is None else self._carry_from(path, carry)

    def _restore(self, path: Path, rollback: bool) -> None:
        """Load every piece of state from checkpoint ``path``.

        ``rollback`` keeps this run's fault counters and scales every learning rate from the
        checkpoint's to the current ``lr_scale``.
        """
        tree = load_checkpoint(path, map_location=self.device)
        self._check_resumable(path, tree)
        self.agent.load_state_dict(tree["agent"])
        self.ppo.optimizer.load_state_dict(tree["optimizer"])
        self.method.load_state_dict(tree["method"]["state"])
        rng = tree["rng"]
        self.generator.set_state(rng["action_noise"].cpu())
        self.ppo.rng.bit_generator.state = _unstringify(rng["minibatch"])
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])  # noqa: NPY002  (the global one)
        p = tree["progress"]
        self.stage, self.task_step = int(p["stage"]), int(p["task_step"])
        self.global_step, self.stage_done = int(p["global_step"]), bool(p["stage_done"])
        self.record = RunRecord(
            task_names=[s.name for s in self.specs],
            stage_starts=[int(x) for x in p["stage_starts"]],
            events=[_decode_event(e) for e in tree["record"]],
            random_returns=tree.get("random_returns"),
        )
        self.state = None if tree["carry"] is None else self._carry_from(path, tree["carry"])
        self._restore_rank_state(path, tree)
        saved = FaultCounters(**tree["faults"])
        if rollback:
            scale = self.faults.lr_scale / saved.lr_scale
            for group in self.ppo.optimizer.param_groups:
                group["lr"] = group["lr"] * scale
        else:
            self.faults = saved
            # A resume continues the run's clock; a rollback keeps counting the time it lost.
            if "timing" in p:
                self.timer.load_state_dict(p["timing"])
        # A rollback target has 0; a resume continues the streak exactly where it was cut.
        self._bad_in_a_row = int(p["bad_in_a_row"])
        self._episode_stats.clear()
        try:
            self.logger.restore(
                int(p["logger_rows"]), list(p["logger_columns"]), self.global_step + 1
            )
        except ValueError as e:
            raise CheckpointError(f"cannot resume from {path}: {e}") from None
        log.info("continuing from %s (stage %d, step %d)", path, self.stage, self.global_step)

    def _check_resumable(self, path: Path, tree: dict[str, Any]) -> None:
        meta = tree.get("meta")
        if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise CheckpointError(
                f"{path} has training-checkpoint format {found!r}, resuming needs "
                f"{CHECKPOINT_FORMAT!r} (written by this version); start a new run directory"
            )
        expected = {
            "obs_dim": self.curriculum.obs_dim,
            "act_dim": self.curriculum.act_dim,
            "num_envs": self.settings.num_envs,
            "tasks": self.curriculum.names,
        }
        found_meta = {k: meta.get(k) for k in expected}
        if found_meta != expected or tree["method"]["name"] != self.method.name:
            raise CheckpointError(
                f"{path} does not belong to this run: saved for {found_meta} with method "
                f"{tree['method']['name']!r}, this run has {expected} with method "
                f"{self.method.name!r}; resume with the run's own config"
            )

    def _carry_from(self, path: Path, leaves: list[Tensor]) -> AgentState:
        template = self.agent.init_carry(self.settings.num_envs)
        shapes = [tuple(t.shape) for t in template.leaves()]
        if [tuple(t.shape) for t in leaves] != shapes:
            raise CheckpointError(
                f"{path}: the saved rollout carry has shapes {[tuple(t.shape) for t in leaves]}, "
                f"the agent's is {shapes}; resume with the run's own config"
            )
        it = iter(leaves)
        return template.map(lambda t: next(it).to(t))

    def _rollback(self, reason: str) -> None:
        f = self.settings.faults
        self.faults.rollbacks += 1
        if self.faults.rollbacks > f.max_rollbacks:
            raise TrainingDiverged(
                f"training diverged: {reason}, after {f.max_rollbacks} rollbacks "
                f"(learning rate x{self.faults.lr_scale:g}); lower ppo.lr or raise "
                "faults.max_rollbacks"
            )
        path = latest_checkpoint(self.run_dir / "checkpoints", clean=True)
        if path is None:
            raise TrainingDiverged(
                f"training diverged: {reason}; no valid checkpoint to roll back to"
            )
        self.faults.lr_scale *= f.lr_factor
        log.warning(
            "%s: rolling back to %s with the learning rate x%g",
            reason,
            path,
            self.faults.lr_scale,
        )
        self._restore(path, rollback=True)
        if self.world.is_main:
            self._drop_checkpoints_ahead()
        self.world.barrier()

    def _drop_checkpoints_ahead(self) -> None:
        """Remove the checkpoints ahead of the current position. After a rollback to an older
        checkpoint they belong to the abandoned segment: a resume from one of them would mix
        its state with the rows and checkpoints written since."""
        for path in (self.run_dir / "checkpoints").iterdir():
            match = re.fullmatch(r"(stage|step)_(\d+)", path.name)
            if match is None:
                continue
            n = int(match[2])
            if match[1] == "step":
                ahead = n > self.global_step
            else:
                ahead = n > self.stage or (n == self.stage and not self.stage_done)
            if ahead:
                log.info("removing %s, saved in the abandoned segment", path)
                atomic_remove(path)


def _crossed(previous: int, current: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in ``(previous, current]``."""
    return current // every > previous // every


def _encode_event(event: EvalEvent) -> dict[str, Any]:
    reset = event.reset_every_step
    return {
        "global_step": event.global_step,
        "stage": event.stage,
        "task_end": event.task_end,
        "results": [dataclasses.asdict(r) for r in event.results],
        "reset_every_step": None if reset is None else [dataclasses.asdict(r) for r in reset],
    }


def _decode_event(data: dict[str, Any]) -> EvalEvent:
    reset = data["reset_every_step"]
    return EvalEvent(
        global_step=int(data["global_step"]),
        stage=int(data["stage"]),
        task_end=bool(data["task_end"]),
        results=[TaskEvaluation(**r) for r in data["results"]],
        reset_every_step=None if reset is None else [TaskEvaluation(**r) for r in reset],
    )


def _stringify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stringify(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _unstringify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unstringify(v) for k, v in value.items()}
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value

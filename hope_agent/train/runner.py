"""The curriculum runner: trains task by task with recurrent PPO, evaluates every task, saves.

The agent is never told of a task switch: each stage gets fresh vector envs of the next task and
training simply continues (the backbone memory carries across the switch unless configured
otherwise). Every part is injected (envs factory, agent, optimizer, PPO, evaluator, logger,
method), so tests and later methods swap them freely; only :mod:`hope_agent.train.build` reads
the config.

Per stage: rollouts of ``rollout_len`` steps x ``num_envs`` envs until the task's step budget is
reached (so a stage runs a whole number of rollouts), a PPO update after each; an evaluation of
every task each ``eval_every`` env steps and at the task end; a checkpoint each
``checkpoint_every`` env steps and at the task end; rollout videos of every task at the task end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from hope_agent.agents.agent import Agent, AgentState
from hope_agent.algos.buffer import RolloutBuffer
from hope_agent.algos.ppo import PPO
from hope_agent.io import save_checkpoint
from hope_agent.train.evaluator import Evaluator, record_episodes
from hope_agent.train.logger import Logger
from hope_agent.train.methods import Method
from hope_agent.train.report import EvalEvent, RunRecord, write_results
from hope_agent.train.vec import make_vector_env
from hope_agent.video import tile_videos, write_video
from hope_envs.curriculum import TaskSpec

VecEnvFactory = Callable[[TaskSpec, int, int, int, bool], gym.vector.VectorEnv]


@dataclass
class VideoSettings:
    """Rollout videos after each stage."""

    episodes: int = 1
    size: tuple[int, int] = (96, 128)  # (height, width)
    fps: int = 30
    frame_skip: int = 2
    gif: bool = False


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
    carry_state_across_tasks: bool = True
    in_context_gain: bool = False
    smooth_last: int | None = None
    reference_auc: list[float] | None = None
    eval_seed: int = 100_000
    video: VideoSettings | None = None


@dataclass
class RunSummary:
    """What :meth:`CurriculumRunner.run` returns."""

    run_dir: Path
    perf: np.ndarray
    metrics: dict[str, Any]
    wall_time_s: float
    env_steps: int


def safe_name(name: str) -> str:
    """A task name usable as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


class CurriculumRunner:
    """Trains an agent over a curriculum (see the module docstring).

    Args:
        specs: the curriculum's tasks, in order.
        obs_dim: common observation width.
        act_dim: common action width.
        agent: the agent (its normalisers are updated here, during rollouts only).
        ppo: the PPO updater (holds the optimizer).
        evaluator: evaluates every task.
        logger: logging sinks.
        method: continual-learning plug-in.
        settings: sizes and schedules.
        run_dir: where every output goes.
        device: where the agent runs.
        config_yaml: the resolved config, stored in every checkpoint.
        make_envs: vector-env factory ``(spec, obs_dim, act_dim, num_envs, asynchronous)``.
    """

    def __init__(
        self,
        *,
        specs: Sequence[TaskSpec],
        obs_dim: int,
        act_dim: int,
        agent: Agent,
        ppo: PPO,
        evaluator: Evaluator,
        logger: Logger,
        method: Method,
        settings: RunnerSettings,
        run_dir: Path,
        device: torch.device,
        config_yaml: str = "",
        make_envs: VecEnvFactory = make_vector_env,
    ) -> None:
        self.specs, self.obs_dim, self.act_dim = list(specs), obs_dim, act_dim
        self.agent, self.ppo, self.evaluator = agent, ppo, evaluator
        self.logger, self.method, self.settings = logger, method, settings
        self.run_dir, self.device, self.config_yaml = Path(run_dir), device, config_yaml
        self.make_envs = make_envs
        self.record = RunRecord(task_names=[s.name for s in self.specs])
        self.global_step = 0
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.buffer = RolloutBuffer(
            settings.rollout_len,
            settings.num_envs,
            obs_dim,
            act_dim,
            settings.seq_len,
            device,
        )
        self._episode_stats: list[tuple[float, float, float]] = []

    # ----------------------------------------------------------------- main loop
    def run(self) -> RunSummary:
        """Train every stage; return the final performance matrix and metrics."""
        start = time.perf_counter()
        state: AgentState | None = None
        try:
            for stage, spec in enumerate(self.specs):
                if not self.settings.carry_state_across_tasks:
                    state = None
                state = self._train_stage(stage, spec, state)
        finally:
            self.evaluator.close()
        wall = time.perf_counter() - start
        metrics = self._write_results(extra={"wall_time_s": wall, "env_steps": self.global_step})
        self.logger.print_summary(
            self.record.task_names,
            self.record.matrix("perf"),
            {
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

    def _train_stage(self, stage: int, spec: TaskSpec, state: AgentState | None) -> AgentState:
        s = self.settings
        n = s.num_envs
        self.record.stage_starts.append(self.global_step)
        self.logger.set_stage(f"{stage + 1}/{len(self.specs)} {spec.name}")
        self.method.on_task_start(stage, spec, self.agent)
        envs = self.make_envs(spec, self.obs_dim, self.act_dim, n, s.async_envs)
        try:
            # Env i of stage k starts from seed * 1_000_003 + 10_000 * k + i (vector envs add i).
            raw, _ = envs.reset(seed=s.seed * 1_000_003 + 10_000 * stage)
            if state is None:
                state = self.agent.init_state(n, self.device)
            carry = _Carry(
                raw=np.asarray(raw, dtype=np.float32),
                is_first=np.ones(n, dtype=bool),
                valid=np.ones(n, dtype=bool),
                ret_acc=np.zeros(n),
                ep_return=np.zeros(n),
                ep_length=np.zeros(n),
                ep_success=np.zeros(n, dtype=bool),
            )
            task_step = 0
            while task_step < spec.steps:
                state = self._rollout(envs, stage, state, carry)
                steps = s.rollout_len * n
                task_step += steps
                previous = self.global_step
                self.global_step += steps
                self._update(stage)
                self.logger.advance(self.global_step)
                last = task_step >= spec.steps
                if (
                    s.eval_every > 0
                    and not last
                    and _crossed(previous, self.global_step, s.eval_every)
                ):
                    self._evaluate(stage, task_end=False)
                if s.checkpoint_every > 0 and _crossed(
                    previous, self.global_step, s.checkpoint_every
                ):
                    self._save(f"step_{self.global_step:010d}", stage, task_step, stage_done=last)
        finally:
            envs.close()
        self._evaluate(stage, task_end=True)
        self.method.on_task_end(stage, spec, self.agent, self.buffer)
        self._save(f"stage_{stage:02d}", stage, task_step, stage_done=True)
        if s.video is not None:
            self._videos(stage)
        self._write_results()
        return state

    @torch.no_grad()
    def _rollout(
        self, envs: gym.vector.VectorEnv, stage: int, state: AgentState, c: _Carry
    ) -> AgentState:
        agent, buf, s, dev = self.agent, self.buffer, self.settings, self.device
        gamma = self.ppo.config.gamma
        task = torch.full((s.num_envs,), stage, dtype=torch.long, device=dev)
        task_arg = task if agent.config.task_id else None
        for t in range(s.rollout_len):
            raw_t = torch.as_tensor(c.raw, device=dev)
            agent.obs_norm.update(raw_t)
            obs = agent.obs_norm(raw_t)
            is_first = torch.as_tensor(c.is_first, device=dev)
            res = agent.act(obs, state, is_first, generator=self.generator, task=task_arg)
            next_raw, reward, terminated, truncated, infos = envs.step(res.env_action.cpu().numpy())
            next_raw = np.asarray(next_raw, dtype=np.float32)
            valid = c.valid
            terminated = np.asarray(terminated, dtype=bool) & valid
            truncated = np.asarray(truncated, dtype=bool) & valid
            done = terminated | truncated
            reward = np.where(valid, np.asarray(reward, dtype=np.float64), 0.0)
            # Reward scale: running std of the discounted return, reset at episode ends.
            c.ret_acc = np.where(valid, c.ret_acc * gamma + reward, c.ret_acc)
            if valid.any():
                agent.reward_scale.update(torch.as_tensor(c.ret_acc[valid], device=dev))
            c.ret_acc[done] = 0.0
            scaled = agent.reward_scale(torch.as_tensor(reward, dtype=torch.float32, device=dev))
            self._episode_bookkeeping(c, reward, done, infos, valid)
            buf.add(
                t,
                memory=state.memory,
                obs=obs,
                next_obs=agent.obs_norm(torch.as_tensor(next_raw, device=dev)),
                prev_action=state.prev_action,
                prev_reward=state.prev_reward,
                is_first=is_first,
                task=task,
                action=res.action,
                env_action=res.env_action,
                log_prob=res.log_prob,
                value=res.value,
                reward=scaled,
                terminated=torch.as_tensor(terminated),
                truncated=torch.as_tensor(truncated),
                valid=torch.as_tensor(valid),
            )
            state = agent.observe_reward(res.state, scaled)
            # After an episode end comes the autoreset step (masked), then a first step.
            c.is_first = ~valid
            c.valid = ~done
            c.raw = next_raw
        # Bootstrap value of the next observation from the carried state (V(final obs) when the
        # last step ended an episode by truncation), without advancing the carry.
        obs = agent.obs_norm(torch.as_tensor(c.raw, device=dev))
        out, _ = agent.step(
            obs,
            state.prev_action,
            state.prev_reward,
            torch.as_tensor(c.is_first, device=dev),
            state.memory,
            task=task_arg,
        )
        buf.compute_advantages(out.value, gamma, self.ppo.config.gae_lambda)
        return state

    def _episode_bookkeeping(
        self, c: _Carry, reward: np.ndarray, done: np.ndarray, infos: dict, valid: np.ndarray
    ) -> None:
        c.ep_return += reward
        c.ep_length += valid
        if "success" in infos:
            mask = np.asarray(infos.get("_success", np.ones_like(valid)), dtype=bool) & valid
            c.ep_success |= np.asarray(infos["success"], dtype=bool) & mask
        for i in np.flatnonzero(done):
            self._episode_stats.append((c.ep_return[i], c.ep_length[i], float(c.ep_success[i])))
        c.ep_return[done] = 0.0
        c.ep_length[done] = 0.0
        c.ep_success[done] = False

    def _update(self, stage: int) -> None:
        stats = self.ppo.update(self.buffer)
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
        self.logger.log(self.global_step, values)

    # ----------------------------------------------------------------- evaluation & outputs
    def _evaluate(self, stage: int, task_end: bool) -> None:
        results = self.evaluator.evaluate(self.agent)
        reset = None
        if task_end and self.settings.in_context_gain:
            reset = self.evaluator.evaluate(self.agent, reset_every_step=True)
        self.record.events.append(EvalEvent(self.global_step, stage, task_end, results, reset))
        values: dict[str, float] = {}
        for r in results:
            values[f"eval/{r.task}/perf"] = r.perf
            values[f"eval/{r.task}/return"] = r.mean_return
            values[f"eval/{r.task}/wm_error"] = r.wm_error
        finite = [r.perf for r in results if np.isfinite(r.perf)]
        if finite:
            values["eval/mean_perf"] = float(np.mean(finite))
        self.logger.log(self.global_step, values)
        self.logger.flush()

    def _save(self, name: str, stage: int, task_step: int, stage_done: bool) -> None:
        ppo = self.ppo
        tree = {
            "agent": self.agent.state_dict(),
            "optimizer": ppo.optimizer.state_dict(),
            "method": {"name": self.method.name, "state": self.method.state_dict()},
            "rng": {
                "action_noise": self.generator.get_state(),
                # PCG64's state holds 128-bit ints: stored as strings to stay JSON-safe.
                "minibatch": _stringify(ppo.rng.bit_generator.state),
            },
            "progress": {
                "stage": stage,
                "task_step": task_step,
                "global_step": self.global_step,
                "stage_done": stage_done,
                "stage_starts": list(self.record.stage_starts),
                "logger_rows": len(self.logger.rows),
            },
            "meta": {
                "format": "hope_agent.train/1",
                "obs_dim": self.obs_dim,
                "act_dim": self.act_dim,
                "tasks": [s.name for s in self.specs],
                "task_ids": [s.id for s in self.specs],
            },
            "config": self.config_yaml,
        }
        save_checkpoint(self.run_dir / "checkpoints" / name, tree)

    def _videos(self, stage: int) -> None:
        v = self.settings.video
        assert v is not None
        folder = self.run_dir / "videos" / f"stage_{stage:02d}"
        suffix = ".gif" if v.gif else ".mp4"
        clips = []
        for j, spec in enumerate(self.specs):
            frames = record_episodes(
                self.agent,
                spec,
                self.obs_dim,
                self.act_dim,
                task_index=j,
                seed=self.settings.eval_seed + 1000 * j,
                episodes=v.episodes,
                size=v.size,
                frame_skip=v.frame_skip,
            )
            write_video(folder / f"{safe_name(spec.name)}{suffix}", frames, fps=v.fps)
            clips.append(frames)
        grid = tile_videos(clips, labels=[s.name for s in self.specs])
        write_video(folder / f"all_tasks{suffix}", grid, fps=v.fps)

    def _write_results(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return write_results(
            self.run_dir,
            self.record,
            self.settings.smooth_last,
            self.settings.reference_auc,
            extra=extra,
        )


@dataclass
class _Carry:
    """Per-env loop state of the current stage (numpy, one entry per env)."""

    raw: np.ndarray
    is_first: np.ndarray
    valid: np.ndarray
    ret_acc: np.ndarray
    ep_return: np.ndarray
    ep_length: np.ndarray
    ep_success: np.ndarray


def _crossed(previous: int, current: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in ``(previous, current]``."""
    return current // every > previous // every


def _stringify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stringify(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value

"""The one episode driver: steps an :class:`~hope_agent.agents.actor.Actor` through a batch of
envs, one env step per call.

Training rollouts, evaluation, videos and the SB3 baselines all act through
:class:`EpisodeDriver`. Two kinds of batch: a Gymnasium vector env with next-step autoreset
(training; the step after an episode's end carries no transition, ``valid == False``), or a list
of single envs, one episode each (evaluation, videos; a finished env is no longer stepped). Per
row the driver keeps the raw observation, the first-step flag, the raw previous reward, the task
index (``info["task_index"]`` where an env reports one) and the episode's return, length and
success; finished episodes go to :attr:`EpisodeDriver.finished`. What a step is for is the
caller's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from hope_agent.agents.actor import Actor, ActResult, AgentState


@dataclass
class Episode:
    """A finished episode of row ``row``; ``faulty`` when an env fault or restart cut it."""

    row: int
    ret: float
    length: int
    success: bool
    faulty: bool


@dataclass
class Step:
    """One driver step of ``B`` rows: the carry and inputs the actor met, what it did, and what
    the envs answered (numpy arrays of ``B`` rows; masked where ``valid`` is false)."""

    carry: AgentState  # the carry entering the step
    is_first: Tensor  # (B,) bool
    task: Tensor  # (B,) long
    act: ActResult
    next_raw: np.ndarray  # (B, obs_dim) float32 raw observation after the step
    reward: np.ndarray  # (B,) float64, 0 where not valid
    terminated: np.ndarray  # (B,) bool
    truncated: np.ndarray  # (B,) bool
    valid: np.ndarray  # (B,) bool: the row made a real transition
    infos: dict[str, Any]

    @property
    def done(self) -> np.ndarray:
        """Rows whose episode ended at this step."""
        return self.terminated | self.truncated


class _EnvList:
    """A list of single envs, one episode each, behind the vector env's step signature."""

    def __init__(self, envs: Sequence[gym.Env]) -> None:
        self.envs = list(envs)
        self.num_envs = len(self.envs)
        self.alive = np.zeros(self.num_envs, dtype=bool)

    def reset(self, seed: int | Sequence[int]) -> tuple[np.ndarray, dict[str, Any]]:
        seeds = [seed + e for e in range(self.num_envs)] if isinstance(seed, int) else seed
        obs = [env.reset(seed=int(s))[0] for env, s in zip(self.envs, seeds, strict=True)]
        self.alive[:] = True
        return np.stack(obs), {}

    def step(
        self, actions: np.ndarray, raw: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        b = self.num_envs
        next_raw = raw.copy()
        rewards = np.zeros(b)
        terminated = np.zeros(b, dtype=bool)
        truncated = np.zeros(b, dtype=bool)
        infos: list[dict[str, Any]] = [{} for _ in range(b)]
        for e in np.flatnonzero(self.alive):
            obs, r, term, trunc, infos[e] = self.envs[e].step(actions[e])
            next_raw[e], rewards[e] = obs, r
            terminated[e], truncated[e] = bool(term), bool(trunc)
        self.alive &= ~(terminated | truncated)
        return next_raw, rewards, terminated, truncated, _stack_infos(infos)


def _stack_infos(infos: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-env info dicts in the vector env's layout: ``{key: values, "_key": present}``."""
    out: dict[str, Any] = {}
    for key in sorted({k for info in infos for k in info}):
        present = np.array([key in info for info in infos])
        values = [info.get(key) for info in infos]
        out[key] = np.array(values, dtype=object if not present.all() else None)
        out[f"_{key}"] = present
    return out


class EpisodeDriver:
    """Acts with ``actor`` in ``envs`` (see the module docstring).

    Args:
        actor: anything implementing :class:`~hope_agent.agents.actor.Actor`.
        envs: a next-step-autoreset vector env, or a sequence of single envs (one episode each).
        generator: the action noise's CPU generator, or one per equal block of rows
            (:data:`~hope_agent.agents.actor.NoiseSource`).
        task: each row's task index until an env reports its own.
        carry: the actor's carry to continue from (default: a fresh one at :meth:`reset`).
        deterministic: act with the mean (a ``(B,)`` bool array selects rows).
        reset_every_step: restart the actor's memory at every step (the in-context-gain
            control; the token's is_first feature still marks only true episode starts).
        grad: keep the autograd graph of each step (online adaptation); the carry is detached
            between steps.
    """

    def __init__(
        self,
        actor: Actor,
        envs: gym.vector.VectorEnv | Sequence[gym.Env],
        *,
        generator: torch.Generator | Sequence[torch.Generator],
        task: int | np.ndarray = 0,
        carry: AgentState | None = None,
        deterministic: bool | np.ndarray = False,
        reset_every_step: bool = False,
        grad: bool = False,
    ) -> None:
        self.actor, self.generator, self.grad = actor, generator, grad
        self.vector = isinstance(envs, gym.vector.VectorEnv)
        self.envs: Any = envs if isinstance(envs, gym.vector.VectorEnv) else _EnvList(envs)
        b = self.num_envs = int(self.envs.num_envs)
        dev = actor.device
        self.carry = carry
        self.deterministic: bool | Tensor = (
            torch.as_tensor(deterministic, dtype=torch.bool)
            if isinstance(deterministic, np.ndarray)
            else deterministic
        )
        self.reset_mask = torch.ones(b, dtype=torch.bool, device=dev) if reset_every_step else None
        self.task = np.broadcast_to(np.asarray(task, dtype=np.int64), (b,)).copy()
        self.raw = np.zeros((b, actor.obs_dim), dtype=np.float32)
        self.is_first = np.ones(b, dtype=bool)
        self.valid = np.ones(b, dtype=bool)
        self.prev_reward = np.zeros(b)
        self.ep_return = np.zeros(b)
        self.ep_length = np.zeros(b, dtype=np.int64)
        self.ep_success = np.zeros(b, dtype=bool)
        self.finished: list[Episode] = []

    @property
    def running(self) -> bool:
        """Whether any row still has an episode to play (always true for a vector env)."""
        return self.vector or bool(self.envs.alive.any())

    def reset(self, seed: int | Sequence[int]) -> dict[str, Any]:
        """Reset every env (a vector env with ``seed``; env ``e`` of a list with ``seed + e`` or
        ``seed[e]``) and start every row's episode; the carry is kept (a fresh one if none)."""
        raw, infos = self.envs.reset(seed=seed)
        self.raw = np.asarray(raw, dtype=np.float32)
        if self.carry is None:
            self.carry = self.actor.init_carry(self.num_envs)
        self.is_first[:] = True
        self.valid[:] = True
        self.prev_reward[:] = 0.0
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0
        self.ep_success[:] = False
        self._follow_tasks(infos)
        return infos

    def _act(self, deterministic: bool | Tensor) -> tuple[AgentState, ActResult]:
        assert self.carry is not None, "EpisodeDriver.reset must come first"
        dev = self.actor.device
        return self.actor.policy(
            self.carry,
            torch.as_tensor(self.raw, device=dev),
            torch.as_tensor(self.prev_reward, dtype=torch.float32, device=dev),
            torch.as_tensor(self.is_first, device=dev),
            task=torch.as_tensor(self.task, dtype=torch.long, device=dev),
            deterministic=deterministic,
            generator=self.generator,
            reset=self.reset_mask,
        )

    def peek(self) -> ActResult:
        """The actor's deterministic answer to the current observations (e.g. the bootstrap
        value of a rollout), without stepping anything or drawing noise."""
        return self._act(True)[1]

    def step(self) -> Step:
        """Act, step every env, and do the per-row bookkeeping."""
        carry, is_first, task = self.carry, self.is_first.copy(), self.task.copy()
        assert carry is not None, "EpisodeDriver.reset must come first"
        with torch.set_grad_enabled(self.grad):
            new_carry, act = self._act(self.deterministic)
        actions = act.env_action.detach().cpu().numpy()
        valid = self.valid if self.vector else self.envs.alive.copy()
        if self.vector:
            next_raw, reward, term, trunc, infos = self.envs.step(actions)
        else:
            next_raw, reward, term, trunc, infos = self.envs.step(actions, self.raw)
        next_raw = np.asarray(next_raw, dtype=np.float32)
        terminated = np.asarray(term, dtype=bool) & valid
        truncated = np.asarray(trunc, dtype=bool) & valid
        reward = np.where(valid, np.asarray(reward, dtype=np.float64), 0.0)
        done = terminated | truncated
        self._bookkeeping(reward, done, valid, infos)
        if self.vector:
            # After an episode end comes the autoreset step (masked), then a first step.
            self.is_first, self.valid = ~valid, ~done
        else:
            self.is_first = np.zeros(self.num_envs, dtype=bool)
            self.valid = self.envs.alive.copy()
        self.carry = new_carry.detach() if self.grad else new_carry
        self.raw, self.prev_reward = next_raw, reward
        self._follow_tasks(infos)
        return Step(
            carry=carry,
            is_first=torch.as_tensor(is_first, device=self.actor.device),
            task=torch.as_tensor(task, dtype=torch.long, device=self.actor.device),
            act=act,
            next_raw=next_raw,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            valid=valid.copy(),
            infos=infos,
        )

    def _bookkeeping(
        self, reward: np.ndarray, done: np.ndarray, valid: np.ndarray, infos: dict[str, Any]
    ) -> None:
        faulty = np.zeros_like(done)
        if "env_fault" in infos:
            faulty |= np.asarray(infos["env_fault"], dtype=bool)
        if "env_restart" in infos:
            faulty[:] = True
        self.ep_return += reward
        self.ep_length += valid
        if "success" in infos:
            mask = np.asarray(infos.get("_success", np.ones_like(valid)), dtype=bool) & valid
            flags = np.array([bool(f) for f in infos["success"]])
            self.ep_success |= flags & mask
        for i in np.flatnonzero(done):
            self.finished.append(
                Episode(
                    int(i),
                    float(self.ep_return[i]),
                    int(self.ep_length[i]),
                    bool(self.ep_success[i]),
                    bool(faulty[i]),
                )
            )
        self.ep_return[done] = 0.0
        self.ep_length[done] = 0
        self.ep_success[done] = False

    def _follow_tasks(self, infos: dict[str, Any]) -> None:
        if "task_index" not in infos:
            return
        reported = np.asarray(infos.get("_task_index", np.ones(self.num_envs, bool)), dtype=bool)
        self.task = np.where(reported, np.asarray(infos["task_index"], dtype=np.int64), self.task)

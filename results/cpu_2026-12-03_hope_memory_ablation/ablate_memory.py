"""Which part of a trained HOPE agent's state carries the inference on `adapt`?

Evaluates one checkpoint on its own curriculum (the run's evaluation: same episodes, seeds and
noise) while a chosen part of the carried state is put back to its initial value, either at
every step or at the start of every sub-episode after the first (a trial's memory then lasts one
sub-episode only). The parts, per layer of the HOPE stack:

- `all`: the whole backbone state (as `eval.in_context_gain` does at every step),
- `m_mem`: the output memory M_mem (the fast-weight memory that is read to give the output),
- `proj`: the projection memories (k, v, eta, alpha, q: the self-modifying part),
- `conv`: the short causal convolution's last inputs.

Usage: python ablate_memory.py CHECKPOINT [--episodes N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hope_agent.agents.actor import Actor, ActResult, AgentOutput, AgentState, StepInputs
from hope_agent.agents.agent import Agent
from hope_agent.build import build_evaluator, load_trained_agent
from hope_agent.models.hope import HopeState
from hope_agent.models.state import State
from hope_agent.models.titans import FastMemoryState, TitansState

PHASE = 4  # PointAdapt's observation entry: steps into the sub-episode / its length (0 at start)


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _memories(
    cur: FastMemoryState, init: FastMemoryState, mask: Tensor, lo: int, hi: int | None
) -> FastMemoryState:
    """``cur`` with memories ``lo:hi`` (dim 1) of the ``mask`` rows taken from ``init``."""

    def one(c: Tensor, i: Tensor) -> Tensor:
        out = c.clone()
        out[:, lo:hi] = torch.where(_rows(mask, c[:, lo:hi]), i[:, lo:hi], c[:, lo:hi])
        return out

    return FastMemoryState(
        **{
            f.name: one(getattr(cur, f.name), getattr(init, f.name))
            for f in dataclasses.fields(FastMemoryState)
        }
    )


def reset_part(part: str) -> Callable[[TitansState, TitansState, Tensor], TitansState]:
    """How ``part`` of one layer's state is put back to ``init`` in the ``mask`` rows."""

    def apply(cur: TitansState, init: TitansState, mask: Tensor) -> TitansState:
        if part == "all":
            return TitansState(
                mem=_memories(cur.mem, init.mem, mask, 0, None),
                pos=torch.where(_rows(mask, cur.pos), init.pos, cur.pos),
                conv=torch.where(_rows(mask, cur.conv), init.conv, cur.conv),
            )
        if part == "m_mem":
            return dataclasses.replace(cur, mem=_memories(cur.mem, init.mem, mask, -1, None))
        if part == "proj":
            return dataclasses.replace(cur, mem=_memories(cur.mem, init.mem, mask, 0, -1))
        if part == "conv":
            return dataclasses.replace(
                cur, conv=torch.where(_rows(mask, cur.conv), init.conv, cur.conv)
            )
        raise ValueError(f"unknown part {part!r}; choose all, m_mem, proj or conv")

    return apply


class PartReset(Actor):
    """``agent`` whose carried ``part`` restarts at every step (``when="step"``) or at the
    first step of every sub-episode but the first (``when="sub_episode"``)."""

    def __init__(self, agent: Agent, part: str, when: str) -> None:
        self.agent, self.when = agent, when
        self.apply = reset_part(part)
        self.obs_dim, self.act_dim = agent.obs_dim, agent.act_dim

    @property
    def device(self) -> torch.device:
        return self.agent.device

    def init_carry(self, batch_size: int) -> AgentState:
        return self.agent.init_carry(batch_size)

    def normalize_obs(self, obs: Tensor) -> Tensor:
        return self.agent.normalize_obs(obs)

    def scale_reward(self, reward: Tensor) -> Tensor:
        return self.agent.scale_reward(reward)

    def predict_world(self, features: Tensor, env_action: Tensor) -> tuple[Tensor, Tensor]:
        return self.agent.predict_world(features, env_action)

    def step_heads(self, carry: AgentState, step: StepInputs) -> tuple[AgentOutput, State]:
        return self.agent.step_heads(carry, step)

    def policy(  # type: ignore[override]
        self, carry: AgentState, obs: Tensor, prev_reward: Tensor, is_first: Tensor, **kw: Any
    ) -> tuple[AgentState, ActResult]:
        if self.when == "step":
            mask = torch.ones_like(is_first)
        else:
            mask = (obs[:, PHASE] == 0) & ~is_first
        memory = carry.memory
        assert isinstance(memory, HopeState), "the ablation reads a HOPE (Titans) stack's state"
        init = self.init_carry(obs.shape[0]).memory
        assert isinstance(init, HopeState)
        layers = tuple(
            self.apply(c, i, mask)
            for c, i in zip(memory.layers, init.layers, strict=True)  # type: ignore[arg-type]
        )
        carry = AgentState(memory=HopeState(layers=layers), prev_action=carry.prev_action)
        return super().policy(carry, obs, prev_reward, is_first, **kw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--episodes", type=int, default=None, help="default: the run's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    trained = load_trained_agent(args.checkpoint, None, torch.device("cpu"))
    agent = trained.actor
    assert isinstance(agent, Agent)
    agent.eval()
    evaluator = build_evaluator(trained.cfg, trained.curriculum, agent, episodes=args.episodes)
    conditions: list[tuple[str, Actor, bool]] = [
        ("kept", agent, False),
        ("all reset every step (eval.in_context_gain)", agent, True),
    ]
    for part in ("all", "m_mem", "proj", "conv"):
        for when in ("sub_episode", "step"):
            if (part, when) != ("all", "step"):
                label = f"{part} reset every {when}"
                conditions.append((label, PartReset(agent, part, when), False))
    results = {}
    print(f"{args.checkpoint}: sub-episode success 1/2/3, trial gain [90% CI]")
    for label, actor, every_step in conditions:
        with torch.no_grad():
            ev = evaluator.evaluate(actor, reset_every_step=every_step)[0]
        assert ev.sub_episode_success is not None and ev.trial_gain is not None
        results[label] = {"sub_episode_success": ev.sub_episode_success, "gain": ev.trial_gain}
        sub = " / ".join(f"{s:.2f}" for s in ev.sub_episode_success)
        g = ev.trial_gain
        print(f"| {label} | {sub} | {g[0]:.3f} [{g[1]:.2f}, {g[2]:.2f}] |", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

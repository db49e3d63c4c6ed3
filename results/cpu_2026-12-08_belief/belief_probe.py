"""Does a trained agent's memory hold the hidden goal, and does its policy use it?

Plays N whole trials of a checkpoint's (single, `adapt`) task with the run's stochastic policy
and reads the belief head at every step: the accuracy of its argmax against the trial's goal
(`info["goal_index"]`), per sub-episode, beside the success rate of each sub-episode, over all
trials and per goal. A memory that keeps the goal answers near 1 in sub-episodes 2 and 3 (0.5 is
chance in sub-episode 1); a policy that uses it succeeds for either goal.

Usage: python belief_probe.py CHECKPOINT [--trials N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hope_agent.agents.agent import Agent
from hope_agent.build import load_trained_agent
from hope_agent.rollout.driver import EpisodeDriver
from hope_agent.rollout.vec import make_vector_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    trained = load_trained_agent(args.checkpoint, None, torch.device("cpu"))
    agent = trained.actor
    assert isinstance(agent, Agent) and agent.belief_head is not None, "needs a belief head"
    agent.eval()
    cur = trained.curriculum
    (spec,) = cur.specs
    envs = make_vector_env(spec, cur.obs_dim, cur.act_dim, args.trials, batched=True)
    driver = EpisodeDriver(agent, envs, generator=torch.Generator().manual_seed(args.seed))
    driver.reset(args.seed)
    k = int(spec.kwargs.get("trial_episodes", 3))
    hits = np.zeros(k)
    counts = np.zeros(k)
    success = np.zeros((2, k))
    goal_of = np.full(args.trials, -1)
    mean_sum = np.zeros((2, agent.act_dim))  # the policy mean in sub-episodes 2.., per goal
    mean_count = np.zeros(2)
    ended = np.zeros(args.trials, dtype=bool)
    with torch.no_grad():
        while not ended.all():
            step = driver.step()
            infos = step.infos
            live = step.valid & ~ended
            guess = agent.belief_logits(step.act.output.features).argmax(-1).numpy()
            sub = np.asarray(infos["trial_episode"])
            goal = np.asarray(infos["goal_index"])
            goal_of = np.where(live, goal, goal_of)
            right = guess == goal
            np.add.at(hits, sub[live], right[live])
            np.add.at(counts, sub[live], 1)
            later = live & (sub > 0)
            np.add.at(mean_sum, goal[later], step.act.output.mean.numpy()[later])
            np.add.at(mean_count, goal[later], 1)
            end = live & np.asarray(infos["sub_episode_end"], dtype=bool)
            hit = np.asarray(infos["success"], dtype=bool)[end]
            np.add.at(success, (goal[end], sub[end]), hit)
            ended |= live & step.truncated
    out = {
        "checkpoint": str(args.checkpoint),
        "trials": args.trials,
        "belief_accuracy_per_sub_episode": (hits / counts).round(3).tolist(),
        "success_per_sub_episode": (success.sum(0) / args.trials).round(3).tolist(),
        "trials_per_goal": np.bincount(goal_of, minlength=2).tolist(),
        "success_per_goal_and_sub_episode": (success / np.bincount(goal_of, minlength=2)[:, None])
        .round(3)
        .tolist(),
        "policy_mean_after_sub_episode_1_per_goal": (mean_sum / mean_count[:, None])
        .round(3)
        .tolist(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

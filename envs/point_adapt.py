"""Point-mass adaptation trials: a hidden goal per trial, K attempts at it (the `adapt` family).

One Gymnasium episode is one *trial* of `trial_episodes` (K) sub-episodes. At the trial's reset
the env draws a hidden goal from the task's own candidate set (`goals`); at every sub-episode
boundary the body returns to a start pose but the goal stays. A policy with memory that lasts the
whole Gymnasium episode (RL^2 style) can learn from the rewards of sub-episode 0 where the goal is
and go straight there in sub-episodes 1..K-1; a memoryless policy cannot do better in later
sub-episodes than in the first. Two tasks with disjoint candidate sets conflict (their goals lie
in other directions), so a continual curriculum over them can forget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from hope_envs.point import PointMassEnv, ctrl_costs, distances, first_row


class PointAdaptEnv(PointMassEnv):
    r"""Reach a hidden goal, drawn per trial from a task's set, in each of K sub-episodes.

    ## Description
    The body of `PointReachEnv` (a 0.1 kg point mass on a 2 m x 2 m table, speed at most 1 m/s).
    A task is a set of candidate `goals`. At `reset` (a new trial) one candidate is drawn
    uniformly from `self.np_random` and kept, unobserved, for the whole trial of
    `trial_episodes` sub-episodes of `sub_episode_steps` steps each (defaults 3 x 40 = 120 steps
    of 0.02 s). A sub-episode of 40 steps lasts 0.8 s: enough to go straight to one candidate
    (0.5 m to its edge), not to visit two of the default candidates, 0.85 m apart. At a
    sub-episode boundary the body is reset to a start pose (the same distribution as at
    `reset`); the goal and the trial go on.

    ## Action Space
    `Box(-1, 1, (2,), float32)`: the force along x and along y, in units of 2 N.

    ## Observation Space
    `Box(-inf, inf, (5,), float64)`: x, y position (m), x, y velocity (m/s), and the phase of the
    sub-episode, `steps taken in it / sub_episode_steps` (0 at a start pose; it falls back to 0
    at each boundary, which marks the new sub-episode). The goal is not observed: for the same
    seed and actions the observations are the same whichever goal was drawn. With
    `goal_hint=True` (a control, off by default) two more entries give the live goal's x, y (m):
    the oracle, which makes the task memoryless, so `Box(7,)`; what a policy learns with it is
    the most that inference could earn at the same budget.

    ## Rewards
    `reward = reward_distance + reward_goal + reward_ctrl`, each term also in `info`:
    - `reward_distance = -distance_weight * ||p - g||` to the live goal `g` (`shaping="goal"`,
      the default): a dense signal that tells the candidates apart as soon as the body moves
      (the 2D-navigation reward of MAML); with `shaping="set"`, `-distance_weight * min_c
      ||p - c||` over the task's candidates `c`: the same whichever goal is live, so only the
      bonus tells them apart (the sparse regime; PPO does not learn this task then, not even
      with the goal observed: `results/cpu_2026-12-03_adapt_probes2/`); with `shaping="end"`,
      `-distance_weight * sub_episode_steps * ||p - g||` at the last step of each sub-episode
      and 0 before it, so no reward within a sub-episode depends on the goal until the body
      reaches it (the goal-shaped reward lets a policy read the live goal off one step's reward
      and its position, and then steer to it within the first sub-episode:
      `results/cpu_2026-12-03_hope_memory_ablation/`),
    - `reward_goal = goal_bonus` at a step within `success_radius` of the live goal, else 0,
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2`.

    ## Info (every reset and step)
    The keys describe the step just taken; the observation returned with them is where the next
    action starts (at a boundary: the next sub-episode's start pose).
    - `goal_index` (int): the index of the trial's hidden goal among `goals` (what an agent must
      infer; training may use it as a label, `ppo.belief_coef`, never as an input),
    - `trial_episode` (int): the 0-based index of the sub-episode the step belongs to (0 at reset),
    - `sub_episode_step` (int): steps taken in that sub-episode, this one included (0 at reset),
    - `sub_episode_end` (bool): true at the last step of a sub-episode,
    - `success` (bool): true at a step where the current sub-episode has reached the live goal
      (been within `success_radius` of it at this or an earlier step of the sub-episode); false at
      reset and again at the first step of each sub-episode that has not reached it yet.
      Success of sub-episode k = `success` at its last step; the in-context gain = success of
      k = K-1 minus success of k = 0. A controller that knows the goal succeeds in every
      sub-episode; uniform random actions almost never do (tests/test_point_adapt.py),
    - `distance` (float): distance to the live goal (m), and the reward terms above.

    ## Starting State
    Position uniform in `[-reset_noise_scale, reset_noise_scale]^2`, velocity zero, at reset and
    at every boundary; the goal is drawn before the first start pose. `reset(options=
    {"goal_index": i})` pins the goal to candidate `i` (evaluation by goal; the draw still
    happens, so the start poses do not depend on `i`).

    ## Episode End
    Never terminates; the env truncates the trial itself after its last sub-episode
    (`trial_episodes * sub_episode_steps` steps), so its length follows its arguments (no time
    limit is registered).

    ## Arguments
    | Parameter           | Type                 | Default                  | Description      |
    |---------------------|----------------------|--------------------------|------------------|
    | `goals`             | sequence of 2-lists  | ((0.6, 0.0), (0.0, 0.6)) | candidate goals  |
    | `trial_episodes`    | int                  | 3                        | K, sub-episodes  |
    | `sub_episode_steps` | int                  | 40                       | steps of each    |
    | `distance_weight`   | float                | 1.0                      | shaping weight   |
    | `goal_bonus`        | float                | 1.0                      | at the live goal |
    | `shaping`           | "goal", "set", "end" | "goal"                   | distance to what |
    | `goal_hint`         | bool                 | False                    | oracle input     |
    | `ctrl_cost_weight`  | float                | 0.05                     | control penalty  |
    | `success_radius`    | float                | 0.1                      | success distance |
    | `reset_noise_scale` | float                | 0.05                     | start half-width |

    Candidates must lie inside the table and more than `2 * success_radius` apart (no point
    counts for two of them).
    """

    label = "PointAdapt"

    def __init__(
        self,
        goals: Sequence[Sequence[float]] = ((0.6, 0.0), (0.0, 0.6)),
        trial_episodes: int = 3,
        sub_episode_steps: int = 40,
        distance_weight: float = 1.0,
        goal_bonus: float = 1.0,
        goal_hint: bool = False,
        shaping: Literal["goal", "set", "end"] = "goal",
        **kwargs: Any,
    ) -> None:
        """`kwargs`: `ctrl_cost_weight`, `success_radius`, `reset_noise_scale` (see the table;
        `PointMassEnv`'s), then `MujocoEnv`'s rendering arguments."""
        self._trial_episodes = _count(trial_episodes, "trial_episodes")
        self._sub_episode_steps = _count(sub_episode_steps, "sub_episode_steps")
        self._distance_weight = distance_weight
        self._goal_bonus = goal_bonus
        self._goal_hint = bool(goal_hint)
        if shaping not in ("set", "goal", "end"):
            raise ValueError(
                f"PointAdapt shaping must be 'goal' (distance to the live goal), 'set' "
                f"(distance to the nearest candidate) or 'end' (distance to the live goal at "
                f"each sub-episode's end only), got {shaping!r}."
            )
        self._shaping = shaping
        self._goal_index = 0
        # The goal index `reset(options=...)` pins for the coming trial, if any.
        self._pinned: int | None = None
        self._trial_episode = 0
        self._sub_step = 0
        self._reached = False
        arguments = {
            "goals": goals,
            "trial_episodes": trial_episodes,
            "sub_episode_steps": sub_episode_steps,
            "distance_weight": distance_weight,
            "goal_bonus": goal_bonus,
            "goal_hint": goal_hint,
            "shaping": shaping,
        }
        super().__init__(arguments=arguments, observation_size=5 + 2 * self._goal_hint, **kwargs)
        self._goals = self._candidates(goals)
        self._show_goal(self._goals[0])

    def _candidates(self, goals: Sequence[Sequence[float]]) -> NDArray[np.float64]:
        """`goals` as an `(n, 2)` array, each inside the table and no two within reach of one."""
        if isinstance(goals, str | bytes) or len(goals) == 0:
            raise ValueError(
                f"PointAdapt goals must be a non-empty list of 2-number positions, got {goals!r}; "
                "pass e.g. goals=[[0.6, 0.0], [0.0, 0.6]]."
            )
        candidates = np.stack([self._goal_array(g, f"goals[{i}]") for i, g in enumerate(goals)])
        gaps = np.linalg.norm(candidates[:, None] - candidates[None], axis=-1)
        np.fill_diagonal(gaps, np.inf)
        if gaps.min() <= 2 * self._success_radius:
            raise ValueError(
                f"PointAdapt goals {np.round(candidates, 3).tolist()} must be more than "
                f"2 * success_radius = {2 * self._success_radius} apart, so that no point "
                "reaches two; spread them out or lower success_radius."
            )
        return candidates

    @property
    def goals(self) -> NDArray[np.float64]:
        """The task's candidate goals, `(n, 2)` (m); a copy."""
        return self._goals.copy()

    @property
    def goal(self) -> NDArray[np.float64]:
        """The live goal of the current trial (m); a copy, never observed by the agent."""
        return self._goals[self._goal_index].copy()

    @property
    def goal_index(self) -> int:
        """Index in `goals` of the live goal of the current trial."""
        return self._goal_index

    @property
    def goal_hint(self) -> bool:
        """Whether the live goal is observed (the oracle control)."""
        return self._goal_hint

    @property
    def trial_episodes(self) -> int:
        """K, the number of sub-episodes of a trial."""
        return self._trial_episodes

    @property
    def sub_episode_steps(self) -> int:
        """Steps of each sub-episode."""
        return self._sub_episode_steps

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float64], dict[str, Any]]:
        """Start a trial: draw the hidden goal (or take `options["goal_index"]`), then the pose."""
        options = dict(options or {})
        pinned = options.pop("goal_index", None)
        if options:
            raise ValueError(
                f"PointAdapt reset options take only 'goal_index', got {sorted(options)}."
            )
        if pinned is not None and (
            isinstance(pinned, bool)
            or not isinstance(pinned, int | np.integer)
            or not 0 <= pinned < len(self._goals)
        ):
            raise ValueError(
                f"PointAdapt goal_index must be an int in [0, {len(self._goals)}), got {pinned!r}."
            )
        self._pinned = None if pinned is None else int(pinned)
        return super().reset(seed=seed)

    def reset_model(self) -> NDArray[np.float64]:
        """Draw the trial's goal, then the first start pose."""
        drawn = int(self.np_random.integers(len(self._goals)))
        self._goal_index = drawn if self._pinned is None else self._pinned
        self._show_goal(self._goals[self._goal_index])
        self._trial_episode, self._sub_step, self._reached = 0, 0, False
        self._reset_body()
        return self._get_obs()

    def batch_rewards(
        self,
        positions: NDArray[np.float64],
        goal_index: NDArray[np.int64],
        trial_episode: NDArray[np.int64],
        sub_step: NDArray[np.int64],
        reached: NDArray[np.bool_],
        actions: NDArray[np.floating[Any]],
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_], dict[str, NDArray[Any]]]:
        """Rewards, truncations and infos of a batch of steps of this task (rows: envs), from the
        positions after the physics step, each row's goal index, sub-episode, steps taken in it
        (this one included), whether it had reached the goal before, and the actions taken;
        `step` is its one-row case."""
        distance = distances(positions, self._goals[goal_index])
        at_goal = distance < self._success_radius
        end = sub_step == self._sub_episode_steps
        if self._shaping == "goal":
            shaped = distance
        elif self._shaping == "set":
            shaped = np.min([distances(positions, goal[None]) for goal in self._goals], axis=0)
        else:
            shaped = np.where(end, self._sub_episode_steps * distance, 0.0)
        reward_distance = -self._distance_weight * shaped
        reward_goal = np.where(at_goal, float(self._goal_bonus), 0.0)
        reward_ctrl = ctrl_costs(self._ctrl_cost_weight, actions)
        info = {
            "goal_index": goal_index,
            "trial_episode": trial_episode,
            "sub_episode_step": sub_step,
            "sub_episode_end": end,
            "success": reached | at_goal,
            "distance": distance,
            "reward_distance": reward_distance,
            "reward_goal": reward_goal,
            "reward_ctrl": reward_ctrl,
        }
        truncated = end & (trial_episode == self._trial_episodes - 1)
        # in the order, and from the 0.0, that the single env's `sum()` of the terms used
        return 0.0 + reward_distance + reward_goal + reward_ctrl, truncated, info

    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[NDArray[np.float64], float, bool, bool, dict[str, Any]]:
        """One 0.02 s step; at a sub-episode's last step the body is reset for the next one."""
        self.do_simulation(action, self.frame_skip)
        self._sub_step += 1
        reward, truncated, info = self.batch_rewards(
            self.data.qpos[None, :2],
            np.array([self._goal_index]),
            np.array([self._trial_episode]),
            np.array([self._sub_step]),
            np.array([self._reached]),
            np.asarray(action)[None],
        )
        row = first_row(info)
        self._reached = row["success"]
        if row["sub_episode_end"] and not truncated[0]:
            self.next_sub_episode()
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), float(reward[0]), False, bool(truncated[0]), row

    def next_sub_episode(self) -> None:
        """Start the next sub-episode of the trial: the body back at a start pose, goal kept."""
        self._trial_episode, self._sub_step, self._reached = self._trial_episode + 1, 0, False
        self._reset_body()

    def _get_obs(self) -> NDArray[np.float64]:
        extra = [self._sub_step / self._sub_episode_steps]
        if self._goal_hint:
            extra.extend(self._goals[self._goal_index])
        return np.append(self._body_obs(), extra)

    def _get_reset_info(self) -> dict[str, Any]:
        return {
            "goal_index": self._goal_index,
            "trial_episode": 0,
            "sub_episode_step": 0,
            "sub_episode_end": False,
            "success": False,
            "distance": self._distance_to(self._goals[self._goal_index]),
        }


def _count(value: Any, name: str) -> int:
    """`value` as a positive int, else one ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"PointAdapt {name} must be a positive integer, got {value!r}.")
    return int(value)

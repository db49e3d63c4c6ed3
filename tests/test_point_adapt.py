"""hope/PointAdapt-v0: a hidden goal per trial that memory can infer and memorylessness cannot."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, cast

import gymnasium as gym
import numpy as np
import pytest

import hope_envs  # noqa: F401  (registers the ids)
from hope_envs.curriculum import load_curriculum, make_env, resolve_tasks
from hope_envs.point_adapt import PointAdaptEnv

ADAPT = "hope/PointAdapt-v0"
# A controller: (observation, previous reward, is the sub-episode new) -> action. It may keep
# state of its own between calls; the env's hidden goal is never passed.
Controller = Callable[[np.ndarray, float, bool], np.ndarray]


def toward(target: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """A proportional controller that drives the mass to `target` (it stops on it)."""
    return np.clip(6.0 * (target - obs[:2]), -1.0, 1.0).astype(np.float32)


def success_per_sub_episode(
    env: gym.Env, make_controller: Callable[[gym.Env], Controller], seeds: range
) -> np.ndarray:
    """Fraction of trials (one per seed) whose sub-episode k reached the goal, for each k."""
    base: Any = env.unwrapped
    success = np.zeros((len(seeds), base.trial_episodes))
    for row, seed in enumerate(seeds):
        controller = make_controller(env)
        obs, info = env.reset(seed=seed)
        reward, new, done = 0.0, True, False
        while not done:
            obs, step_reward, terminated, truncated, info = env.step(controller(obs, reward, new))
            reward = float(step_reward)
            new = info["sub_episode_end"]
            if info["sub_episode_end"]:
                success[row, info["trial_episode"]] = info["success"]
            done = terminated or truncated
    return success.mean(axis=0)


def knows_the_goal(env: gym.Env) -> Controller:
    """The scripted oracle: reads the hidden goal from the env and goes straight there."""
    base: Any = env.unwrapped
    return lambda obs, reward, new: toward(base.goal, obs)


def memoryless(env: gym.Env) -> Controller:
    """A function of the observation only: always the task's first candidate."""
    first = cast(PointAdaptEnv, env.unwrapped).goals[0]
    return lambda obs, reward, new: toward(first, obs)


def infers_from_reward(env: gym.Env) -> Controller:
    """Knows the task's candidates, not the live one: tries them in turn until the reward pays.

    The goal bonus (1.0) is the only term that can make a reward positive (shaping and control
    cost are <= 0), so a reward above 0.5 means the candidate tried is the live goal.
    """
    candidates = cast(PointAdaptEnv, env.unwrapped).goals
    belief = {"index": 0, "paid": False, "tried": False}

    def act(obs: np.ndarray, reward: float, new: bool) -> np.ndarray:
        belief["paid"] = belief["paid"] or reward > 0.5
        if new and belief["tried"] and not belief["paid"]:
            # The last sub-episode never paid: the live goal is another candidate.
            belief["index"] = (belief["index"] + 1) % len(candidates)
        belief["tried"] = True
        return toward(candidates[belief["index"]], obs)

    return act


def random_actions(env: gym.Env) -> Controller:
    rng = np.random.default_rng(0)
    return lambda obs, reward, new: rng.uniform(-1.0, 1.0, size=2).astype(np.float32)


@pytest.mark.parametrize("shaping", ["goal", "end"])
def test_a_controller_that_knows_the_goal_succeeds_and_random_actions_do_not(shaping: str) -> None:
    env = gym.make(ADAPT, shaping=shaping)
    np.testing.assert_array_equal(
        success_per_sub_episode(env, knows_the_goal, range(30)), [1.0, 1.0, 1.0]
    )
    assert success_per_sub_episode(env, random_actions, range(30)).max() <= 0.05


@pytest.mark.parametrize("shaping", ["goal", "end"])
def test_inference_from_reward_pays_in_later_sub_episodes_and_memorylessness_does_not(
    shaping: str,
) -> None:
    env = gym.make(ADAPT, shaping=shaping)
    seeds = range(40)
    fixed = success_per_sub_episode(env, memoryless, seeds)
    inferring = success_per_sub_episode(env, infers_from_reward, seeds)
    # Both act alike until the first reward arrives, so sub-episode 0 is the same for both: the
    # share of trials whose goal is the first candidate, about one half.
    assert fixed[0] == inferring[0]
    assert 0.2 <= fixed[0] <= 0.8
    # No memory, no gain: every sub-episode is a fresh guess.
    assert np.all(fixed == fixed[0])
    # With memory of sub-episode 0's rewards, every later sub-episode goes to the live goal.
    assert np.all(inferring[1:] == 1.0)
    assert inferring[-1] - inferring[0] >= 0.2


def test_the_hidden_goal_is_constant_within_a_trial_and_drawn_per_trial() -> None:
    env = gym.make(ADAPT)
    base: Any = env.unwrapped
    drawn = []
    for seed in range(20):
        env.reset(seed=seed)
        goal = base.goal_index
        drawn.append(goal)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            assert base.goal_index == goal
            done = terminated or truncated
    assert set(drawn) == {0, 1}
    # The same seed draws the same goal; unseeded resets go on drawing new ones.
    again = []
    for seed in range(20):
        env.reset(seed=seed)
        again.append(base.goal_index)
    assert again == drawn
    env.reset(seed=0)
    later = set()
    for _ in range(30):
        env.reset()
        later.add(base.goal_index)
    assert later == {0, 1}


def test_the_goal_cannot_be_recovered_from_the_observations() -> None:
    """Pinning either goal, the same seed and actions give the same observations, to the bit;
    only the rewards differ."""
    envs = [gym.make(ADAPT), gym.make(ADAPT)]
    observations: list[list[np.ndarray]] = [[], []]
    rewards: list[list[float]] = [[], []]
    for index, env in enumerate(envs):
        obs, _ = env.reset(seed=5, options={"goal_index": index})
        observations[index].append(obs)
        rng = np.random.default_rng(1)
        done = False
        while not done:
            action = toward(np.array([0.6, 0.0]), obs) + rng.normal(0, 0.3, 2).astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations[index].append(obs)
            rewards[index].append(float(reward))
            done = terminated or truncated
    np.testing.assert_array_equal(np.array(observations[0]), np.array(observations[1]))
    assert rewards[0] != rewards[1]
    # The policy went east: it collected the bonus only when east was the live goal.
    assert max(rewards[0]) > 0.5 > max(rewards[1])


def test_info_contract_at_every_step() -> None:
    k, t = 3, 8
    env = gym.make(ADAPT, trial_episodes=k, sub_episode_steps=t, goals=[[0.1, 0.0], [-0.6, 0.0]])
    obs, info = env.reset(seed=0, options={"goal_index": 0})
    assert info == {
        "goal_index": 0,
        "trial_episode": 0,
        "sub_episode_step": 0,
        "sub_episode_end": False,
        "success": False,
        "distance": pytest.approx(info["distance"]),
    }
    assert obs[4] == 0.0
    records, done = [], False
    while not done:
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0], np.float32))
        assert not terminated
        assert reward == pytest.approx(
            info["reward_distance"] + info["reward_goal"] + info["reward_ctrl"], abs=1e-12
        )
        assert (info["reward_goal"] > 0) == (info["distance"] < 0.1)
        records.append((info, obs, truncated))
        done = truncated
    assert len(records) == k * t
    infos = [r[0] for r in records]
    assert [i["trial_episode"] for i in infos] == [e for e in range(k) for _ in range(t)]
    assert [i["goal_index"] for i in infos] == [0] * (k * t)
    assert [i["sub_episode_step"] for i in infos] == list(range(1, t + 1)) * k
    assert [i["sub_episode_end"] for i in infos] == ([False] * (t - 1) + [True]) * k
    assert [r[2] for r in records] == [False] * (k * t - 1) + [True]
    for e in range(k):
        sub = infos[e * t : (e + 1) * t]
        # `success` latches within a sub-episode: reached at or before this step.
        reached = np.logical_or.accumulate([i["distance"] < 0.1 for i in sub])
        assert [i["success"] for i in sub] == reached.tolist()
        assert sub[-1]["success"]
    for info, obs, truncated in records:
        if info["sub_episode_end"] and not truncated:
            # The next sub-episode starts from a start pose, at rest, with the phase back at 0.
            assert np.all(np.abs(obs[:2]) <= 0.05) and np.all(obs[2:4] == 0.0) and obs[4] == 0.0
        else:
            assert obs[4] == pytest.approx(info["sub_episode_step"] / t)


def test_the_adapt_curriculum_has_two_tasks_with_disjoint_goal_sets() -> None:
    specs = resolve_tasks(load_curriculum("adapt")["tasks"], steps_per_task=10)
    assert len(specs) == 2 and all(spec.id == ADAPT for spec in specs)
    sets = [{tuple(goal) for goal in spec.kwargs["goals"]} for spec in specs]
    assert not sets[0] & sets[1]
    # Opposite directions: what one task's policy learns is wrong for the other.
    np.testing.assert_allclose(
        np.array(specs[0].kwargs["goals"]), -np.array(specs[1].kwargs["goals"])
    )
    assert all(spec.steps < 100_000 for spec in specs)
    env = make_env(specs[0], 5, 2)
    _, info = env.reset(seed=0)
    assert info["success"] is False and info["trial_episode"] == 0
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert {"trial_episode", "sub_episode_step", "sub_episode_end", "success"} <= set(info)


def test_the_env_pickles_with_its_arguments() -> None:
    env = gym.make(ADAPT, goals=[[0.5, 0.5], [-0.5, 0.5]], trial_episodes=2).unwrapped
    clone = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(clone.goals, [[0.5, 0.5], [-0.5, 0.5]])
    assert clone.trial_episodes == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"goals": []}, "non-empty list"),
        ({"goals": [[2.0, 0.0]]}, r"goals\[0\] must be 2 numbers inside the table"),
        ({"goals": [[0.5, 0.0], [0.55, 0.0]]}, "more than 2 \\* success_radius"),
        ({"trial_episodes": 0}, "trial_episodes must be a positive integer"),
        ({"sub_episode_steps": 2.5}, "sub_episode_steps must be a positive integer"),
        ({"success_radius": 0.0}, "success_radius > 0"),
    ],
)
def test_bad_arguments_raise_one_clear_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PointAdaptEnv(**kwargs)


def test_bad_reset_options_raise_one_clear_error() -> None:
    env = gym.make(ADAPT)
    with pytest.raises(ValueError, match=r"goal_index must be an int in \[0, 2\)"):
        env.reset(seed=0, options={"goal_index": 2})
    with pytest.raises(ValueError, match="take only 'goal_index'"):
        env.reset(seed=0, options={"goal": [0.6, 0.0]})


def test_the_goal_hint_is_the_live_goal_and_makes_the_task_memoryless() -> None:
    """The oracle control (`goal_hint=True`): the live goal's x, y in the observation at every
    step, so a function of the observation alone succeeds in every sub-episode."""
    env = gym.make(ADAPT, goal_hint=True)
    assert env.observation_space.shape == (7,)
    base = cast(PointAdaptEnv, env.unwrapped)
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            np.testing.assert_array_equal(obs[5:], base.goal)
            obs, _, terminated, truncated, _ = env.step(toward(obs[5:], obs))
            done = terminated or truncated

    def reads_the_hint(env: gym.Env) -> Controller:
        return lambda obs, reward, new: toward(obs[5:], obs)

    np.testing.assert_array_equal(
        success_per_sub_episode(env, reads_the_hint, range(20)), [1.0, 1.0, 1.0]
    )


def test_goal_shaping_is_the_distance_to_the_live_goal_and_set_shaping_hides_it() -> None:
    """`shaping="goal"`: the distance term is minus the distance to the live goal, so the reward
    tells the candidates apart; `"set"` (the default) gives the same term whichever is live."""
    terms: dict[str, list[list[float]]] = {"set": [], "goal": []}
    for shaping, rows in terms.items():
        env = gym.make(ADAPT, shaping=shaping)
        for goal_index in (0, 1):
            env.reset(seed=3, options={"goal_index": goal_index})
            row = []
            for _ in range(10):
                _, _, _, _, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
                row.append(info["reward_distance"])
                if shaping == "goal":
                    assert info["reward_distance"] == pytest.approx(-info["distance"])
            rows.append(row)
    assert terms["set"][0] == terms["set"][1]
    assert terms["goal"][0] != terms["goal"][1]
    with pytest.raises(ValueError, match="shaping must be .goal."):
        PointAdaptEnv(shaping="nearest")


def test_end_shaping_pays_nothing_that_depends_on_the_goal_before_a_sub_episode_ends() -> None:
    """`shaping="end"`: with the same seed and actions (the body heads between the candidates and
    reaches neither), the rewards of the two goals differ only at the sub-episodes' last steps,
    where the distance term is minus `sub_episode_steps` times the distance; with `"goal"` they
    differ from the first step on (one step's reward and position give the goal away)."""
    action = np.array([0.3, 0.3], dtype=np.float32)
    for shaping in ("goal", "end"):
        rewards, ends = [], []
        for goal_index in (0, 1):
            env = gym.make(ADAPT, shaping=shaping)
            env.reset(seed=5, options={"goal_index": goal_index})
            row, done = [], False
            while not done:
                _, reward, _, truncated, info = env.step(action)
                assert info["reward_goal"] == 0.0
                if shaping == "end":
                    steps = env.unwrapped.sub_episode_steps
                    expected = -steps * info["distance"] if info["sub_episode_end"] else 0.0
                    assert info["reward_distance"] == pytest.approx(expected)
                row.append(float(reward))
                ends.append(info["sub_episode_end"])
                done = truncated
            rewards.append(np.array(row))
        differs = rewards[0] != rewards[1]
        end_steps = np.array(ends[: len(differs)])
        if shaping == "end":
            np.testing.assert_array_equal(differs, end_steps)
        else:
            assert differs.all()

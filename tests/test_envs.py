"""The MuJoCo tasks of hope_envs: API checks, seeding, rewards, success, and what they encode."""

from __future__ import annotations

import pickle
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import hope_envs
from hope_envs.cheetah import REST_HEIGHT, SUCCESS_WINDOW_STEPS, CheetahRunEnv
from hope_envs.curriculum import load_curriculum
from hope_envs.metaworld_tasks import METAWORLD_ID
from hope_envs.registration import NAMESPACE

OWN_IDS = [env_id for env_id in hope_envs.registered_ids() if env_id != METAWORLD_ID]
CHEETAH_IDS = [env_id for env_id in OWN_IDS if "Cheetah" in env_id]
FAST_GOALS = [task["kwargs"]["goal"] for task in load_curriculum("fast")["tasks"]]


# Open-loop controllers that reach each cheetah task's success criterion, found by random search
# and hill climbing on this body (seeds 0-2, 200-300 steps): joint j's torque is
# offset[j] + amplitude[j] * sin(2 pi hz t + phase[j]), clipped to [-1, 1].
class Gait(NamedTuple):
    """A sinusoidal torque per joint: frequency, then per-joint offset, amplitude, phase."""

    hz: float
    offset: tuple[float, ...]
    amplitude: tuple[float, ...]
    phase: tuple[float, ...]


GAITS = {
    "hope/CheetahRun-v0": Gait(
        2.862,
        (-0.059, -1.161, -0.309, -0.635, 2.204, 0.338),
        (1.252, 0.68, 0.231, 0.372, 0.97, -0.094),
        (3.264, 4.142, 2.052, -0.038, 2.265, 4.676),
    ),
    "hope/CheetahRunBackward-v0": Gait(
        3.654,
        (0.598, 0.048, -0.478, 0.652, -0.39, -0.987),
        (0.512, 0.313, 0.432, 1.382, 0.266, 0.317),
        (4.644, 4.26, 3.822, 2.644, 5.864, -0.921),
    ),
    "hope/CheetahFrontStand-v0": Gait(
        1.552,
        (-0.058, -0.351, -1.177, -0.436, -0.176, 1.122),
        (0.25, -0.119, 0.137, 1.722, -0.147, 0.437),
        (3.321, 5.75, 1.807, 7.118, 2.239, -1.476),
    ),
    "hope/CheetahTargetSpeed-v0": Gait(
        3.126,
        (-0.071, -1.067, -0.045, -0.948, 2.047, 0.714),
        (1.103, 0.205, 0.094, 0.437, 1.169, -0.064),
        (3.439, 5.037, 1.338, -0.471, 2.405, 4.517),
    ),
}
# The jump: crouch with one torque for 12 steps, extend with another for 13, repeat.
JUMP_CROUCH = [1.08, 1.487, 0.029, -1.176, -0.954, 0.182]
JUMP_EXTEND = [0.612, -0.005, -0.776, 2.125, 1.029, 0.2]
# A constant torque that straightens the legs: the body stands still, taller than at rest.
TALL_STANCE = [-0.32, -0.97, 0.86, -0.36, 0.69, 0.92]


def rollout(env: gym.Env, seed: int, steps: int) -> tuple[np.ndarray, list[float]]:
    """First observation and the rewards of `steps` seeded random actions."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    rewards = [float(env.step(env.action_space.sample())[1]) for _ in range(steps)]
    return obs, rewards


def reach(env: gym.Env, goal: np.ndarray, seed: int) -> tuple[bool, float]:
    """Drive the point mass to `goal` with a proportional controller: (any-step success, return)."""
    obs, _ = env.reset(seed=seed)
    success, total, done = False, 0.0, False
    while not done:
        action = np.clip(6.0 * (goal - obs[:2]), -1.0, 1.0)
        obs, reward, terminated, truncated, info = env.step(action)
        success, total, done = success or info["success"], total + reward, terminated or truncated
    return success, total


def scripted_actions(env_id: str, steps: int) -> np.ndarray:
    """The scripted controller of `env_id` (GAITS, or the jump pattern) as `steps` actions."""
    if env_id == "hope/CheetahJump-v0":
        period = [JUMP_CROUCH] * 12 + [JUMP_EXTEND] * 13
        actions = np.array([period[k % len(period)] for k in range(steps)])
    else:
        gait = GAITS[env_id]
        time = np.arange(steps)[:, None] * 0.05
        wave = np.sin(2 * np.pi * gait.hz * time + np.asarray(gait.phase))
        actions = np.asarray(gait.offset) + np.asarray(gait.amplitude) * wave
    return np.clip(actions, -1.0, 1.0).astype(np.float32)


def random_successes(env_id: str, seeds: range) -> int:
    """Episodes (one per seed, 1000 random-action steps) in which `info["success"]` ever holds."""
    env = gym.make(env_id)
    count = 0
    for seed in seeds:
        env.reset(seed=seed)
        env.action_space.seed(seed)
        count += any(env.step(env.action_space.sample())[4]["success"] for _ in range(1000))
    env.close()
    return count


def test_registered_ids_are_namespaced_and_registered() -> None:
    ids = hope_envs.registered_ids()
    assert len(ids) == len(set(ids)) >= 7
    assert all(env_id.startswith(f"{NAMESPACE}/") and env_id in gym.registry for env_id in ids)
    assert len(CHEETAH_IDS) >= 5


@pytest.mark.parametrize("env_id", OWN_IDS)
def test_gymnasium_and_sb3_checkers_pass(env_id: str) -> None:
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env, warn=True)
    env.close()


@pytest.mark.parametrize("env_id", OWN_IDS)
def test_same_seed_same_rollout_other_seed_other_start(env_id: str) -> None:
    env_a, env_b = gym.make(env_id), gym.make(env_id)
    obs_a, rewards_a = rollout(env_a, seed=3, steps=20)
    obs_b, rewards_b = rollout(env_b, seed=3, steps=20)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert rewards_a == rewards_b
    obs_c, _ = rollout(env_b, seed=4, steps=0)
    assert not np.array_equal(obs_a, obs_c)


@pytest.mark.parametrize("env_id", OWN_IDS)
def test_reward_is_the_sum_of_its_info_terms(env_id: str) -> None:
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(30):
        _, reward, _, _, info = env.step(env.action_space.sample())
        terms = [value for key, value in info.items() if key.startswith("reward_")]
        assert len(terms) >= 2
        assert reward == pytest.approx(sum(terms), abs=1e-9)


def test_time_limits_are_registered() -> None:
    assert gym.spec("hope/PointReach-v0").max_episode_steps == 100
    assert all(gym.spec(env_id).max_episode_steps == 1000 for env_id in CHEETAH_IDS)
    env = gym.make("hope/PointReach-v0")
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        assert not terminated
        steps += 1
    assert steps == 100


@pytest.mark.parametrize("goal", FAST_GOALS)
def test_every_fast_goal_is_reachable_and_random_actions_miss_it(goal: list[float]) -> None:
    env = gym.make("hope/PointReach-v0", goal=goal)
    for seed in range(3):
        success, controller_return = reach(env, np.asarray(goal), seed)
        assert success
        _, random_rewards = rollout(env, seed, steps=100)
        # The success radius is tight enough that chance does not reach it, and reaching it is
        # what the reward pays for.
        assert controller_return > sum(random_rewards) + 20.0


def test_success_flag_follows_its_documented_radius() -> None:
    env = gym.make("hope/PointReach-v0", goal=[0.3, 0.0], success_radius=0.1)
    env.reset(seed=0)
    for _ in range(100):
        _, _, _, _, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
        assert isinstance(info["success"], bool)
        assert info["success"] == (info["distance"] < 0.1)


def test_point_goal_is_not_observed() -> None:
    """Tasks differ only in reward: the same seed and actions give the same observations."""
    envs = [gym.make("hope/PointReach-v0", goal=goal) for goal in FAST_GOALS]
    starts = [env.reset(seed=7)[0] for env in envs]
    assert all(np.array_equal(starts[0], start) for start in starts)
    action = np.array([0.5, -0.2], dtype=np.float32)
    steps = [env.step(action) for env in envs]
    assert all(np.array_equal(steps[0][0], step[0]) for step in steps)
    assert len({step[1] for step in steps}) == len(envs)


def test_bad_point_goal_raises_one_clear_error() -> None:
    with pytest.raises(ValueError, match="goal must be 2 numbers"):
        gym.make("hope/PointReach-v0", goal=[2.0, 0.0])
    with pytest.raises(ValueError, match="goal must be 2 numbers"):
        gym.make("hope/PointReach-v0", goal=[0.1, 0.2, 0.3])


def test_cheetah_rests_at_its_documented_height() -> None:
    env = gym.make("hope/CheetahJump-v0", reset_noise_scale=0.0)
    env.reset(seed=0)
    for _ in range(60):
        _, reward, _, _, info = env.step(np.zeros(6, dtype=np.float32))
    assert info["z_torso"] == pytest.approx(REST_HEIGHT, abs=0.02)
    assert abs(info["x_velocity"]) < 0.05
    # At rest the jump task pays (almost) nothing: height must be earned.
    assert reward == pytest.approx(0.0, abs=0.15)


def test_running_forward_and_backward_are_opposite_tasks() -> None:
    forward = gym.make("hope/CheetahRun-v0")
    backward = gym.make("hope/CheetahRunBackward-v0")
    forward.reset(seed=1)
    backward.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        action = rng.uniform(-1, 1, size=6).astype(np.float32)
        _, _, _, _, info_f = forward.step(action)
        _, _, _, _, info_b = backward.step(action)
        assert info_f["reward_forward"] == pytest.approx(-info_b["reward_backward"])
        assert info_f["reward_ctrl"] == pytest.approx(info_b["reward_ctrl"])


def test_front_stand_pays_for_raising_the_rear() -> None:
    env = gym.make("hope/CheetahFrontStand-v0", reset_noise_scale=0.0)
    env.reset(seed=0)
    base = env.unwrapped
    qpos, qvel = base.data.qpos.copy(), base.data.qvel.copy()
    qpos[2] = 0.5  # pitch nose-down: the rear end rises
    base.set_state(qpos, qvel)
    _, _, _, _, info = env.step(np.zeros(6, dtype=np.float32))
    assert info["z_rear"] > info["z_torso"] + 0.15
    assert info["reward_stand"] > 0.5


@pytest.mark.parametrize("env_id", CHEETAH_IDS)
def test_every_cheetah_success_is_reached_by_a_scripted_controller(env_id: str) -> None:
    env = gym.make(env_id)
    for seed in range(3):
        _, info = env.reset(seed=seed)
        assert info["success"] is False
        xs, successes = [info["x_position"]], []
        for action in scripted_actions(env_id, 300):
            _, _, _, _, info = env.step(action)
            assert isinstance(info["success"], bool)
            xs.append(info["x_position"])
            successes.append(info["success"])
            if info["success"] and env_id == "hope/CheetahJump-v0":
                # Airborne: no contact at all, torso at least 1.0 m high.
                assert env.unwrapped.data.ncon == 0 and info["z_torso"] >= 1.0
            if info["success"] and env_id == "hope/CheetahFrontStand-v0":
                assert info["z_rear"] >= 1.0
        assert any(successes), (env_id, seed)
        if "Speed" in env_id or "Run" in env_id:
            # The speed criteria judge the mean speed over the last 2 s, from 2 s on.
            window = (np.array(xs[SUCCESS_WINDOW_STEPS:]) - xs[:-SUCCESS_WINDOW_STEPS]) / 2.0
            speed_ok = {
                "hope/CheetahRun-v0": window >= 1.5,
                "hope/CheetahRunBackward-v0": window <= -1.5,
                "hope/CheetahTargetSpeed-v0": np.abs(window - 1.5) <= 0.2,
            }[env_id]
            assert not any(successes[: SUCCESS_WINDOW_STEPS - 1])
            assert successes[SUCCESS_WINDOW_STEPS - 1 :] == speed_ok.tolist()
    env.close()


@pytest.mark.parametrize("env_id", CHEETAH_IDS)
def test_random_actions_do_not_meet_a_cheetah_success_criterion(env_id: str) -> None:
    assert random_successes(env_id, range(3)) == 0


@pytest.mark.slow
def test_random_actions_over_50_episodes_meet_only_the_front_stand_by_chance() -> None:
    """The counts docs/envs.md reports: the random policy tips into a headstand now and then."""
    counts = {env_id: random_successes(env_id, range(20_000, 20_050)) for env_id in CHEETAH_IDS}
    assert counts.pop("hope/CheetahFrontStand-v0") <= 2
    assert set(counts.values()) == {0}


def test_bad_cheetah_success_threshold_raises_one_clear_error() -> None:
    with pytest.raises(ValueError, match="success_speed must be > 0"):
        gym.make("hope/CheetahRun-v0", success_speed=-1.0)
    with pytest.raises(ValueError, match="success_tolerance must be > 0"):
        gym.make("hope/CheetahTargetSpeed-v0", success_tolerance=0.0)


def test_jump_reward_pays_a_tall_stance_with_both_feet_down() -> None:
    """The jump reward pays any torso height above rest, not only a jump (its docstring says so);
    the success criterion is what demands leaving the ground."""
    env = gym.make("hope/CheetahJump-v0", reset_noise_scale=0.0)
    env.reset(seed=0)
    base = env.unwrapped
    floor = base.model.geom("floor").id
    feet = {base.model.geom("back_foot").id, base.model.geom("front_foot").id}
    rewards, heights = [], []
    for step in range(150):
        _, _, _, _, info = env.step(np.array(TALL_STANCE, dtype=np.float32))
        if step >= 100:
            touching = set(base.data.contact.geom[base.data.contact.geom != floor].tolist())
            assert feet <= touching and not info["success"]
            assert abs(base.data.qvel[1]) < 0.05  # standing still, not pushing off
            rewards.append(info["reward_height"])
            heights.append(info["z_torso"])
    assert np.mean(heights) == pytest.approx(0.67, abs=0.01)
    assert np.mean(rewards) > 0.6


def test_envs_pickle_with_their_arguments() -> None:
    env = gym.make("hope/PointReach-v0", goal=[-0.4, 0.5]).unwrapped
    clone = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(clone.goal, [-0.4, 0.5])
    speed = gym.make("hope/CheetahTargetSpeed-v0", target_speed=-0.7, ctrl_cost_weight=0.3)
    clone = pickle.loads(pickle.dumps(speed.unwrapped))
    assert clone.params == {
        "target_speed": -0.7,
        "speed_cost_weight": 1.0,
        "success_tolerance": 0.2,
    }
    assert clone._ezpickle_kwargs["ctrl_cost_weight"] == 0.3
    backward = pickle.loads(pickle.dumps(gym.make("hope/CheetahRunBackward-v0").unwrapped))
    assert backward.params == {"backward_reward_weight": 1.0, "success_speed": 1.5}


def test_cheetah_task_arguments_are_keywords_and_checked() -> None:
    """Task arguments are data (`task_defaults`): a positional call or a non-number is refused
    with one error rather than landing on another argument."""
    with pytest.raises(TypeError, match="positional"):
        CheetahRunEnv(2.0)
    with pytest.raises(ValueError, match="forward_reward_weight must be a number"):
        gym.make("hope/CheetahRun-v0", forward_reward_weight="fast")
    with pytest.raises(TypeError, match="unexpected keyword argument 'forward_reward_weight'"):
        gym.make("hope/CheetahRunBackward-v0", forward_reward_weight=1.0)

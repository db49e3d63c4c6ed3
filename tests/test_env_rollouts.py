"""The tasks behave as recorded: fixed seeds and actions give the stored observations and rewards.

`tests/data/env_rollouts.json` was recorded from the task code before the cheetah and point-mass
tasks were refactored onto shared, parameterised classes (issue 9), so a refactor that changes
any observation, reward term or success flag fails here. Re-record only for an intended change of
behaviour: `python tests/test_env_rollouts.py` (and say why in the commit).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import hope_envs  # noqa: F401  (registers the ids)

DATA = Path(__file__).resolve().parent / "data" / "env_rollouts.json"
# Steps whose observation and info are stored, besides the reset's (every step's reward and
# success flag are).
OBS_STEPS = (1, 10, 50, 99)
STEPS = 100

# (id, kwargs, seed): every task with its defaults, and with every task argument changed, so a
# parameter that a refactor drops or wires to the wrong term shows.
CASES: list[tuple[str, dict[str, Any], int]] = [
    ("hope/PointReach-v0", {}, 0),
    (
        "hope/PointReach-v0",
        {
            "goal": [0.1, -0.1],
            "distance_weight": 2.0,
            "ctrl_cost_weight": 0.2,
            "success_radius": 0.3,
            "reset_noise_scale": 0.2,
        },
        1,
    ),
    ("hope/CheetahRun-v0", {}, 0),
    (
        "hope/CheetahRun-v0",
        {
            "forward_reward_weight": 2.0,
            "ctrl_cost_weight": 0.3,
            "reset_noise_scale": 0.2,
            "success_speed": 0.1,
        },
        1,
    ),
    ("hope/CheetahRunBackward-v0", {}, 0),
    (
        "hope/CheetahRunBackward-v0",
        {
            "backward_reward_weight": 0.5,
            "ctrl_cost_weight": 0.3,
            "reset_noise_scale": 0.2,
            "success_speed": 0.1,
        },
        1,
    ),
    ("hope/CheetahJump-v0", {}, 0),
    (
        "hope/CheetahJump-v0",
        {
            "height_reward_weight": 3.0,
            "drift_cost_weight": 0.7,
            "rest_height": 0.5,
            "ctrl_cost_weight": 0.3,
            "reset_noise_scale": 0.2,
            "success_height": 0.55,
        },
        1,
    ),
    ("hope/CheetahFrontStand-v0", {}, 0),
    (
        "hope/CheetahFrontStand-v0",
        {
            "stand_reward_weight": 3.0,
            "drift_cost_weight": 0.7,
            "rest_height": 0.5,
            "ctrl_cost_weight": 0.3,
            "reset_noise_scale": 0.2,
            "success_height": 0.3,
        },
        1,
    ),
    ("hope/CheetahTargetSpeed-v0", {}, 0),
    (
        "hope/CheetahTargetSpeed-v0",
        {
            "target_speed": -0.7,
            "speed_cost_weight": 2.0,
            "ctrl_cost_weight": 0.3,
            "reset_noise_scale": 0.2,
            "success_tolerance": 2.0,
        },
        1,
    ),
]


def record(env_id: str, kwargs: dict[str, Any], seed: int) -> dict[str, Any]:
    """Observations and info at OBS_STEPS, and every reward and success flag of a rollout.

    Actions are smooth random torques (a random walk in [-1, 1]), so the bodies move far enough
    for the success criteria and reward terms to change along the way.
    """
    env = gym.make(env_id, **kwargs)
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    action = np.zeros(env.action_space.shape or (), dtype=np.float64)
    observations = {0: obs.tolist()}
    rewards, successes = [], []
    terms = {0: {k: float(v) for k, v in info.items() if k != "success"}}
    for step in range(1, STEPS + 1):
        action = np.clip(action + rng.normal(0.0, 0.4, size=action.shape), -1.0, 1.0)
        obs, reward, _, _, info = env.step(action.astype(np.float32))
        if step in OBS_STEPS:
            observations[step] = obs.tolist()
            terms[step] = {k: float(v) for k, v in info.items() if k != "success"}
        rewards.append(float(reward))
        successes.append(bool(info["success"]))
    env.close()
    return {
        "id": env_id,
        "kwargs": kwargs,
        "seed": seed,
        "observations": {str(k): v for k, v in observations.items()},
        "rewards": rewards,
        "successes": successes,
        "info": {str(k): v for k, v in terms.items()},
    }


def _stored() -> list[dict[str, Any]]:
    return json.loads(DATA.read_text())["rollouts"]


def test_every_case_is_stored() -> None:
    stored = [(r["id"], r["kwargs"], r["seed"]) for r in _stored()]
    assert stored == [(env_id, kwargs, seed) for env_id, kwargs, seed in CASES]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_rollout_matches_the_recording(index: int) -> None:
    stored = _stored()[index]
    now = record(*CASES[index])
    assert now["successes"] == stored["successes"]
    # Bit-for-bit on one machine; the tolerance only absorbs another CPU's floating point.
    np.testing.assert_allclose(now["rewards"], stored["rewards"], rtol=1e-9, atol=1e-12)
    assert now["observations"].keys() == stored["observations"].keys()
    for step, obs in stored["observations"].items():
        np.testing.assert_allclose(now["observations"][step], obs, rtol=1e-9, atol=1e-12)
    assert now["info"].keys() == stored["info"].keys()
    for step, stored_terms in stored["info"].items():
        now_terms = now["info"][step]
        assert sorted(now_terms) == sorted(stored_terms)
        for key, value in stored_terms.items():
            assert now_terms[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


if __name__ == "__main__":
    rollouts = [record(*case) for case in CASES]
    DATA.write_text(json.dumps({"command": " ".join(sys.argv), "rollouts": rollouts}) + "\n")
    print(f"wrote {DATA} ({len(rollouts)} rollouts)")

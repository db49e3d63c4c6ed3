"""Test-wide settings: headless MuJoCo rendering, deterministic CPU torch."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# Must be set before MuJoCo (or anything that imports it) is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    # Some libraries (SB3, gymnasium spaces without a seed) draw from numpy's global RNG.
    np.random.seed(0)  # noqa: NPY002


ROOT = Path(__file__).resolve().parents[1]
# The first two goals of `fast` as a curriculum override, and PPO / evaluation sizes that make a
# run take seconds (2 envs x 32 steps per update): shared by the tests that train for real.
TWO_TASKS = (
    "curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{goal:[0.6,0.0]},name:east},"
    "{id:hope/PointReach-v0,kwargs:{goal:[-0.6,0.0]},name:west}]"
)
TINY_PPO = [
    "ppo.num_envs=2",
    "ppo.rollout_len=32",
    "ppo.seq_len=16",
    "ppo.num_minibatches=2",
    "ppo.epochs=1",
    "eval.episodes=1",
]
ScriptRunner = Callable[..., "subprocess.CompletedProcess[str]"]


def _run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def run_script() -> ScriptRunner:
    """``run_script("train_curriculum.py", *overrides, cwd=dir)``: run a script of ``scripts/``
    in a fresh interpreter and return the completed process (stdout and stderr as text)."""
    return _run_script

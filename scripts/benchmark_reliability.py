"""Cost of the reliability layer: the env fault guard per step, and checkpoint size and speed.

Prints a Markdown table. The guard is timed on ``hope/PointReach-v0`` against the same env
unguarded, in the same run; the checkpoint figures are for the checkpoint directory given.

    python scripts/benchmark_reliability.py runs/<run>/checkpoints/stage_03
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import hope_envs  # noqa: F401  (registers the hope/ ids)
from hope_agent.io import load_checkpoint, save_checkpoint
from hope_agent.rollout.guard import EnvFaultGuard


def step_us(env: gym.Env[Any, Any], steps: int) -> float:
    """Mean wall time of one ``env.step`` (zero action, resets included), in microseconds."""
    env.reset(seed=0)
    action = np.zeros_like(env.action_space.sample())
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint directory of a run")
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    plain = step_us(gym.make("hope/PointReach-v0"), args.steps)
    guarded = step_us(EnvFaultGuard(gym.make("hope/PointReach-v0")), args.steps)
    size = sum(f.stat().st_size for f in args.checkpoint.iterdir())
    start = time.perf_counter()
    tree = load_checkpoint(args.checkpoint)
    load_ms = (time.perf_counter() - start) * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        save_checkpoint(Path(tmp) / "copy", tree)
        save_ms = (time.perf_counter() - start) * 1e3
    print("| what | figure |\n|---|---|")
    print(f"| env step, `hope/PointReach-v0` | {plain:.1f} µs plain, {guarded:.1f} µs guarded |")
    print(f"| checkpoint `{args.checkpoint.name}` | {size / 1024:.0f} KiB |")
    print(f"| load (verified) / save (atomic) | {load_ms:.1f} ms / {save_ms:.1f} ms |")


if __name__ == "__main__":
    main()

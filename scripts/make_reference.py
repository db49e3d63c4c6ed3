"""Measure a curriculum's reference returns: a random policy and single-task SB3 PPO.

The curriculum is given as training takes it (`--curriculum fast`, `curriculum=fast` or a task
list `'curriculum.tasks=[...]'`, with other training overrides); `--steps` overrides the per-task
budget, by default the config's `steps_per_task` (what a run trains for, as CONTINUAL_RL.md
wants of R_reference). Per task it stores R_random (the mean return of uniform random actions)
and R_reference (the mean sampled-action return of SB3 PPO trained on that task alone, over the
seeds; the deterministic return beside it), with the command, budget, seeds, date, machine,
library versions and PPO preset. Runs normalise returns as (R - R_random) / (R_reference -
R_random) (`hope_envs.curriculum.reference_returns`). The file goes to `--out`; else with
`eval.reference_dir=DIR` to `DIR/<curriculum>__<budget>.json`; else, for a shipped curriculum,
to `envs/reference/<curriculum>.json`. A reference that does not beat random actions writes
nothing.

    python scripts/make_reference.py --curriculum fast --steps 30000 --seeds 0 1 2
    python scripts/make_reference.py --curriculum locomotion --steps 1000000 --workers 15
    python scripts/make_reference.py 'curriculum.tasks=[{id:Swimmer-v5},{id:Reacher-v5}]' \
        steps_per_task=30000 eval.reference_dir=refs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from hope_agent.build import ConfigError
from hope_agent.cli import check_overrides, one_line
from hope_agent.io import atomic_write_text
from hope_agent.train.config import register_configs
from hope_envs.curriculum import (
    REFERENCE_DIR,
    CurriculumError,
    TaskSpec,
    common_spaces,
    curriculum_names,
    defines_success,
    load_curriculum,
    make_env,
    resolve_tasks,
)

# PPO settings. `short`: short-episode tasks (the point mass), tuned so one goal is solved in a
# few ten thousand steps. `mujoco`: the setting of the forgetting baseline in CONTINUAL_RL.md
# (16 envs, n_steps 256, batch 1024, 10 epochs, VecNormalize).
PRESETS: dict[str, dict[str, Any]] = {
    "short": {
        "n_envs": 8,
        "normalize": False,
        "ppo": {
            "n_steps": 128,
            "batch_size": 256,
            "n_epochs": 10,
            "learning_rate": 1e-3,
            "gamma": 0.95,
            "gae_lambda": 0.95,
        },
    },
    "mujoco": {
        "n_envs": 16,
        "normalize": True,
        "ppo": {
            "n_steps": 256,
            "batch_size": 1024,
            "n_epochs": 10,
            "learning_rate": 3e-4,
            "gamma": 0.99,
            "gae_lambda": 0.95,
        },
    },
}
# `auto` picks `short` for a task whose episodes are at most this long, else `mujoco`.
_SHORT_EPISODE_STEPS = 100
# Evaluation episode k starts from reset(seed=EVAL_SEED + k) for every policy and checkpoint.
EVAL_SEED = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "overrides",
        nargs="*",
        help="training-config overrides: curriculum=NAME, 'curriculum.tasks=[{id:...}]', "
        "steps_per_task=N, eval.reference_dir=DIR",
    )
    parser.add_argument("--curriculum", default=None, help="name in configs/curriculum/")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="PPO budget per task (entries with steps: null); default: steps_per_task",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="PPO seeds")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per policy")
    parser.add_argument("--preset", choices=["auto", *PRESETS], default="auto")
    parser.add_argument("--workers", type=int, default=1, help="parallel training processes")
    parser.add_argument(
        "--out", type=Path, default=None, help="the file to write (default: see the docstring)"
    )
    args = parser.parse_intermixed_args(argv)
    if (args.steps is not None and args.steps <= 0) or args.episodes <= 0 or args.workers <= 0:
        parser.error("--steps, --episodes and --workers must be positive")
    return args


@dataclass(frozen=True)
class Target:
    """What to measure and where to write it."""

    name: str  # the curriculum's name, or `custom-<hash>` for a task list of one's own
    specs: list[TaskSpec]
    steps: int
    out: Path


def resolve_target(args: argparse.Namespace) -> Target:
    """Compose the training config with the overrides and choose the output file.

    Raises:
        SystemExit: one line naming a bad override or curriculum, or that a curriculum of one's
            own needs `eval.reference_dir=DIR` (or `--out`).
    """
    overrides = list(args.overrides)
    if args.curriculum is not None:
        overrides.insert(0, f"curriculum={args.curriculum}")
    register_configs()
    try:
        check_overrides("config", overrides)
        with initialize_config_module(config_module="hope_configs", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        steps = int(cfg.steps_per_task if args.steps is None else args.steps)
        tasks = OmegaConf.to_container(cfg.curriculum.tasks, resolve=True)
        assert isinstance(tasks, list)
        specs = resolve_tasks(tasks, steps)
    except (ConfigError, CurriculumError) as e:
        raise SystemExit(f"error: {one_line(e)}") from None
    name = str(cfg.curriculum.name)
    shipped = name in curriculum_names() and _plain_tasks(
        load_curriculum(name)["tasks"]
    ) == _plain_tasks(tasks)
    if not shipped:
        digest = hashlib.sha1(json.dumps(_plain_tasks(tasks), sort_keys=True).encode())
        name = f"custom-{digest.hexdigest()[:8]}"
    if args.out is not None:
        out = Path(args.out)
    elif cfg.eval.reference_dir is not None:
        out = Path(cfg.eval.reference_dir).expanduser() / f"{name}__{steps}.json"
    elif shipped:
        out = REFERENCE_DIR / f"{name}.json"
    else:
        raise SystemExit(
            "error: the references of a curriculum of your own go into a folder of yours: add "
            "eval.reference_dir=DIR (and train with the same eval.reference_dir=DIR), or --out FILE"
        )
    return Target(name, specs, steps, out)


def _plain_tasks(tasks: list[Any]) -> list[dict[str, Any]]:
    """Task entries with the schema's defaults filled, for comparing a task list with a shipped
    curriculum's."""
    defaults: dict[str, Any] = {"kwargs": {}, "steps": None, "name": None}
    return [{**defaults, **{k: v for k, v in dict(t).items() if v is not None}} for t in tasks]


def episode_limit(spec: TaskSpec) -> int | None:
    """The task's episode length in steps (its registered time limit, or the kwargs override)."""
    return spec.kwargs.get("max_episode_steps", gym.spec(spec.id).max_episode_steps)


def choose_preset(spec: TaskSpec, preset: str) -> str:
    """Resolve `auto` for one task: `short` if its episodes are <= 100 steps, else `mujoco`.

    Per task, because a curriculum may mix bodies: `mujoco` (gamma 0.99, 16 envs) made Reacher-v5
    (50-step episodes) worse than random at 50k steps, where `short` learns it.
    """
    if preset != "auto":
        return preset
    limit = episode_limit(spec)
    return "short" if limit is not None and limit <= _SHORT_EPISODE_STEPS else "mujoco"


def evaluate(
    spec: TaskSpec,
    episodes: int,
    policy: Any | None,
    obs_norm: VecNormalize | None,
    deterministic: bool = False,
) -> dict[str, Any]:
    """Undiscounted returns (and any-step success) of `policy`, or of random actions if None."""
    env = make_env(spec, *common_spaces([spec]))
    returns, successes = [], []
    for episode in range(episodes):
        obs, info = env.reset(seed=EVAL_SEED + episode)
        env.action_space.seed(EVAL_SEED + episode)
        total, success, done = 0.0, bool(info.get("success", False)), False
        while not done:
            if policy is None:
                action = env.action_space.sample()
            else:
                model_obs = obs if obs_norm is None else obs_norm.normalize_obs(obs)
                action, _ = policy.predict(model_obs, deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            success = success or bool(info.get("success", False))
            done = terminated or truncated
        returns.append(total)
        successes.append(success)
    env.close()
    result: dict[str, Any] = {
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
    }
    if defines_success(spec):
        result["success_rate"] = float(np.mean(successes))
    return result


def train_reference(spec: TaskSpec, seed: int, preset: str, episodes: int) -> dict[str, Any]:
    """Train SB3 PPO on one task for `spec.steps` steps; evaluate sampled and greedy actions."""
    torch.set_num_threads(1)
    settings = PRESETS[preset]
    dims = common_spaces([spec])
    venv = make_vec_env(lambda: make_env(spec, *dims), n_envs=settings["n_envs"], seed=seed)
    obs_norm = VecNormalize(venv) if settings["normalize"] else None
    model = PPO("MlpPolicy", obs_norm or venv, seed=seed, device="cpu", **settings["ppo"])
    start = time.perf_counter()
    model.learn(total_timesteps=spec.steps)
    train_seconds = time.perf_counter() - start
    if obs_norm is not None:
        obs_norm.training = False
    result = evaluate(spec, episodes, model, obs_norm)
    result["deterministic"] = evaluate(spec, episodes, model, obs_norm, deterministic=True)
    venv.close()
    return {**result, "seed": seed, "train_seconds": round(train_seconds, 1)}


def _job(args: tuple[TaskSpec, int, str, int]) -> dict[str, Any]:
    return train_reference(*args)


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        **{
            package: metadata.version(package)
            for package in ("torch", "stable-baselines3", "gymnasium", "mujoco", "numpy")
        },
    }


def main(argv: list[str] | None = None) -> Path:
    """Measure and write the reference file; returns its path."""
    args = parse_args(argv)
    target = resolve_target(args)
    specs = target.specs
    # CW20 repeats CW10's tasks: measure each distinct task once.
    unique: dict[str, TaskSpec] = {}
    for spec in specs:
        unique.setdefault(json.dumps([spec.id, spec.kwargs, spec.steps], sort_keys=True), spec)
    presets = {spec.name: choose_preset(spec, args.preset) for spec in unique.values()}
    jobs = [
        (spec, seed, presets[spec.name], args.episodes)
        for spec in unique.values()
        for seed in args.seeds
    ]
    if args.workers == 1:
        runs = [_job(job) for job in jobs]
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(_job, jobs))

    tasks = []
    for spec in unique.values():
        per_seed = [run for job, run in zip(jobs, runs, strict=True) if job[0] is spec]
        means = [run["return_mean"] for run in per_seed]
        reference: dict[str, Any] = {
            "return_mean": float(np.mean(means)),
            "return_std_over_seeds": float(np.std(means)),
            "deterministic_return_mean": float(
                np.mean([run["deterministic"]["return_mean"] for run in per_seed])
            ),
            "per_seed": per_seed,
        }
        if defines_success(spec):
            reference["success_rate"] = float(np.mean([run["success_rate"] for run in per_seed]))
        tasks.append(
            {
                "name": spec.name,
                "id": spec.id,
                "kwargs": spec.kwargs,
                "budget": spec.steps,
                "preset": presets[spec.name],
                "random": evaluate(spec, args.episodes, None, None),
                "reference": reference,
            }
        )
        random_mean = tasks[-1]["random"]["return_mean"]
        print(f"{spec.name}: random {random_mean:.2f}, reference {reference['return_mean']:.2f}")
    unlearned = [
        t["name"] for t in tasks if t["reference"]["return_mean"] <= t["random"]["return_mean"]
    ]
    if unlearned:
        raise SystemExit(
            f"error: the reference policy did not beat random actions on {unlearned} at "
            f"{target.steps} steps, so it cannot normalise returns; nothing written. Raise --steps "
            "or pick another --preset."
        )

    out = target.out
    used = sorted(set(presets.values()))
    record = {
        "curriculum": target.name,
        "command": shlex.join(["python", "scripts/make_reference.py", *(argv or sys.argv[1:])]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "reference_policy": "stable-baselines3 PPO MlpPolicy; return_mean samples actions",
        # One preset: its settings; several (auto on mixed bodies): settings by preset name.
        "preset": used[0] if len(used) == 1 else "auto (per task: tasks[].preset)",
        "settings": PRESETS[used[0]] if len(used) == 1 else {name: PRESETS[name] for name in used},
        "seeds": args.seeds,
        "episodes": args.episodes,
        "eval_seeds": f"episode k resets with seed {EVAL_SEED} + k",
        "tasks": tasks,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    if out.resolve().parent != REFERENCE_DIR.resolve():
        print(f"runs read it with eval.reference_dir={out.parent}")
    return out


if __name__ == "__main__":
    main()

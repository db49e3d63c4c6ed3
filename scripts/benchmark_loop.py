"""Env steps per second of the whole training loop, with its time breakdown, beside SB3 PPO.

Rows, all measured in one run on one machine, on the first ``--tasks`` tasks of ``--curriculum``
with ``--num-envs`` envs and ``--steps`` env steps per task:

- ``random (sync|async)``: the raw vector env with uniformly random actions, stepped as training
  steps it (Gymnasium ``SyncVectorEnv`` / ``AsyncVectorEnv``, the fault guard on): the physics
  limit of this machine;
- ``ppo <backbone>``: ``hope-train`` itself (``hope_agent.cli.train``), with the breakdown of
  ``hope_agent.train.timing`` read from the run's ``metrics.json``: inference in rollouts, env
  stepping, PPO updates, evaluations (at each task end, of every trained task), checkpoints,
  videos (off unless ``--video``) and logging;
- ``sb3 PPO MlpPolicy``: ``stable_baselines3.PPO("MlpPolicy").learn`` for the same steps per
  task on the same envs (``DummyVecEnv`` when ours are sync, ``SubprocVecEnv`` when async),
  with the same PPO work per rollout (``n_steps`` = rollout length, ``n_epochs`` and minibatches
  as ours), ``VecNormalize`` as the project's SB3 baseline has it; SB3's own split
  (``collect_rollouts`` minus env stepping, ``train``). SB3 evaluates nothing here.

Wall times: ours is the runner's (``RunSummary.wall_time_s``: building the agent left out,
building the envs and the task-end work in); SB3's is its ``learn`` calls (building the model
and the envs left out: ``SubprocVecEnv``'s workers take seconds to start, Gymnasium's forked
ones milliseconds). ``whole sps`` is env steps / wall time of the row; ``train sps`` leaves out
evaluations, checkpoints, videos and logging (rollouts + updates only). Ratios are to the SB3
row of the same run. The table is printed as Markdown; ``--out`` gets ``benchmark_loop.json``,
``benchmark_loop.md`` and the runs.

    python scripts/benchmark_loop.py --preset cpu --out /tmp/bench_loop   # 2-core CPU, ~2 min
    python scripts/benchmark_loop.py --out bench_loop                     # GPU preset, ~5 min

``--evaluation`` measures only the evaluation instead: for each backbone (a fresh agent), the
seconds of one evaluation of every task of the cut curriculum, task by task
(``Evaluator.evaluate_task`` in turn) against all tasks as one batch (``Evaluator.evaluate``),
the median of ``--repeats`` after one untimed pass of each (CUDA-graph capture).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from hope_agent.baselines.sb3 import BatchedVecEnv
from hope_agent.build import build_agent, build_curriculum, resolve_device
from hope_agent.cli import train
from hope_agent.io import atomic_write_text
from hope_agent.rollout.batched import BATCHED_IDS
from hope_agent.rollout.vec import make_vector_env
from hope_agent.train.evaluator import Evaluator
from hope_agent.train.timing import PHASES
from hope_envs.curriculum import Curriculum

PRESETS: dict[str, dict[str, Any]] = {
    # 16 envs, 32k steps of one task per row: HOPE at today's ~440 env steps/s takes ~80 s.
    "gpu": dict(num_envs=16, steps=32768, rollout_len=128, eval_episodes=2, vec="async"),
    # 4 envs, 2k steps: every row in seconds on a 2-core CPU.
    "cpu": dict(num_envs=4, steps=2048, rollout_len=128, eval_episodes=1, vec="sync"),
}
_TRAIN_PHASES = ("rollout_inference", "env_step", "ppo_update")


@dataclass
class Row:
    """One line of the table: a loop's env steps, wall time and seconds per phase."""

    name: str
    env_steps: int
    wall_s: float
    seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def whole_sps(self) -> float:
        return self.env_steps / self.wall_s

    @property
    def train_sps(self) -> float:
        train = sum(self.seconds.get(p, 0.0) for p in _TRAIN_PHASES)
        return self.env_steps / train if train > 0 else self.whole_sps


def _config(args: argparse.Namespace, *overrides: str) -> DictConfig:
    """The trainer's config of ``--curriculum`` cut to its first ``--tasks`` tasks."""
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        full = compose("config", overrides=[f"curriculum={args.curriculum}"])
        # The tasks as an override, the way a user would cut the curriculum on the command line.
        listed = ",".join(_task_override(t) for t in list(full.curriculum.tasks)[: args.tasks])
        tasks = [f"curriculum={args.curriculum}", f"curriculum.tasks=[{listed}]"]
        return compose("config", overrides=[*tasks, *overrides])


def _task_override(task: Any) -> str:
    plain = OmegaConf.to_container(task.kwargs, resolve=True)
    assert isinstance(plain, dict)
    kwargs = ",".join(f"{k!s}:{json.dumps(v, separators=(',', ':'))}" for k, v in plain.items())
    return f"{{id:{task.id},kwargs:{{{kwargs}}},name:{task.name}}}"


def _overrides(args: argparse.Namespace, backbone: str) -> list[str]:
    return [
        f"model={backbone}",
        f"steps_per_task={args.steps}",
        f"ppo.num_envs={args.num_envs}",
        f"ppo.rollout_len={args.rollout_len}",
        f"ppo.async_envs={str(args.vec == 'async').lower()}",
        f"eval.episodes={args.eval_episodes}",
        "eval.every=0",
        f"video.enabled={str(args.video).lower()}",
        "logger.progress=false",
        f"device={args.device}",
        f"seed={args.seed}",
    ]


# a backbone spec's mode (NAME:MODE): the suffix of its row's name and its config overrides
MODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "": ("", ()),
    "eager": (" (eager)", ("cuda_graphs=false", "graph_update=false")),
    "eager-update": (" (eager update)", ("graph_update=false",)),
    "compile": (" (compiled)", ("compile=true",)),
    "per-env": (" (per-env stepping)", ("ppo.batched_envs=false",)),
}


def bench_ours(args: argparse.Namespace, spec: str, out: Path) -> Row:
    """One ``hope-train`` run of ``spec`` (a model config with the defaults: CUDA graphs for acting
    and for the PPO update; ``:eager`` for neither, ``:eager-update`` for graphs in acting only,
    ``:compile`` for ``compile=true``, ``:per-env`` for ``ppo.batched_envs=false``); the
    breakdown from its ``metrics.json``."""
    backbone, _, mode = spec.partition(":")
    label, overrides = MODES[mode]
    run_dir = out / "runs" / spec.replace(":", "_")
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = _config(args, *_overrides(args, backbone), *overrides)
    run_dir.mkdir(parents=True)
    # The run's tables go to a file: the benchmark's own table is the output.
    with open(run_dir / "stdout.txt", "w") as f, contextlib.redirect_stdout(f):
        summary = train(cfg, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = {p: float(metrics.get(f"time/{p}", 0.0)) for p in PHASES}
    # The runner's wall time: the loop from its first env to its last file, without building
    # the agent (SB3's row leaves out building its model likewise).
    wall = summary.wall_time_s
    name = f"ppo {backbone}" + label
    graphs = mode != "eager" and args.device == "cuda"
    note = f"device {args.device}" + (", CUDA graphs" if graphs else "")
    return Row(name, summary.env_steps, wall, seconds, note=note)


def bench_random(args: argparse.Namespace, kind: str) -> Row:
    """The vector env of the first task stepped with random actions, as training steps it:
    ``kind`` sync, async or batched (``ppo.batched_envs``)."""
    curriculum = _curriculum(args)
    spec = curriculum.specs[0]
    envs = make_vector_env(
        spec,
        curriculum.obs_dim,
        curriculum.act_dim,
        args.num_envs,
        asynchronous=kind == "async",
        batched=kind == "batched",
    )
    envs.action_space.seed(args.seed)
    envs.reset(seed=args.seed)
    batches = -(-args.steps // args.num_envs)
    actions = [envs.action_space.sample() for _ in range(batches)]  # drawn outside the clock
    start = time.perf_counter()
    for a in actions:
        envs.step(a)
    wall = time.perf_counter() - start
    envs.close()
    return Row(f"random actions ({kind})", batches * args.num_envs, wall, {"env_step": wall})


def bench_evaluation(args: argparse.Namespace, backbone: str) -> dict[str, Any]:
    """Seconds of one evaluation of every task: task by task, and as one batch (medians)."""
    cfg = _config(args, *_overrides(args, backbone))
    curriculum = build_curriculum(cfg)
    torch.manual_seed(args.seed)
    agent = build_agent(cfg, curriculum).to(resolve_device(args.device))
    evaluator = Evaluator(curriculum, args.eval_episodes, int(cfg.eval.seed))
    ways: dict[str, Callable[[], object]] = {
        "task by task": lambda: [evaluator.evaluate_task(agent, j) for j in range(len(curriculum))],
        "one batch": lambda: evaluator.evaluate(agent),
    }
    seconds = {}
    for name, run in ways.items():
        run()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        seconds[name] = float(np.median(times))
    evaluator.close()
    return {"backbone": backbone, "tasks": len(curriculum), **seconds}


def evaluation_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: seconds per evaluation of every task, the two ways, and their ratio."""
    lines = [
        "| backbone | tasks | task by task (s) | one batch (s) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["task by task"] / r["one batch"]
        lines.append(
            f"| {r['backbone']} | {r['tasks']} | {r['task by task']:.2f} | "
            f"{r['one batch']:.2f} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def _curriculum(args: argparse.Namespace) -> Curriculum:
    return build_curriculum(_config(args))


def bench_sb3(args: argparse.Namespace, batched: bool = False) -> Row:
    """SB3 PPO ``MlpPolicy`` for the same steps per task, timed around ``learn``; ``batched``:
    on our batched point-mass envs (:class:`~hope_agent.baselines.sb3.BatchedVecEnv`) instead of
    ``DummyVecEnv`` / ``SubprocVecEnv``."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import (
        DummyVecEnv,
        SubprocVecEnv,
        VecEnv,
        VecEnvWrapper,
        VecMonitor,
        VecNormalize,
    )

    clock = {"env_step": 0.0, "collect": 0.0, "ppo_update": 0.0}

    class TimedSteps(VecEnvWrapper):
        """Charges ``step_wait`` (where SB3's envs do their work) to env stepping."""

        def reset(self) -> Any:
            return self.venv.reset()

        def step_async(self, actions: np.ndarray) -> None:
            start = time.perf_counter()
            self.venv.step_async(actions)
            clock["env_step"] += time.perf_counter() - start

        def step_wait(self) -> Any:
            start = time.perf_counter()
            out = self.venv.step_wait()
            clock["env_step"] += time.perf_counter() - start
            return out

    cfg = _config(args)
    curriculum = build_curriculum(cfg)
    epochs, minibatches = int(cfg.ppo.epochs), int(cfg.ppo.num_minibatches)  # ours
    torch.set_num_threads(1)  # as scripts/train_sb3.py runs it (torch_threads=1)
    vec_cls = SubprocVecEnv if args.vec == "async" else DummyVecEnv
    model: Any = None
    steps, wall = 0, 0.0
    for stage in range(min(args.tasks, len(curriculum.specs))):
        fns: list[Callable[[], gym.Env]] = [
            partial(curriculum.make_env, stage) for _ in range(args.num_envs)
        ]
        inner: VecEnv = (
            BatchedVecEnv(
                curriculum.specs[stage], curriculum.obs_dim, curriculum.act_dim, args.num_envs
            )
            if batched
            else vec_cls(fns)
        )
        venv = VecNormalize(TimedSteps(VecMonitor(inner)))
        venv.seed(args.seed * 1_000_003 + 10_000 * stage)
        if model is None:
            model = PPO(
                "MlpPolicy",
                venv,
                n_steps=args.rollout_len,
                batch_size=args.rollout_len * args.num_envs // minibatches,
                n_epochs=epochs,
                learning_rate=3e-4,
                policy_kwargs={"net_arch": [64, 64]},
                seed=args.seed,
                device=args.sb3_device,
            )
            _time_method(model, "collect_rollouts", clock, "collect")
            _time_method(model, "train", clock, "ppo_update")
        else:
            model.set_env(venv, force_reset=True)
        before, start = model.num_timesteps, time.perf_counter()
        model.learn(total_timesteps=args.steps, reset_num_timesteps=False, progress_bar=False)
        wall += time.perf_counter() - start
        steps += model.num_timesteps - before
        venv.close()
    seconds = {
        "rollout_inference": clock["collect"] - clock["env_step"],
        "env_step": clock["env_step"],
        "ppo_update": clock["ppo_update"],
    }
    kind = "BatchedVecEnv" if batched else vec_cls.__name__
    name = "sb3 PPO MlpPolicy" + (" (batched envs)" if batched else "")
    return Row(name, steps, wall, seconds, note=f"{kind}, device {args.sb3_device}")


def _time_method(obj: Any, name: str, clock: dict[str, float], key: str) -> None:
    # An instance attribute shadows the method: SB3's learn calls it through self.
    inner = getattr(obj, name)

    def timed(*a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            clock[key] += time.perf_counter() - start

    setattr(obj, name, timed)


def _group_options(group: str) -> list[str]:
    """The names of a config group of ``hope_configs`` (``model``: mlp, gru, hope, ...)."""
    folder = resources.files("hope_configs") / group
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def table(rows: list[Row], anchor: Row | None) -> str:
    """The Markdown table: throughput, ratios to ``anchor`` and each phase's share of wall time."""
    head = ["loop", "env steps", "wall s", "whole sps", "x SB3", "train sps", "x SB3"]
    head += [f"{p} %" for p in PHASES] + ["other %", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        shares = [r.seconds.get(p, 0.0) / r.wall_s * 100 for p in PHASES]
        cells = [
            r.name,
            f"{r.env_steps:,}",
            f"{r.wall_s:.1f}",
            f"{r.whole_sps:,.0f}",
            f"{r.whole_sps / anchor.whole_sps:.2f}" if anchor else "-",
            f"{r.train_sps:,.0f}",
            f"{r.train_sps / anchor.train_sps:.2f}" if anchor else "-",
            *[f"{s:.1f}" if r.seconds else "-" for s in shares],
            f"{max(100.0 - sum(shares), 0.0):.1f}",
            r.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine(device: torch.device) -> dict[str, Any]:
    """Where and when the figures were measured."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none",
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> None:
    """Measure every row, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    parser.add_argument("--curriculum", default="locomotion")
    parser.add_argument("--tasks", type=int, default=1, help="train on the first N tasks")
    parser.add_argument("--num-envs", type=int)
    parser.add_argument("--steps", type=int, help="env steps per task")
    parser.add_argument("--rollout-len", type=int)
    parser.add_argument("--eval-episodes", type=int)
    parser.add_argument("--vec", choices=("sync", "async"), help="our envs; SB3 gets the same")
    parser.add_argument("--device", default="auto", help="our agent's device (auto, cpu, cuda)")
    parser.add_argument("--sb3-device", default="cpu", help="SB3's device (MLP runs best on CPU)")
    parser.add_argument(
        "--backbones",
        default="mlp,gru,hope",
        help="model configs, run with the defaults; NAME:eager without CUDA graphs "
        "(cuda_graphs=false graph_update=false), NAME:eager-update with them in acting only "
        "(graph_update=false), NAME:compile compiles HOPE's fast paths (compile=true), "
        "NAME:per-env steps each env through its wrappers (ppo.batched_envs=false; the default "
        "steps the point-mass tasks as one batch)",
    )
    parser.add_argument("--video", action="store_true", help="record the stage-end videos")
    parser.add_argument("--no-sb3", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluation", action="store_true", help="time evaluation only")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (--evaluation)")
    parser.add_argument("--out", type=Path, default=Path("bench_loop"))
    args = parser.parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    problems = [
        f"--{k.replace('_', '-')} must be >= 1 (got {getattr(args, k)})"
        for k in ("num_envs", "steps", "rollout_len", "eval_episodes", "tasks", "repeats")
        if getattr(args, k) < 1
    ]
    backbones = [b for b in args.backbones.split(",") if b]
    modes = sorted({b.partition(":")[2] for b in backbones} - set(MODES))
    if modes:
        problems.append(
            f"--backbones: unknown mode(s) {modes} "
            "(NAME, NAME:eager, NAME:eager-update, NAME:compile or NAME:per-env)"
        )
    for flag, group, names in (
        ("--curriculum", "curriculum", [args.curriculum]),
        ("--backbones", "model", [b.partition(":")[0] for b in backbones]),
    ):
        known = _group_options(group)
        unknown = [n for n in names if n not in known]
        if unknown:
            problems.append(f"{flag}: no config {unknown} (choose from {', '.join(known)})")
    if problems:
        parser.error("; ".join(problems))
    args.out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    args.device = device.type
    if args.evaluation:
        found = [bench_evaluation(args, b.partition(":")[0]) for b in backbones]
        text = evaluation_table(found)
        print(f"machine: {_machine(device)}\n\n{text}")
        report = {"machine": _machine(device), "evaluation": found}
        atomic_write_text(args.out / "benchmark_eval.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(args.out / "benchmark_eval.md", text + "\n")
        return

    kinds = ["sync", "async"]
    if _curriculum(args).specs[0].id in BATCHED_IDS:
        kinds.append("batched")
    rows = [bench_random(args, kind) for kind in kinds]
    anchor = None
    if not args.no_sb3:
        anchor = bench_sb3(args)
        rows.append(anchor)
        if "batched" in kinds:  # SB3 on the same batched envs as our default rows
            rows.append(bench_sb3(args, batched=True))
    for backbone in backbones:
        rows.append(bench_ours(args, backbone, args.out))
        print(f"{rows[-1].name}: {rows[-1].whole_sps:,.0f} env steps/s", file=sys.stderr)

    setting = {
        "preset": args.preset,
        "curriculum": args.curriculum,
        "tasks": args.tasks,
        "num_envs": args.num_envs,
        "steps_per_task": args.steps,
        "rollout_len": args.rollout_len,
        "eval_episodes": args.eval_episodes,
        "vec": args.vec,
        "device": args.device,
        "sb3_device": args.sb3_device,
        "video": args.video,
    }
    machine = _machine(device)
    text = table(rows, anchor)
    print(f"setting: {setting}\nmachine: {machine}\n\n{text}")
    report = {
        "setting": setting,
        "machine": machine,
        "rows": [
            {**dataclasses.asdict(r), "whole_sps": r.whole_sps, "train_sps": r.train_sps}
            for r in rows
        ],
    }
    atomic_write_text(args.out / "benchmark_loop.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out / "benchmark_loop.md", text + "\n")


if __name__ == "__main__":
    main()

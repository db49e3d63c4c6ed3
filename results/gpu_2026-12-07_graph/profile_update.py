"""Where one PPO update of HOPE goes at the loop's shapes (issue 11, session 17).

The `adapt` loop of `benchmark_loop.py` (128 envs x 128 steps, seq_len 32, 4 epochs x 4
minibatches of 128 windows of 32) spends ~0.9 s per update on an H100 with or without
`graph_update`, though the probe's forward+backward replays 6x faster. This times one update
(median of --reps, after warm-up updates), eager and graphed, and the parts of a graphed
minibatch step in isolation: building the minibatch, the graph replay, the clip, the optimizer
step, the host reads of the stats; and writes the profiler's CPU-time table of one update.

    python3 results/gpu_2026-12-07_graph/profile_update.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_module
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from rollouts import fill_rollout  # noqa: E402

from hope_agent.algos import RolloutBuffer  # noqa: E402
from hope_agent.algos.graphed import max_resets  # noqa: E402
from hope_agent.algos.ppo import PPO, PPOConfig  # noqa: E402
from hope_agent.build import build_agent, build_curriculum, build_optimizer  # noqa: E402
from hope_agent.train.config import register_configs  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _sync_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _profile_mode(
    mode: str,
    cfg: Any,
    curriculum: Any,
    gpu: RolloutBuffer,
    ppo_cfg: PPOConfig,
    reps: int,
    out: Path,
) -> dict[str, float]:
    """One update's median time in ``mode`` (eager or graph), its profiler table, and for the
    graph the parts of one minibatch step in isolation."""
    torch.manual_seed(0)
    agent = build_agent(cfg, curriculum).to(gpu.device)
    opt = build_optimizer(agent, cfg)
    ppo = PPO(agent, opt, ppo_cfg, np.random.default_rng(0), graph_update=mode == "graph")
    print(mode, "graphed:", ppo.graphed, "params:", sum(1 for _ in agent.parameters()))
    for _ in range(2):
        ppo.update(gpu)
    rows = {f"update {mode} (16 minibatches) s": _sync_time(lambda: ppo.update(gpu), reps)}
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        ppo.update(gpu)
        _sync()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
    (out / f"profile_update_{mode}.txt").write_text(table)
    if mode != "graph":
        return rows
    params = [p for g in opt.param_groups for p in g["params"]]
    batches = list(gpu.minibatches(ppo_cfg.num_minibatches, np.random.default_rng(1)))
    graph = ppo._graph_for(batches[0], max_resets(gpu.sequences("is_first")), params)
    rng = np.random.default_rng(2)
    rows["minibatches() 4 batches ms"] = 1e3 * _sync_time(
        lambda: list(gpu.minibatches(4, rng)), reps
    )
    rows["graph call (copy in + replay) ms"] = 1e3 * _sync_time(lambda: graph(batches[0]), reps)
    rows["clip_grad_norm_ ms"] = 1e3 * _sync_time(
        lambda: nn.utils.clip_grad_norm_(params, 0.5), reps
    )
    rows["optimizer.step ms"] = 1e3 * _sync_time(opt.step, reps)
    _, stats = graph(batches[0])
    rows["stats host reads ms"] = 1e3 * _sync_time(lambda: [float(v) for v in stats.values()], reps)
    rows["n param tensors"] = float(len(params))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="hope")
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    register_configs()
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "curriculum=adapt",
                f"model={args.model}",
                "ppo.num_envs=128",
                "ppo.rollout_len=128",
                f"ppo.optimizer={args.optimizer}",
            ],
        )
    curriculum = build_curriculum(cfg)
    torch.manual_seed(0)
    cpu_agent = build_agent(cfg, curriculum)
    buffer = RolloutBuffer(
        128, 128, curriculum.obs_dim, curriculum.act_dim, int(cfg.ppo.seq_len), device="cpu"
    )
    fill_rollout(cpu_agent, buffer, 0, lambda res, valid, _: valid.float() * res.action[:, 0])
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dims = (curriculum.obs_dim, curriculum.act_dim)
    gpu = RolloutBuffer(128, 128, *dims, buffer.seq_len, device=dev)
    for name, value in vars(buffer).items():
        if isinstance(value, torch.Tensor):
            setattr(gpu, name, value.to(dev))
    gpu.memories = [m.to(dev) for m in buffer.memories if m is not None]
    rows: dict[str, float] = {}
    ppo_cfg = PPOConfig(**{f.name: cfg.ppo[f.name] for f in fields(PPOConfig)})
    for mode in ("eager", "graph") if dev.type == "cuda" else ("eager",):
        rows.update(_profile_mode(mode, cfg, curriculum, gpu, ppo_cfg, args.reps, args.out))
    for k, v in rows.items():
        print(f"| {k} | {v:.4g} |")
    (args.out / "profile_update.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

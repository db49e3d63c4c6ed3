"""Data-parallel training over gloo on the CPU: 2 processes make the update of 1 process on the
concatenated rollout, keep weights, optimizer accumulators and normalisers identical, and a
2-process resume ends exactly like an uninterrupted 2-process run."""

import json
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_PPO, TWO_TASKS
from rollouts import fill_rollout
from test_resume import assert_same_results

from hope_agent.agents import Agent, AgentConfig
from hope_agent.agents.normalize import RunningMeanStd
from hope_agent.algos import PPO, PPOConfig, RolloutBuffer
from hope_agent.models.factory import make_backbone
from hope_agent.optim import MultiTimescaleOptimizer
from hope_agent.train.distributed import (
    LOCAL,
    ProcessGroupWorld,
    rank_seed,
    share_normalizers,
    sweep_placement,
)

OBS, ACT, ENVS, STEPS, UPDATES = 4, 2, 2, 16, 3
# Several epochs of one minibatch each: every optimizer step sees the whole rollout of every
# rank, so the single process on the concatenated rollout takes the same steps.
PPO_CFG = PPOConfig(epochs=2, num_minibatches=1, target_kl=10.0)


def _agent() -> Agent:
    torch.manual_seed(0)
    return Agent(make_backbone("gru", 16, n_layers=1), AgentConfig(obs_dim=OBS, act_dim=ACT))


def _reward(res: Any, valid: torch.Tensor, _: torch.Generator) -> torch.Tensor:
    return (res.action[:, 0] > 0).float() * valid


def _rollout(agent: Agent, seed: int) -> RolloutBuffer:
    buffer = RolloutBuffer(STEPS, ENVS, OBS, ACT, seq_len=8)
    fill_rollout(agent, buffer, seed, _reward, done_prob=0.2)
    return buffer


def _concat(parts: list[RolloutBuffer]) -> RolloutBuffer:
    """The rollout of one process stepping every part's envs (env axis 1 concatenated)."""
    out = RolloutBuffer(STEPS, ENVS * len(parts), OBS, ACT, seq_len=8)
    for name, value in vars(parts[0]).items():
        if isinstance(value, torch.Tensor):
            setattr(out, name, torch.cat([getattr(p, name) for p in parts], 1))
    memories = []
    for chunk in zip(*(p.memories for p in parts), strict=True):
        leaves = [m.leaves() for m in chunk if m is not None]
        it = iter(zip(*leaves, strict=True))
        first = chunk[0]
        assert first is not None
        memories.append(first.map(lambda _, it=it: torch.cat(next(it), 0)))
    out.memories = memories
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join(rank: int, size: int, rendezvous: Path) -> ProcessGroupWorld:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=size,
        timeout=timedelta(seconds=120),
    )
    return ProcessGroupWorld(rank, size, torch.device("cpu"))


def _ppo_worker(rank: int, size: int, folder: Path) -> None:
    world = _join(rank, size, folder / "rendezvous")
    agent = _agent()
    opt = MultiTimescaleOptimizer(agent.param_groups(), lr=3e-3)
    ppo = PPO(agent, opt, PPO_CFG, np.random.default_rng(0), sync=world)
    for u in range(UPDATES):
        ppo.update(_rollout(agent, seed=10 * u + rank))
    # Normalisers: rank 1 has an empty batch at the second update (no valid step there).
    rms = RunningMeanStd((3,))
    share_normalizers(rms, world)
    data = torch.arange(60, dtype=torch.float64).reshape(20, 3).sin() * (rank + 1)
    rms.update(data[: 7 + 5 * rank])
    rms.update(data[:0] if rank else data[7:12])
    torch.save(
        {"agent": agent.state_dict(), "optimizer": opt.state_dict(), "rms": rms.state_dict()},
        folder / f"rank{rank}.pt",
    )
    world.close()


def test_two_ranks_update_like_one_process_on_the_concatenated_rollout(tmp_path: Path) -> None:
    mp.spawn(_ppo_worker, args=(2, tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    agent = _agent()
    opt = MultiTimescaleOptimizer(agent.param_groups(), lr=3e-3)
    ppo = PPO(agent, opt, PPO_CFG, np.random.default_rng(0))
    start = {k: v.clone() for k, v in agent.state_dict().items()}
    for u in range(UPDATES):
        ppo.update(_concat([_rollout(agent, seed=10 * u + r) for r in range(2)]))

    for name, value in agent.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r["agent"][name], value, atol=1e-6, rtol=1e-6)
        # The ranks' weights are identical to each other, not only close to the reference.
        assert torch.equal(ranks[0]["agent"][name], ranks[1]["agent"][name]), name
    assert any(not torch.equal(start[k], v) for k, v in agent.state_dict().items())
    # The multi-timescale accumulators (moments, partial sums) follow the same gradients.
    ref_state = opt.state_dict()["state"]
    for r in ranks:
        for key, entry in ref_state.items():
            for field, value in entry.items():
                if isinstance(value, torch.Tensor):
                    got = r["optimizer"]["state"][key][field]
                    torch.testing.assert_close(got, value, atol=1e-6, rtol=1e-5)

    # The merged normaliser equals one that saw every rank's batches together.
    rms = RunningMeanStd((3,))
    data = [torch.arange(60, dtype=torch.float64).reshape(20, 3).sin() * (r + 1) for r in range(2)]
    rms.update(torch.cat([data[0][:7], data[1][:12]]))
    rms.update(data[0][7:12])
    for r in ranks:
        for key, value in rms.state_dict().items():
            torch.testing.assert_close(r["rms"][key], value, atol=1e-12, rtol=1e-10)


def test_local_world_is_one_process() -> None:
    assert LOCAL.rank == 0 and LOCAL.size == 1 and LOCAL.is_main
    t = torch.arange(3.0)
    assert torch.equal(LOCAL.sum(t), t) and LOCAL.sum(t) is not t
    assert LOCAL.all_gather({"a": 1}) == [{"a": 1}]
    assert LOCAL.any(True) and not LOCAL.any(False)
    # Rank 0 draws like a single process; other ranks draw their own noise.
    assert rank_seed(7, 0) == 7 and len({rank_seed(7, r) for r in range(4)}) == 4


def test_sweep_placement_shares_cores_and_gpus() -> None:
    assert sweep_placement(0, 4, 0, 0, cores=16) == (4, None)
    assert sweep_placement(3, 3, 0, 1, cores=2) == (1, None)  # never 0 threads, one GPU shared
    assert sweep_placement(5, 2, 6, 4, cores=16) == (6, 1)  # torch_threads given: kept
    assert sweep_placement(0, -1, 0, 0, cores=8) == (1, None)  # joblib's n_jobs=-1: all cores


# -------------------------------------------------------------------------- the whole runner
TASKS = TWO_TASKS
# 2 tasks x 256 env steps over both ranks: 2 ranks x 2 envs x 32 steps = 128 per update.
TINY = [
    TASKS,
    "model=gru",
    "steps_per_task=256",
    *TINY_PPO,
    "eval.every=0",
    "checkpoint.every=128",
    "video.enabled=false",
    "logger.progress=false",
    "logger.tensorboard=false",
    "device=cpu",
]
COMPARED = ("perf_matrix.csv", "wm_error_matrix.csv", "return_matrix.csv", "train.csv")


def _runner_worker(
    rank: int, size: int, port: int, run_dir: Path, overrides: list[str], crash_at: int
) -> None:
    from hydra import compose, initialize_config_module

    from hope_agent.build import build_runner, resume_point
    from hope_agent.train.config import register_configs
    from hope_agent.train.distributed import init_world
    from hope_agent.train.runner import CurriculumRunner

    register_configs()
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(size),
    )
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, *overrides])
    world = init_world(torch.device("cpu"))
    if crash_at:
        update, calls = CurriculumRunner._update, [0]

        def crashing(self: CurriculumRunner, stage: int) -> None:
            update(self, stage)
            calls[0] += 1
            if calls[0] == crash_at:
                raise KeyboardInterrupt("simulated preemption")

        CurriculumRunner._update = crashing  # type: ignore[method-assign]
    try:
        runner = build_runner(cfg, run_dir, world)
        runner.run(resume_from=resume_point(cfg, run_dir))
        torch.save(
            {"agent": runner.agent.state_dict(), "optimizer": runner.ppo.optimizer.state_dict()},
            run_dir / f"final_rank{rank}.pt",
        )
    except KeyboardInterrupt:
        (run_dir / f"crashed_rank{rank}").touch()
    finally:
        world.close()


def _run(run_dir: Path, *overrides: str, crash_at: int = 0) -> None:
    args = (2, _free_port(), run_dir, list(overrides), crash_at)
    mp.spawn(_runner_worker, args=args, nprocs=2, join=True)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    _run(out)
    return out


def test_two_rank_run_keeps_ranks_identical_and_writes_once(two_rank_run: Path) -> None:
    finals = [torch.load(two_rank_run / f"final_rank{r}.pt", weights_only=False) for r in (0, 1)]
    for name, value in finals[0]["agent"].items():
        # Weights and normaliser statistics alike.
        assert torch.equal(value, finals[1]["agent"][name]), name
    metrics = json.loads((two_rank_run / "metrics.json").read_text())
    assert metrics["env_steps"] == 512  # 2 tasks x 256 steps, counted over both ranks
    rows = (two_rank_run / "train.csv").read_text().splitlines()
    assert len([r for r in rows[1:] if r]) > 0
    # Only rank 0 wrote checkpoints, each holding both ranks' own carry and RNG states.
    from hope_agent.io import load_checkpoint

    tree = load_checkpoint(two_rank_run / "checkpoints" / "stage_01")
    assert len(tree["ranks"]) == 2
    noise = [r["action_noise"] for r in tree["ranks"]]
    assert not torch.equal(noise[0], noise[1])
    # each carry once: rank 0's is not written again at the top level
    assert tree["carry"] is None and all(r["carry"] for r in tree["ranks"])


def test_two_rank_resume_equals_uninterrupted_two_rank_run(
    two_rank_run: Path, tmp_path: Path
) -> None:
    _run(tmp_path, crash_at=3)
    assert (tmp_path / "crashed_rank0").exists() and (tmp_path / "crashed_rank1").exists()
    _run(tmp_path, "resume=true")
    assert_same_results(tmp_path, two_rank_run)
    for r in (0, 1):
        a, b = (
            torch.load(p / f"final_rank{r}.pt", weights_only=False)
            for p in (tmp_path, two_rank_run)
        )
        for name, value in a["agent"].items():
            assert torch.equal(value, b["agent"][name]), name

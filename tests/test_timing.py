"""The loop's clock: charts/SPS, charts/wall_time and the time/<phase> breakdown in train.csv,
TensorBoard and metrics.json; nested phases never count twice; a resume continues the clock."""

import csv
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import numpy as np
import pytest
from conftest import TINY_PPO, ScriptRunner
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from hope_agent.cli import train
from hope_agent.train.runner import CurriculumRunner
from hope_agent.train.timing import PHASES, LoopTimer, is_timing_key

ONE_TASK = "curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{goal:[0.6,0.0]},name:east}]"
# One task of 256 steps, 64 env steps per update (4 updates), an evaluation at 128, a periodic
# checkpoint at 128: every phase of the breakdown runs at least once.
TINY = [
    ONE_TASK,
    "model=mlp",
    "steps_per_task=256",
    *TINY_PPO,
    "eval.every=128",
    "checkpoint.every=128",
    "video.episodes=1",
    "video.height=32",
    "video.width=32",
    "logger.progress=false",
    "device=cpu",
]


def config(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        return compose("config", overrides=[*TINY, *overrides])


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "train.csv", newline="") as f:
        return list(csv.DictReader(f))


def column(table: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in table if r.get(key)]


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# ----------------------------------------------------------------------------- the timer
def test_nested_phases_charge_only_the_innermost() -> None:
    timer = LoopTimer()
    timer.start()
    with timer.phase("rollout_inference"):
        busy(0.02)
        with timer.phase("env_step", sync=False):
            busy(0.05)
        busy(0.02)
    log = timer.as_log()
    assert log["time/env_step"] >= 0.05
    # The outer phase lost the inner one's time: 0.04 s of its own, well under the 0.09 s span.
    assert 0.04 <= log["time/rollout_inference"] < 0.04 + 0.05
    total = sum(log[f"time/{p}"] for p in PHASES)
    assert total <= log["charts/wall_time"]
    assert all(
        log[f"time/{p}"] == 0.0 for p in PHASES if p not in ("env_step", "rollout_inference")
    )


def test_an_open_phase_counts_up_to_now_and_an_exception_closes_it() -> None:
    timer = LoopTimer()
    with pytest.raises(RuntimeError), timer.phase("evaluation"):
        busy(0.01)
        assert timer.as_log()["time/evaluation"] >= 0.01
        raise RuntimeError("the evaluation failed")
    spent = timer.as_log()["time/evaluation"]
    busy(0.01)
    assert timer.as_log()["time/evaluation"] == spent  # closed: no longer counting


def test_sps_divides_the_steps_by_the_iteration() -> None:
    timer = LoopTimer()
    timer.start_iteration()
    busy(0.05)
    sps = timer.sps(100)
    assert 0 < sps <= 100 / 0.05


def test_without_breakdown_only_the_clock_is_logged_and_envs_stay_unwrapped() -> None:
    timer = LoopTimer(breakdown=False)
    with timer.phase("ppo_update"):
        busy(0.01)
    assert set(timer.as_log()) == {"charts/wall_time"}
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
    assert timer.wrap_envs(envs) is envs
    assert LoopTimer().wrap_envs(envs) is not envs
    envs.close()


def test_unknown_phase_is_named() -> None:
    with pytest.raises(ValueError, match="unknown timing phase 'physics'.*env_step"):
        LoopTimer().phase("physics")


def test_state_dict_continues_the_clock() -> None:
    timer = LoopTimer()
    with timer.phase("checkpoint"):
        busy(0.01)
    state = timer.state_dict()
    restored = LoopTimer()
    restored.load_state_dict(state)
    assert restored.wall_time() >= state["wall_time"]
    assert restored.seconds["checkpoint"] == state["seconds"]["checkpoint"] >= 0.01


def test_timing_keys_are_the_ones_comparisons_leave_out() -> None:
    timed = ["charts/SPS", "charts/wall_time", "wall_time_s", *(f"time/{p}" for p in PHASES)]
    assert all(is_timing_key(k) for k in timed)
    assert not any(is_timing_key(k) for k in ("losses/policy", "charts/episodic_return", "auc"))


# ----------------------------------------------------------------------------- a run
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("timed")
    train(config(), out)
    return out


def test_a_run_logs_sps_wall_time_and_every_phase(run_dir: Path) -> None:
    table = rows(run_dir)
    updates = [r for r in table if r.get("losses/updates")]
    assert len(updates) == 4
    assert all(float(r["charts/SPS"]) > 0 for r in updates)
    wall = column(table, "charts/wall_time")
    assert len(wall) == len(table)  # update and evaluation rows alike
    assert wall == sorted(wall) and wall[0] > 0
    for phase in PHASES:
        seconds = column(table, f"time/{phase}")
        assert seconds == sorted(seconds), phase  # cumulative
    last = table[-1]
    assert sum(float(last[f"time/{p}"]) for p in PHASES) <= float(last["charts/wall_time"])
    # Rollouts step envs and run the policy; updates, evaluations and checkpoints ran.
    for phase in ("rollout_inference", "env_step", "ppo_update", "evaluation", "checkpoint"):
        assert float(last[f"time/{phase}"]) > 0, phase
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The run's totals, with the stage-end video and checkpoint written after the last row.
    assert metrics["time/video"] > 0
    assert all(metrics[f"time/{p}"] >= float(last[f"time/{p}"]) for p in PHASES)
    assert metrics["time/checkpoint"] > float(last["time/checkpoint"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"charts/SPS", "charts/wall_time", *(f"time/{p}" for p in PHASES)} <= tags
    assert [e.step for e in events.Scalars("charts/SPS")] == [64, 128, 192, 256]


def test_timing_off_keeps_sps_and_wall_time_only(tmp_path: Path) -> None:
    train(
        config("logger.timing=false", "video.enabled=false", "logger.tensorboard=false"), tmp_path
    )
    table = rows(tmp_path)
    assert column(table, "charts/SPS") and column(table, "charts/wall_time")
    assert not [k for k in table[0] if k.startswith("time/")]


def test_a_resumed_run_continues_the_clock(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    update = CurriculumRunner._update
    calls = [0]

    def crashing(self: CurriculumRunner, stage: int) -> None:
        update(self, stage)
        calls[0] += 1
        if calls[0] == 3:  # after the checkpoint at step 128
            raise KeyboardInterrupt("simulated preemption")

    with monkeypatch.context() as patch:
        patch.setattr(CurriculumRunner, "_update", crashing)
        with pytest.raises(KeyboardInterrupt):
            train(config(), tmp_path)
    train(config("resume=true"), tmp_path)
    table = rows(tmp_path)
    assert [r["global_step"] for r in table] == [r["global_step"] for r in rows(run_dir)]
    # Rows kept from before the crash and rows logged after the resume: one clock throughout.
    wall = column(table, "charts/wall_time")
    assert wall == sorted(wall)
    for phase in PHASES:
        seconds = column(table, f"time/{phase}")
        assert seconds == sorted(seconds), phase
    # Everything else is the uninterrupted run's, bit for bit.
    stable = [[v for k, v in r.items() if not is_timing_key(k)] for r in table]
    assert stable == [[v for k, v in r.items() if not is_timing_key(k)] for r in rows(run_dir)]
    assert np.isfinite(column(table, "charts/SPS")).all()


# ----------------------------------------------------------------------------- the benchmark
def _benchmark_module() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_loop.py"
    spec = importlib.util.spec_from_file_location("benchmark_loop", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_table_gives_ratios_to_sb3_and_shares_of_wall_time() -> None:
    bench = _benchmark_module()
    sb3 = bench.Row("sb3", 1000, 1.0, {"rollout_inference": 0.5, "env_step": 0.3})
    ours = bench.Row(
        "ppo mlp",
        1000,
        4.0,
        {"rollout_inference": 0.5, "env_step": 0.5, "ppo_update": 1.0, "evaluation": 1.0},
    )
    assert ours.whole_sps == 250 and ours.train_sps == 500 and sb3.train_sps == 1250
    lines = bench.table([sb3, ours], sb3).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert len(cells) == len(header) and cells[0] == "ppo mlp"
    # whole sps and its ratio to SB3's 1,000; train sps (rollouts + updates) and 500 / 1,250.
    assert cells[3:7] == ["250", "0.25", "500", "0.40"]
    # Each phase's share of the wall time, then what no phase claims.
    assert header[7:15] == [*(f"{p} %" for p in PHASES), "other %"]
    assert cells[7:15] == ["12.5", "12.5", "25.0", "25.0", "0.0", "0.0", "0.0", "25.0"]


def test_benchmark_refuses_bad_options_in_one_line(
    tmp_path: Path, run_script: ScriptRunner
) -> None:
    done = run_script(
        "benchmark_loop.py",
        "--steps",
        "0",
        "--backbones",
        "mlp,lstm",
        "--out",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--steps must be >= 1 (got 0)" in done.stderr
    assert "--backbones: no config ['lstm'] (choose from gru, hope" in done.stderr
    assert not (tmp_path / "benchmark_loop.json").exists()

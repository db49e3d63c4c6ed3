"""Faults do not stop a run: non-finite updates are skipped, counted and rolled back; simulator
blow-ups end an episode; a crashed or failing vector env is rebuilt."""

import csv
import json
import logging
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from numpy.typing import NDArray
from omegaconf import DictConfig
from torch import Tensor

from hope_agent.agents.agent import Agent
from hope_agent.algos.buffer import RolloutBuffer, SequenceBatch
from hope_agent.build import build_runner
from hope_agent.io import load_checkpoint
from hope_agent.methods import multitask_env_factory
from hope_agent.methods.base import Method
from hope_agent.rollout.guard import EnvFaultGuard, EnvRestartError, RestartingVectorEnv, count_flag
from hope_agent.train.config import register_configs
from hope_agent.train.faults import TrainingDiverged, first_nonfinite, named_tensors
from hope_agent.train.runner import CurriculumRunner
from hope_envs.curriculum import TaskSpec, common_spaces, resolve_tasks
from hope_envs.point import PointReachEnv

register_configs()
_MAIN_PID = os.getpid()
FAULTY_ID = "test/FaultyPoint-v0"


class FaultyPoint(PointReachEnv):
    """PointReach that misbehaves at step ``at`` of every episode, in the way ``mode`` names:
    ``nan_obs`` (a NaN observation), ``unstable`` (a velocity MuJoCo rejects: it warns and resets
    the simulation), ``raise`` (a MuJoCo fatal error), ``error`` (an unrelated exception, once per
    ``marker`` file), ``kill`` (kills its own process, once per ``marker``, never the test's)."""

    def __init__(self, mode: str = "nan_obs", at: int = 10, marker: str = "", **kwargs: Any):
        self.mode, self.at, self.marker, self._t = mode, at, marker, 0
        super().__init__(**kwargs)

    def _once(self) -> bool:
        if not self.marker:
            return False
        try:  # atomic: of two workers at the same step, only one fires
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

    def step(  # type: ignore[override]
        self, action: NDArray[np.float32]
    ) -> tuple[NDArray[np.float64], float, bool, bool, dict[str, Any]]:
        self._t += 1
        hit = self._t == self.at
        if hit and self.mode == "unstable":
            self.data.qvel[:] = 1e30
        if hit and self.mode == "raise":
            raise mujoco.FatalError("simulated MuJoCo failure")
        if hit and self.mode == "error" and self._once():
            raise RuntimeError("simulated env bug")
        if hit and self.mode == "kill" and os.getpid() != _MAIN_PID and self._once():
            os.kill(os.getpid(), signal.SIGKILL)
        obs, reward, terminated, truncated, info = super().step(action)
        if hit and self.mode == "nan_obs":
            obs = obs.copy()
            obs[0] = np.nan
        return obs, reward, terminated, truncated, info

    def reset_model(self) -> NDArray[np.float64]:
        self._t = 0
        return super().reset_model()


if FAULTY_ID not in gym.registry:
    gym.register(FAULTY_ID, entry_point=FaultyPoint, max_episode_steps=40)

TINY = [
    "model=gru",
    "ppo.num_envs=2",
    "ppo.rollout_len=32",
    "ppo.seq_len=16",
    "ppo.num_minibatches=2",
    "ppo.epochs=1",
    "eval.episodes=1",
    "eval.every=0",
    "video.enabled=false",
    "logger.progress=false",
    "device=cpu",
]
ONE_TASK = "curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{goal:[0.6,0.0]},name:east}]"


def config(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        return compose("config", overrides=[*TINY, *overrides])


def hook(runner: CurriculumRunner, fn: Callable[[int], Tensor | None]) -> None:
    """Make the PPO extra loss ``fn(call index)`` (1-based; 2 calls per update here)."""
    calls = [0]

    def extra(agent: Any, batch: SequenceBatch, outputs: Any) -> Tensor | None:
        calls[0] += 1
        return fn(calls[0])

    runner.ppo.extra_loss = extra


def nan_on(calls: set[int]) -> Callable[[int], Tensor | None]:
    return lambda i: torch.tensor(float("nan")) if i in calls else None


def metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def train_csv(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "train.csv") as f:
        return list(csv.DictReader(f))


def finite_agent(runner: CurriculumRunner) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in runner.agent.state_dict().values())


# ----------------------------------------------------------------------------- numerical faults
def test_ppo_skips_nonfinite_minibatches(tmp_path: Path) -> None:
    runner = build_runner(config(ONE_TASK, "steps_per_task=64"), tmp_path)
    envs = gym.vector.SyncVectorEnv([lambda: FaultyPoint(mode="none")] * 2)
    runner._rollout(runner._start_segment(envs, 0))
    before = [p.detach().clone() for p in runner.agent.parameters()]
    hook(runner, nan_on({1, 2}))
    stats = runner.ppo.update(runner.buffer)
    assert stats["nonfinite_steps"] == 2 and stats["updates"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, runner.agent.parameters(), strict=True))
    hook(runner, nan_on({1}))
    stats = runner.ppo.update(runner.buffer)
    assert stats["nonfinite_steps"] == 1 and stats["updates"] == 1
    assert finite_agent(runner) and math.isfinite(stats["policy"])
    envs.close()


def test_nan_loss_is_skipped_counted_and_logged(tmp_path: Path) -> None:
    runner = build_runner(config(ONE_TASK, "steps_per_task=256"), tmp_path)
    hook(runner, nan_on({3, 4}))  # both minibatches of the second update
    summary = runner.run()
    m = metrics(tmp_path)
    assert m["faults/nonfinite_updates"] == 1 and m["faults/skipped_steps"] == 2
    assert m["faults/rollbacks"] == 0 and summary.env_steps == 256
    rows = train_csv(tmp_path)
    updates = [r for r in rows if r.get("losses/updates")]
    assert [float(r["faults/nonfinite_updates"]) for r in updates] == [0, 1, 1, 1]
    assert updates[1]["losses/updates"] == "0.0" and finite_agent(runner)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("faults/nonfinite_updates")] == [0, 1, 1, 1]


def test_k_nonfinite_updates_in_a_row_roll_back_with_a_lower_lr(tmp_path: Path) -> None:
    runner = build_runner(
        config(
            ONE_TASK,
            "steps_per_task=512",
            "checkpoint.every=128",
            "faults.max_nonfinite_in_a_row=2",
            "faults.lr_factor=0.25",
            "ppo.lr=0.001",
        ),
        tmp_path,
    )
    hook(runner, nan_on({5, 6, 7, 8}))  # updates 3 and 4, after the checkpoint at step 128
    summary = runner.run()
    m = metrics(tmp_path)
    assert m["faults/rollbacks"] == 1 and m["faults/nonfinite_updates"] == 2
    assert m["faults/lr_scale"] == 0.25 and summary.env_steps == 512
    assert all(g["lr"] == pytest.approx(0.00025) for g in runner.ppo.optimizer.param_groups)
    # The failed segment's rows were cut back: every step is logged once, in order.
    steps = [int(r["global_step"]) for r in train_csv(tmp_path) if r.get("losses/updates")]
    assert steps == list(range(64, 513, 64))
    later = load_checkpoint(tmp_path / "checkpoints" / "step_0000000256")
    assert later["faults"]["lr_scale"] == 0.25
    assert later["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.00025)


def test_a_poisoned_parameter_rolls_back_at_once(tmp_path: Path) -> None:
    runner = build_runner(config(ONE_TASK, "steps_per_task=256", "checkpoint.every=128"), tmp_path)

    def poison(i: int) -> None:
        if i == 5:
            runner.agent.policy_mean.weight.data[0, 0] = float("nan")

    hook(runner, poison)
    runner.run()
    m = metrics(tmp_path)
    assert m["faults/rollbacks"] == 1 and m["faults/nonfinite_updates"] == 1
    assert finite_agent(runner)


def test_too_many_rollbacks_stop_the_run_with_one_clear_error(tmp_path: Path) -> None:
    runner = build_runner(
        config(ONE_TASK, "steps_per_task=128", "faults.max_nonfinite_in_a_row=1"), tmp_path
    )
    hook(runner, lambda i: torch.tensor(float("inf")))
    with pytest.raises(TrainingDiverged, match="faults.max_rollbacks"):
        runner.run()


def poison_memory_of_rollout(
    runner: CurriculumRunner, monkeypatch: pytest.MonkeyPatch, which: int
) -> None:
    """Make env 0's carried backbone memory NaN before rollout number ``which`` (1-based)."""
    rollout = runner._rollout
    calls = [0]

    def poisoned_rollout(*args: Any) -> None:
        calls[0] += 1
        if calls[0] == which:
            assert runner.state is not None
            runner.state = runner.state.map(lambda t: t.clone())
            for leaf in runner.state.memory.leaves():
                leaf[0] = float("nan")  # env 0's fast memory blew up
        rollout(*args)

    monkeypatch.setattr(runner, "_rollout", poisoned_rollout)


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_a_poisoned_last_rollout_skips_the_methods_task_end_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo logs the NaN control to MUJOCO_LOG.TXT in the cwd
    run = tmp_path / "run"
    runner = build_runner(config(ONE_TASK, "steps_per_task=128", "method=ewc"), run)
    poison_memory_of_rollout(runner, monkeypatch, which=2)  # the stage's last rollout
    with caplog.at_level(logging.WARNING, logger="hope_agent.train.runner"):
        runner.run()
    m = metrics(run)
    assert m["faults/nonfinite_updates"] == 1 and m["faults/skipped_task_ends"] == 1
    assert m["faults/rollbacks"] == 0
    assert "ewc's task-end hook is skipped" in caplog.text
    # No Fisher matrix from the poisoned rollout (it would be NaN, and pull every later task).
    state = load_checkpoint(run / "checkpoints" / "stage_00")["method"]["state"]
    assert state == {"anchors": [], "importances": []}


class _NaNOnFirstTaskEnd(Method):
    """A method whose first task-end hook leaves a NaN in its state, its later ones do not."""

    name = "finetune"

    def __init__(self) -> None:
        self.weight = torch.zeros(3)
        self.task_ends = 0

    def on_task_end(
        self, stage: int, spec: TaskSpec, agent: Agent, buffer: RolloutBuffer | None
    ) -> None:
        self.task_ends += 1
        self.weight = torch.full((3,), float("nan") if self.task_ends == 1 else 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weight = state["weight"]


def test_a_nonfinite_method_state_rolls_back_before_it_is_saved(tmp_path: Path) -> None:
    runner = build_runner(config(ONE_TASK, "steps_per_task=128"), tmp_path)
    method = _NaNOnFirstTaskEnd()
    runner.method = method
    runner.run()
    m = metrics(tmp_path)
    assert m["faults/rollbacks"] == 1 and method.task_ends == 2
    for name in checkpoint_names(tmp_path):
        tree = load_checkpoint(tmp_path / "checkpoints" / name)
        assert first_nonfinite(named_tensors(tree["method"])) is None, name
    stage = load_checkpoint(tmp_path / "checkpoints" / "stage_00")["method"]["state"]
    assert torch.equal(stage["weight"], torch.ones(3))


def test_a_rollback_skips_checkpoints_saved_mid_streak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = ("steps_per_task=512", "checkpoint.every=64", "faults.max_nonfinite_in_a_row=2")
    runner = build_runner(config(ONE_TASK, *overrides), tmp_path)
    hook(runner, nan_on({5, 6, 7, 8}))  # updates 3 and 4 (steps 192, 256); a checkpoint each
    rollback = CurriculumRunner._rollback
    at_rollback: list[tuple[int, int, list[str]]] = []

    def spy(self: CurriculumRunner, reason: str) -> None:
        mid_streak = load_checkpoint(tmp_path / "checkpoints" / "step_0000000192")
        rollback(self, reason)
        at_rollback.append(
            (mid_streak["progress"]["bad_in_a_row"], self.global_step, checkpoint_names(tmp_path))
        )

    monkeypatch.setattr(CurriculumRunner, "_rollback", spy)
    summary = runner.run()
    # step_192 was saved after one bad update: the rollback passes it over for step_128 and
    # removes it, as a later resume must not continue the abandoned segment.
    assert at_rollback == [
        (1, 128, ["step_0000000000", "step_0000000064", "step_0000000128"]),
    ]
    assert metrics(tmp_path)["faults/rollbacks"] == 1 and summary.env_steps == 512
    steps = [int(r["global_step"]) for r in train_csv(tmp_path) if r.get("losses/updates")]
    assert steps == list(range(64, 513, 64))
    redone = load_checkpoint(tmp_path / "checkpoints" / "step_0000000192")
    assert redone["progress"]["bad_in_a_row"] == 0


def test_nonfinite_memory_skips_the_update_and_resets_those_envs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo logs the NaN control to MUJOCO_LOG.TXT in the cwd
    runner = build_runner(config(ONE_TASK, "steps_per_task=256"), tmp_path / "run")
    poison_memory_of_rollout(runner, monkeypatch, which=2)
    runner.run()
    m = metrics(tmp_path / "run")
    assert m["faults/nonfinite_updates"] == 1 and m["faults/rollbacks"] == 0
    assert runner.state is not None and all(
        bool(torch.isfinite(t).all()) for t in runner.state.leaves()
    )
    assert finite_agent(runner)


# ----------------------------------------------------------------------------- env faults
@pytest.mark.parametrize("mode", ["nan_obs", "unstable", "raise"])
def test_guard_ends_the_faulty_episode(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the cwd on a warning
    env = EnvFaultGuard(gym.make(FAULTY_ID, mode=mode, at=3))
    first, _ = env.reset(seed=0)
    obs = first
    for _ in range(2):
        obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        assert not truncated and "env_fault" not in info
    last_good = obs
    obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert truncated and not terminated and info["env_fault"] and reward == 0.0
    np.testing.assert_array_equal(obs, last_good)
    assert env.faults == 1
    again, _ = env.reset(seed=0)
    np.testing.assert_array_equal(again, first)
    assert np.all(np.isfinite(env.step(np.zeros(2, np.float32))[0]))


@pytest.mark.parametrize("mode", ["nan_obs", "unstable"])
def test_multitask_slots_guard_each_task_env(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    specs = resolve_tasks([{"id": FAULTY_ID, "kwargs": {"mode": mode, "at": 3}}], 64)
    obs_dim, act_dim = common_spaces(specs)
    envs = multitask_env_factory(specs)(specs[0], obs_dim, act_dim, 2, False)
    envs.reset(seed=0)
    zeros = np.zeros((2, act_dim), np.float32)
    for _ in range(2):
        obs, _, _, truncated, infos = envs.step(zeros)
        assert not truncated.any() and count_flag(infos, "env_fault") == 0
    last_good = obs
    # The fault of a task env inside each slot, an unstable simulation included (which only
    # that env's MjData shows), ends the episode in that slot.
    obs, reward, terminated, truncated, infos = envs.step(zeros)
    assert count_flag(infos, "env_fault") == 2 and truncated.all() and not terminated.any()
    np.testing.assert_array_equal(obs, last_good)
    assert np.all(reward == 0) and list(infos["task_index"]) == [0, 0]
    obs, *_ = envs.step(zeros)  # autoreset: the next episode
    assert np.all(np.isfinite(obs))
    envs.close()


def test_multitask_runs_use_the_configured_obs_limit(tmp_path: Path) -> None:
    runner = build_runner(config(ONE_TASK, "method=multitask", "faults.obs_limit=0.001"), tmp_path)
    spec = runner.specs[0]
    c = runner.curriculum
    envs = runner.make_envs(spec, c.obs_dim, c.act_dim, 1, False)
    envs.reset(seed=0)
    # PointReach observations are about 0.01 at the start: beyond that limit.
    _, _, _, truncated, infos = envs.step(np.zeros((1, c.act_dim), np.float32))
    assert truncated.all() and count_flag(infos, "env_fault") == 1
    envs.close()


def test_guard_passes_healthy_steps_through_unchanged() -> None:
    plain = gym.make(FAULTY_ID, mode="none")
    guarded = EnvFaultGuard(gym.make(FAULTY_ID, mode="none"))
    a, _ = plain.reset(seed=3)
    b, _ = guarded.reset(seed=3)
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    for _ in range(50):
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        for x, y in zip(plain.step(action), guarded.step(action), strict=True):
            if isinstance(x, dict):
                assert x.keys() == y.keys()
            else:
                np.testing.assert_array_equal(x, y)
    assert guarded.faults == 0


@pytest.mark.parametrize(("mode", "asynchronous"), [("kill", True), ("error", False)])
def test_a_failed_vector_env_is_rebuilt(mode: str, asynchronous: bool, tmp_path: Path) -> None:
    marker = str(tmp_path / "fired")

    def make() -> gym.vector.VectorEnv:
        fns = [lambda: gym.make(FAULTY_ID, mode=mode, at=3, marker=marker)] * 2
        cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
        return cls(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)

    envs = RestartingVectorEnv(make, max_restarts=2)
    obs, _ = envs.reset(seed=0)
    zeros = np.zeros((2, 2), np.float32)
    for _ in range(2):
        obs, _, _, truncated, info = envs.step(zeros)
        assert not truncated.any() and "env_restart" not in info
    final, reward, terminated, truncated, info = envs.step(zeros)  # a worker dies / env raises
    assert Path(marker).exists() and envs.restarts == 1
    assert truncated.all() and not terminated.any() and info["env_restart"].all()
    np.testing.assert_array_equal(final, obs)
    assert np.all(reward == 0)
    fresh, _, _, truncated, _ = envs.step(zeros)  # the autoreset step: new episodes
    assert not truncated.any() and not np.array_equal(fresh, final)
    for _ in range(5):
        obs, *_ = envs.step(zeros)
        assert np.all(np.isfinite(obs))
    assert envs.restarts == 1
    envs.close()


def test_a_persistent_env_error_stops_with_one_clear_error() -> None:
    def make() -> gym.vector.VectorEnv:
        return gym.vector.SyncVectorEnv([lambda: gym.make(FAULTY_ID, mode="raise", at=1)])

    # Not a simulator error once outside the guard: the vector env fails at every step.
    envs = RestartingVectorEnv(make, max_restarts=2)
    envs.reset(seed=0)
    with pytest.raises(EnvRestartError, match="faults.max_env_restarts") as info:
        for _ in range(10):
            envs.step(np.zeros((1, 2), np.float32))
    assert isinstance(info.value.__cause__, mujoco.FatalError) and envs.restarts == 2


def test_env_faults_do_not_stop_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "killed"
    tasks = (
        f"curriculum.tasks=[{{id:{FAULTY_ID},kwargs:{{mode:nan_obs,at:15}},name:nan}},"
        f"{{id:{FAULTY_ID},kwargs:{{mode:kill,at:15,marker:'{marker}'}},name:kill}}]"
    )
    summary = build_runner(
        config(tasks, "steps_per_task=128", "ppo.async_envs=true"), tmp_path / "run"
    ).run()
    m = metrics(tmp_path / "run")
    # Stage 0: the fault at step 15 ends every episode there, so each env's 64 steps hold 4
    # faulty episodes (15 steps + the autoreset step each); stage 1: one worker killed.
    assert m["faults/env_resets"] == 8 and m["faults/env_restarts"] == 1
    assert marker.exists() and summary.env_steps == 256
    assert np.all(np.isfinite(summary.perf))

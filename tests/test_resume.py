"""Resume: a run killed at any moment and resumed with resume=true ends exactly like an
uninterrupted one; defective or planted checkpoints are refused, never executed."""

import contextlib
import csv
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_PPO, TWO_TASKS
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from hope_agent.algos.buffer import RolloutBuffer
from hope_agent.algos.ppo import PPO
from hope_agent.build import ConfigError, resume_point
from hope_agent.cli import check_resume_dir, evaluate, record, train
from hope_agent.io import META_FILE, TENSORS_FILE, CheckpointError, load_checkpoint
from hope_agent.train.runner import CurriculumRunner, latest_checkpoint
from hope_agent.train.timing import is_timing_key

ROOT = Path(__file__).resolve().parents[1]
TASKS = TWO_TASKS
# 2 tasks x 256 steps, 64 env steps per update; evaluations and sync-point checkpoints every 128.
TINY = [
    TASKS,
    "model=gru",
    "steps_per_task=256",
    *TINY_PPO,
    "eval.every=128",
    "checkpoint.every=128",
    "video.enabled=false",
    "logger.progress=false",
    "device=cpu",
]
COMPARED = (
    "perf_matrix.csv",
    "wm_error_matrix.csv",
    "return_matrix.csv",
    "curves.csv",
    "train.csv",
)


def config(*overrides: str, base: list[str] = TINY) -> DictConfig:
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    train(config(), out)
    return out


def without_timing(path: Path) -> list[list[str]]:
    """The rows of CSV ``path`` without its wall-clock columns, which no two runs share."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    keep = [i for i, name in enumerate(rows[0] if rows else []) if not is_timing_key(name)]
    return [[row[i] for i in keep] for row in rows]


def assert_same_results(run: Path, reference: Path) -> None:
    for name in COMPARED:
        assert without_timing(run / name) == without_timing(reference / name), name
    ours, theirs = (json.loads((p / "metrics.json").read_text()) for p in (run, reference))
    assert {k: v for k, v in ours.items() if not is_timing_key(k)} == {
        k: v for k, v in theirs.items() if not is_timing_key(k)
    }


def crash_after(
    monkeypatch: pytest.MonkeyPatch, updates: int, cfg: DictConfig, run_dir: Path
) -> None:
    """Run ``cfg`` until an exception ends it right after update number ``updates``."""
    update = CurriculumRunner._update
    calls = [0]

    def crashing(self: CurriculumRunner, stage: int) -> None:
        update(self, stage)
        calls[0] += 1
        if calls[0] == updates:
            raise KeyboardInterrupt("simulated preemption")

    with monkeypatch.context() as patch:
        patch.setattr(CurriculumRunner, "_update", crashing)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, run_dir)


class _Payload:
    """Unpickling this object creates ``marker``: proof that a loader executed pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _script(*args: str, cwd: Path, stderr: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    command = [sys.executable, str(ROOT / "scripts" / "train_curriculum.py"), *TINY, *args]
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)


@pytest.mark.parametrize(
    "kill_at",
    # In stage 0's training, right after its first periodic checkpoint; at stage 0's end, right
    # after its stage checkpoint, while the step-256 checkpoint and the results are written.
    ["step_0000000128", "stage_00"],
)
def test_kill_9_then_resume_equals_an_uninterrupted_run(
    reference: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, kill_at: str
) -> None:
    run = tmp_path / "run"
    log_file = tmp_path / "stderr.txt"
    with open(log_file, "wb") as stderr:
        proc = _script(f"hydra.run.dir={run}", cwd=tmp_path, stderr=stderr)
        first = run / "checkpoints" / kill_at / META_FILE
        deadline = time.monotonic() + 240
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()  # SIGKILL: no cleanup, no final flush
        proc.wait()
    assert proc.returncode == -9, f"the run ended before the kill: {log_file.read_text()}"
    with caplog.at_level(logging.INFO, logger="hope_agent.train.runner"):
        train(config("resume=true"), run)
    assert any("continuing from" in r.message for r in caplog.records)
    assert_same_results(run, reference)


@pytest.mark.parametrize(
    ("crash_after_update", "corrupt_newest"),
    [(5, False), (7, True)],  # in stage 1 after stage_00 / after step 384, whose file is then cut
)
def test_crash_anywhere_then_resume_equals_an_uninterrupted_run(
    reference: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    crash_after_update: int,
    corrupt_newest: bool,
) -> None:
    crash_after(monkeypatch, crash_after_update, config(), tmp_path)
    if corrupt_newest:
        newest = latest_checkpoint(tmp_path / "checkpoints")
        assert newest is not None and newest.name == "step_0000000384"
        data = (newest / TENSORS_FILE).read_bytes()
        (newest / TENSORS_FILE).write_bytes(data[: len(data) // 2])  # a torn write
        with pytest.warns(UserWarning, match="step_0000000384.*truncated"):
            found = resume_point(config("resume=true"), tmp_path)
        assert found is not None and found.name in ("stage_00", "step_0000000256")
    expect_warning = pytest.warns(UserWarning, match="step_0000000384")
    with expect_warning if corrupt_newest else contextlib.nullcontext():
        train(config("resume=true"), tmp_path)
    assert_same_results(tmp_path, reference)


def test_resume_keeps_the_methods_replay_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = [*TINY, "method=bc_replay"]
    train(config(base=base), tmp_path / "reference")
    crash_after(monkeypatch, 7, config(base=base), tmp_path / "run")
    tree = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000000384")
    assert tree["method"]["name"] == "bc_replay" and tree["method"]["state"]["store"]
    train(config("resume=true", base=base), tmp_path / "run")
    assert_same_results(tmp_path / "run", tmp_path / "reference")


def test_resume_works_with_hope_multi_timescale_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("hope_agent.models.hope")
    keep = ("ppo.", "eval.episodes", "video.", "logger.", "device")
    one_task = "curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{goal:[0.6,0.0]}}]"
    base = [o for o in TINY if o.startswith(keep)]
    # CMS periods 1, 3, 4 and 2 optimizer steps per update: the checkpoint after update 2 (4
    # steps) holds the period-3 level's partial gradient sum, which step 6 applies after the
    # resume; dropping it changes the results.
    base += [one_task, "model=hope", "model.kwargs.cms_periods=[1,3,4]"]
    base += ["steps_per_task=256", "checkpoint.every=128"]
    train(config(base=base), tmp_path / "reference")
    crash_after(monkeypatch, 3, config(base=base), tmp_path / "run")
    tree = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000000128")
    multitimescale = tree["optimizer"]["multitimescale"]
    assert multitimescale["calls"] == 4 and multitimescale["grad_sum"]
    train(config("resume=true", base=base), tmp_path / "run")
    assert_same_results(tmp_path / "run", tmp_path / "reference")


def test_anneal_lr_decays_within_each_task_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = [*TINY, "ppo.anneal_lr=true", "ppo.lr=0.001"]
    seen: list[list[float]] = []
    update = PPO.update

    def recording(self: PPO, buffer: RolloutBuffer) -> dict[str, float]:
        seen.append([g["lr"] for g in self.optimizer.param_groups])
        return update(self, buffer)

    with monkeypatch.context() as patch:
        patch.setattr(PPO, "update", recording)
        train(config(base=base), tmp_path / "reference")
    # 4 updates per task: the rate before update k of a task is lr x (1 - k/4), every group.
    expected = [1e-3 * (1 - k / 4) for k in range(4)] * 2
    assert [[lr - e for lr in lrs] for lrs, e in zip(seen, expected, strict=True)] == [
        pytest.approx([0.0] * len(seen[0]), abs=1e-12)
    ] * 8
    # A resume from step 384 (update 6 of 8) recomputes the rate from the restored position.
    crash_after(monkeypatch, 7, config(base=base), tmp_path / "run")
    train(config("resume=true", base=base), tmp_path / "run")
    assert_same_results(tmp_path / "run", tmp_path / "reference")
    with open(tmp_path / "reference" / "train.csv") as f:
        assert len({r["losses/policy"] for r in csv.DictReader(f)}) > 1


def test_a_checkpoint_holds_everything(reference: Path) -> None:
    tree = load_checkpoint(reference / "checkpoints" / "step_0000000384")
    assert {"agent", "optimizer", "method", "rng", "progress", "carry", "record", "faults"} <= set(
        tree
    )
    assert set(tree["rng"]) == {"action_noise", "minibatch", "torch", "numpy"}
    assert {"obs_norm.rms.count", "reward_scale.rms.var"} <= set(tree["agent"])
    p = tree["progress"]
    assert (p["stage"], p["task_step"], p["global_step"], p["stage_done"]) == (1, 128, 384, False)
    assert p["logger_rows"] > 0 and "faults/nonfinite_updates" in p["logger_columns"]
    assert [e["global_step"] for e in tree["record"]] == [128, 256, 384]
    assert all(isinstance(t, torch.Tensor) for t in tree["carry"])


def test_resume_refuses_mismatched_configs_and_plain_reruns(
    reference: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    with pytest.raises(ConfigError, match="resume=true"):
        resume_point(config(), run)
    with pytest.raises(ConfigError, match=r"ppo\.lr \(checkpoint 0\.0003, now 0\.001\)"):
        resume_point(config("resume=true", "ppo.lr=0.001"), run)
    # Where and how it runs may change.
    assert resume_point(config("resume=true", "logger.tensorboard=false"), run) is not None
    assert resume_point(config("resume=true"), tmp_path / "empty") is None  # a fresh start


def test_resume_in_a_new_timestamped_directory_is_refused(tmp_path: Path) -> None:
    # Without hydra.run.dir, Hydra picks runs/<...>__<timestamp>: never the run to continue.
    proc = _script("resume=true", cwd=tmp_path, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1, err.decode()
    assert lines[-1].startswith("error: resume=true") and "give hydra.run.dir=" in lines[-1]
    assert not list(tmp_path.glob("runs/*/checkpoints"))  # no training started


def test_check_resume_dir(reference: Path, tmp_path: Path) -> None:
    stamped = "runs/${curriculum.name}__${now:%Y%m%d-%H%M%S}"
    with pytest.raises(ConfigError, match=r"give hydra\.run\.dir=<the run's directory>"):
        check_resume_dir(True, tmp_path / "new", "hydra.run.dir", stamped)
    (tmp_path / "new" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="without checkpoints"):
        check_resume_dir(True, tmp_path / "new", "hydra.run.dir", stamped)
    # A timestamped directory that holds the run (e.g. reused by a job array), a named one
    # (a fresh start there is what resume=true promises), or no resume at all: accepted.
    check_resume_dir(True, reference, "hydra.run.dir", stamped)
    check_resume_dir(True, tmp_path / "named", "hydra.run.dir", str(tmp_path / "named"))
    check_resume_dir(False, tmp_path / "new", "hydra.run.dir", stamped)


def test_an_edited_meta_json_is_named_and_resume_falls_back(
    reference: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    meta = run / "checkpoints" / "stage_01" / META_FILE
    text = meta.read_text()
    assert '["global_step", 512]' in text
    meta.write_text(text.replace('["global_step", 512]', '["global_step", 640]', 1))
    with pytest.warns(UserWarning, match=f"stage_01.{META_FILE} was edited or corrupted"):
        found = resume_point(config("resume=true"), run)
    assert found is not None and found.name == "step_0000000512"


def test_planted_pickles_are_refused_never_executed(reference: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    # As the newest resume checkpoint: skipped with a warning naming it.
    planted = run / "checkpoints" / "step_9999999999"
    planted.mkdir()
    (planted / META_FILE).write_bytes(payload)
    (planted / TENSORS_FILE).write_bytes(payload)
    with pytest.warns(UserWarning, match="step_9999999999"):
        found = resume_point(config("resume=true"), run)
    assert found is not None and found.name in ("stage_01", "step_0000000512")
    # As the only checkpoints: refused with one error.
    only = tmp_path / "only"
    (only / "checkpoints").mkdir(parents=True)
    shutil.copytree(planted, only / "checkpoints" / planted.name)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no checkpoint"):
        resume_point(config("resume=true"), only)
    # As evaluate_forgetting's checkpoint=PATH, a file or a stage folder of a run.
    (tmp_path / "model.pt").write_bytes(payload)
    with pytest.raises(CheckpointError, match="never unpickles"):
        evaluate(_eval_config(f"checkpoint={tmp_path / 'model.pt'}"))
    with pytest.raises(CheckpointError, match="never unpickles"):
        record(_compose("record", "device=cpu", f"checkpoint={tmp_path / 'model.pt'}"))
    shutil.rmtree(run / "checkpoints" / "stage_00")
    shutil.copytree(planted, run / "checkpoints" / "stage_00")
    with pytest.raises(CheckpointError, match="stage_00"):
        evaluate(_eval_config(f"run_dir={run}"))
    assert not marker.exists()


def _compose(name: str, *overrides: str) -> DictConfig:
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        return compose(name, overrides=list(overrides))


def _eval_config(*overrides: str) -> DictConfig:
    return _compose("eval", "device=cpu", *overrides)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model", ["hope", "gru"])
def test_crash_then_resume_equals_an_uninterrupted_run_on_cuda(
    model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU determinism contract holds on CUDA too, HOPE's fast-memory state included."""
    cfg = (f"model={model}", "device=cuda")
    train(config(*cfg), tmp_path / "reference")
    crash_after(monkeypatch, 7, config(*cfg), tmp_path / "run")
    train(config(*cfg, "resume=true"), tmp_path / "run")
    assert_same_results(tmp_path / "run", tmp_path / "reference")

"""Forgetting for every curriculum: tasks with neither a success criterion nor stored reference
returns are normalised with what the run measures itself (its random-policy return at the start,
its own best evaluation), recorded in metrics.json, the printed table, the checkpoints; a user's
reference folder; the Python entry points."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import hope_agent
from hope_agent.build import ConfigError, build_curriculum, build_evaluator
from hope_agent.io import load_checkpoint
from hope_agent.train.config import register_configs
from hope_agent.train.evaluator import Evaluator, TaskEvaluation, normalisation_kind
from hope_agent.train.report import EvalEvent, RunRecord, compute_metrics, read_matrix_csv
from hope_agent.train.runner import RunSummary
from hope_envs.curriculum import (
    REFERENCE_DIR,
    Curriculum,
    CurriculumError,
    TaskSpec,
    make_env,
    reference_dirs,
    reference_returns,
    resolve_tasks,
)

# Short episodes of tasks that define no success and whose kwargs no shipped file stores.
TASKS = (
    "curriculum.tasks=[{id:Reacher-v5,kwargs:{max_episode_steps:20}},"
    "{id:InvertedPendulum-v5,kwargs:{max_episode_steps:40}}]"
)
TINY = [
    "model=mlp",
    "steps_per_task=256",
    "ppo.num_envs=2",
    "ppo.rollout_len=64",
    "ppo.seq_len=16",
    "ppo.num_minibatches=2",
    "ppo.epochs=1",
    "eval.episodes=2",
    "eval.every=128",
    "video.enabled=false",
    "logger.progress=false",
    "logger.tensorboard=false",
    "device=cpu",
    TASKS,
]


def _result(task: str, ret: float, success: float | None = None) -> TaskEvaluation:
    perf = float("nan") if success is None else success
    return TaskEvaluation(task, perf, perf, success, ret, ret + 1.0, 0.5, 20.0)


def _record(random: list[float | None] | None) -> RunRecord:
    """Task a: normalised by the run, returns 2, 6, 4, 3; task b: success rates."""
    record = RunRecord(task_names=["a", "b"], stage_starts=[0, 10], random_returns=random)
    rows = [(0, False, 2.0, 0.0), (0, True, 6.0, 0.5), (1, False, 4.0, 1.0), (1, True, 3.0, 1.0)]
    for stage, end, ret, success in rows:
        results = [_result("a", ret), _result("b", -1.0, success)]
        event = EvalEvent(stage * 10 + 5 * end, stage, end, results)
        if end:
            event.reset_every_step = [_result("a", 5.0), _result("b", -1.0, 0.0)]
        record.events.append(event)
    return record


def test_a_task_without_success_or_reference_is_normalised_by_the_run() -> None:
    record = _record([1.0, None])
    m = compute_metrics(record)
    assert m["normalisation"] == {"a": "run", "b": "success"}
    assert m["run_normalisation"] == {"a": {"random_return": 1.0, "best_return": 6.0}}
    # perf = (R - R_random) / (R_best - R_random): 6 -> 1, 3 -> 0.4; b keeps its success rates.
    np.testing.assert_allclose(record.matrix("perf"), [[1.0, 0.5], [0.4, 1.0]])
    assert m["average_performance"] == pytest.approx((0.4 + 1.0) / 2)
    assert m["forgetting"] == pytest.approx((1.0 - 0.4) / 2)
    # The deterministic episode (return + 1) and the in-context control use the same normaliser,
    # clipped to [0, 1].
    np.testing.assert_allclose(record.matrix("perf_deterministic")[:, 0], [1.0, 0.6])
    np.testing.assert_allclose(record.matrix("perf", reset_every_step=True)[:, 0], [0.8, 0.8])
    assert m["in_context_gain"] == pytest.approx(((0.4 - 0.8) + (1.0 - 0.0)) / 2)
    curve = [row["perf"] for row in record.curves_rows() if row["task"] == "a"]
    np.testing.assert_allclose(curve, [0.2, 1.0, 0.6, 0.4])
    # The raw evaluation is untouched: the reference is only known once the run is over.
    assert np.isnan(record.events[1].results[0].perf)


def test_the_run_reference_is_the_best_evaluation_so_far() -> None:
    record = _record([1.0, None])
    record.events = record.events[:2]  # after stage 0 only: best 6 of 2, 6
    assert record.run_normalisers() == [(1.0, 6.0), None]
    record.events[1].results[0].mean_return = 1.5
    assert record.run_normalisers() == [(1.0, 2.0), None]
    np.testing.assert_allclose(record.matrix("perf")[0], [0.5, 0.5])


def test_a_run_that_never_beats_random_scores_zero() -> None:
    m = compute_metrics(_record([10.0, None]))
    assert m["perf_matrix"] == [[0.0, 0.5], [0.0, 1.0]] and m["forgetting"] == 0.0
    assert any("never beat the random policy" in n and "['a']" in n for n in m["notes"])


def test_without_a_measured_random_return_the_note_names_the_task() -> None:
    m = compute_metrics(_record(None))
    assert m["average_performance"] is None and m["normalisation"]["a"] == "run"
    assert any("tasks ['a']" in n and "random-policy return" in n for n in m["notes"])


def _specs() -> list[TaskSpec]:
    return resolve_tasks(
        [
            {"id": "Reacher-v5", "kwargs": {"max_episode_steps": 20}},
            {"id": "hope/PointReach-v0", "kwargs": {"goal": [0.6, 0.0]}},
        ],
        256,
    )


def test_random_returns_are_random_episodes_from_the_evaluation_seeds() -> None:
    curriculum = Curriculum.of(_specs())
    evaluator = Evaluator(curriculum, episodes=3, seed=7)
    assert evaluator.normalisation() == ["run", "success"]
    first = evaluator.random_returns()
    assert first[1] is None and first[0] is not None
    assert evaluator.random_returns() == first  # a deterministic function of the settings
    returns = []
    for e in range(3):
        env = make_env(curriculum.specs[0], curriculum.obs_dim, curriculum.act_dim)
        env.reset(seed=7 + e)
        env.action_space.seed(7 + e)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
        env.close()
    assert first[0] == pytest.approx(np.mean(returns))
    assert Evaluator(curriculum, episodes=3, seed=8).random_returns()[0] != first[0]
    evaluator.close()


def _reference_file(folder: Path, spec: TaskSpec, budget: int, random: float, ref: float) -> None:
    task = {
        "id": spec.id,
        "kwargs": spec.kwargs,
        "budget": budget,
        "random": {"return_mean": random},
        "reference": {"return_mean": ref},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"mine_{budget}.json").write_text(json.dumps({"tasks": [task]}))


def test_a_user_reference_folder_turns_run_normalisation_into_reference(tmp_path: Path) -> None:
    spec = _specs()[0]
    assert normalisation_kind(spec) == "run"
    _reference_file(tmp_path, spec, 256, -40.0, -10.0)
    dirs = reference_dirs(tmp_path)
    assert dirs == (tmp_path.resolve(), REFERENCE_DIR)
    assert normalisation_kind(spec, dirs) == "reference"
    evaluator = Evaluator(Curriculum.of([spec]), episodes=1, seed=0, reference_dirs=dirs)
    assert evaluator.random_returns() == [None]  # nothing to measure: the file has R_random
    with pytest.raises(CurriculumError, match="eval.reference_dir=.*is not a folder"):
        reference_dirs(tmp_path / "missing")


def test_a_user_measurement_of_the_same_budget_replaces_the_shipped_one(tmp_path: Path) -> None:
    shipped = resolve_tasks([{"id": "Reacher-v5"}], 50_000)[0]
    stored = reference_returns(shipped)
    assert stored is not None
    _reference_file(tmp_path, shipped, 50_000, -41.0, -3.0)
    assert reference_returns(shipped, directory=reference_dirs(tmp_path)) == (-41.0, -3.0)
    # Another budget of the user's does not hide the shipped one of the run's budget.
    other = tmp_path / "other"
    _reference_file(other, shipped, 10_000, -41.0, -3.0)
    assert reference_returns(shipped, directory=reference_dirs(other)) == stored


def _config(*overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        return compose("config", overrides=[*TINY, *overrides])


def test_a_bad_reference_dir_is_one_config_error(tmp_path: Path) -> None:
    cfg = _config(f"eval.reference_dir={tmp_path / 'nope'}")
    curriculum = build_curriculum(cfg)
    with pytest.raises(ConfigError, match="eval.reference_dir=.*nope is not a folder"):
        build_evaluator(cfg, curriculum, None)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunSummary:
    return hope_agent.train_curriculum(TINY, run_dir=tmp_path_factory.mktemp("run") / "r")


def test_a_curriculum_without_references_gets_forgetting(run: RunSummary) -> None:
    m = run.metrics
    assert m["normalisation"] == {
        "Reacher[max_episode_steps=20]": "run",
        "InvertedPendulum[max_episode_steps=40]": "run",
    }
    for key in ("average_performance", "forgetting", "backward_transfer"):
        assert isinstance(m[key], float), key
    assert np.all(np.isfinite(run.perf)) and np.all((run.perf >= 0) & (run.perf <= 1))
    saved = json.loads((run.run_dir / "metrics.json").read_text())
    assert saved["normalisation"] == m["normalisation"] and saved["forgetting"] == m["forgetting"]
    # Each task's best evaluation is its reference: some evaluation of it scores exactly 1, or,
    # when the agent never beat random actions there, every evaluation scores 0.
    rows = list(csv.DictReader((run.run_dir / "curves.csv").open()))
    learnt = []
    for task in m["tasks"]:
        perfs = [float(r["perf"]) for r in rows if r["task"] == task]
        norm = m["run_normalisation"][task]
        if norm["best_return"] > norm["random_return"]:
            learnt.append(task)
            assert max(perfs) == 1.0, task
        else:
            assert perfs == [0.0] * len(perfs) and any(task in n for n in m["notes"])
    assert learnt  # the tiny run beats random actions on Reacher
    # R_random was measured once, before training, and every checkpoint holds it.
    randoms = [m["run_normalisation"][t]["random_return"] for t in m["tasks"]]
    for name in ("step_0000000000", "stage_00", "stage_01"):
        assert load_checkpoint(run.run_dir / "checkpoints" / name)["random_returns"] == randoms


def test_hope_evaluate_reuses_the_runs_random_returns(
    run: RunSummary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Evaluator) -> list[float | None]:
        raise AssertionError("R_random measured again")

    monkeypatch.setattr(Evaluator, "random_returns", refuse)
    out = tmp_path / "eval"
    metrics = hope_agent.evaluate_forgetting([f"run_dir={run.run_dir}", f"out_dir={out}"])
    assert metrics["run_normalisation"] == run.metrics["run_normalisation"]
    assert metrics["forgetting"] == pytest.approx(run.metrics["forgetting"])
    np.testing.assert_allclose(read_matrix_csv(out / "perf_matrix.csv"), run.perf)


def test_resume_reuses_the_runs_random_returns(
    run: RunSummary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run.run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "stage_01")
    for path in (copy / "checkpoints").glob("step_*"):
        if path.name != "step_0000000000":
            shutil.rmtree(path)
    monkeypatch.setattr(Evaluator, "random_returns", lambda self: pytest.fail("measured again"))
    resumed = hope_agent.train_curriculum([*TINY, "resume=true"], run_dir=copy)
    assert resumed.metrics["run_normalisation"] == run.metrics["run_normalisation"]
    np.testing.assert_allclose(resumed.perf, run.perf)


def test_the_printed_table_says_how_each_task_was_normalised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = "curriculum.tasks=[{id:Reacher-v5,kwargs:{max_episode_steps:20}}]"
    summary = hope_agent.train_curriculum([*TINY, one], run_dir=tmp_path / "r")
    out = capsys.readouterr().out
    assert "run" in out.split("normalised by")[1].splitlines()[0]
    forgetting = next(line for line in out.splitlines() if " forgetting " in line)
    assert f"{summary.metrics['forgetting']:.3f}" in forgetting


def test_train_curriculum_generates_a_run_directory_and_refuses_bad_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="ppo.num_envs"):
        hope_agent.train_curriculum([*TINY, "ppo.num_envs=0"])
    with pytest.raises(ConfigError, match="nope"):
        hope_agent.train_curriculum([*TINY, "model=nope"])
    with pytest.raises(ConfigError, match="resume=true, but run_dir is the timestamped default"):
        hope_agent.train_curriculum([*TINY, "resume=true"])
    assert not (tmp_path / "runs").exists()
    one = "curriculum.tasks=[{id:Reacher-v5,kwargs:{max_episode_steps:20}}]"
    summary = hope_agent.train_curriculum([*TINY, one, "seed=3"])
    assert summary.run_dir.parent == Path("runs")
    assert summary.run_dir.name.startswith("fast__mlp__3__")
    assert (summary.run_dir / "metrics.json").is_file() and summary.perf.shape == (1, 1)


def test_import_hope_agent_stays_light() -> None:
    code = (
        "import sys, hope_agent; heavy = [m for m in ('torch', 'hydra', 'gymnasium', 'numpy') "
        "if m in sys.modules]; assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

"""End to end: a tiny 2-task curriculum trains, writes every output, and its checkpoints
reproduce its performance matrix; recorded rollouts are not blank."""

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict

from hope_agent.agents.actor import sample_gaussian
from hope_agent.build import (
    ConfigError,
    OptimizerChain,
    build_agent,
    build_curriculum,
    build_runner,
    load_trained_agent,
)
from hope_agent.cli import evaluate, record, train
from hope_agent.optim import M3, MultiTimescaleOptimizer
from hope_agent.train.evaluator import Evaluator, OnlineCMS, TaskEvaluation, record_episodes
from hope_agent.train.report import (
    EvalEvent,
    RunRecord,
    compute_metrics,
    read_matrix_csv,
    write_results,
)
from hope_agent.video import is_blank

TINY = [
    "steps_per_task=256",
    "ppo.num_envs=2",
    "ppo.rollout_len=64",
    "ppo.seq_len=16",
    "ppo.num_minibatches=2",
    "ppo.epochs=1",
    "eval.episodes=2",
    "eval.every=128",
    "checkpoint.every=256",
    "video.height=48",
    "video.width=64",
    "video.frame_skip=25",
    "logger.progress=false",
    "device=cpu",
]


def tiny_config(*overrides: str, model: str = "gru", n_tasks: int = 2) -> DictConfig:
    """The default config shrunk to seconds: the first ``n_tasks`` tasks of ``fast`` (or of the
    curriculum an override names), each ``steps_per_task`` long."""
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", *TINY, *overrides])
    with open_dict(cfg):
        cfg.curriculum.tasks = list(cfg.curriculum.tasks)[:n_tasks]
        for task in cfg.curriculum.tasks:  # a curriculum's own budgets give way to the tiny one
            task.steps = None
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    # Periodic checkpoints at the periodic evaluations: re-evaluation can rebuild every window.
    train(
        tiny_config("eval.in_context_gain=true", "eval.smooth_last=2", "checkpoint.every=128"), out
    )
    return out


def _curve_perf(path: Path) -> dict[int, list[float]]:
    """``{global_step: [perf of each task]}`` from a ``curves.csv``."""
    out: dict[int, list[float]] = {}
    for row in csv.DictReader(path.open()):
        out.setdefault(int(row["global_step"]), []).append(float(row["perf"]))
    return out


def test_run_writes_every_output(run_dir: Path) -> None:
    for name in (
        "config.yaml",
        "metrics.json",
        "perf_matrix.csv",
        "perf_matrix_smoothed.csv",
        "perf_matrix_deterministic.csv",
        "wm_error_matrix.csv",
        "return_matrix.csv",
        "in_context_perf_matrix.csv",
        "curves.csv",
        "train.csv",
        "plots/perf_matrix.png",
        "plots/perf_matrix_smoothed.png",
        "plots/curves.png",
        "plots/wm_error_matrix.png",
        "checkpoints/stage_00/meta.json",
        "checkpoints/stage_01/meta.json",
        "checkpoints/step_0000000128/meta.json",
        "checkpoints/step_0000000256/meta.json",
        "videos/stage_00/all_tasks.mp4",
        "videos/stage_01/all_tasks.mp4",
    ):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert len(list((run_dir / "videos" / "stage_01").glob("*.mp4"))) == 3  # 2 tasks + grid
    metrics = json.loads((run_dir / "metrics.json").read_text())
    perf = read_matrix_csv(run_dir / "perf_matrix.csv")
    assert perf.shape == (2, 2) and np.all((perf >= 0) & (perf <= 1))
    # perf_matrix.csv holds the task-end evaluations; with eval.smooth_last=2 the metrics use
    # each stage's mean of its two evaluations, saved beside it.
    curves = _curve_perf(run_dir / "curves.csv")
    np.testing.assert_array_equal(perf, [curves[256], curves[512]])
    smoothed = read_matrix_csv(run_dir / "perf_matrix_smoothed.csv")
    np.testing.assert_allclose(
        smoothed, [np.mean([curves[128], curves[256]], 0), np.mean([curves[384], curves[512]], 0)]
    )
    assert metrics["perf_matrix"] == perf.tolist()
    np.testing.assert_allclose(metrics["perf_matrix_smoothed"], smoothed)
    assert metrics["stages_completed"] == 2
    assert metrics["average_performance"] == pytest.approx(smoothed[-1].mean())
    assert metrics["forgetting"] == pytest.approx((smoothed[0, 0] - smoothed[1, 0]) / 2)
    assert metrics["auc"] == pytest.approx([smoothed[0, 0], smoothed[1, 1]])
    assert metrics["forward_transfer"] is None and any(
        "forward transfer" in n for n in metrics["notes"]
    )
    assert metrics["in_context_gain"] is not None and metrics["world_model_error"] > 0
    assert metrics["env_steps"] == 2 * 256
    curves = (run_dir / "curves.csv").read_text().splitlines()
    # eval.every=128 inside each 256-step stage: 1 periodic + 1 task-end evaluation per stage.
    assert len(curves) == 1 + 2 * 2 * 2


def test_checkpoints_reproduce_the_perf_matrix(run_dir: Path) -> None:
    metrics = evaluate(_eval_config(f"run_dir={run_dir}"))
    ours, theirs = run_dir / "evaluation", run_dir
    for name in ("perf_matrix.csv", "perf_matrix_smoothed.csv", "wm_error_matrix.csv"):
        np.testing.assert_array_equal(read_matrix_csv(ours / name), read_matrix_csv(theirs / name))
    # The periodic checkpoints sit at the periodic evaluations: the whole curve comes back, and
    # with it the windows' AUCs. The copies of stage ends (step 256, 512) and step 0 are skipped.
    assert (ours / "curves.csv").read_text() == (theirs / "curves.csv").read_text()
    run_metrics = json.loads((theirs / "metrics.json").read_text())
    for key in ("average_performance", "forgetting", "backward_transfer", "auc"):
        assert metrics[key] == run_metrics[key], key
    assert [Path(p).name for p in metrics["checkpoints"]] == [
        "step_0000000128",
        "stage_00",
        "step_0000000384",
        "stage_01",
    ]
    assert (ours / "plots" / "perf_matrix.png").is_file()


def test_single_stage_evaluation_and_mismatched_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    metrics = evaluate(_eval_config(f"run_dir={run_dir}", "stage=0", f"out_dir={tmp_path / 'one'}"))
    one = read_matrix_csv(tmp_path / "one" / "perf_matrix.csv")
    np.testing.assert_array_equal(one[0], read_matrix_csv(run_dir / "perf_matrix.csv")[0])
    assert np.all(np.isnan(one[1]))
    # One evaluation in the window: no area under a curve to report.
    assert metrics["auc"] is None and metrics["forward_transfer"] is None
    assert any("auc and forward transfer left out" in n for n in metrics["notes"])
    # A run config of another model does not match the checkpoint: one clear error.
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoints").symlink_to(run_dir / "checkpoints")
    text = (run_dir / "config.yaml").read_text().replace("name: gru", "name: mlp")
    (other / "config.yaml").write_text(text)
    with pytest.raises(ValueError, match="does not match"):
        evaluate(_eval_config(f"run_dir={other}"))


def test_a_mid_stage_checkpoint_gives_its_stage_row(run_dir: Path, tmp_path: Path) -> None:
    checkpoint = run_dir / "checkpoints" / "step_0000000128"
    metrics = evaluate(_eval_config(f"checkpoint={checkpoint}", f"out_dir={tmp_path}"))
    perf = read_matrix_csv(tmp_path / "perf_matrix.csv")
    np.testing.assert_array_equal(perf[0], _curve_perf(run_dir / "curves.csv")[128])
    assert np.all(np.isnan(perf[1]))
    assert metrics["stages_completed"] == 1
    assert any("before the end of stage 0" in n for n in metrics["notes"])


def test_recorded_rollouts_are_not_blank(run_dir: Path, tmp_path: Path) -> None:
    checkpoint = run_dir / "checkpoints" / "stage_01"
    paths = record(_record_config(f"checkpoint={checkpoint}", f"out_dir={tmp_path}", "gif=true"))
    assert [p.name for p in paths][-1] == "all_tasks.gif" and all(p.is_file() for p in paths)
    trained = load_trained_agent(run_dir / "checkpoints" / "stage_01", None, torch.device("cpu"))
    frames = record_episodes(
        trained.actor, trained.curriculum, 0, seed=0, size=(48, 64), frame_skip=10
    )
    assert len(frames) >= 5 and frames[0].shape == (48, 64, 3)
    assert not is_blank(frames)


def test_hope_backbone_trains_over_the_curriculum(tmp_path: Path) -> None:
    pytest.importorskip("hope_agent.models.hope")
    summary = train(
        tiny_config(
            "steps_per_task=128",
            "eval.every=0",
            "checkpoint.every=0",
            "video.enabled=false",
            "eval.episodes=1",
            "ppo.rollout_len=32",
            "ppo.seq_len=16",
            "eval.online_cms.enabled=true",
            model="hope",
        ),
        tmp_path,
    )
    assert summary.perf.shape == (2, 2) and np.all(np.isfinite(summary.perf))
    assert (tmp_path / "checkpoints" / "stage_01" / "meta.json").is_file()
    assert np.isfinite(summary.metrics["world_model_error"])


def test_bad_values_fail_before_work_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ppo.rollout_len"):
        build_runner(tiny_config("ppo.seq_len=48"), tmp_path)
    with pytest.raises(ConfigError, match="steps_per_task"):
        build_runner(tiny_config("steps_per_task=0"), tmp_path)
    with pytest.raises(ConfigError, match="NoSuchTask"):
        build_runner(tiny_config("curriculum.tasks=[{id:hope/NoSuchTask-v0}]"), tmp_path)
    assert not any(tmp_path.iterdir())


def _eval_config(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        return compose("eval", overrides=["device=cpu", *overrides])


def _record_config(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        return compose(
            "record", overrides=["device=cpu", "height=48", "width=64", "frame_skip=20", *overrides]
        )


def test_m3_optimizer_and_async_envs_run(tmp_path: Path) -> None:
    cfg = tiny_config(
        "ppo.optimizer=m3",
        "ppo.async_envs=true",
        "steps_per_task=128",
        "eval.every=0",
        "checkpoint.every=0",
        "video.enabled=false",
        "eval.episodes=1",
        n_tasks=1,
    )
    runner = build_runner(cfg, tmp_path)
    assert isinstance(runner.ppo.optimizer, OptimizerChain)
    before = [p.detach().clone() for p in runner.agent.parameters()]
    summary = runner.run()
    assert summary.env_steps == 128 and np.isfinite(summary.perf[0, 0])
    moved = [not torch.equal(a, b) for a, b in zip(before, runner.agent.parameters(), strict=True)]
    assert sum(moved) > len(moved) // 2
    m3 = runner.ppo.optimizer.optimizers[0]
    assert isinstance(m3, MultiTimescaleOptimizer) and isinstance(m3.base, M3)
    assert any("m1" in state for state in m3.base.state.values())


def test_all_tasks_in_one_batch_give_each_task_alone() -> None:
    """evaluate() runs every task as one batch; each task's figures are those of its own run
    (same seeds, same noise, its own deterministic row), up to float rounding of the batch."""
    cfg = tiny_config(model="hope")
    curriculum = build_curriculum(cfg)
    agent = build_agent(cfg, curriculum)
    evaluator = Evaluator(curriculum, 3, 0)
    together = evaluator.evaluate(agent)
    alone = [evaluator.evaluate_task(agent, j) for j in range(len(curriculum))]
    assert len({r.mean_return for r in together}) == len(together)  # the tasks really differ
    for a, b in zip(together, alone, strict=True):
        assert (a.task, a.perf, a.perf_deterministic, a.success_rate) == (
            b.task,
            b.perf,
            b.perf_deterministic,
            b.success_rate,
        )
        assert a.episode_length == b.episode_length
        np.testing.assert_allclose(
            [a.mean_return, a.return_deterministic, a.wm_error],
            [b.mean_return, b.return_deterministic, b.wm_error],
            rtol=1e-6,
        )


def test_noise_blocks_draw_what_each_block_draws_alone() -> None:
    mean, log_std = torch.zeros(6, 2), torch.zeros(2)
    blocks = sample_gaussian(
        mean, log_std, False, [torch.Generator().manual_seed(s) for s in (1, 2)]
    )
    for i, s in enumerate((1, 2)):
        alone = sample_gaussian(mean[:3], log_std, False, torch.Generator().manual_seed(s))
        assert torch.equal(blocks[3 * i : 3 * i + 3], alone)
    with pytest.raises(ValueError, match="6 rows cannot be split into 4 equal noise blocks"):
        sample_gaussian(mean, log_std, False, [torch.Generator() for _ in range(4)])


def test_online_cms_adapts_a_copy_only() -> None:
    pytest.importorskip("hope_agent.models.hope")
    cfg = tiny_config(model="hope", n_tasks=1)
    curriculum = build_curriculum(cfg)
    agent = build_agent(cfg, curriculum)
    online = OnlineCMS(["cms.0"], lr=0.05)
    clone, optimizer = online.adapt(agent)
    trainable = {id(p) for p in clone.parameters() if p.requires_grad}
    assert trainable == {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(p.requires_grad for p in agent.parameters())
    before = [p.detach().clone() for p in agent.parameters()]
    plain = Evaluator(curriculum, 1, 0).evaluate_task(agent, 0)
    adapted = Evaluator(curriculum, 1, 0, online_cms=online).evaluate_task(agent, 0)
    assert adapted.wm_error != plain.wm_error  # the deployed copy kept learning
    assert all(torch.equal(a, b) for a, b in zip(before, agent.parameters(), strict=True))
    with pytest.raises(ValueError, match="CMS levels"):
        OnlineCMS(["cms.9"], lr=0.1).chosen(agent)


def test_online_cms_learns_from_the_observation_prediction_only() -> None:
    pytest.importorskip("hope_agent.models.hope")
    cfg = tiny_config(model="hope", n_tasks=1)
    curriculum = build_curriculum(cfg)
    agent = build_agent(cfg, curriculum)
    other = copy.deepcopy(agent)
    with torch.no_grad():  # another reward prediction, the same next-observation prediction
        other.world_model[-1].weight[curriculum.obs_dim].normal_()
        other.world_model[-1].bias[curriculum.obs_dim] += 3.0
    online = OnlineCMS([], lr=0.5)
    a = Evaluator(curriculum, 1, 0, online_cms=online).evaluate_task(agent, 0)
    b = Evaluator(curriculum, 1, 0, online_cms=online).evaluate_task(other, 0)
    assert a.wm_error != b.wm_error  # the reported error counts the reward prediction...
    # ...but the adaptation does not: both copies learn the same, so they act the same.
    assert (a.mean_return, a.return_deterministic) == (b.mean_return, b.return_deterministic)
    plain = Evaluator(curriculum, 1, 0).evaluate_task(agent, 0)
    assert plain.mean_return != a.mean_return  # the adaptation did change the actions


def _event(stage: int, perfs: list[float], task_end: bool = True) -> EvalEvent:
    results = [TaskEvaluation(f"t{j}", p, p, p, 0.0, 0.0, 0.5, 100.0) for j, p in enumerate(perfs)]
    return EvalEvent(
        global_step=stage * 10 + 5 * int(task_end), stage=stage, task_end=task_end, results=results
    )


def test_metrics_from_a_hand_made_record(tmp_path: Path) -> None:
    record = RunRecord(task_names=["t0", "t1"], stage_starts=[0, 10])
    record.events = [
        _event(0, [0.2, 0.0], task_end=False),
        _event(0, [0.8, 0.1]),
        _event(1, [0.5, 0.4], task_end=False),
        _event(1, [0.4, 1.0]),
    ]
    m = compute_metrics(record, reference_auc=[0.25, 0.5])
    assert m["average_performance"] == pytest.approx(0.7)
    assert m["forgetting"] == pytest.approx((0.8 - 0.4) / 2)
    assert m["auc"] == pytest.approx([0.5, 0.7])
    assert m["forward_transfer"] == pytest.approx(((0.5 - 0.25) / 0.75 + (0.7 - 0.5) / 0.5) / 2)
    assert m["perf_matrix"] == [[0.8, 0.1], [0.4, 1.0]] and "perf_matrix_smoothed" not in m
    smooth = compute_metrics(record, smooth_last=2)
    np.testing.assert_allclose(smooth["perf_matrix_smoothed"], [[0.5, 0.05], [0.45, 0.7]])
    assert smooth["average_performance"] == pytest.approx((0.45 + 0.7) / 2)
    assert smooth["forgetting"] == pytest.approx((0.5 - 0.45) / 2)
    assert smooth["forward_transfer"] is None and smooth["notes"]
    # The files hold the same two matrices: raw in perf_matrix.csv, smoothed beside it.
    written = write_results(tmp_path, record, smooth_last=2, plots=False)
    assert written["average_performance"] == smooth["average_performance"]
    np.testing.assert_allclose(read_matrix_csv(tmp_path / "perf_matrix.csv"), m["perf_matrix"])
    np.testing.assert_allclose(
        read_matrix_csv(tmp_path / "perf_matrix_smoothed.csv"), smooth["perf_matrix_smoothed"]
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    np.testing.assert_allclose(saved["perf_matrix_smoothed"], smooth["perf_matrix_smoothed"])
    # A window holding only its task-end evaluation has no curve: no AUC, no forward transfer.
    sparse = RunRecord(task_names=["t0", "t1"], stage_starts=[0, 10])
    sparse.events = [record.events[0], record.events[1], record.events[3]]
    s = compute_metrics(sparse, reference_auc=[0.25, 0.5])
    assert s["auc"] is None and s["forward_transfer"] is None
    assert s["average_performance"] == pytest.approx(0.7)
    assert any("stages [1]" in n for n in s["notes"])
    partial = RunRecord(task_names=["t0", "t1"], stage_starts=[0], events=record.events[:2])
    assert compute_metrics(partial)["stages_completed"] == 1
    record.events[-1].results[0].perf = float("nan")
    assert compute_metrics(record)["average_performance"] is None

"""SB3 baselines: the adapter acts like SB3's own predict, and a fine-tuned SB3 model goes through
our evaluator into the same outputs as our runner's; its checkpoints reproduce its matrix."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ScriptRunner
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from hope_agent.baselines.sb3 import (
    SB3Actor,
    SB3Settings,
    load_actor,
    register_sb3_config,
    run_sb3_curriculum,
    train_sb3,
)
from hope_agent.cli import evaluate, record
from hope_agent.compare import read_perf_csv
from hope_agent.train.evaluator import Evaluator
from hope_envs.curriculum import Curriculum, TaskSpec, make_env, resolve_tasks

register_sb3_config()

OBS, ACT = 4, 2
TWO_TASKS = "curriculum.tasks=[{id: hope/PointReach-v0, kwargs: {goal: [0.6, 0.0]}}, {id: hope/PointReach-v0, kwargs: {goal: [-0.6, 0.0]}}]"  # noqa: E501


def _specs(steps: int = 128) -> list[TaskSpec]:
    goals = ([0.6, 0.0], [-0.6, 0.0])
    return resolve_tasks(
        [{"id": "hope/PointReach-v0", "kwargs": {"goal": g}} for g in goals], steps
    )


def _config(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        return compose(
            "sb3_config",
            overrides=[
                TWO_TASKS,
                "steps_per_task=256",
                "n_envs=2",
                "ppo_kwargs.n_steps=64",
                "ppo_kwargs.batch_size=64",
                "ppo_kwargs.n_epochs=2",
                "eval.episodes=2",
                "eval.every=128",
                "video.height=48",
                "video.width=64",
                "video.frame_skip=25",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sb3_ppo")
    train_sb3(_config(), out)
    return out


def test_ppo_run_writes_the_runner_outputs(ppo_run: Path) -> None:
    for name in (
        "config.yaml",
        "metrics.json",
        "perf_matrix.csv",
        "return_matrix.csv",
        "curves.csv",
        "plots/perf_matrix.png",
        "plots/curves.png",
        "checkpoints/stage_00/meta.json",
        "checkpoints/stage_01/meta.json",
        "videos/stage_01/all_tasks.mp4",
        "sb3/progress.csv",
    ):
        assert (ppo_run / name).is_file(), name
    metrics = json.loads((ppo_run / "metrics.json").read_text())
    perf = np.array(metrics["perf_matrix"])
    assert perf.shape == (2, 2) and np.all((perf >= 0) & (perf <= 1))
    assert metrics["average_performance"] == pytest.approx(perf[-1].mean())
    assert metrics["forgetting"] == pytest.approx((perf[0, 0] - perf[1, 0]) / 2)
    assert metrics["env_steps"] == 2 * 256 and metrics["world_model_error"] is None
    # eval.every=128 in 256-step stages: one periodic and one task-end evaluation per stage.
    assert len((ppo_run / "curves.csv").read_text().splitlines()) == 1 + 2 * 2 * 2
    cfg = (ppo_run / "config.yaml").read_text()
    assert "method: finetune" in cfg and "name: sb3_ppo" in cfg


def test_checkpoint_reproduces_the_final_row(ppo_run: Path) -> None:
    agent, tree = load_actor(ppo_run / "checkpoints" / "stage_01")
    assert tree["progress"]["global_step"] == 512
    specs = _specs()
    evaluator = Evaluator(Curriculum.of(specs), episodes=2, seed=100_000)
    results = evaluator.evaluate(agent)
    evaluator.close()
    metrics = json.loads((ppo_run / "metrics.json").read_text())
    assert [r.perf for r in results] == metrics["perf_matrix"][-1]
    returns = read_perf_csv(ppo_run / "return_matrix.csv")
    np.testing.assert_allclose([r.mean_return for r in results], returns[-1], rtol=1e-6)


def test_evaluate_and_record_load_sb3_checkpoints(ppo_run: Path, tmp_path: Path) -> None:
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        eval_cfg = compose(
            "eval", [f"run_dir={ppo_run}", "device=cpu", f"out_dir={tmp_path / 'eval'}"]
        )
        stage = ppo_run / "checkpoints" / "stage_01"
        record_cfg = compose(
            "record",
            [f"checkpoint={stage}", "device=cpu", "height=48", "width=64", "frame_skip=25"]
            + [f"out_dir={tmp_path / 'videos'}"],
        )
    metrics = evaluate(eval_cfg)
    saved = json.loads((ppo_run / "metrics.json").read_text())
    # The run's own evaluation settings and seeds: every stage's row again, exactly.
    assert metrics["perf_matrix"] == saved["perf_matrix"]
    assert metrics["forgetting"] == saved["forgetting"]
    assert metrics["world_model_error"] is None
    assert (tmp_path / "eval" / "perf_matrix.csv").is_file()
    written = record(record_cfg)
    assert [p.name for p in written][-1] == "all_tasks.mp4" and len(written) == 3
    assert all(p.stat().st_size > 1000 for p in written)


def _model(algo: str) -> tuple[PPO | SAC, VecNormalize]:
    spec = _specs()[0]
    venv = VecNormalize(DummyVecEnv([lambda: make_env(spec, OBS, ACT)]))
    # Statistics far from (0, 1), so that normalisation matters.
    venv.obs_rms.mean = np.array([0.5, -0.2, 0.1, 0.0])
    venv.obs_rms.var = np.array([4.0, 0.25, 1.0, 9.0])
    kwargs = {"n_steps": 32, "batch_size": 32} if algo == "ppo" else {"learning_starts": 10}
    cls = PPO if algo == "ppo" else SAC
    model = cls("MlpPolicy", venv, seed=0, device="cpu", **kwargs)
    # Move the policy away from its near-zero initial mean.
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model, venv


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_adapter_acts_like_sb3_predict(algo: str) -> None:
    model, venv = _model(algo)
    agent = SB3Actor(model.policy, venv.obs_rms, venv.clip_obs)
    raw_np = np.random.default_rng(0).normal(size=(16, OBS)).astype(np.float32) * 3
    raw = torch.as_tensor(raw_np)
    obs = agent.normalize_obs(raw)
    np.testing.assert_allclose(obs.numpy(), venv.normalize_obs(raw_np), rtol=1e-5, atol=1e-6)
    carry = agent.init_carry(16)
    first, r = torch.ones(16, dtype=torch.bool), torch.zeros(16)
    _, res = agent.policy(carry, raw, r, first, deterministic=True)
    expected, _ = model.predict(venv.normalize_obs(raw_np), deterministic=True)
    np.testing.assert_allclose(res.env_action.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected).max() > 0.05  # a non-trivial policy
    # Stochastic actions: reproducible from the generator, spread around the deterministic one.
    draw = [
        agent.policy(carry, raw, r, first, generator=torch.Generator().manual_seed(7))[1].env_action
        for _ in range(2)
    ]
    torch.testing.assert_close(draw[0], draw[1])
    assert not torch.equal(draw[0], res.env_action)
    assert torch.all(draw[0].abs() <= 1.0)
    # Per-row choice, as our evaluator asks for (the last row deterministic).
    mixed = torch.zeros(16, dtype=torch.bool)
    mixed[-1] = True
    _, rows = agent.policy(
        carry, raw, r, first, deterministic=mixed, generator=torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(rows.env_action[-1], res.env_action[-1])
    torch.testing.assert_close(rows.env_action[:-1], draw[0][:-1])
    pred_delta, pred_reward = agent.predict_world(res.output.features, res.env_action)
    assert pred_delta.shape == (16, OBS) and torch.all(torch.isnan(pred_reward))


def test_sac_fine_tunes_over_the_curriculum(tmp_path: Path) -> None:
    settings = SB3Settings(
        n_envs=1,
        algo_kwargs={"learning_starts": 32, "batch_size": 32, "policy_kwargs": {"net_arch": [32]}},
        eval_episodes=1,
    )
    summary = run_sb3_curriculum(_specs(), "sac", 96, seed=0, run_dir=tmp_path, settings=settings)
    assert summary.env_steps == 2 * 96 and summary.perf.shape == (2, 2)
    agent, tree = load_actor(tmp_path / "checkpoints" / "stage_01")
    assert tree["meta"]["algo"] == "sac" and tree["meta"]["policy_kwargs"]["net_arch"] == [32]
    assert not (tmp_path / "videos").exists()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("algo=td3", "algo must be one of ppo, sac"),
        ("steps_per_task=0", "steps_per_task must be >= 1"),
        ("video.fps=0", "video.fps must be >= 1 (got 0)"),
        ("eval.episodes=-1", "eval.episodes must be >= 0"),
        ("+foo=1", "foo: Key 'foo' not in 'SB3TrainConfig'"),
        ("+ppo_kwargs.bogus=1", "ppo_kwargs ['bogus']: not options of stable_baselines3 PPO"),
        ("+ppo_kwargs.seed=3", "ppo_kwargs ['seed']"),  # the adapter passes it
        ("ppo_kwargs.n_steps=abc", "ppo_kwargs.n_steps must be an integer (got 'abc')"),
        ("ppo_kwargs.learning_rate=true", "ppo_kwargs.learning_rate must be a number"),
        ("+ppo_kwargs.use_sde=true", "use_sde must be false"),
        ("+ppo_kwargs.policy_kwargs.bogus=1", "policy_kwargs ['bogus']: not options"),
        ("+ppo_kwargs.policy_kwargs.activation_fn=relu", "activation_fn takes a Python object"),
        ("eval.reference_auc=[0.5]", "eval.reference_auc needs one AUC per task (2)"),
    ],
)
def test_bad_values_fail_before_any_file(tmp_path: Path, override: str, named: str) -> None:
    with pytest.raises(ValueError) as error:
        train_sb3(_config(override), tmp_path)
    assert named in str(error.value) and "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())


def test_a_bad_value_sb3_rejects_is_one_line(tmp_path: Path) -> None:
    # Past the signature checks: the optimizer's own options are SB3's (and torch's) to check.
    kwargs = {"n_steps": 64, "batch_size": 64, "policy_kwargs": {"optimizer_kwargs": {"bogus": 1}}}
    settings = SB3Settings(n_envs=1, eval_episodes=0, algo_kwargs=kwargs)
    with pytest.raises(ValueError, match="^ppo_kwargs: .*unexpected keyword argument 'bogus'$"):
        run_sb3_curriculum(_specs(), "ppo", 64, 0, tmp_path, settings)


@pytest.mark.parametrize(
    ("args", "named"), [(["foo=1"], "SB3TrainConfig"), (["+ppo_kwargs.bogus=1"], "bogus")]
)
def test_the_script_prints_one_line_and_exits_1(
    tmp_path: Path, run_script: ScriptRunner, args: list[str], named: str
) -> None:
    done = run_script("train_sb3.py", *args, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and named in lines[0]
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_bad_inputs_fail_with_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown SB3 algorithm"):
        run_sb3_curriculum(_specs(), "dqn", 64, 0, tmp_path)
    with pytest.raises(ValueError, match="not an SB3 checkpoint"):
        from hope_agent.io import save_checkpoint

        save_checkpoint(tmp_path / "other", {"meta": {"format": "hope_agent.train/1"}})
        load_actor(tmp_path / "other")
    assert not (tmp_path / "config.yaml").exists()


def test_sb3_on_batched_envs_trains_as_on_dummy_vec_env(ppo_run: Path, tmp_path: Path) -> None:
    """The default (batched point-mass envs) and ``batched_envs=false`` give the same run."""
    train_sb3(_config("batched_envs=false", "video.enabled=false"), tmp_path)
    for name in ("perf_matrix.csv", "return_matrix.csv", "curves.csv"):
        assert (tmp_path / name).read_text() == (ppo_run / name).read_text(), name


def test_batched_envs_with_a_task_that_has_none_is_one_line(tmp_path: Path) -> None:
    cheetah = "curriculum.tasks=[{id: hope/CheetahRun-v0, kwargs: {}, name: run}]"
    cfg = _config("batched_envs=true", cheetah, "steps_per_task=64")
    with pytest.raises(ValueError, match=r"run \(hope/CheetahRun-v0\).*set batched_envs=false"):
        train_sb3(cfg, tmp_path)

"""Every bad override is rejected before any work starts, with one line that names it."""

from pathlib import Path

import pytest
from conftest import ScriptRunner
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from hope_agent.build import ConfigError, build_runner, compile_backbone
from hope_agent.cli import check_overrides, evaluate, record
from hope_agent.models.factory import make_backbone
from hope_agent.models.hope import Hope

TINY = ["model=mlp", "steps_per_task=64", "logger.progress=false", "device=cpu"]


def _compose(name: str, *overrides: str) -> DictConfig:
    with initialize_config_module(config_module="hope_configs", version_base="1.3"):
        return compose(name, overrides=list(overrides))


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("foo=1", "foo"),  # unknown key
        ("ppo.bogus=1", "ppo.bogus"),
        ("ppo.lr=abc", "ppo.lr"),  # wrong type
        ("ppo.num_envs=1.5", "ppo.num_envs"),
        ("video.enabled=maybe", "video.enabled"),
        ("device=gpu", "device"),
        ("model=nope", "model/nope"),  # unknown model
        ("curriculum=nope", "curriculum/nope"),
        ("curriculum.tasks=[{idx:1}]", "idx"),
        ("resume=perhaps", "resume"),
        ("faults.lr_factor=abc", "faults.lr_factor"),
        ("ppo", "ppo"),  # not an override at all
    ],
)
def test_composition_errors_are_one_line(override: str, named: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_overrides("config", [override])
    assert named in _one_line(error)


def test_unknown_group_option_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="available: gru, hope, .*transformer"):
        check_overrides("config", ["model=nope"])
    check_overrides("config", ["model=gru", "hydra.run.dir=/tmp/x"])  # fine: no error


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("+foo=1", "foo"),  # escapes Hydra's struct check
        ("+ppo.bar=2", "ppo.bar"),
        ("steps_per_task=-5", "steps_per_task"),  # negative steps
        ("seed=-1", "seed"),
        ("checkpoint.every=-1", "checkpoint.every"),
        ("eval.episodes=-2", "eval.episodes"),
        ("ppo.rollout_len=100", "ppo.rollout_len"),
        ("ppo.m3.betas=[0.9,0.99]", "ppo.m3.betas"),
        ("faults.lr_factor=0", "faults.lr_factor"),
        ("faults.max_nonfinite_in_a_row=0", "faults.max_nonfinite_in_a_row"),
        ("faults.obs_limit=-1", "faults.obs_limit"),
        ("model.name=nope", "model.name"),  # unknown model, set by key
        ("agent.task_heads=true", "agent.task_id=true"),  # heads per task need the task id
        ("+model.kwargs.bogus=3", "bogus"),
        ("method=nope", "method"),
        ("curriculum.tasks=[{id:hope/PointRech-v0}]", "hope/PointReach-v0"),  # close match
        ("curriculum.tasks=[{id:hope/PointReach-v0,steps:-3}]", "steps"),
        ("curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{goal:[5,5]}}]", "goal"),
    ],
)
def test_bad_values_fail_at_build_with_one_line(tmp_path: Path, override: str, named: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_runner(_compose("config", *TINY, override), tmp_path)
    assert named in _one_line(error)
    assert not any(tmp_path.iterdir())


def test_compile_backbone_uses_the_default_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # reduce-overhead (CUDA-graph trees) crashed a GPU training run: compile=true must not use it
    seen: list[str | None] = []
    monkeypatch.setattr(Hope, "compile_fast_paths", lambda self, m=None: seen.append(m))
    compile_backbone(make_backbone("hope", 16, n_heads=2, chunk_size=4))
    assert seen == [None]


def test_compile_true_builds_a_runner_with_compiled_hope(tmp_path: Path) -> None:
    runner = build_runner(_compose("config", *TINY, "model=hope", "compile=true"), tmp_path)
    mixer = runner.agent.backbone.stack.block_list()[0].mixer
    assert mixer._compiled_segment is not mixer._segment  # compiled lazily, at the first call
    assert runner.ppo.graph_update  # the compiled segments run inside the update's CUDA graph


@pytest.mark.parametrize(("method", "adds_loss"), [("finetune", False), ("ewc", True)])
def test_graph_update_reaches_ppo_unless_the_method_adds_a_loss(
    tmp_path: Path, method: str, adds_loss: bool
) -> None:
    """A method that keeps the base ``extra_loss`` hands PPO no extra loss, so that
    ``graph_update=true`` can replay its minibatches from CUDA graphs (a bound no-op hook once
    made every training run eager)."""
    cfg = _compose("config", *TINY, "model=hope", f"method={method}", "graph_update=true")
    ppo = build_runner(cfg, tmp_path).ppo
    assert ppo.graph_update and (ppo.extra_loss is not None) == adds_loss


def test_compile_refuses_a_backbone_without_a_compiled_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        build_runner(_compose("config", *TINY, "model=gru", "compile=true"), tmp_path)
    assert "compile=true applies to the HOPE backbones" in _one_line(error)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["method=ewc", "+method_options.coef=abc"], "option coef must be a number (got 'abc')"),
        (["method=bc_replay", "+method_options.batch_size=2.5"], "batch_size must be an integer"),
        (["method=l2", "+method_options.gamma=true"], "gamma must be a number or null (got True)"),
        (["method=ewc", "+method_options.lambda=1"], "unknown option(s) ['lambda']"),
        (["method=finetune", "+method_options.coef=1"], "takes no options"),
    ],
)
def test_bad_method_options_fail_at_build_with_one_line(
    tmp_path: Path, overrides: list[str], named: str
) -> None:
    with pytest.raises(ConfigError) as error:
        build_runner(_compose("config", *TINY, *overrides), tmp_path)
    text = _one_line(error)
    assert text.startswith(f"{overrides[0]}: ") and named in text
    assert not any(tmp_path.iterdir())


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    cfg = _compose("config", *TINY, "seed=-1", "ppo.num_envs=0", "faults.lr_factor=3")
    with pytest.raises(ConfigError) as error:
        build_runner(cfg, tmp_path)
    text = _one_line(error)
    assert all(key in text for key in ("seed", "ppo.num_envs", "faults.lr_factor"))


def test_evaluate_and_record_reject_bad_values() -> None:
    with pytest.raises(ConfigError, match="episodes"):
        evaluate(_compose("eval", "run_dir=/nowhere", "episodes=-1"))
    with pytest.raises(ConfigError, match="exactly one"):
        evaluate(_compose("eval", "device=cpu"))
    with pytest.raises(ConfigError, match="torch_threads"):
        record(_compose("record", "checkpoint=/nowhere", "torch_threads=-1"))
    with pytest.raises(ConfigError, match="bogus"):
        check_overrides("eval", ["bogus=1"])


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["foo=1"], "foo"),
        (["ppo.lr=abc"], "ppo.lr"),
        (["+foo=1"], "foo"),
        (["method=ewc", "+method_options.coef=abc"], "option coef must be a number"),
    ],
)
def test_the_script_prints_one_line_and_exits_1(
    tmp_path: Path, run_script: ScriptRunner, args: list[str], named: str
) -> None:
    done = run_script("train_curriculum.py", *args, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and named in lines[0]
    assert not (tmp_path / "r" / "checkpoints").exists()

"""Curricula as data: validation, common spaces, the env factory, reference returns, the script."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.spaces import Box
from hydra import compose, initialize_config_dir

import hope_envs
from hope_envs import curriculum
from hope_envs.curriculum import (
    KNOWN_NAMESPACES,
    CurriculumError,
    KnownNamespace,
    ReferenceBudgetWarning,
    TaskSpec,
    common_spaces,
    curriculum_names,
    defines_success,
    load_curriculum,
    make_env,
    reference_entry,
    reference_returns,
    resolve_tasks,
)
from hope_envs.wrappers import action_dim, to_common_action, to_task_action

REPO = Path(__file__).resolve().parents[1]
POINT = "hope/PointReach-v0"


class _ImageEnv(gym.Env[np.ndarray, np.ndarray]):
    """A task with camera observations: a curriculum of padded vectors cannot take it."""

    observation_space = Box(0, 255, (8, 8, 3), np.uint8)
    action_space = Box(-1.0, 1.0, (2,), np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return np.zeros((8, 8, 3), np.uint8), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return np.zeros((8, 8, 3), np.uint8), 0.0, False, False, {}


gym.register("hope_test/ImageObs-v0", entry_point=_ImageEnv, max_episode_steps=10)


def test_shipped_curricula_are_hydra_group_files() -> None:
    assert {"fast", "locomotion", "cw10", "cw20", "gym_mixed", "adapt"} <= set(curriculum_names())
    for name in curriculum_names():
        path = REPO / "configs" / "curriculum" / f"{name}.yaml"
        assert path.read_text().startswith("# @package curriculum\n")
        data = load_curriculum(name)
        assert data["name"] == name
        for task in data["tasks"]:
            assert set(task) <= {"id", "kwargs", "steps", "name"}
            # null (the run's steps_per_task) except where a curriculum sizes its own budgets.
            assert task["steps"] is None if name != "adapt" else task["steps"] > 0


def test_fast_curriculum_resolves_to_four_conflicting_goals() -> None:
    specs = resolve_tasks(load_curriculum("fast")["tasks"], steps_per_task=30_000)
    assert [spec.name for spec in specs] == [
        "reach_east",
        "reach_west",
        "reach_north",
        "reach_south",
    ]
    assert all(spec.id == POINT and spec.steps == 30_000 for spec in specs)
    goals = np.array([spec.kwargs["goal"] for spec in specs])
    # Opposite goals: the best action for one task is the worst for another.
    assert np.allclose(goals[0], -goals[1]) and np.allclose(goals[2], -goals[3])
    assert common_spaces(specs) == (4, 2)
    assert all(defines_success(spec) for spec in specs)


def test_hydra_group_composes_and_a_command_line_override_defines_a_new_curriculum() -> None:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(overrides=["+curriculum=locomotion"])
        specs = resolve_tasks(cfg.curriculum.tasks, steps_per_task=10)
        assert [spec.name for spec in specs][:2] == ["run", "run_backward"]
        cfg = compose(
            overrides=[
                "+curriculum=fast",
                "curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{goal:[0.1,0.2]},steps:7},"
                "{id:hope/CheetahJump-v0}]",
            ]
        )
    specs = resolve_tasks(cfg.curriculum.tasks, steps_per_task=10)
    assert specs[0] == TaskSpec(POINT, {"goal": [0.1, 0.2]}, 7, "PointReach[goal=0.1,0.2]")
    assert (specs[1].id, specs[1].steps, specs[1].name) == (
        "hope/CheetahJump-v0",
        10,
        "CheetahJump",
    )
    assert type(specs[0].kwargs["goal"]) is list


def test_repeated_names_get_a_suffix() -> None:
    tasks = [{"id": POINT}, {"id": POINT}, {"id": POINT, "name": "PointReach"}]
    names = [spec.name for spec in resolve_tasks(tasks, 5)]
    assert names == ["PointReach", "PointReach#2", "PointReach#3"]
    cw20_like = [{"id": POINT, "name": "a"}, {"id": POINT, "name": "b"}] * 2
    assert [spec.name for spec in resolve_tasks(cw20_like, 5)] == ["a", "b", "a#2", "b#2"]


def test_unknown_id_lists_close_matches_and_how_to_list_ids() -> None:
    with pytest.raises(CurriculumError) as info:
        resolve_tasks([{"id": "hope/PointReech-v0"}], 5)
    message = str(info.value)
    assert "hope/PointReach-v0" in message and "registered_ids()" in message
    assert "curriculum task 0" in message


@pytest.mark.parametrize(
    ("tasks", "steps_per_task", "match"),
    [
        ([{"id": POINT, "step": 3}], 5, r"unknown keys \['step'\]"),
        ([{"kwargs": {}}], 5, "needs an `id` string"),
        ([{"id": POINT, "kwargs": [1, 2]}], 5, "`kwargs` must be a mapping"),
        ([{"id": POINT, "steps": 0}], 5, "steps must be a positive integer"),
        ([{"id": POINT, "steps": 2.5}], 5, "steps must be a positive integer"),
        ([{"id": POINT, "steps": True}], 5, "steps must be a positive integer"),
        ([{"id": POINT}], 0, "steps_per_task must be a positive integer"),
        ([{"id": POINT, "kwargs": {"gaol": [0.1, 0.1]}}], 5, "unexpected keyword argument 'gaol'"),
        ([{"id": POINT, "kwargs": {"goal": [3.0, 0.0]}}], 5, "goal must be 2 numbers"),
        ([{"id": POINT, "kwargs": {"goal": object()}}], 5, "is not plain data"),
        ([{"id": POINT, "name": ""}], 5, "`name` must be a non-empty string"),
        ([], 5, "has no tasks"),
        ("hope/PointReach-v0", 5, "must be a list of entries"),
    ],
)
def test_bad_entries_raise_one_clear_error(tasks: Any, steps_per_task: int, match: str) -> None:
    with pytest.raises(CurriculumError, match=match):
        resolve_tasks(tasks, steps_per_task)


@pytest.mark.parametrize(
    ("env_id", "match"),
    [
        ("CartPole-v1", "not a continuous Box"),
        ("hope_test/ImageObs-v0", "not a flat numeric vector"),
    ],
)
def test_unmatched_spaces_raise_one_clear_error(env_id: str, match: str) -> None:
    specs = resolve_tasks([{"id": POINT}, {"id": env_id, "name": "odd"}], 5)
    with pytest.raises(CurriculumError, match=match) as info:
        common_spaces(specs)
    assert "task 'odd'" in str(info.value)


def test_unbounded_actions_are_rejected() -> None:
    with pytest.raises(ValueError, match="unbounded"):
        action_dim(Box(-np.inf, np.inf, (3,), np.float32))


def test_missing_metaworld_extra_gives_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "metaworld", None)  # makes `import metaworld` fail
    curriculum._probe.cache_clear()  # a probe cached by another test would skip the build
    with pytest.raises(CurriculumError, match=r'pip install -e "\.\[metaworld\]"') as info:
        resolve_tasks(load_curriculum("cw10")["tasks"], 5)
    message = str(info.value)
    assert 'pip install "hope-agent[metaworld]"' in message
    # The kwargs are fine: the message must not send the user to check them.
    assert "kwargs against" not in message and "not installed" in message
    with pytest.raises(ImportError, match=r'pip install "hope-agent\[metaworld\]"'):
        gym.make("hope/MetaWorld-v0", task="hammer-v3")


# A package of one's own that registers its env when imported, as Meta-World and most env
# packages do. `{ns}` is the namespace it registers under.
_REGISTERING_MODULE = """
import numpy as np
import gymnasium as gym
from gymnasium.spaces import Box


class Drift(gym.Env):
    observation_space = Box(-np.inf, np.inf, (3,), np.float64)
    action_space = Box(-2.0, 2.0, (1,), np.float32)

    def __init__(self, speed=1.0):
        self.speed = speed

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, 3)
        return self.x.copy(), {}

    def step(self, action):
        self.x = self.x + self.speed * float(action[0])
        return self.x.copy(), -abs(self.x[0]), False, False, {"success": abs(self.x[0]) < 0.1}


gym.register("{ns}/Drift-v0", entry_point=__name__ + ":Drift", max_episode_steps=7)
"""


@pytest.fixture
def registering_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Writes module `hope_tmp_registering` (registers `HopeTmp/Drift-v0` on import) on the path;
    afterwards forgets the module and the id, so no other test sees them."""
    name = "hope_tmp_registering"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(_REGISTERING_MODULE.replace("{ns}", "HopeTmp"))
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)
    gym.registry.pop("HopeTmp/Drift-v0", None)


def test_an_id_of_a_module_that_registers_on_import_works_by_its_own_name(
    registering_module: str,
) -> None:
    env_id = f"{registering_module}:HopeTmp/Drift-v0"
    assert "HopeTmp/Drift-v0" not in gym.registry
    (spec,) = resolve_tasks([{"id": env_id, "kwargs": {"speed": 0.5}}], 5)
    assert (spec.id, spec.name) == (env_id, "Drift[speed=0.5]")
    assert common_spaces([spec]) == (3, 1)
    assert not defines_success(spec)  # its class does not declare a success criterion
    env = make_env(spec, 4, 2)
    obs, _ = env.reset(seed=0)
    steps, done = 0, False
    while not done:
        # A common action of 0.5 is 1.0 in the task's [-2, 2], times speed 0.5: x moves by 0.5.
        next_obs, _, terminated, truncated, info = env.step(np.array([0.5, 0.0], np.float32))
        np.testing.assert_allclose(next_obs[:3] - obs[:3], 0.5, rtol=1e-5)
        assert "success" not in info and next_obs[3] == 0.0
        obs, steps, done = next_obs, steps + 1, terminated or truncated
    assert steps == 7  # its registered time limit holds


def test_an_id_whose_module_cannot_be_imported_says_so_in_one_line() -> None:
    with pytest.raises(CurriculumError) as info:
        resolve_tasks([{"id": "hope_no_such_module:Env-v0"}], 5)
    message = str(info.value)
    assert "\n" not in message and message.startswith("curriculum task 0: ")
    assert "names the module 'hope_no_such_module', which cannot be imported" in message


def test_a_known_namespace_imports_its_package_and_scores_by_its_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mechanism behind `Meta-World/MT1`, with a package of our own in place of Meta-World:
    the id alone, without `module:`, resolves, and the namespace says success is the score."""
    name = "hope_tmp_namespace"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(_REGISTERING_MODULE.replace("{ns}", "HopeNs"))
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(KNOWN_NAMESPACES, "HopeNs", KnownNamespace(name, "pip install x", True))
    try:
        assert "HopeNs/Drift-v0" not in gym.registry and name not in sys.modules
        (spec,) = resolve_tasks([{"id": "HopeNs/Drift-v0"}], 5)
        assert name in sys.modules and defines_success(spec)
        env = make_env(spec, 3, 1)
        env.reset(seed=0)
        assert env.step(np.zeros(1, np.float32))[4]["success"] in (True, False)
        with pytest.raises(CurriculumError, match="unknown task id 'HopeNs/Drfit-v0'.*HopeNs/Dr"):
            resolve_tasks([{"id": "HopeNs/Drfit-v0"}], 5)
    finally:
        sys.modules.pop(name, None)
        gym.registry.pop("HopeNs/Drift-v0", None)


def test_meta_worlds_own_ids_without_the_package_name_the_install_command_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "metaworld", None)  # makes `import metaworld` fail
    for env_id in [key for key in gym.registry if key.startswith("Meta-World/")]:
        monkeypatch.delitem(gym.registry, env_id)  # as in a process without the package
    entry = {"id": "Meta-World/MT1", "kwargs": {"env_name": "button-press-topdown-v3"}}
    with pytest.raises(CurriculumError) as info:
        resolve_tasks([entry], 5)
    message = str(info.value)
    assert "\n" not in message
    assert "'Meta-World/MT1' is registered by the package `metaworld`, which is not installed" in (
        message
    )
    assert 'pip install "hope-agent[metaworld]"' in message


def test_mixed_bodies_share_padded_observations_and_one_action_space() -> None:
    specs = resolve_tasks(load_curriculum("gym_mixed")["tasks"], 5)
    obs_dim, act_dim = common_spaces(specs)
    assert (obs_dim, act_dim) == (17, 6)
    for spec in specs:
        native = gym.make(spec.id, **spec.kwargs)
        width = native.observation_space.shape[0]
        native_obs, _ = native.reset(seed=11)
        env = make_env(spec, obs_dim, act_dim)
        assert env.observation_space == Box(-np.inf, np.inf, (obs_dim,), np.float32)
        assert env.action_space == Box(-1.0, 1.0, (act_dim,), np.float32)
        obs, info = env.reset(seed=11)
        assert obs.dtype == np.float32 and obs.shape == (obs_dim,)
        np.testing.assert_allclose(obs[:width], native_obs, rtol=1e-6)
        assert not obs[width:].any()
        obs, _, _, _, info = env.step(env.action_space.sample())
        assert obs.shape == (obs_dim,) and not obs[width:].any()
        assert ("success" in info) == defines_success(spec)
        env.close()
        native.close()
    assert [defines_success(spec) for spec in specs] == [True, False, False, False]


def test_action_mapping_round_trip() -> None:
    rng = np.random.default_rng(0)
    low = np.array([-3.0, 0.0, 2.0], np.float32)
    high = np.array([3.0, 0.5, 7.0], np.float32)
    for _ in range(20):
        common = rng.uniform(-1, 1, size=5).astype(np.float32)
        task = to_task_action(common, low, high)
        assert task.dtype == np.float32 and np.all((low <= task) & (task <= high))
        back = to_common_action(task, low, high, act_dim=5)
        np.testing.assert_allclose(back[:3], common[:3], atol=1e-6)
        assert not back[3:].any()
        in_bounds = rng.uniform(low, high).astype(np.float32)
        np.testing.assert_allclose(
            to_task_action(to_common_action(in_bounds, low, high, 5), low, high),
            in_bounds,
            rtol=1e-6,
            atol=1e-6,
        )
    np.testing.assert_array_equal(to_task_action([5.0, -5.0, 0.0], low, high), [3.0, 0.0, 4.5])


def test_wrapper_rescales_actions_and_ignores_extra_dims() -> None:
    # InvertedPendulum's motor takes [-3, 3]: a common action of 0.5 must arrive as 1.5.
    (spec,) = resolve_tasks([{"id": "InvertedPendulum-v5"}], 5)
    env = make_env(spec, obs_dim=6, act_dim=3)
    env.reset(seed=0)
    env.step(np.array([0.5, 0.9, -0.9], np.float32))
    assert env.unwrapped.data.ctrl[0] == pytest.approx(1.5)

    (point,) = resolve_tasks([{"id": POINT}], 5)
    a, b = make_env(point, 8, 6), make_env(point, 8, 6)
    a.reset(seed=2)
    b.reset(seed=2)
    step_a = a.step(np.array([0.3, -0.6, 1, 1, 1, 1], np.float32))
    step_b = b.step(np.array([0.3, -0.6, -1, 0, 0.5, -1], np.float32))
    np.testing.assert_array_equal(step_a[0], step_b[0])
    assert step_a[1] == step_b[1]


def test_make_env_keeps_the_time_limit_and_seeding() -> None:
    (spec,) = resolve_tasks([{"id": POINT, "kwargs": {"goal": [0.6, 0.0]}}], 5)
    env = make_env(spec, 4, 2)
    first, info = env.reset(seed=5)
    assert info["success"] is False
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        assert isinstance(info["success"], bool)
        steps, done = steps + 1, terminated or truncated
    assert steps == 100 and truncated
    again, _ = make_env(spec, 4, 2).reset(seed=5)
    np.testing.assert_array_equal(first, again)


def test_make_env_renders_at_the_requested_size() -> None:
    (spec,) = resolve_tasks([{"id": POINT}], 5)
    env = make_env(spec, 4, 2, render_mode="rgb_array", render_size=(48, 64))
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (48, 64, 3) and frame.std() > 0
    env.close()


@pytest.mark.parametrize(
    ("name", "budget"), [("fast", 30_000), ("locomotion", 1_000_000), ("gym_mixed", 50_000)]
)
def test_shipped_reference_returns_cover_every_normalised_curriculum(
    name: str, budget: int
) -> None:
    stored = json.loads((REPO / "envs" / "reference" / f"{name}.json").read_text())
    assert stored["command"].startswith(f"python scripts/make_reference.py --curriculum {name} ")
    assert f"--steps {budget}" in stored["command"] and stored["seeds"]
    for spec in resolve_tasks(load_curriculum(name)["tasks"], budget):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the stored budget is the run's: no warning
            ref = reference_returns(spec)
        assert ref is not None, spec.name
        r_random, r_reference = ref
        assert r_reference > r_random, spec.name
    unmeasured = TaskSpec(POINT, {"goal": [0.2, 0.2]}, 30_000, "x")
    assert reference_returns(unmeasured) is None


def _reference_file(path: Path, budget: int, random: float, reference: float) -> None:
    task = {
        "id": POINT,
        "kwargs": {"goal": [0.6, 0.0]},
        "budget": budget,
        "random": {"return_mean": random},
        "reference": {"return_mean": reference},
    }
    path.write_text(json.dumps({"tasks": [task]}))


def test_reference_returns_takes_the_closest_budget_and_warns_that_it_differs(
    tmp_path: Path,
) -> None:
    _reference_file(tmp_path / "a.json", 1_000, -60.0, -30.0)
    _reference_file(tmp_path / "b.json", 5_000, -61.0, -15.0)
    spec = TaskSpec(POINT, {"goal": [0.6, 0.0]}, 4_000, "reach")
    entry = reference_entry(spec, directory=tmp_path)
    assert entry is not None
    assert (entry.budget, entry.stored_budgets, entry.path.name) == (
        5_000,
        (1_000, 5_000),
        "b.json",
    )
    with pytest.warns(ReferenceBudgetWarning) as record:
        assert reference_returns(spec, directory=tmp_path) == (-61.0, -15.0)
    message = str(record[0].message)
    assert "trains for 4000 steps" in message and "[1000, 5000]" in message
    assert "closest, 5000 (b.json)" in message and "--steps 4000" in message
    assert "eval.reference_dir=DIR" in message
    with warnings.catch_warnings():  # once per task in a run: every evaluation asks again
        warnings.simplefilter("error")
        assert reference_returns(spec, directory=tmp_path) == (-61.0, -15.0)
    close_to_a = TaskSpec(POINT, {"goal": [0.6, 0]}, 1_500, "reach")
    with pytest.warns(ReferenceBudgetWarning, match="closest, 1000 "):
        assert reference_returns(close_to_a, directory=tmp_path) == (-60.0, -30.0)
    exact = TaskSpec(POINT, {"goal": [0.6, 0.0]}, 1_000, "reach")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reference_returns(exact, directory=tmp_path) == (-60.0, -30.0)


def _make_reference_script() -> Any:
    module_spec = importlib.util.spec_from_file_location(
        "make_reference", REPO / "scripts" / "make_reference.py"
    )
    assert module_spec is not None and module_spec.loader is not None
    script = importlib.util.module_from_spec(module_spec)
    # Registered as Python does for an imported module: its dataclasses look their module up.
    sys.modules["make_reference"] = script
    module_spec.loader.exec_module(script)
    return script


def test_make_reference_picks_a_preset_per_task_on_mixed_bodies() -> None:
    script = _make_reference_script()
    specs = resolve_tasks(load_curriculum("gym_mixed")["tasks"], 5)
    presets = [script.choose_preset(spec, "auto") for spec in specs]
    assert presets == ["short", "short", "mujoco", "mujoco"]  # 100, 50, 1000, 1000 steps
    assert script.choose_preset(specs[0], "mujoco") == "mujoco"


def test_make_reference_refuses_a_reference_that_does_not_beat_random(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _make_reference_script()

    def untrained(spec: TaskSpec, seed: int, preset: str, episodes: int) -> dict[str, Any]:
        scores = {"return_mean": -1e6, "return_std": 0.0, "success_rate": 0.0}
        return {**scores, "deterministic": dict(scores), "seed": seed, "train_seconds": 0.0}

    monkeypatch.setattr(script, "train_reference", untrained)
    out = tmp_path / "f.json"
    argv = ["--curriculum", "fast", "--steps", "5", "--episodes", "1", "--out", str(out)]
    with pytest.raises(SystemExit, match=r"did not beat random actions on \['reach_east'"):
        script.main(argv)
    assert not out.exists()


def test_make_reference_script_writes_what_reference_returns_reads(tmp_path: Path) -> None:
    script = _make_reference_script()
    out = script.main(
        [
            "--curriculum",
            "fast",
            "--steps",
            "8192",
            "--episodes",
            "2",
            "--out",
            str(tmp_path / "f.json"),
        ]
    )
    record = json.loads(out.read_text())
    assert record["preset"] == "short" and record["seeds"] == [0]
    assert record["command"].endswith(
        "--curriculum fast --steps 8192 --episodes 2 --out " + str(tmp_path / "f.json")
    )
    assert {"command", "date", "machine", "settings"} <= set(record)
    assert [task["name"] for task in record["tasks"]] == [
        "reach_east",
        "reach_west",
        "reach_north",
        "reach_south",
    ]
    for spec in resolve_tasks(load_curriculum("fast")["tasks"], 8192):
        stored = next(task for task in record["tasks"] if task["name"] == spec.name)
        assert stored["budget"] == 8192 and stored["preset"] == "short"
        assert 0.0 <= stored["random"]["success_rate"] <= 1.0
        assert reference_returns(spec, directory=tmp_path) == (
            stored["random"]["return_mean"],
            stored["reference"]["return_mean"],
        )


def _trained_as(return_mean: float) -> Any:
    def fake(spec: TaskSpec, seed: int, preset: str, episodes: int) -> dict[str, Any]:
        scores = {"return_mean": return_mean, "return_std": 0.0}
        return {**scores, "deterministic": dict(scores), "seed": seed, "train_seconds": 0.0}

    return fake


def test_make_reference_measures_a_task_list_of_ones_own_for_a_later_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _make_reference_script()
    # The PPO training is make_reference's own, tested above; here: what it measures and where.
    monkeypatch.setattr(script, "train_reference", _trained_as(0.0))
    tasks = "curriculum.tasks=[{id:Reacher-v5,kwargs:{max_episode_steps:20}}]"
    refs = tmp_path / "refs"
    out = script.main(
        [tasks, "steps_per_task=3000", "--episodes", "2", f"eval.reference_dir={refs}"]
    )
    assert (
        out.parent == refs and out.name.startswith("custom-") and out.name.endswith("__3000.json")
    )
    record = json.loads(out.read_text())
    assert record["command"].startswith("python scripts/make_reference.py 'curriculum.tasks=[")
    (spec,) = resolve_tasks([{"id": "Reacher-v5", "kwargs": {"max_episode_steps": 20}}], 3000)
    stored = record["tasks"][0]
    assert stored["budget"] == 3000 and stored["random"]["return_mean"] < 0.0
    # Not in the shipped folder, found through the folder a run is given.
    assert reference_returns(spec) is None
    assert reference_returns(spec, directory=curriculum.reference_dirs(refs)) == (
        stored["random"]["return_mean"],
        0.0,
    )
    # --steps overrides the config's budget; without a folder a task list of one's own is refused.
    again = script.main([tasks, "--steps", "500", "--episodes", "1", f"eval.reference_dir={refs}"])
    assert json.loads(again.read_text())["tasks"][0]["budget"] == 500
    with pytest.raises(SystemExit, match="eval.reference_dir=DIR"):
        script.main([tasks, "--episodes", "1"])


def test_make_reference_resolves_curricula_as_training_does() -> None:
    script = _make_reference_script()
    shipped = script.resolve_target(script.parse_args(["curriculum=gym_mixed", "--steps", "9"]))
    assert shipped.out == curriculum.REFERENCE_DIR / "gym_mixed.json" and shipped.steps == 9
    assert [s.name for s in shipped.specs] == [
        s.name for s in resolve_tasks(load_curriculum("gym_mixed")["tasks"], 9)
    ]
    old_style = script.resolve_target(script.parse_args(["--curriculum", "fast"]))
    assert old_style.out.name == "fast.json" and old_style.steps == 40_000  # steps_per_task
    for bad, named in (("curriculum=nope", "nope"), ("curriculum.tasks=[{id:No-v0}]", "No-v0")):
        with pytest.raises(SystemExit, match=named):
            script.resolve_target(script.parse_args([bad]))


def test_registered_ids_all_resolve() -> None:
    ids = [env_id for env_id in hope_envs.registered_ids() if env_id != "hope/MetaWorld-v0"]
    specs = resolve_tasks([{"id": env_id} for env_id in ids], 5)
    assert common_spaces(specs) == (17, 6)

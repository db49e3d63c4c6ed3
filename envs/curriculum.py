"""Curricula as data: validated task specs, common spaces, the env factory, reference returns.

A curriculum is a list of entries `{id, kwargs, steps, name}` (a Hydra config group,
`configs/curriculum/*.yaml`). `resolve_tasks` turns the entries into `TaskSpec`s and checks them
once (every id exists, every env builds with its kwargs); `common_spaces` finds the observation
and action widths every task can be padded to; `make_env` builds one task with those spaces.
Any Gymnasium id with flat Box observations and bounded Box actions can join a curriculum, by
its own name: `module:Env-v0` imports `module` first (Gymnasium's convention for packages that
register on import), and an id in a namespace of `KNOWN_NAMESPACES` (`Meta-World/MT1`) imports
its package first, or fails with one line naming the install command.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec, load_env_creator, parse_env_id
from omegaconf import OmegaConf

from hope_envs.metaworld_tasks import INSTALL_HINT as METAWORLD_INSTALL_HINT
from hope_envs.wrappers import CommonSpaces, action_dim, observation_dim

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"

_ENTRY_KEYS = ("id", "kwargs", "steps", "name")
_LIST_IDS_HINT = (
    'list ids with `python -c "import hope_envs, gymnasium; gymnasium.pprint_registry()"` '
    "(this package's own: hope_envs.registered_ids()); ids registered by another package need "
    "that package imported, e.g. id 'some_module:Env-v0'"
)


@dataclass(frozen=True)
class KnownNamespace:
    """A Gymnasium id namespace whose package registers its ids when imported.

    Attributes:
        module: the package to import before its ids can be looked up.
        install: the command that installs it (the error for a missing package names it).
        defines_success: whether its envs report `info["success"]` as their criterion (then
            curricula score them by it, as for an env class with `defines_success = True`).
    """

    module: str
    install: str
    defines_success: bool


# Namespaces whose ids work in a curriculum without naming the module: `Meta-World/MT1` imports
# `metaworld` (Meta-World 3 registers `Meta-World/*` on import and defines success per task).
KNOWN_NAMESPACES: dict[str, KnownNamespace] = {
    "Meta-World": KnownNamespace("metaworld", METAWORLD_INSTALL_HINT, defines_success=True),
}


class CurriculumError(ValueError):
    """A curriculum that cannot run: bad entry, unknown id, rejected kwargs, unmatched spaces."""


class ReferenceBudgetWarning(UserWarning):
    """The stored reference of a task was measured at another budget than the task trains for."""


_BUDGET_WARNED: set[tuple[str, str, int, int]] = set()


@dataclass(frozen=True)
class TaskSpec:
    """One task of a curriculum.

    Attributes:
        id: Gymnasium id, e.g. `"hope/PointReach-v0"` or `"Hopper-v5"`.
        kwargs: keyword arguments for `gymnasium.make` (plain data: numbers, strings, lists, ...).
        steps: environment steps to train on this task.
        name: short display name, unique within the curriculum.
    """

    id: str
    kwargs: dict[str, Any]
    steps: int
    name: str


def resolve_tasks(tasks: Sequence[Mapping[str, Any]], steps_per_task: int) -> list[TaskSpec]:
    """Validate curriculum entries and return their `TaskSpec`s.

    Each entry is a mapping with keys `id` (required), `kwargs` (mapping, default `{}`), `steps`
    (positive int, or null for `steps_per_task`) and `name` (optional display name; repeated
    names get a `#2`, `#3`, ... suffix). Every env is built once to check its kwargs.

    Raises:
        CurriculumError: naming the entry, the problem and the fix.
    """
    default_steps = _positive_int(steps_per_task, "steps_per_task")
    if isinstance(tasks, str | bytes | Mapping) or not isinstance(tasks, Sequence):
        raise CurriculumError(
            f"curriculum tasks must be a list of entries {{id, kwargs, steps}}, got {tasks!r}."
        )
    if len(tasks) == 0:
        raise CurriculumError("the curriculum has no tasks; give at least one {id: ...} entry.")
    specs: list[TaskSpec] = []
    used_names: set[str] = set()
    for index, entry in enumerate(tasks):
        where = f"curriculum task {index}"
        env_id, kwargs, steps, name = _parse_entry(entry, where, default_steps)
        name = _unique_name(name or _default_name(env_id, kwargs), used_names)
        used_names.add(name)
        try:
            _probe(_probe_key(env_id, kwargs))
        except CurriculumError as err:
            raise CurriculumError(f"{where} ({env_id}, kwargs {kwargs}): {err}") from err
        specs.append(TaskSpec(id=env_id, kwargs=kwargs, steps=steps, name=name))
    return specs


def common_spaces(specs: Sequence[TaskSpec]) -> tuple[int, int]:
    """`(obs_dim, act_dim)`: the widest flat observation and action of the curriculum.

    Raises:
        CurriculumError: if a task's spaces cannot be matched (non-Box spaces, image
            observations, unbounded actions), naming the task and why.
    """
    if len(specs) == 0:
        raise CurriculumError("common_spaces needs at least one task.")
    obs_dim, act_dim = 0, 0
    for spec in specs:
        probe = _probe(_probe_key(spec.id, spec.kwargs))
        try:
            obs_dim = max(obs_dim, observation_dim(probe.observation_space))
            act_dim = max(act_dim, action_dim(probe.action_space))
        except ValueError as err:
            raise CurriculumError(
                f"task {spec.name!r} ({spec.id}) cannot share the curriculum's spaces: {err}"
            ) from err
    return obs_dim, act_dim


@dataclass(frozen=True)
class Curriculum:
    """An ordered list of tasks and the observation and action widths they share."""

    specs: tuple[TaskSpec, ...]
    obs_dim: int
    act_dim: int

    @classmethod
    def of(cls, specs: Sequence[TaskSpec]) -> Curriculum:
        """The curriculum of ``specs`` with their common spaces (:func:`common_spaces`)."""
        obs_dim, act_dim = common_spaces(specs)
        return cls(tuple(specs), obs_dim, act_dim)

    @property
    def names(self) -> list[str]:
        """The tasks' display names, in order."""
        return [spec.name for spec in self.specs]

    def __len__(self) -> int:
        return len(self.specs)

    def make_env(self, j: int, **kwargs: Any) -> gym.Env:
        """Task ``j``'s env with the common spaces (:func:`make_env`'s keyword arguments)."""
        return make_env(self.specs[j], self.obs_dim, self.act_dim, **kwargs)


def make_env(
    spec: TaskSpec,
    obs_dim: int,
    act_dim: int,
    *,
    render_mode: str | None = None,
    render_size: tuple[int, int] = (240, 320),
) -> gym.Env[Any, Any]:
    """Build one task with the curriculum's common spaces.

    Observations are `Box(-inf, inf, (obs_dim,), float32)`, zero-padded; actions are
    `Box(-1, 1, (act_dim,), float32)`, mapped to the task's own bounds. The registered time limit
    is kept; `info["success"]` (bool) is present iff `defines_success(spec)`. Seed with
    `env.reset(seed=...)`. `render_size` is `(height, width)` in pixels, used by tasks that take
    a size.
    """
    _positive_int(obs_dim, "obs_dim")
    _positive_int(act_dim, "act_dim")
    # Imports the registering package here too: a worker process may not have resolved the id.
    env_spec(spec.id)
    kwargs = dict(spec.kwargs)
    if render_mode is not None:
        height, width = _render_size(render_size)
        kwargs["render_mode"] = render_mode
        if _accepts_size(spec.id):
            kwargs.update(height=height, width=width)
    env = gym.make(spec.id, **kwargs)
    try:
        return CommonSpaces(env, obs_dim, act_dim, defines_success(spec))
    except ValueError as err:
        env.close()
        raise CurriculumError(f"task {spec.name!r} ({spec.id}): {err}") from err


def defines_success(spec: TaskSpec) -> bool:
    """Whether curricula score the task by `info["success"]` (else by normalised return).

    An env class declares it with the class attribute `defines_success = True` (this package's
    point-mass and Meta-World tasks); an env without the attribute follows its namespace in
    `KNOWN_NAMESPACES` (Meta-World's own ids do), else it is False. `make_env` keeps
    `info["success"]` where this is true and drops it otherwise. The cheetah tasks report a
    success flag of their own but are scored by return.
    """
    declared = getattr(_env_creator(spec.id), "defines_success", None)
    if declared is None:
        known = KNOWN_NAMESPACES.get(_namespace(spec.id) or "")
        declared = known is not None and known.defines_success
    return bool(declared)


def env_spec(env_id: str) -> EnvSpec:
    """The registered `EnvSpec` of a task id, importing the package that registers it first.

    `module:Env-v0` imports `module`, then looks up `Env-v0`; an id in a namespace of
    `KNOWN_NAMESPACES` not registered yet imports that namespace's package. Other ids must be
    registered already (Gymnasium's own, this package's `hope/...`).

    Raises:
        CurriculumError: one line: the module cannot be imported, the known package is not
            installed (with its install command), or the id is unknown (with close matches
            and how to list ids).
    """
    module, colon, name = env_id.partition(":")
    if not colon:
        module, name = "", env_id
    if module:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise CurriculumError(
                f"task id {env_id!r} names the module {module!r}, which cannot be imported "
                f"({err}); install the package that provides it, or correct the module name."
            ) from err
    known = KNOWN_NAMESPACES.get(_namespace(name) or "")
    if known is not None and name not in gym.registry:
        try:
            importlib.import_module(known.module)
        except ImportError as err:
            raise CurriculumError(
                f"task id {env_id!r} is registered by the package `{known.module}`, which is not "
                f"installed: {known.install}."
            ) from err
    try:
        return gym.spec(name)
    except gym.error.Error as err:
        close = difflib.get_close_matches(name, list(gym.registry), n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise CurriculumError(
            f"unknown task id {env_id!r}{hint}. To see valid ids, {_LIST_IDS_HINT}."
        ) from err


@dataclass(frozen=True)
class ReferenceEntry:
    """One stored measurement of a task's reference returns.

    Attributes:
        random: R_random, the mean return of uniform random actions.
        reference: R_reference, the mean return of the single-task reference policy.
        budget: environment steps the reference policy was trained for.
        stored_budgets: every budget stored for this task (id and kwargs), ascending.
        path: the file it was read from.
    """

    random: float
    reference: float
    budget: int
    stored_budgets: tuple[int, ...]
    path: Path


ReferenceDirs = Path | str | Sequence[Path | str]


def reference_dirs(user: Path | str | None = None) -> tuple[Path, ...]:
    """The folders searched for reference files: ``user`` (config key ``eval.reference_dir``,
    where `scripts/make_reference.py` wrote a user's own measurements) first, then the shipped
    `envs/reference`.

    Raises:
        CurriculumError: if ``user`` is given but is not a folder.
    """
    if user is None:
        return (REFERENCE_DIR,)
    folder = Path(user).expanduser().resolve()
    if not folder.is_dir():
        raise CurriculumError(
            f"eval.reference_dir={user} is not a folder; give the folder that "
            "`python scripts/make_reference.py ... eval.reference_dir=DIR` wrote its file into."
        )
    return (folder, REFERENCE_DIR)


def _as_dirs(directory: ReferenceDirs) -> list[Path]:
    if isinstance(directory, Path | str):
        return [Path(directory)]
    return [Path(d) for d in directory]


def reference_entry(
    spec: TaskSpec, *, directory: ReferenceDirs = REFERENCE_DIR
) -> ReferenceEntry | None:
    """The stored reference of this task whose budget is closest to `spec.steps`, if any.

    The files are written by `scripts/make_reference.py` into `directory` (one folder or several,
    e.g. `reference_dirs(user)`; default: the shipped `envs/reference`). A stored task matches on
    `id` and `kwargs`; among the matches of every folder, the one whose training budget is
    closest to `spec.steps` wins (a larger budget on ties, then the earlier folder: a user's
    own measurement of the same budget replaces the shipped one). None if the task was never
    measured. `budget` says which budget was taken; it may differ from `spec.steps`.
    """
    matches: list[tuple[int, int, float, float, Path]] = []
    for rank, folder in enumerate(_as_dirs(directory)):
        for path in sorted(folder.glob("*.json")):
            for task in json.loads(path.read_text())["tasks"]:
                if task["id"] == spec.id and task["kwargs"] == spec.kwargs:
                    matches.append(
                        (
                            int(task["budget"]),
                            rank,
                            float(task["random"]["return_mean"]),
                            float(task["reference"]["return_mean"]),
                            path,
                        )
                    )
    if not matches:
        return None
    budget, _, random, reference, path = min(
        matches, key=lambda m: (abs(m[0] - spec.steps), -m[0], m[1])
    )
    stored = tuple(sorted({m[0] for m in matches}))
    return ReferenceEntry(random, reference, budget, stored, path)


def reference_returns(
    spec: TaskSpec, *, directory: ReferenceDirs = REFERENCE_DIR
) -> tuple[float, float] | None:
    """`(R_random, R_reference)` stored for this task in `directory` (see `reference_entry`).

    The entry is `reference_entry(spec)`'s (closest stored budget). CONTINUAL_RL.md defines
    R_reference as a single-task run of the same budget, so when the stored budget differs from
    `spec.steps` this warns once per task and budget in a process (`ReferenceBudgetWarning`,
    naming both budgets and the command that measures the missing one); `reference_entry` gives
    the budget without warning.
    """
    entry = reference_entry(spec, directory=directory)
    if entry is None:
        return None
    key = (spec.name, spec.id, spec.steps, entry.budget)
    if entry.budget != spec.steps and key not in _BUDGET_WARNED:
        # Every evaluation of every task asks: say it once per task in a process (a run).
        _BUDGET_WARNED.add(key)
        warnings.warn(
            f"task {spec.name!r} ({spec.id}) trains for {spec.steps} steps but its stored "
            f"reference returns were measured at budgets {list(entry.stored_budgets)}; "
            f"normalising with the closest, {entry.budget} ({entry.path.name}), so R_reference "
            f"is not a single-task run of the same budget. Measure one with `python "
            f"scripts/make_reference.py <the run's curriculum overrides> --steps {spec.steps} "
            f"eval.reference_dir=DIR` and train with eval.reference_dir=DIR.",
            ReferenceBudgetWarning,
            stacklevel=2,
        )
    return entry.random, entry.reference


def curriculum_names() -> list[str]:
    """Names of the curricula shipped in `configs/curriculum/` (the Hydra group)."""
    folder = resources.files("hope_configs") / "curriculum"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_curriculum(name: str) -> dict[str, Any]:
    """The shipped curriculum `name` as plain data: `{"name": ..., "tasks": [...]}`."""
    names = curriculum_names()
    if name not in names:
        raise CurriculumError(f"unknown curriculum {name!r}; available: {', '.join(names)}.")
    text = (resources.files("hope_configs") / "curriculum" / f"{name}.yaml").read_text()
    data = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    assert isinstance(data, dict)
    return {str(k): v for k, v in data.items()}


def _parse_entry(
    entry: Any, where: str, default_steps: int
) -> tuple[str, dict[str, Any], int, str | None]:
    """`(id, kwargs, steps, name or None)` of one curriculum entry, each checked."""
    if not isinstance(entry, Mapping):
        raise CurriculumError(f"{where} must be a mapping {{id, kwargs, steps}}, got {entry!r}.")
    unknown = sorted(set(map(str, entry)) - set(_ENTRY_KEYS))
    if unknown:
        raise CurriculumError(
            f"{where} has unknown keys {unknown}; allowed keys are {list(_ENTRY_KEYS)}."
        )
    env_id = entry.get("id")
    if not isinstance(env_id, str) or not env_id:
        raise CurriculumError(f"{where} needs an `id` string, e.g. id: hope/PointReach-v0.")
    _check_id(env_id, where)
    raw_kwargs = entry.get("kwargs")
    if raw_kwargs is None:
        raw_kwargs = {}
    if not isinstance(raw_kwargs, Mapping):
        raise CurriculumError(
            f"{where} ({env_id}): `kwargs` must be a mapping, got {raw_kwargs!r}."
        )
    kwargs = {str(k): _plain(v, f"{where} ({env_id}) kwargs.{k}") for k, v in raw_kwargs.items()}
    steps_value = entry.get("steps")
    steps = default_steps if steps_value is None else _positive_int(steps_value, f"{where} steps")
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise CurriculumError(f"{where}: `name` must be a non-empty string, got {name!r}.")
    return env_id, kwargs, steps, name


def _positive_int(value: Any, what: str) -> int:
    is_number = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool
    )
    if not is_number or not math.isfinite(value) or int(value) != value or value <= 0:
        raise CurriculumError(f"{what} must be a positive integer, got {value!r}.")
    return int(value)


def _check_id(env_id: str, where: str) -> None:
    try:
        env_spec(env_id)
    except CurriculumError as err:
        raise CurriculumError(f"{where}: {err}") from err


def _namespace(env_id: str) -> str | None:
    """The namespace of an id (`Meta-World` of `Meta-World/MT1`), None for ids without one."""
    try:
        return parse_env_id(env_id.partition(":")[2] or env_id)[0]
    except gym.error.Error:
        return None


def _plain(value: Any, where: str) -> Any:
    """`value` as plain JSON-like data (config containers and numpy values converted)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise CurriculumError(
        f"{where} = {value!r} ({type(value).__name__}) is not plain data; curricula are data: use "
        "numbers, strings, booleans, null, lists and mappings."
    )


def _default_name(env_id: str, kwargs: Mapping[str, Any]) -> str:
    short = re.sub(r"-v\d+$", "", env_id.split(":")[-1].split("/")[-1])
    if not kwargs:
        return short
    return f"{short}[{','.join(f'{k}={_compact(v)}' for k, v in sorted(kwargs.items()))}]"


def _compact(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_compact(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _unique_name(name: str, used: set[str]) -> str:
    candidate, copy = name, 1
    while candidate in used:
        copy += 1
        candidate = f"{name}#{copy}"
    return candidate


@dataclass(frozen=True)
class _Probe:
    """What a curriculum needs to know about a task without keeping its env alive."""

    observation_space: gym.Space[Any]
    action_space: gym.Space[Any]


def _probe_key(env_id: str, kwargs: Mapping[str, Any]) -> str:
    return json.dumps([env_id, kwargs], sort_keys=True)


@functools.cache
def _probe(key: str) -> _Probe:
    """Build the env of `key` once (cached: CW20 repeats CW10, and Meta-World builds are slow)."""
    env_id, kwargs = json.loads(key)
    try:
        env = gym.make(env_id, **kwargs)
    except ImportError as err:
        # An optional dependency is missing: its message names what to install, and the kwargs
        # are not at fault.
        raise CurriculumError(f"the env needs a package that is not installed: {err}") from err
    except (TypeError, ValueError, gym.error.Error) as err:
        raise CurriculumError(
            f"the env could not be built ({type(err).__name__}: {err}); check the kwargs against "
            f"the docstring of its entry point {env_spec(env_id).entry_point}."
        ) from err
    try:
        return _Probe(env.observation_space, env.action_space)
    finally:
        env.close()


def _env_creator(env_id: str) -> Any:
    entry_point = env_spec(env_id).entry_point
    return entry_point if callable(entry_point) else load_env_creator(str(entry_point))


def _accepts_size(env_id: str) -> bool:
    """Whether the task's constructor takes `width`/`height` (MuJoCo envs do, via **kwargs)."""
    params = inspect.signature(_env_creator(env_id)).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return takes_all or {"width", "height"} <= set(params)


def _render_size(render_size: Sequence[int]) -> tuple[int, int]:
    if len(render_size) != 2:
        raise CurriculumError(f"render_size must be (height, width), got {render_size!r}.")
    height = _positive_int(render_size[0], "render height")
    return height, _positive_int(render_size[1], "render width")

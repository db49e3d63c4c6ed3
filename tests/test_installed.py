"""The installed package works: ``pip install .`` (not editable) into a fresh venv, then
``hope-train``, ``hope-evaluate`` and ``hope-record`` from another directory, on the shipped
configs, curricula and reference data.

The venv reuses this interpreter's installed dependencies (torch, mujoco, ...) through a ``.pth``
line naming their site-packages, so that nothing is downloaded: ``pip install --no-deps
--no-build-isolation --no-index`` builds and installs the project alone. A ``.pth`` line adds a
folder but runs no ``.pth`` file in it, so an editable install of the project there stays
invisible: every ``hope_*`` module must come from the venv's own copy, which the test checks.
The project is built from a copy of its packaged folders, so that the build cannot see (or
litter) the checkout. Slow (about a minute): ``.ci/run`` runs it as a step of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject.toml's package-dir).
PACKAGES = {"hope_agent": "hope_agent", "envs": "hope_envs", "configs": "hope_configs"}
DATA_SUFFIXES = (".py", ".yaml", ".xml", ".json", ".typed")

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the project installed from a copy of its sources: ``(venv, env)``."""
    tmp = tmp_path_factory.mktemp("installed")
    src = _mkdir(tmp / "src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    ours.update(site.getsitepackages())
    Path(purelib, "_ci_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
        OMP_NUM_THREADS="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    _run([*pip, "--no-index", str(src)], cwd=tmp, env=env)
    return venv, env


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_the_wheel_holds_every_module_and_data_file(installed: tuple[Path, dict[str, str]]) -> None:
    venv, env = installed
    probe = (
        "import json, importlib.metadata as md; "
        "print(json.dumps([str(f) for f in md.files('hope-agent') or []]))"
    )
    done = _run([str(venv / "bin" / "python"), "-c", probe], cwd=venv, env=env)
    files = {f for f in json.loads(done.stdout) if not f.endswith(".pyc")}
    expected = {
        f"{package}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, package in PACKAGES.items()
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and path.suffix in DATA_SUFFIXES and "__pycache__" not in path.parts
    }
    missing = sorted(expected - files)
    assert not missing, f"pyproject.toml leaves out of the installed package: {missing}"
    for script in ("hope-train", "hope-evaluate", "hope-record"):
        assert (venv / "bin" / script).is_file()


def test_commands_work_from_another_directory(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = installed
    work = _mkdir(tmp_path / "elsewhere")
    python = str(venv / "bin" / "python")
    # The modules, the shipped curricula and their reference data all come from the venv.
    probe = """
import json, hope_agent, hope_envs, hope_configs
from hope_envs.curriculum import curriculum_names, load_curriculum, reference_entry, resolve_tasks
refs = {}
for name in ("fast", "gym_mixed", "locomotion"):
    specs = resolve_tasks(load_curriculum(name)["tasks"], 50000)
    refs[name] = [None if (e := reference_entry(s)) is None else str(e.path) for s in specs]
print(json.dumps({"files": [hope_agent.__file__, hope_envs.__file__, hope_configs.__file__],
                  "curricula": curriculum_names(), "refs": refs}))
"""
    found = json.loads(_run([python, "-c", probe], cwd=work, env=env).stdout)
    assert all(Path(f).is_relative_to(venv) for f in found["files"]), found["files"]
    assert {"fast", "locomotion", "cw10", "gym_mixed"} <= set(found["curricula"])
    for name, paths in found["refs"].items():
        assert paths and all(p is not None and Path(p).is_relative_to(venv) for p in paths), (
            name,
            paths,
        )
    run = work / "run"
    _run(
        [
            str(venv / "bin" / "hope-train"),
            "model=mlp",
            "steps_per_task=128",
            "ppo.num_envs=2",
            "ppo.rollout_len=64",
            "ppo.seq_len=16",
            "ppo.num_minibatches=2",
            "ppo.epochs=1",
            "eval.episodes=1",
            "video.enabled=false",  # hope-record below renders the videos
            "logger.progress=false",
            "logger.tensorboard=false",
            "device=cpu",
            f"hydra.run.dir={run}",
        ],
        cwd=work,
        env=env,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stages_completed"] == 4 and metrics["average_performance"] is not None
    assert (run / "checkpoints" / "stage_03").is_dir()
    _run([str(venv / "bin" / "hope-evaluate"), f"run_dir={run}"], cwd=work, env=env)
    evaluated = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert evaluated["perf_matrix"] == metrics["perf_matrix"]  # same seeds, same checkpoints
    videos = work / "videos"
    done = _run(
        [
            str(venv / "bin" / "hope-record"),
            f"checkpoint={run}/checkpoints/stage_03",
            f"out_dir={videos}",
        ],
        cwd=work,
        env=env,
    )
    names = sorted(p.name for p in videos.iterdir())
    assert names == sorted(f"{t}.mp4" for t in [*metrics["tasks"], "all_tasks"]), done.stdout
    assert all((videos / n).stat().st_size > 1000 for n in names)
    # The run report is part of the installed package too.
    _run([python, "-m", "hope_agent.html_report", str(run)], cwd=work, env=env)
    assert "id='perf-matrix'" in (run / "report.html").read_text()
    # Nothing was written into the working directory but what was asked for.
    assert sorted(p.name for p in work.iterdir()) == ["run", "videos"]

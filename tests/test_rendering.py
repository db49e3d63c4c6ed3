"""Rendering is chosen only where something renders: importing the entry points sets no GL
backend, and a run whose renderer fails logs one line and trains on without videos."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_e2e import tiny_config

from hope_agent.cli import train


def test_importing_the_entry_points_chooses_no_gl_backend() -> None:
    code = (
        "import os, hope_agent.cli, hope_agent.baselines.sb3, hope_envs; "
        "print(os.environ.get('MUJOCO_GL'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "None"


def test_a_failing_renderer_leaves_the_run_without_videos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Gymnasium's MuJoCo renderer reads the backend when it is made; no such backend exists.
    monkeypatch.setenv("MUJOCO_GL", "no-such-backend")
    with caplog.at_level(logging.WARNING):
        summary = train(tiny_config("model=mlp", "video.enabled=true"), tmp_path)
    assert summary.env_steps > 0 and (tmp_path / "metrics.json").is_file()
    lines = [r.getMessage() for r in caplog.records if "no rollout videos" in r.getMessage()]
    assert len(lines) == 1 and "MUJOCO_GL=no-such-backend" in lines[0]
    assert "\n" not in lines[0] and "video.enabled=false" in lines[0]
    assert not list(tmp_path.glob("videos/*/*.mp4"))

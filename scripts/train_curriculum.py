"""Thin entry point: see hope_agent.cli.train_main (also installed as a console script)."""

import os

# Headless MuJoCo rendering must be chosen before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from hope_agent.cli import train_main  # noqa: E402

if __name__ == "__main__":
    train_main()

"""Thin entry point: see hope_agent.cli.evaluate_main (also installed as a console script)."""

import os

# Headless MuJoCo rendering must be chosen before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from hope_agent.cli import evaluate_main  # noqa: E402

if __name__ == "__main__":
    evaluate_main()

"""Test-wide settings: headless MuJoCo rendering, deterministic CPU torch."""

import os

# Must be set before MuJoCo (or anything that imports it) is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    # Some libraries (SB3, gymnasium spaces without a seed) draw from numpy's global RNG.
    np.random.seed(0)  # noqa: NPY002

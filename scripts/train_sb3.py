"""Stable-Baselines3 baselines (PPO or SAC, MlpPolicy) fine-tuned over a curriculum.

    python scripts/train_sb3.py                       # SB3 PPO on the fast curriculum
    python scripts/train_sb3.py algo=sac curriculum=locomotion steps_per_task=200000 seed=1

Same curricula (``curriculum=NAME``, ``curriculum.tasks=[...]``), evaluator, metrics, plots and
run-directory layout as ``scripts/train_curriculum.py``; see ``docs/baselines.md``. Options:
:class:`hope_agent.baselines.sb3.SB3TrainConfig`. A bad override or value ends with one line on
stderr and exit status 1, before training starts.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hope_agent.baselines.sb3 import register_sb3_config, train_sb3
from hope_agent.cli import one_line, precheck
from hope_envs.curriculum import CurriculumError

register_sb3_config()


@hydra.main(config_path="pkg://hope_configs", config_name="sb3_config", version_base="1.3")
def _train(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = train_sb3(cfg, run_dir)
    except (CurriculumError, ValueError) as e:
        raise SystemExit(f"error: {one_line(e)}") from None
    print(f"run directory: {summary.run_dir}")


def main() -> None:
    """Check the overrides, train and evaluate; user errors end with one line on stderr and exit
    status 1."""
    precheck("sb3_config")
    _train()


if __name__ == "__main__":
    main()

"""Continual training: config schemas, curriculum runner, evaluator, report, logging.

The parts are assembled by the composition root :mod:`hope_agent.build`; this package module
stays light.
"""

from hope_agent.train.config import EvaluateConfig, RecordConfig, TrainConfig, register_configs

__all__ = ["EvaluateConfig", "RecordConfig", "TrainConfig", "register_configs"]

"""Continual training: config schemas, curriculum runner, evaluator, logging, builders.

Import :mod:`hope_agent.train.build` for the builders (it imports the environments);
this package module stays light.
"""

from hope_agent.train.config import EvaluateConfig, RecordConfig, TrainConfig, register_configs

__all__ = ["EvaluateConfig", "RecordConfig", "TrainConfig", "register_configs"]

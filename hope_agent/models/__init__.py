"""Sequence backbones behind one interface (:class:`Backbone`): HOPE and its baselines."""

from hope_agent.models.base import Backbone
from hope_agent.models.factory import BACKBONES, make_backbone
from hope_agent.models.graphs import GraphedStep
from hope_agent.models.gru import GRUBackbone, GRUConfig
from hope_agent.models.hope import Hope, HopeAttention, HopeConfig, HopeStack
from hope_agent.models.mlp import MLPBackbone, MLPConfig
from hope_agent.models.state import State
from hope_agent.models.titans import TitansConfig
from hope_agent.models.transformer import TransformerBackbone, TransformerConfig

__all__ = [
    "BACKBONES",
    "Backbone",
    "GRUBackbone",
    "GRUConfig",
    "GraphedStep",
    "Hope",
    "HopeAttention",
    "HopeConfig",
    "HopeStack",
    "MLPBackbone",
    "MLPConfig",
    "State",
    "TitansConfig",
    "TransformerBackbone",
    "TransformerConfig",
    "make_backbone",
]

"""Build any backbone by name: the one place that maps a config name to a model class.

    make_backbone("gru", d_model=64, n_layers=2)
    make_backbone("hope", d_model=64, n_heads=4, cms_periods=(1, 16))

Keyword arguments are the fields of that backbone's config dataclass; anything else is rejected
with the list of valid fields. The HOPE classes are imported on demand so that the baselines do not
depend on the HOPE module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hope_agent.models.base import Backbone
from hope_agent.models.gru import GRUBackbone, GRUConfig
from hope_agent.models.mlp import MLPBackbone, MLPConfig
from hope_agent.models.transformer import TransformerBackbone, TransformerConfig

BACKBONES = ("hope", "hope_attention", "hope_no_cms", "mlp", "gru", "transformer")


def _config(name: str, config_cls: type, d_model: int, kwargs: dict[str, Any]) -> Any:
    fields = [f.name for f in dataclasses.fields(config_cls) if f.name != "d_model"]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(
            f"make_backbone({name!r}): unknown option(s) {unknown}; "
            f"valid options of {config_cls.__name__}: {fields}"
        )
    return config_cls(d_model=d_model, **kwargs)


def make_backbone(name: str, d_model: int, **kwargs: Any) -> Backbone[Any]:
    """Build the backbone ``name`` (one of :data:`BACKBONES`) of width ``d_model``.

    ``kwargs`` are fields of the backbone's config (``MLPConfig``, ``GRUConfig``,
    ``TransformerConfig``, or ``HopeConfig`` for the three HOPE variants). ``hope_no_cms`` is
    ``Hope`` with ``cms_periods=()``. Raises ``ValueError`` on an unknown name or option.
    """
    if name == "mlp":
        return MLPBackbone(_config(name, MLPConfig, d_model, kwargs))
    if name == "gru":
        return GRUBackbone(_config(name, GRUConfig, d_model, kwargs))
    if name == "transformer":
        return TransformerBackbone(_config(name, TransformerConfig, d_model, kwargs))
    if name in ("hope", "hope_attention", "hope_no_cms"):
        from hope_agent.models.hope import Hope, HopeAttention, HopeConfig

        if name == "hope_no_cms":
            if "cms_periods" in kwargs:
                raise ValueError(
                    "make_backbone('hope_no_cms') fixes cms_periods=(); "
                    "use 'hope' to choose the CMS periods"
                )
            kwargs = {**kwargs, "cms_periods": ()}
        config = _config(name, HopeConfig, d_model, kwargs)
        return HopeAttention(config) if name == "hope_attention" else Hope(config)
    raise ValueError(f"make_backbone: unknown backbone {name!r}; valid names: {list(BACKBONES)}")

"""Values from configs checked against Python annotations, and option dataclasses built from
config mappings: one rule for every place that turns config values into typed arguments (method
options, SB3 keyword arguments)."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# What a config value can be, by annotation: its word in messages and the Python types taken.
_CONFIG_TYPES: dict[Any, tuple[str, tuple[type, ...]]] = {
    bool: ("true or false", (bool,)),
    int: ("an integer", (int, float)),
    float: ("a number", (int, float)),
    str: ("a string", (str,)),
    type(None): ("null", (type(None),)),
    dict: ("a mapping", (dict,)),
    list: ("a list", (list, tuple)),
    tuple: ("a list", (list, tuple)),
}


def config_value(name: str, hint: Any, value: Any) -> Any:
    """``value`` as an argument annotated ``hint`` takes it from a config: ``bool`` is no number,
    an ``int`` takes only integral values (``4.0`` becomes ``4``) and a ``float`` any number
    (as a float). An empty or ``Any`` annotation takes anything.

    Raises ``ValueError`` ``"<name> must be <type words> (got <value>)"``, or, for an annotation
    no config value can meet (a class, a callable), ``"<name> takes a Python object ..."``.
    """
    if hint is inspect.Parameter.empty or hint is Any:
        return value
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    words = []
    for member in typing.get_args(hint) if union else (hint,):
        base = typing.get_origin(member) or member
        word, accepted = _CONFIG_TYPES.get(base, ("", ()))
        if not accepted:
            continue
        words.append(word)
        if not isinstance(value, accepted) or (isinstance(value, bool) and base is not bool):
            continue
        if base is not int and base is not float:
            return value
        number = float(typing.cast(float, value))
        if base is float:
            return number
        if number.is_integer():
            return int(number)
    if not words:
        raise ValueError(
            f"{name} takes a Python object and cannot be set in a config (got {value!r})"
        )
    raise ValueError(f"{name} must be {' or '.join(dict.fromkeys(words))} (got {value!r})")


def options_dataclass(what: str, config_cls: type[T], options: Mapping[str, Any]) -> T:
    """``config_cls(**options)`` with every value checked by :func:`config_value`.

    Raises ``ValueError`` naming ``what``, the unknown options and the valid ones, or the option
    and its expected type; the dataclass's own checks raise theirs.
    """
    valid = [f.name for f in dataclasses.fields(config_cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{what}: unknown option(s) {unknown}; valid options: {valid}")
    hints = typing.get_type_hints(config_cls)
    typed = {k: config_value(f"{what}: option {k}", hints[k], v) for k, v in options.items()}
    return config_cls(**typed)

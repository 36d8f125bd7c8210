"""Typed configuration: build frozen dataclasses from plain dicts, failing on unknown keys.

Kedro hands nodes plain dicts from ``params:``; a typo such as ``rnak: 8`` would otherwise be
ignored silently. ``from_dict`` names the bad key, its location and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A parameter is unknown, missing or out of range; the message says which and how to fix."""


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields are built recursively.

    Args:
        cls: a dataclass type.
        data: the parameters (``None`` means all defaults).
        where: dotted location of ``data`` in the parameters, used in error messages.

    Raises:
        ConfigError: unknown key (with a suggestion), a missing required key, or a value the
            dataclass' ``__post_init__`` rejects.
    """
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"Parameter '{where}' must be a mapping, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(
                f"Unknown parameter '{prefix}{key}'.{hint} Valid keys under "
                f"'{where or 'parameters'}': {sorted(fields)}. Fix it in conf/*/parameters*.yml "
                f"or in --params."
            )
    kwargs = {}
    for name, value in data.items():
        tp = _unwrap_optional(hints[name])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, f"{prefix}{name}")
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"Parameters under '{where}': {err}") from err
    except ConfigError as err:
        raise ConfigError(f"Parameter under '{where}': {err}") from err


def require(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition`` holds (for ``__post_init__``)."""
    if not condition:
        raise ConfigError(message)

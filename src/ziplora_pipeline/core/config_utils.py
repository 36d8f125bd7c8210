"""Typed configuration: build frozen dataclasses from plain dicts, failing on unknown keys.

Kedro hands nodes plain dicts from ``params:``; a typo such as ``rnak: 8`` would otherwise be
ignored silently. ``from_dict`` names the bad key, its location and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
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


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _describe(tp: Any) -> str:
    """``tp`` in words, for messages: 'an integer or null', 'a list of 2 numbers', ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _NAMES:
        return _NAMES[tp]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}s"
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if origin is list:
        return f"a list of {_describe(args[0])}s" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _fits(value: Any, tp: Any) -> bool:
    """Does ``value`` (as YAML or ``--params`` give it) have type ``tp``? Booleans are not integers, integers are
    numbers, NaN and infinity are not numbers a parameter may take; types this does not know are accepted."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or isinstance(tp, TypeVar):
        return True
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args)))
    if origin is list:
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, dict) and (not args or all(_fits(k, args[0]) and _fits(v, args[1])
                                                            for k, v in value.items()))
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (dict, tp))
    return True


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields are built recursively.

    Args:
        cls: a dataclass type.
        data: the parameters (``None`` means all defaults).
        where: dotted location of ``data`` in the parameters, used in error messages.

    Raises:
        ConfigError: unknown key (with a suggestion), a missing required key, a value of the wrong type
            (``steps: 2.5``, ``steps: true``, ``learning_rate: nan``: the key, the value and the expected
            type named), or a value the dataclass' ``__post_init__`` rejects.
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
        if not _fits(value, hints[name]):
            raise ConfigError(f"Parameter '{prefix}{name}' must be {_describe(hints[name])}, got {value!r} "
                              f"({type(value).__name__}). Fix it in conf/*/parameters*.yml or in --params.")
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

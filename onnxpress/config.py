"""The one type checker for configuration: recipes, pass options and target profiles.

Types are Python annotations: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, unions
(``X | None``), ``list[...]`` (and tuples and sequences, which TOML writes as arrays) and
``dict[str, ...]``. Floats accept integers and turn them into floats; booleans never pass as
integers (TOML's ``true`` is not ``1``). Every mistake is one :class:`RecipeError` line that
starts with where it was found, for example
``r.toml: passes[1]: pass 'simplify' option 'fold_batchnorm' must be bool, got str 'yes'``.

This is a bottom-layer module: it imports nothing of onnxpress but ``errors``.
"""
from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any, Literal, Mapping, Union

from onnxpress.errors import RecipeError

_SEQUENCES = (list, tuple, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)


def matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (as TOML gives it) fits ``annotation``; unknown annotations accept anything."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if annotation is None or annotation is type(None):
        return value is None
    if origin is Literal:
        # type() as well as ==: True == 1 and 1.0 == 1, but neither is the literal the other names
        return any(type(value) is type(arg) and value == arg for arg in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in _SEQUENCES or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        return all(matches(item, _item_type(args)) for item in value)
    if origin in _MAPPINGS or annotation is dict:
        if not isinstance(value, dict):
            return False
        value_type = args[1] if len(args) == 2 else Any
        return all(isinstance(k, str) and matches(v, value_type) for k, v in value.items())
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def type_name(annotation: Any) -> str:
    """How messages name ``annotation``: ``bool``, ``a list of str``, ``one of 'a', 'b'``..."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if annotation is None or annotation is type(None):
        return "none"
    if origin in _SEQUENCES or annotation in (list, tuple):
        item = _item_type(args)
        return "a list" if item is Any else f"a list of {type_name(item)}"
    if origin in _MAPPINGS or annotation is dict:
        value_type = args[1] if len(args) == 2 else Any
        return "a table" if value_type is Any else f"a table of {type_name(value_type)}"
    return getattr(annotation, "__name__", str(annotation))


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """``value`` converted to ``annotation`` (integers to floats where floats are wanted).

    Raises:
        RecipeError: ``{where} must be {type}, got {type of value} {value!r}``.
    """
    if not matches(value, annotation):
        raise RecipeError(f"{where} must be {type_name(annotation)}, got {type(value).__name__} {value!r}")
    return _convert(value, annotation)


def check_table(table: Any, schema: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A TOML table checked against ``schema`` (``{key: annotation}``), values converted.

    Keys the table leaves out are left out of the result (callers apply their defaults).

    Raises:
        RecipeError: ``{where} must be a table``, ``{where}: unknown key 'k'; known: ...`` or
            ``{where}: 'k' must be {type}, got ...``.
    """
    if not isinstance(table, dict):
        raise RecipeError(f"{where} must be a table")
    checked = {}
    for key, value in table.items():
        if key not in schema:
            raise RecipeError(f"{where}: unknown key '{key}'; known: {', '.join(schema)}")
        checked[key] = check_value(value, schema[key], f"{where}: '{key}'")
    return checked


def _item_type(args: tuple) -> Any:
    return args[0] if args and args[0] is not Ellipsis else Any


def _convert(value: Any, annotation: Any) -> Any:
    """``value``, known to match ``annotation``, with integers made floats where floats are wanted."""
    if annotation is float:
        return float(value)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        fitting = [arg for arg in args if matches(value, arg)]
        # an int stays an int when the union also takes ints (``int | float``, ``int | list[int]``)
        exact = [arg for arg in fitting if not (arg is float and isinstance(value, int))]
        return _convert(value, (exact or fitting)[0])
    if origin in _SEQUENCES and isinstance(value, (list, tuple)):
        item = _item_type(args)
        return type(value)(_convert(v, item) for v in value)
    if origin in _MAPPINGS and isinstance(value, dict):
        value_type = args[1] if len(args) == 2 else Any
        return {k: _convert(v, value_type) for k, v in value.items()}
    return value

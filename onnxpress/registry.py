"""The pass registry: short names to pass classes, and option checking for recipes.

Built-in passes are listed here; third-party passes register through the entry-point group
``onnxpress.passes`` (``name = "package.module:ClassName"``).
"""
from __future__ import annotations

import collections.abc
import importlib
import importlib.metadata
import inspect
import logging
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from onnxpress.errors import RecipeError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "onnxpress.passes"

_BUILTIN = {
    "simplify": "onnxpress.passes.simplify:Simplify",
    "quantize": "onnxpress.passes.quantize:Quantize",
    "lowrank": "onnxpress.passes.lowrank:LowRank",
    "prune": "onnxpress.passes.prune:Prune",
}

_extra: dict[str, type] = {}


def register(name: str, cls: type) -> None:
    """Register a pass class under ``name`` for this process (entry points do it for packages)."""
    if not name.isidentifier():
        raise ValueError(f"pass name must be an identifier, got {name!r}")
    _extra[name] = cls


def _load(target: str) -> type:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def available() -> dict[str, type]:
    """Every registered pass by name: built-ins, then entry points, then ``register`` calls."""
    found = {name: _load(target) for name, target in _BUILTIN.items()}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found:
            logger.warning("pass entry point %s (%s) ignored: the name is taken", entry.name, entry.value)
            continue
        try:
            found[entry.name] = entry.load()
        except (ImportError, AttributeError) as err:
            logger.warning("pass entry point %s (%s) cannot be loaded: %s", entry.name, entry.value, err)
    found.update(_extra)
    return found


def get(name: str) -> type:
    """The pass class registered as ``name``; ``RecipeError`` naming the known ones otherwise."""
    passes = available()
    if name not in passes:
        raise RecipeError(f"unknown pass '{name}'; known passes: {', '.join(sorted(passes))}")
    return passes[name]


@dataclass(frozen=True)
class Option:
    """One keyword-only constructor option of a pass."""

    name: str
    annotation: Any
    default: Any

    @property
    def type_name(self) -> str:
        return _type_name(self.annotation)


def options(cls: type) -> dict[str, Option]:
    """The options of a pass class: its keyword-only constructor parameters."""
    signature = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):
        hints = {}
    found = {}
    for param in signature.parameters.values():
        if param.kind == inspect.Parameter.KEYWORD_ONLY:
            found[param.name] = Option(param.name, hints.get(param.name, Any),
                                       None if param.default is inspect.Parameter.empty else param.default)
    return found


def create(name: str, settings: dict[str, Any], *, where: str = "") -> Any:
    """Instantiate the pass ``name`` with ``settings`` checked against its options.

    ``where`` prefixes every error message (for example ``recipe.toml: passes[2]``).
    """
    prefix = f"{where}: " if where else ""
    try:
        cls = get(name)
    except RecipeError as err:
        raise RecipeError(f"{prefix}{err}") from None
    known = options(cls)
    for key, value in settings.items():
        if key not in known:
            raise RecipeError(f"{prefix}pass '{name}' has no option '{key}'; its options are: "
                              f"{', '.join(known) or 'none'}")
        if not _matches(value, known[key].annotation):
            raise RecipeError(f"{prefix}pass '{name}' option '{key}' must be {known[key].type_name}, "
                              f"got {type(value).__name__} {value!r}")
    try:
        return cls(**settings)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{prefix}{err}") from None


def _matches(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args else Any
        return all(_matches(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return False
        value_type = args[1] if len(args) == 2 else Any
        return all(isinstance(k, str) and _matches(v, value_type) for k, v in value.items())
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if annotation is type(None):
        return "none"
    if origin is not None:
        return f"a list of {_type_name(args[0])}" if origin in (list, tuple) and args else str(annotation)
    return getattr(annotation, "__name__", str(annotation))


def summary(cls: type) -> str:
    """The first line of a pass class's docstring."""
    doc = inspect.getdoc(cls) or ""
    return doc.splitlines()[0] if doc else ""

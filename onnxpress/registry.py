"""The pass registry: short names to pass classes, and option checking for recipes.

Built-in passes are listed here; third-party passes register through the entry-point group
``onnxpress.passes`` (``name = "package.module:ClassName"``).
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import logging
import sys
import typing
from dataclasses import dataclass
from typing import Any

from onnxpress import config
from onnxpress.errors import RecipeError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "onnxpress.passes"

_BUILTIN = ("onnxpress.passes.simplify:Simplify", "onnxpress.passes.quantize:Quantize",
            "onnxpress.passes.lowrank:LowRank", "onnxpress.passes.prune:Prune",
            "onnxpress.passes.distill:Distill", "onnxpress.passes.fp16:FP16",
            "onnxpress.passes.weightonly:WeightOnly")

_extra: dict[str, type] = {}


def declared_name(cls: type) -> str:
    """The name a pass class declares (``Pass.name``), or "" for a plain ``onnx_ir`` pass."""
    name = getattr(cls, "name", "")
    return name if isinstance(name, str) else ""


def register(cls_or_name: type | str, cls: type | None = None) -> None:
    """Register a pass class for this process under the name it declares (entry points do it
    for packages). ``register("name", cls)`` names a plain ``onnx_ir`` pass that declares none."""
    if isinstance(cls_or_name, str):
        name, chosen = cls_or_name, cls
        if chosen is None:
            raise TypeError("register(name, cls): the class is missing")
        if declared_name(chosen) and declared_name(chosen) != name:
            raise ValueError(f"pass class {chosen.__name__} declares the name '{declared_name(chosen)}', "
                             f"not '{name}'")
    else:
        chosen, name = cls_or_name, declared_name(cls_or_name)
    if not name.isidentifier():
        raise ValueError(f"pass name must be an identifier, got {name!r}")
    _extra[name] = chosen


def _load(target: str) -> type:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@functools.lru_cache(maxsize=4)
def _entry_points(path: tuple[str, ...]) -> dict[str, type]:
    """Passes of installed packages, by declared name; scanned once per import path."""
    found: dict[str, type] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = entry.load()
        except (ImportError, AttributeError) as err:
            logger.warning("pass entry point %s (%s) cannot be loaded: %s", entry.name, entry.value, err)
            continue
        name = declared_name(cls) or entry.name
        if name != entry.name:
            logger.warning("pass entry point %s (%s) declares the name '%s': registered as '%s'",
                           entry.name, entry.value, name, name)
        if name in found:
            logger.warning("pass entry point %s (%s) ignored: the name '%s' is taken", entry.name, entry.value, name)
            continue
        found[name] = cls
    return found


def available() -> dict[str, type]:
    """Every registered pass by its declared name: built-ins, then entry points, then ``register`` calls."""
    found = {declared_name(cls): cls for cls in map(_load, _BUILTIN)}
    for name, cls in _entry_points(tuple(sys.path)).items():
        if name in found:
            logger.warning("pass entry point for '%s' (%s) ignored: a built-in has that name", name, cls)
            continue
        found[name] = cls
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
        return config.type_name(self.annotation)


def aliases(cls: type) -> dict[str, str]:
    """Old option names a pass class still accepts, mapped to their new names (``Pass.aliases``)."""
    return dict(getattr(cls, "aliases", None) or {})


def options(cls: type) -> dict[str, Option]:
    """The options of a pass class: its keyword-only constructor parameters, old names left out."""
    signature = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):
        hints = {}
    old_names = aliases(cls)
    found = {}
    for param in signature.parameters.values():
        if param.kind == inspect.Parameter.KEYWORD_ONLY and param.name not in old_names:
            found[param.name] = Option(param.name, hints.get(param.name, Any),
                                       None if param.default is inspect.Parameter.empty else param.default)
    return found


def create(name: str, settings: dict[str, Any], *, where: str = "") -> Any:
    """Instantiate the pass ``name`` with ``settings`` checked against its options.

    ``where`` prefixes every error message (for example ``recipe.toml: passes[2]``). An old
    option name (``Pass.aliases``) is taken under its new name with a warning.
    """
    prefix = f"{where}: " if where else ""
    try:
        cls = get(name)
    except RecipeError as err:
        raise RecipeError(f"{prefix}{err}") from None
    known = options(cls)
    renamed = aliases(cls)
    checked: dict[str, Any] = {}
    for key, value in settings.items():
        if key in renamed:
            new = renamed[key]
            if new in settings:
                raise RecipeError(f"{prefix}pass '{name}' option '{key}' is the old name of '{new}'; "
                                  f"give '{new}' only")
            logger.warning("%spass '%s' option '%s' is deprecated and will be removed; use '%s'",
                           prefix, name, key, new)
            key = new
        if key not in known:
            raise RecipeError(f"{prefix}pass '{name}' has no option '{key}'; its options are: "
                              f"{', '.join(known) or 'none'}")
        checked[key] = config.check_value(value, known[key].annotation, f"{prefix}pass '{name}' option '{key}'")
    try:
        return cls(**checked)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{prefix}{err}") from None


def summary(cls: type) -> str:
    """The first line of a pass class's docstring."""
    doc = inspect.getdoc(cls) or ""
    return doc.splitlines()[0] if doc else ""

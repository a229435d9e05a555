"""Recipes: TOML files naming the passes with their options, the data sources and the target.

```toml
target = "cpu"                 # optional: a built-in target or a profile file

[pipeline]                     # optional
check = true
golden_samples = 4
accuracy_floor = 0.99          # lowest cosine a lossy pass may leave (default: the target's tolerance)
input_shapes = { images = [1, 3, 640, 640] }   # shapes of generated inputs (golden, verdict);
                               # without them unknown sizes are found by trial runs

[calibration]                  # optional; paths are relative to the recipe
source = "calib.npz"           # a .npz (samples on axis 0), a .npy, a folder of .npz or of images,
                               # a text file (one sample a line), or "feeds.py:make" / "pkg.mod:make"
type = "npz"                   # optional: npz, npy, images, text or python (default: from the source)
batch_size = 1                 # samples (rows, images, lines) per feed
limit = 200                    # images: input, preprocessor, size, crop, color, scale, mean, std,
                               #   layout, dtype (see ImageSpec; unset ones come from the model)
                               # text: tokenizer (required), max_length; python: function

[evaluation]                   # optional, same keys: the data verdicts are judged on (never
source = "eval.npz"            # shown to the passes); without it a held-out split of calibration

[[passes]]
name = "simplify"
fold_limit_bytes = 16777216
```

This module only parses: it checks every key and creates the passes through the registry.
``Pipeline.from_recipe`` builds the pipeline; ``calibration.read_source`` reads the data
sources (relative to the recipe's folder). Every mistake is reported as one line naming the
file, the table and the key. Old option names of a pass are accepted with a warning.

It also writes recipes: :func:`recipe_text` and :func:`to_toml` give a recipe with every pass
option explicit (what a lockfile embeds), through :func:`dumps`, a small TOML writer.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from onnxpress import config, registry, targets
from onnxpress.calibration import DataSource
from onnxpress.errors import RecipeError
from onnxpress.feeds import check_input_shapes

_TOP_KEYS = {"description", "target", "pipeline", "calibration", "evaluation", "passes"}
_PIPELINE_KEYS = {"check": bool, "golden_samples": int, "lossless_rtol": float, "lossless_atol": float,
                  "latency_runs": int, "input_shapes": dict[str, list[int]], "accuracy_floor": float}


@dataclass
class Recipe:
    """A parsed, checked recipe.

    Attributes:
        path: the recipe file (None for text); data sources are relative to its folder.
        passes: the pass instances, in order, created by ``registry.create``.
        pass_names: their registry names.
        target: the target it names (a built-in name or a profile path), or None.
        description: free text.
        pipeline_options: the ``[pipeline]`` table (``Pipeline`` keyword arguments).
        calibration: the ``[calibration]`` source, or None.
        evaluation: the ``[evaluation]`` source (verdict data the passes never see), or None.
    """

    path: Path | None
    passes: list[Any]
    pass_names: list[str]
    target: str | None = None
    description: str = ""
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    calibration: DataSource | None = None
    evaluation: DataSource | None = None


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check a recipe file."""
    file = Path(path)
    if not file.exists():
        raise RecipeError(f"{file}: no such recipe file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{file}: cannot read the recipe: {err}") from err
    return parse_recipe(text, name=str(file), path=file)


def parse_recipe(text: str, *, name: str = "<recipe>", path: Path | None = None) -> Recipe:
    """Parse and check recipe text; ``name`` prefixes error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{name}: not valid TOML: {err}") from None
    return parse_recipe_table(data, name=name, path=path)


def parse_recipe_table(data: Mapping[str, Any], *, name: str = "<recipe>", path: Path | None = None) -> Recipe:
    """Check a recipe already read from TOML (a lockfile's ``[recipe]`` table); ``name``
    prefixes error messages, ``path`` places the data sources (see :class:`Recipe`)."""
    if not isinstance(data, Mapping):
        raise RecipeError(f"{name}: a recipe must be a table")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise RecipeError(f"{name}: unknown key(s) {unknown}; a recipe has {sorted(_TOP_KEYS)}")
    target = config.check_value(data.get("target"), str | None, f"{name}: 'target'")
    description = config.check_value(data.get("description", ""), str, f"{name}: 'description'")
    pipeline_options = config.check_table(data.get("pipeline", {}), _PIPELINE_KEYS, f"{name}: [pipeline]")
    if "input_shapes" in pipeline_options:
        try:
            pipeline_options["input_shapes"] = check_input_shapes(pipeline_options["input_shapes"],
                                                                  f"{name}: [pipeline]: 'input_shapes'")
        except ValueError as err:
            raise RecipeError(str(err)) from None
    sources = {key: DataSource.from_table(data[key], where=f"{name}: [{key}]")
               for key in ("calibration", "evaluation") if key in data}
    entries = data.get("passes", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise RecipeError(f"{name}: 'passes' must be an array of tables ([[passes]])")
    if not entries:
        raise RecipeError(f"{name}: the recipe names no passes (add [[passes]] tables)")
    passes, names = [], []
    for index, entry in enumerate(entries, start=1):
        where = f"{name}: passes[{index}]"
        settings = dict(entry)
        pass_name = settings.pop("name", None)
        if not isinstance(pass_name, str):
            raise RecipeError(f"{where}: each pass needs a 'name' string")
        passes.append(registry.create(pass_name, settings, where=where))
        names.append(pass_name)
    return Recipe(path=path, passes=passes, pass_names=names, target=target, description=description,
                  pipeline_options=pipeline_options, calibration=sources.get("calibration"),
                  evaluation=sources.get("evaluation"))


# What each target precision compresses with (the target's ``[recipe] precision``).
_PRECISION_PASSES: dict[str, list[dict[str, Any]]] = {
    "fp32": [{"name": "simplify"}],
    "fp16": [{"name": "simplify"}, {"name": "fp16", "dtype": "float16"}],
    "bf16": [{"name": "simplify"}, {"name": "fp16", "dtype": "bfloat16"}],
    "int8": [{"name": "simplify"}, {"name": "quantize"}],
    "int8-pow2": [{"name": "simplify"}, {"name": "quantize", "scale": "pow2"}],
    "int4": [{"name": "simplify"}, {"name": "weightonly", "bits": 4}],
}


def default_recipe(target: str | os.PathLike) -> Recipe:
    """The recipe a target profile suits: simplify, then the pass of its ``[recipe] precision``
    (``cpu`` and ``edge``: int8 quantize; ``cuda``: fp16; ``mcu``: int8 with power-of-two
    scales). ``onnxpress run MODEL --target T`` without ``--recipe`` runs it."""
    profile = targets.load(target)
    if profile.precision not in _PRECISION_PASSES:
        raise RecipeError(f"{profile.path}: [recipe] precision '{profile.precision}' has no default recipe; "
                          f"give one of {', '.join(_PRECISION_PASSES)}")
    entries = _PRECISION_PASSES[profile.precision]
    where = f"target '{profile.name}' default recipe"
    passes = [registry.create(entry["name"], {k: v for k, v in entry.items() if k != "name"}, where=where)
              for entry in entries]
    return Recipe(path=None, passes=passes, pass_names=[entry["name"] for entry in entries],
                  target=str(target), description=f"{where} (precision {profile.precision})")


# ---------------------------------------------------------------------------------------------
# Writing recipes. tomllib only reads, so this is a small TOML writer of the values recipes and
# lockfiles hold: strings, booleans, integers, floats, arrays and tables (no dates, no null).

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_INT64 = (-(2**63), 2**63 - 1)


def dumps(data: Mapping[str, Any], *, section_depth: int = 1) -> str:
    """``data`` as TOML text that ``tomllib.loads`` reads back equal.

    Tables reached from the top through tables alone, down to ``section_depth`` levels, are
    written as ``[section]`` headers (lists of them as ``[[section]]``); deeper ones, and every
    table inside an array, inline (``{ a = 1 }``). ``None`` raises ``ValueError``: TOML has no null,
    so callers leave such keys out.

    Raises:
        ValueError: a value TOML cannot hold (None, an integer beyond 64 bits, another type),
            naming its key.
    """
    lines: list[str] = []
    _write_table(lines, [], data, section_depth)
    return "\n".join(lines).strip("\n") + "\n"


def _is_section(value: Any, depth: int, section_depth: int) -> bool:
    return depth <= section_depth and isinstance(value, Mapping)


def _is_section_array(value: Any, depth: int, section_depth: int) -> bool:
    return (depth <= section_depth and isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(item, Mapping) for item in value))


def _write_table(lines: list[str], path: list[str], table: Mapping[str, Any], section_depth: int) -> None:
    depth = len(path) + 1  # the depth of this table's values
    nested = []
    for key, value in table.items():
        if value is None:
            raise ValueError(f"'{'.'.join([*path, str(key)])}' is None, which TOML cannot write")
        if _is_section(value, depth, section_depth) or _is_section_array(value, depth, section_depth):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value, [*path, str(key)])}")
    for key, value in nested:  # sub-tables after every plain key: a header ends the table above
        inner = [*path, str(key)]
        header = ".".join(_key(part) for part in inner)
        if isinstance(value, Mapping):
            if not value or any(not (_is_section(v, depth + 1, section_depth)
                                     or _is_section_array(v, depth + 1, section_depth)) for v in value.values()):
                lines += ["", f"[{header}]"]  # a table of sub-tables alone needs no header of its own
            _write_table(lines, inner, value, section_depth)
        else:
            for item in value:
                lines += ["", f"[[{header}]]"]
                _write_table(lines, inner, item, depth)  # inside an array element: inline tables only


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise ValueError(f"TOML keys are strings, got {type(key).__name__} {key!r}")
    return key if key and all(c in _BARE_KEY for c in key) else _string(key)


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:  # other control characters must be escaped
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: Any, path: list[str]) -> str:
    where = ".".join(path)
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, numbers.Integral):
        number = int(value)
        if not _INT64[0] <= number <= _INT64[1]:
            raise ValueError(f"'{where}' = {number} does not fit TOML's 64-bit integers")
        return str(number)
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return "nan"
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        return repr(number)  # the shortest text that reads back as the same double, with '.' or 'e'
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if item is None:
                raise ValueError(f"'{where}.{key}' is None, which TOML cannot write")
            items.append(f"{_key(key)} = {_value(item, [*path, str(key)])}")
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        if any(item is None for item in value):
            raise ValueError(f"'{where}' holds None, which TOML cannot write")
        return "[" + ", ".join(_value(item, path) for item in value) + "]"
    raise ValueError(f"'{where}' is a {type(value).__name__}, which TOML cannot write")


def pass_options(item: Any, *, where: str = "") -> tuple[str, dict[str, Any]]:
    """A registered pass's name and every one of its options as the instance holds them
    (``registry.options`` read back with ``getattr``; STYLE.md keeps options as public
    attributes of the same names), ready for TOML.

    An option that is None is left out when None is its default (a recipe leaving it out means
    the same); otherwise TOML cannot say it.

    Raises:
        RecipeError: the pass is not registered under the name its class declares, an option is
            not kept as an attribute, or a value TOML cannot hold (None over another default, an
            array, a model), naming the pass and the option.
    """
    from onnxpress.context import pass_name

    prefix = f"{where}: " if where else ""
    name = pass_name(item)
    try:
        registered = registry.get(name)
    except RecipeError as err:
        raise RecipeError(f"{prefix}cannot write pass {type(item).__name__} into a recipe: {err}") from None
    if registered is not type(item):
        raise RecipeError(f"{prefix}cannot write pass {type(item).__name__} into a recipe: the name '{name}' "
                          f"is registered for {registered.__module__}.{registered.__qualname__}")
    settings: dict[str, Any] = {}
    for option in registry.options(registered).values():
        if not hasattr(item, option.name):
            raise RecipeError(f"{prefix}pass '{name}' keeps no attribute '{option.name}', so its option "
                              "cannot be written (STYLE.md: options are public attributes of the same name)")
        value = getattr(item, option.name)
        if value is None:
            if option.default is None:
                continue
            raise RecipeError(f"{prefix}pass '{name}' option '{option.name}' is None, which TOML cannot write "
                              f"(its default is {option.default!r})")
        try:
            _value(value, [option.name])
        except ValueError as err:
            raise RecipeError(f"{prefix}pass '{name}' option '{option.name}' cannot be written to TOML: "
                              f"{err}") from None
        settings[option.name] = list(value) if isinstance(value, tuple) else value
    return name, settings


def source_table(source: DataSource, *, base: Path | None = None, folder: Path | None = None) -> dict[str, Any]:
    """A data source as its recipe table, every key it sets explicit (``DataSource.from_table``
    reads it back).

    ``base`` is the folder the source's relative paths are resolved against now (a recipe's
    folder; the working directory when None). Paths (the source, a tokenizer, a preprocessor
    config, a Python file) are written relative to ``folder`` (where the table will be written)
    when they lie inside it, else absolute, so a folder holding both can be moved. ``folder``
    None keeps them as they are. A Python module name is written as it is.
    """
    def place(path: Path) -> str:
        path = Path(path)
        if folder is not None:
            resolved = Path(os.path.abspath(path if path.is_absolute() else (base or Path.cwd()) / path))
            try:
                path = resolved.relative_to(Path(os.path.abspath(folder)))
            except ValueError:
                path = resolved
        return path.as_posix()

    module = source.type == "python" and not str(source.source).endswith(".py")
    table: dict[str, Any] = {"source": str(source.source) if module else place(source.source)}
    if source.type is not None:
        table["type"] = source.type
    if source.type != "python":
        table["batch_size"] = source.batch_size
    for key in ("limit", "input", "max_length", "function"):
        if getattr(source, key) is not None:
            table[key] = getattr(source, key)
    for key in ("tokenizer", "preprocessor"):
        if getattr(source, key) is not None:
            table[key] = place(getattr(source, key))
    if source.image is not None:
        for spec in dataclasses.fields(source.image):  # the ImageSpec fields are the table's image keys
            value = getattr(source.image, spec.name)
            if value is not None:
                table[spec.name] = list(value) if isinstance(value, tuple) else value
    return table


def recipe_text(passes: Sequence[Any], *, target: str | None = None, description: str = "",
                pipeline_options: Mapping[str, Any] | None = None, calibration: DataSource | None = None,
                evaluation: DataSource | None = None, base: Path | None = None,
                folder: Path | None = None) -> str:
    """A recipe file naming ``passes`` with every option explicit (see :func:`pass_options`).

    ``parse_recipe`` reads it back into passes of the same classes with equal options.
    ``base`` and ``folder`` place the data sources' paths (see :func:`source_table`): ``base``
    is the folder they are relative to now, ``folder`` the one the recipe will be written in.

    Raises:
        RecipeError: a pass or option a recipe cannot hold, naming it.
    """
    data: dict[str, Any] = {}
    if description:
        data["description"] = description
    if target is not None:
        data["target"] = str(target)
    options = {key: value for key, value in (pipeline_options or {}).items() if value is not None}
    if "input_shapes" in options:
        options["input_shapes"] = {name: list(shape) for name, shape in options["input_shapes"].items()}
    unknown = sorted(set(options) - set(_PIPELINE_KEYS))
    if unknown:
        raise RecipeError(f"recipe: unknown [pipeline] key(s) {unknown}; known: {', '.join(_PIPELINE_KEYS)}")
    if options:
        data["pipeline"] = options
    for key, source in (("calibration", calibration), ("evaluation", evaluation)):
        if source is not None:
            data[key] = source_table(source, base=base, folder=folder)
    entries = []
    for index, item in enumerate(passes, start=1):
        name, settings = pass_options(item, where=f"passes[{index}]")
        entries.append({"name": name, **settings})
    if not entries:
        raise RecipeError("recipe: no passes to write")
    data["passes"] = entries
    return dumps(data)


def to_toml(recipe: Recipe, *, folder: Path | None = None) -> str:
    """``recipe`` as TOML with every pass option explicit (:func:`recipe_text`).

    Data paths stay relative to the recipe's folder; give ``folder`` to write the recipe
    elsewhere (paths are then placed for that folder).
    """
    base = recipe.path.parent if recipe.path is not None else None
    return recipe_text(recipe.passes, target=recipe.target, description=recipe.description,
                       pipeline_options=recipe.pipeline_options, calibration=recipe.calibration,
                       evaluation=recipe.evaluation, base=base, folder=folder if folder is not None else base)

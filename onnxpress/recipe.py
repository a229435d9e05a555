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
source = "calib.npz"           # a .npz (samples on axis 0), a folder of .npz, or a folder of images
type = "npz"                   # or "images", with input = "name" and the preprocessing keys:
batch_size = 1                 # size, crop, color, scale, mean, std, layout, dtype (see ImageSpec)
limit = 200

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
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
